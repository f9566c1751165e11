"""Figures the reliability tests gather for docs/reliability.md: with ``WD_RELIABILITY_REPORT``
set to a file, each test adds its counts to the JSON object in it."""

from __future__ import annotations

import json
import os
from pathlib import Path


def add(**counts: float) -> None:
    path = os.environ.get("WD_RELIABILITY_REPORT")
    if not path:
        return
    data = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    for key, value in counts.items():
        data[key] = data.get(key, 0) + value
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))
