#!/usr/bin/env python3
"""Pack COCO train2017 (or any directory of JPEGs) into WebDataset shards for the demo.

``shard-NNNNNN.tar`` holds ``<image id>.jpg`` (the file's bytes, unchanged) and
``<image id>.cls`` (the category id of the image's first annotation in ``--annotations``,
0 when it has none or no annotations file is given), ``--per-shard`` images each (592 fills a
shard of roughly 95 MB with COCO's JPEGs). Shard ``i`` goes to ``--out`` number ``i % N``: with
two, even shards to the first, odd to the second.

``python infra/pack_coco.py --images train2017 [--annotations instances_train2017.json]
--out region-a --out region-b [--per-shard 592] [--limit N]``
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path


def labels_from(annotations: Path | None) -> dict[int, int]:
    if annotations is None:
        return {}
    data = json.loads(annotations.read_text())
    first: dict[int, int] = {}
    for ann in data.get("annotations", []):
        first.setdefault(int(ann["image_id"]), int(ann["category_id"]))
    return first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--annotations", type=Path)
    p.add_argument("--out", action="append", required=True, type=Path)
    p.add_argument("--per-shard", type=int, default=592)
    p.add_argument("--limit", type=int, default=0, help="pack only the first N images")
    args = p.parse_args(argv)
    if args.per_shard < 1:
        raise SystemExit("pack_coco: --per-shard must be at least 1")
    images = sorted(args.images.glob("*.jpg"))
    if args.limit:
        images = images[: args.limit]
    if not images:
        raise SystemExit(f"pack_coco: no .jpg files in {args.images}")
    labels = labels_from(args.annotations)
    for out in args.out:
        out.mkdir(parents=True, exist_ok=True)
    shards = 0
    for start in range(0, len(images), args.per_shard):
        index = start // args.per_shard
        target = args.out[index % len(args.out)] / f"shard-{index:06d}.tar"
        with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tf:
            for path in images[start : start + args.per_shard]:
                image_id = int(path.stem) if path.stem.isdigit() else start
                key = f"{image_id:012d}" if path.stem.isdigit() else path.stem
                for ext, data in (
                    ("jpg", path.read_bytes()),
                    ("cls", str(labels.get(image_id, 0)).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
                    tf.addfile(info, io.BytesIO(data))
        shards += 1
    print(f"packed {len(images)} images into {shards} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
