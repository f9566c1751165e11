"""Figures the reliability tests gather for docs/reliability.md: with ``WD_RELIABILITY_REPORT``
set to a file, each test adds its counts to the JSON object in it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add(**counts: float) -> None:
    """Add ``counts`` to what the report holds (counts summed over tests and runs)."""
    _update(lambda data: {key: data.get(key, 0) + value for key, value in counts.items()})


def put(**figures: float | list[float]) -> None:
    """Set ``figures`` (a median, a maximum, a series: values that do not sum), replacing
    earlier ones."""
    _update(lambda data: figures)


def _update(change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    path = os.environ.get("WD_RELIABILITY_REPORT")
    if not path:
        return
    data = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    data.update(change(data))
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))
