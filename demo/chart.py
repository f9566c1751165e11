#!/usr/bin/env python3
"""A PNG chart of images/s over steps, cold vs warm, from two ``forge train --json-out`` files
(drawn with Pillow, already a dependency: no plotting library needed).

``python demo/chart.py COLD.json WARM.json OUT.png``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

W, H = 900, 480
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 50, 60
COLORS = {"cold": (52, 101, 164), "warm": (204, 80, 0)}


def series(path: str) -> list[tuple[float, float]]:
    data = json.loads(Path(path).read_text())
    return [(float(e["step"]), float(e["images_per_sec"])) for e in data["log"]]


def draw(runs: dict[str, list[tuple[float, float]]], out: str) -> None:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    points = [p for s in runs.values() for p in s]
    if not points:
        raise SystemExit("chart: no logged steps in either run (is --log-every below --steps?)")
    max_x = max(x for x, _ in points)
    max_y = max(y for _, y in points) * 1.1 or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            LEFT + (W - LEFT - RIGHT) * x / max_x,
            H - BOTTOM - (H - TOP - BOTTOM) * y / max_y,
        )

    d.text((LEFT, 15), "forge: images/s over training steps, cold vs warm cache", fill="black")
    d.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - RIGHT, H - BOTTOM)], fill="black", width=2)
    for i in range(6):
        y = max_y * i / 5
        _, py = at(0, y)
        d.line([(LEFT - 5, py), (W - RIGHT, py)], fill=(225, 225, 225))
        d.text((8, py - 6), f"{y:,.0f}", fill="black")
    for i in range(6):
        x = max_x * i / 5
        px, _ = at(x, 0)
        d.text((px - 10, H - BOTTOM + 8), f"{x:,.0f}", fill="black")
    d.text((W // 2 - 20, H - 25), "step", fill="black")
    for n, (name, pts) in enumerate(runs.items()):
        color = COLORS.get(name, (0, 0, 0))
        if len(pts) > 1:
            d.line([at(x, y) for x, y in pts], fill=color, width=3)
        for x, y in pts:
            px, py = at(x, y)
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        lx = W - RIGHT - 150
        d.line([(lx, TOP + 10 + 18 * n), (lx + 30, TOP + 10 + 18 * n)], fill=color, width=3)
        d.text((lx + 38, TOP + 4 + 18 * n), name, fill="black")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    draw({"cold": series(argv[0]), "warm": series(argv[1])}, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
