"""How warpdrive-ctl prints: aligned tables for people, CSV or JSON for scripts.

JSON fields are snake_case and carry raw numbers (bytes, seconds, ratios); tables format them
for reading (``4.0MiB``, ``93.1%``). CSV cells are plain values too: a record's nested mapping
becomes one column per entry (``bytes_by_backend.datasets-cac``), and any other mapping or list
in a cell is written as JSON — never as a Python repr."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from warpdrive.units import format_size

FORMATS = ("table", "csv", "json")


def human(column: str, value: Any) -> str:
    """A cell for a table: sizes, ratios and times made readable, by column name."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return "  ".join(f"{k}={human(k, v)}" for k, v in value.items())
    sizes = ("size", "soft", "hard")
    if ("bytes" in column or column.endswith(sizes)) and isinstance(value, (int, float)):
        return format_size(value)
    if column.endswith(("ratio", "utilization")) and isinstance(value, float):
        return f"{value * 100:.1f}%"
    if column.endswith(("_at", "last_access")) and isinstance(value, (int, float)):
        return when(value)
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def when(ts: float) -> str:
    if ts <= 0:
        return "never"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def emit(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: str,
    out: TextIO | None = None,
) -> None:
    """Print ``rows`` (dicts) with these ``columns`` in ``fmt``."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump([{c: r.get(c) for c in columns} for r in rows], out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([[_cell(r.get(c)) for c in columns] for r in rows])
    else:
        table = [list(columns)] + [[human(c, r.get(c)) for c in columns] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
        for row in table:
            out.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
            out.write("\n")


def _flatten(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(column, value)`` of a record, nested mappings as ``key.sub`` columns."""
    for key, value in record.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _cell(value: Any) -> Any:
    """A CSV cell: scalars as they are; a mapping or a list as JSON."""
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return value


def emit_record(record: Mapping[str, Any], fmt: str, out: TextIO | None = None) -> None:
    """Print one record: ``key  value`` lines, a one-row CSV, or a JSON object."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump(record, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        flat = dict(_flatten(record))
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(flat.keys())
        writer.writerow([_cell(v) for v in flat.values()])
        out.write(buf.getvalue())
    else:
        width = max((len(k) for k in record), default=0)
        for key, value in record.items():
            if isinstance(value, Mapping):
                out.write(f"{key}:\n")
                for sub, sv in value.items():
                    # {backend: bytes}: the unit is in the parent's name
                    column = key if "bytes" in key else sub
                    out.write(f"  {sub.ljust(width)}  {human(column, sv)}\n")
            else:
                out.write(f"{key.ljust(width)}  {human(key, value)}\n")
