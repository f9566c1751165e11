"""``forge compare COLD.json WARM.json``: the original demo's comparison table, from two runs'
JSON (``forge train --json-out``), as text or markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]
GIB = 1 << 30


def load(path: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"forge compare: {path}: {exc}") from None
    if "summary" not in data:
        raise SystemExit(f"forge compare: {path}: not a forge train result (no 'summary')")
    return data


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a is not None and b else "—"


def rows(cold: dict[str, Any], warm: dict[str, Any]) -> list[Row]:
    """Metric, cold, warm, delta (×: cold/warm for times, warm/cold for throughput)."""
    c, w = cold["summary"], warm["summary"]
    out: list[Row] = [
        (
            "Wall time",
            f"{c['wall_ms']:.0f} ms",
            f"{w['wall_ms']:.0f} ms",
            _ratio(c["wall_ms"], w["wall_ms"]),
        ),
        (
            "Throughput (images)",
            f"{c['images_per_sec']:.1f}/sec",
            f"{w['images_per_sec']:.1f}/sec",
            _ratio(w["images_per_sec"], c["images_per_sec"]),
        ),
        (
            "Avg data load / step",
            f"{c['data_ms_per_step']:.2f} ms",
            f"{w['data_ms_per_step']:.2f} ms",
            _ratio(c["data_ms_per_step"], w["data_ms_per_step"]),
        ),
    ]
    cm, wm = cold.get("metrics") or {}, warm.get("metrics") or {}

    def rate(m: dict[str, Any]) -> str:
        return "N/A" if m.get("hit_rate") is None else f"{m['hit_rate'] * 100:.1f}%"

    def count(m: dict[str, Any], key: str) -> str:
        return "N/A" if key not in m else str(m[key])

    def gib(m: dict[str, Any]) -> str:
        return "N/A" if "bytes_fetched" not in m else f"{m['bytes_fetched'] / GIB:.2f} GB"

    out += [
        ("Cache hit rate", rate(cm), rate(wm), ""),
        ("Cache hits", count(cm, "hits"), count(wm, "hits"), ""),
        ("Cache misses", count(cm, "misses"), count(wm, "misses"), ""),
        ("Backend data fetched", gib(cm), gib(wm), ""),
    ]
    return out


HEADER: Row = ("Metric", "Cold", "Warm", "Δ")


def as_text(table: list[Row]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(4)]
    lines = []
    for n, r in enumerate([HEADER, *table]):
        lines.append(
            "  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)])
        )
        if n == 0:
            lines.append("  ".join("─" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def as_markdown(table: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "| --- | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    return "\n".join(lines)


def run(cold_path: str, warm_path: str, fmt: str = "text") -> str:
    table = rows(load(cold_path), load(warm_path))
    return as_markdown(table) if fmt == "markdown" else as_text(table)
