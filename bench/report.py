"""What every benchmark here does at the end: a table of ratios on stdout, the figures as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HEADER = ("case", "MB/s", "baseline MB/s", "ratio")


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> None:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def row(
    label: str, ours: float, base: float, base_name: str, digits: int = 0
) -> tuple[str, str, str, str]:
    return (
        label,
        f"{ours:,.{digits}f}",
        f"{base:,.{digits}f} ({base_name})",
        f"{ours / base:.2f}x",
    )


def write_json(path: str, args: Any, results: dict[str, float]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
