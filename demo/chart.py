#!/usr/bin/env python3
"""A PNG chart of images/s over training steps, cold vs warm cache, from two ``forge train
--json-out`` files: drawn with matplotlib, sized for a 16:9 slide (1600 × 900 px).

The y axis starts at zero (a throughput compared by eye must not be cut) and has round ticks
and a label; the x axis spans the logged steps (the first log line is at ``--log-every``, not
0); each line ends in its last value, so the chart reads without the legend.

``python demo/chart.py COLD.json WARM.json OUT.png``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 5.625, 160  # 1600 × 900 px
STYLE = {  # name → (legend label, colour): Tableau's blue and orange, told apart in greyscale too
    "cold": ("cold cache (every block from a region)", "#1f77b4"),
    "warm": ("warm cache (WarpDrive's disk cache)", "#ff7f0e"),
}
FONT = 13

Series = list[tuple[float, float]]


def series(path: str) -> Series:
    data = json.loads(Path(path).read_text())
    return [(float(e["step"]), float(e["images_per_sec"])) for e in data["log"]]


def figure(runs: dict[str, Series]) -> Figure:
    """The chart as a matplotlib Figure (not attached to pyplot: no global state)."""
    points = [p for s in runs.values() for p in s]
    if not points:
        raise SystemExit("chart: no logged steps in either run (is --log-every below --steps?)")
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, pts in runs.items():
        if not pts:
            continue
        label, colour = STYLE.get(name, (name, "#444444"))
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        ax.plot(xs, ys, color=colour, linewidth=2.5, marker="o", markersize=6, label=label)
        ax.annotate(
            f"{ys[-1]:,.0f}",
            (xs[-1], ys[-1]),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=FONT,
            fontweight="bold",
            color=colour,
        )
    first, last = min(x for x, _ in points), max(x for x, _ in points)
    pad = (last - first) * 0.04 or 1.0
    ax.set_xlim(first - pad, last + pad * 3)  # room on the right for the end labels
    ax.set_ylim(0, max(y for _, y in points) * 1.12 or 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("training step", fontsize=FONT)
    ax.set_ylabel("throughput (images / s)", fontsize=FONT)
    ax.set_title("Training throughput: cold vs warm cache", fontsize=FONT + 5, loc="left", pad=40)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    # Between the title and the plot, where no data can be under it.
    ax.legend(
        fontsize=FONT - 1,
        frameon=False,
        loc="lower left",
        bbox_to_anchor=(0, 1),
        ncols=2,
        borderaxespad=0.3,
        handlelength=1.6,
    )
    return fig


def draw(runs: dict[str, Series], out: str) -> None:
    fig = figure(runs)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, facecolor="white")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    draw({"cold": series(argv[0]), "warm": series(argv[1])}, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
