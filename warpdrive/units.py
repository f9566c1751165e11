"""Human sizes and durations, parsed once at config time.

Sizes follow the original WarpDrive: ``KB``, ``MB``, ``GB``, ``TB`` and ``PB`` are powers of 1024
(so ``4MB`` is a power of two, as a block size must be). ``KiB``…``PiB`` mean the same, and a bare
number is bytes. Durations take ``ms``, ``s``, ``m``, ``h``, ``d`` and ``w``, alone or combined
(``1h30m``); a bare number is seconds.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
    "p": 1 << 50,
    "pb": 1 << 50,
    "pib": 1 << 50,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")


def parse_size(value: object) -> int:
    """Bytes in ``value`` (``"50GB"``, ``"1.5GB"``, ``4194304``); ValueError says what's allowed."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '4MB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, float):
        if value < 0 or value != value:
            raise ValueError(f"size must be a non-negative number, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as '4MB', got {value!r}")
    match = _SIZE_RE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r} (expected a number with an optional unit: "
            "B, KB, MB, GB, TB, PB or KiB…PiB, e.g. '4MB', '1.5GB')"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (``"60s"``, ``"7d"``, ``"1h30m"``, ``"250ms"``, ``30``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '60s', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise ValueError(f"duration must be a non-negative number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '60s', got {value!r}")
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for part in _DURATION_PART.finditer(text):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    if pos == 0 or pos != len(text):
        raise ValueError(
            f"invalid duration {value!r} (expected e.g. '250ms', '60s', '5m', '2h', '7d', '1h30m')"
        )
    return total


def format_size(n: float) -> str:
    """``n`` bytes in binary units, short: ``4.0MiB``."""
    if abs(n) < 1024:
        return f"{n:.0f}B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "PiB":
            break
    return f"{n:.1f}{unit}"


def format_duration(seconds: float) -> str:
    """``seconds`` in two units at most: ``250ms``, ``45s``, ``12m5s``, ``3h20m``, ``2d3h``."""
    if seconds < 1:
        return f"{max(0.0, seconds) * 1000:.0f}ms"
    whole = int(seconds)
    parts = [(whole // 86400, "d"), (whole % 86400 // 3600, "h"), (whole % 3600 // 60, "m")]
    parts.append((whole % 60, "s"))
    start = next(i for i, (n, _) in enumerate(parts) if n or i == 3)
    return "".join(f"{n}{unit}" for n, unit in parts[start : start + 2] if n) or "0s"
