#!/usr/bin/env python3
"""forge benchmark: warm training throughput through WarpDrive vs the same shards on local disk.

The generated set (even shards in one Azurite container, odd in another: two "regions") is
also written to two local directories. After one run that warms the cache, each round trains
``--steps`` steps three ways, in turn:

1. ``--reader posix`` over the local directories (the baseline: no WarpDrive at all);
2. ``--reader warpdrive``: in-process through the warm cache;
3. ``--reader posix`` over the FUSE mount of the same cache (``/wd/...`` paths).

Images/s is forge's own summary (images over wall time, loader start-up included), median of
``--runs`` rounds. Every warm run must report zero backend bytes, and all three must log the
same losses (the same samples in the same order). Prints a table; writes bench/out/forge.json.
Run: ``python bench/forge_warm.py [--shards 16] [--images 100] [--size 256] [--steps 300]
[--batch-size 64] [--workers 2] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import print_table, row, write_json
from forge.gen import generate
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import AZURITE_KEY, free_port, start_azurite

REGIONS = ("datasets-cac", "datasets-wus3")


def forge(args: argparse.Namespace, work: Path, *extra: str) -> dict[str, Any]:
    out = work / "run.json"
    subprocess.run(
        [sys.executable, "-m", "forge", "train", "--steps", str(args.steps), "--batch-size",
         str(args.batch_size), "--num-workers", str(args.workers), "--log-every", "100",
         "--json-out", str(out), *extra],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "WD_BENCH_KEY": AZURITE_KEY},
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> int:
    p = argparse.ArgumentParser(description="forge warm: WarpDrive vs local disk")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "forge.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-forge-bench-"))
    az = start_azurite()
    mount = None
    try:
        quiet = lambda _: None  # noqa: E731
        containers = {name: f"{name}-bench" for name in REGIONS}
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = az.connection_string()
        local = [str(work / "local" / name) for name in REGIONS]
        generate(local, args.shards, args.images, args.size, log=quiet)
        generate(
            [f"az://{c}/train" for c in containers.values()], args.shards, args.images,
            args.size, log=quiet,
        )  # fmt: skip
        port = free_port()
        config = work / "warpdrive.yaml"
        config.write_text(
            f"mount_point: {work / 'wd'}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
            f"cache: {{path: {work / 'cache'}, max_size: 8GB, block_size: 4MB}}\nbackends:\n"
            + "".join(
                f"  - name: {name}\n    type: azureblob\n"
                f"    config: {{account: devstoreaccount1, container: {c}, "
                f"endpoint: '{az.blob_endpoint()}'}}\n"
                "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
                for name, c in containers.items()
            )
        )
        in_cache = ["--reader", "warpdrive", "--warpdrive-config", str(config),
                    "--train-root-a", f"warpdrive://{REGIONS[0]}/train",
                    "--train-root-b", f"warpdrive://{REGIONS[1]}/train"]  # fmt: skip
        forge(args, work, *in_cache)  # the cold run: fills the cache
        os.environ["WD_BENCH_KEY"] = AZURITE_KEY
        mount = start_mount(config, work / "wd", port)
        ways = {
            "local disk": ["--train-root-a", local[0], "--train-root-b", local[1]],
            "in-process": in_cache,
            "FUSE mount": [
                "--train-root-a", str(work / "wd" / REGIONS[0] / "train"),
                "--train-root-b", str(work / "wd" / REGIONS[1] / "train"),
                "--metrics-url", f"http://127.0.0.1:{port}/metrics",
            ],
        }  # fmt: skip
        rates: dict[str, list[float]] = {way: [] for way in ways}
        losses: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for way, extra in ways.items():
                result = forge(args, work, *extra)
                metrics = result["metrics"]
                if metrics is not None and metrics["bytes_fetched"]:
                    raise SystemExit(f"{way}: a warm run fetched {metrics['bytes_fetched']} bytes")
                rates[way].append(result["summary"]["images_per_sec"])
                losses[way] = [entry["loss"] for entry in result["log"]]
        if len({tuple(v) for v in losses.values()}) != 1:
            raise SystemExit(f"the three ways trained on different data: {losses}")
    finally:
        if mount is not None:
            mount.cleanup()
        az.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(rates["local disk"])
    results = {f"{way} images/s": statistics.median(r) for way, r in rates.items()}
    print(
        f"\nforge warm: {args.shards} shards × {args.images} images ({args.size}px), "
        f"{args.steps} steps × {args.batch_size}, {args.workers} workers (images/s)"
    )
    print_table(
        [
            row(f"warm, {way}", results[f"{way} images/s"], base, "local disk", digits=1)
            for way in ("in-process", "FUSE mount")
        ],
        ("case", "images/s", "baseline images/s", "ratio"),
    )
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
