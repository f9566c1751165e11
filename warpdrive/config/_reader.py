"""Walk a parsed YAML mapping key by key, so every error can name its key path.

A :class:`Section` hands out values with a parser each, remembers which keys were asked for, and
on :meth:`Section.finish` refuses the keys nobody asked for, with a "did you mean" when one is
close. ``${VAR}`` and ``${VAR:-default}`` in string values are expanded from the environment given
to the loader; ``$$`` is a literal dollar.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from warpdrive.errors import ConfigError
from warpdrive.units import parse_duration, parse_size

T = TypeVar("T")

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is close to one of ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(choices: Iterable[str]) -> str:
    return "expected one of: " + ", ".join(choices)


def expand_env(value: str, key_path: str, env: Mapping[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            key_path,
            f"environment variable '{name}' is not set (write ${{{name}:-default}} for a fallback)",
        )

    return _ENV_REF.sub(repl, value)


class Section:
    """One mapping of the config, at ``path`` (``""`` for the top, ``"backends[0].auth"`` below)."""

    def __init__(self, data: object, path: str, env: Mapping[str, str]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(path or "config", f"expected a mapping, got {_kind(data)}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(path or "config", f"keys must be strings, got {key!r}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.env = env
        self._used: set[str] = set()
        # None: an unset ${VAR} is an error at once. A list (set by the caller): each such
        # error is appended as (key path, message) and the value kept unexpanded, for the
        # caller to raise when the value is used (a backend's credentials, at first use).
        self.unset: list[tuple[str, str]] | None = None

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self._used.add(key)
        value = self.data.get(key)
        if isinstance(value, str):
            try:
                value = expand_env(value, self.key_path(key), self.env)
            except ConfigError as exc:
                if self.unset is None:
                    raise
                self.unset.append((exc.key_path, exc.message))
        return value

    def get(self, key: str, parse: Callable[[Any], T], default: T) -> T:
        """``parse(value)`` of ``key``, or ``default`` when it is absent or null."""
        value = self.raw(key)
        return default if value is None else self._parse(key, value, parse)

    def require(self, key: str, parse: Callable[[Any], T], what: str = "a value") -> T:
        value = self.raw(key)
        if value is None:
            raise ConfigError(self.key_path(key), f"required: {what}")
        return self._parse(key, value, parse)

    def _parse(self, key: str, value: Any, parse: Callable[[Any], T]) -> T:
        try:
            return parse(value)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(self.key_path(key), str(exc)) from None

    def section(self, key: str) -> Section:
        self._used.add(key)
        return Section(self.data.get(key), self.key_path(key), self.env)

    def finish(self, allowed: Iterable[str] | None = None) -> None:
        """Refuse keys nobody read (``allowed``: the names to suggest from)."""
        for key in self.data:
            if key not in self._used:
                choices = sorted(allowed) if allowed is not None else sorted(self._used)
                raise ConfigError(
                    self.key_path(key), f"unknown key '{key}'{did_you_mean(key, choices)}"
                )


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


# Parsers: each takes the raw YAML value and raises ValueError with a message naming the value.


def as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return str(value)


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {_kind(value)}")


def as_int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range (expected {lo}..{hi})")
        return value

    return parse


def as_fraction(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"expected a number between 0 and 1, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"expected a number in (0, 1], got {value!r}")
    return float(value)


def as_size(value: Any) -> int:
    return parse_size(value)


def as_duration(value: Any) -> float:
    return parse_duration(value)


def as_choice(choices: Iterable[str], what: str = "value") -> Callable[[Any], str]:
    options = list(choices)

    def parse(value: Any) -> str:
        text = as_str(value)
        if text not in options:
            raise ValueError(
                f"unknown {what} '{text}'{did_you_mean(text, options)} ({one_of(options)})"
            )
        return text

    return parse
