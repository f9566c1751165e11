#!/usr/bin/env python3
"""warpdrive_torch benchmark: ShardDataset against webdataset, warm and cold.

1. Warm: the same WebDataset shards on local disk, read by ``webdataset.WebDataset`` straight
   from the files (the baseline) and by ``ShardDataset`` through a warm cache (a local backend
   over the same directory, every block already cached). No shuffle, no decode: the loaders
   alone, in-process and with a DataLoader of 2 workers. Samples/s, median of ``--runs``,
   the two alternating; every run checks that both saw every sample with the same bytes.
2. Cold, over an emulated WAN link (Azurite behind the user-space WAN proxy, default 30 ms /
   200 Mbit/s, the nearer demo region), from an empty cache each time: one shuffled epoch with
   a simulated training step per sample (``--step-ms``), without hints (``prefetch_shards=0``)
   and with them, in-process and with a DataLoader of ``--cold-workers`` workers. Wall seconds,
   the reads that had to wait for the backend (misses), and the bytes fetched over the bytes of
   the shards (above 1: some block was fetched twice, or read ahead and never used). The same
   for ``webdataset.WebDataset`` over ``warpdrive://`` (no shuffle), with webdataset's own
   ``split_by_worker`` (no hints) and with ``warpdrive_torch.wds.split_by_worker`` (2 ahead).

Prints tables and writes bench/out/torch_loader.json.
Run: ``python bench/torch_loader.py [--shards 16] [--samples 200] [--kb 64] [--runs 3]
[--cold-shards 12] [--rtt 30ms] [--bandwidth 200mbit] [--step-ms 2] [--cold-workers 2]``.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import webdataset
from torch.utils.data import DataLoader

from bench.report import print_table, row, write_json
from warpdrive import WarpDrive, parse_config
from warpdrive.admin import cache_counters
from warpdrive.testing.servers import AZURITE_KEY, start_azurite, start_wan_proxy
from warpdrive.testing.wanproxy import parse_bandwidth
from warpdrive_torch import ShardDataset, register_webdataset, wds


def make_shard(index: int, samples: int, kb: int) -> bytes:
    rnd = random.Random(index)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(samples):
            size = rnd.randrange(kb * 512, kb * 1536)  # mean ``kb`` KiB, like JPEGs of a set
            for ext, data in (("jpg", rnd.randbytes(size)), ("cls", b"%d" % rnd.randrange(10))):
                info = tarfile.TarInfo(f"{index:06d}{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def digest(samples: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(samples, bytes of their jpg fields): both loaders must agree."""
    n = total = 0
    for sample in samples:
        n += 1
        total += len(sample["jpg"])
    return n, total


def flat(loader: Iterable[list[dict[str, Any]]]) -> Iterable[dict[str, Any]]:
    for batch in loader:
        yield from batch


def timed(fn: Callable[[], tuple[int, int]]) -> tuple[float, tuple[int, int]]:
    started = time.perf_counter()
    seen = fn()
    return seen[0] / (time.perf_counter() - started), seen


def warm_bench(args: argparse.Namespace, work: Path) -> dict[str, float]:
    source = work / "source" / "train"
    source.mkdir(parents=True)
    for i in range(args.shards):
        (source / f"shard-{i:06d}.tar").write_bytes(make_shard(i, args.samples, args.kb))
    paths = [str(p) for p in sorted(source.iterdir())]
    config = parse_config(
        f"cache: {{path: {work / 'cache'}, max_size: 4GB, block_size: 4MB}}\n"
        f"backends:\n  - {{name: ds, type: local, config: {{root: {work / 'source'}}}}}\n"
    )
    wd = WarpDrive(config)
    urls = f"warpdrive://ds/train/shard-{{000000..{args.shards - 1:06d}}}.tar"
    expected = digest(ShardDataset(urls, wd=wd, shuffle=False))  # the cold pass warms the cache

    def ours(workers: int) -> Callable[[], tuple[int, int]]:
        ds = ShardDataset(urls, wd=wd, shuffle=False, prefetch_shards=0)
        if not workers:
            return lambda: digest(ds)
        loader = DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=list)
        return lambda: digest(flat(loader))

    def theirs(workers: int) -> Callable[[], tuple[int, int]]:
        ds = webdataset.WebDataset(paths, shardshuffle=False, empty_check=False)
        if not workers:
            return lambda: digest(ds)
        loader = DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=list)
        return lambda: digest(flat(loader))

    results: dict[str, float] = {}
    rows = []
    for workers, label in ((0, "in-process"), (2, "DataLoader, 2 workers")):
        mine, base = [], []
        for _ in range(args.runs):
            for runner, out in ((theirs(workers), base), (ours(workers), mine)):
                rate, seen = timed(runner)
                if seen != expected:
                    raise SystemExit(f"{label}: saw {seen}, expected {expected}")
                out.append(rate)
        results[f"warm {label} samples/s"] = statistics.median(mine)
        results[f"webdataset local {label} samples/s"] = statistics.median(base)
        rows.append(
            row(
                f"warm, {label}",
                statistics.median(mine),
                statistics.median(base),
                "webdataset, local disk",
            )
        )
    print(f"\nWarm: {args.shards} shards × {args.samples} samples, mean {args.kb} KiB (samples/s)")
    print_table(rows, ("case", "samples/s", "baseline samples/s", "ratio"))
    wd.close()
    return results


def cold_bench(args: argparse.Namespace, work: Path) -> dict[str, float]:
    from azure.storage.blob import BlobServiceClient

    az = start_azurite()
    proxy = start_wan_proxy(az.port, args.rtt, args.bandwidth)
    results: dict[str, float] = {}
    lines: list[tuple[str, float, float]] = []
    total = 0
    try:
        service = BlobServiceClient.from_connection_string(az.connection_string())
        container = service.create_container("datasets")
        for i in range(args.cold_shards):
            data = make_shard(i, args.samples, args.kb)
            container.upload_blob(f"train/shard-{i:06d}.tar", data)
            total += len(data)
        os.environ["WD_BENCH_KEY"] = AZURITE_KEY
        endpoint = f"http://127.0.0.1:{proxy.port}/devstoreaccount1"
        urls = f"warpdrive://ds/train/shard-{{000000..{args.cold_shards - 1:06d}}}.tar"
        cases = [
            (loader, w, s, k)
            for loader in ("ShardDataset", "webdataset")
            for w in (0, args.cold_workers)
            for s in (0.0, args.step_ms)
            for k in ((0, 2, 4) if loader == "ShardDataset" else (0, 2))
        ]
        shard_urls = [f"warpdrive://ds/train/shard-{i:06d}.tar" for i in range(args.cold_shards)]
        for loader, workers, step_ms, k in cases:
            walls, misses, fetched = [], [], []
            for _ in range(args.runs):
                shutil.rmtree(work / "cold-cache", ignore_errors=True)
                wd = WarpDrive(
                    parse_config(
                        f"cache: {{path: {work / 'cold-cache'}, max_size: 4GB, "
                        "block_size: 4MB}\nbackends:\n  - name: ds\n    type: azureblob\n"
                        "    config: {account: devstoreaccount1, container: datasets, "
                        f"endpoint: '{endpoint}'}}\n"
                        "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
                    )
                )
                if loader == "ShardDataset":
                    ds: Any = ShardDataset(urls, wd=wd, seed=1, prefetch_shards=k)
                else:
                    register_webdataset(wd)
                    split = wds.split_by_worker if k else webdataset.split_by_worker
                    ds = webdataset.WebDataset(
                        shard_urls, shardshuffle=False, nodesplitter=None, workersplitter=split
                    )
                started = time.perf_counter()
                n = 0
                samples = DataLoader(ds, batch_size=None, num_workers=workers) if workers else ds
                for _sample in samples:
                    n += 1
                    if step_ms:
                        time.sleep(step_ms / 1000)
                walls.append(time.perf_counter() - started)
                wd.flush()  # the in-process opener's counters (workers flush as they exit)
                counters = cache_counters(wd.config)
                misses.append(counters.get("misses", 0))
                fetched.append(counters.get("bytes_fetched", 0) / total)
                wd.close()
                if n != args.cold_shards * args.samples:
                    raise SystemExit(f"cold epoch saw {n} samples")
            where = f"{workers} workers" if workers else "in-process"
            hints = f"prefetch_shards={k}" if loader == "ShardDataset" else f"{k} ahead"
            label = f"{loader}, {where}, step {step_ms:g} ms, {hints}"
            results[f"cold epoch seconds, {label}"] = statistics.median(walls)
            results[f"cold epoch misses, {label}"] = statistics.median(misses)
            results[f"cold epoch fetched / source bytes, {label}"] = max(fetched)
            lines.append((label, statistics.median(walls), statistics.median(misses), max(fetched)))
    finally:
        proxy.stop()
        az.stop()
    bound = total / parse_bandwidth(args.bandwidth)
    steps = args.cold_shards * args.samples * args.step_ms / 1000
    results["cold link bound seconds"] = bound
    print(
        f"\nCold epoch over {args.rtt} / {args.bandwidth}: {args.cold_shards} shards, "
        f"{total / 2**20:.0f} MiB; the link needs {bound:.2f} s for the bytes; "
        f"a {args.step_ms:g} ms step per sample is {steps:.1f} s"
    )
    print_table(
        [
            (label, f"{wall:.2f} s", f"{misses:.0f}", f"{fetched:.3f}", f"{bound / wall:.2f}x")
            for label, wall, misses, fetched in lines
        ],
        ("case", "epoch wall", "reads that waited", "fetched / source", "link bound / wall"),
    )
    return results


def main() -> int:
    p = argparse.ArgumentParser(description="ShardDataset vs webdataset, warm and cold")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--kb", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cold-shards", type=int, default=12)
    p.add_argument("--rtt", default="30ms")
    p.add_argument("--bandwidth", default="200mbit")
    p.add_argument("--step-ms", type=float, default=2.0)
    p.add_argument("--cold-workers", type=int, default=2, help="DataLoader workers, cold cases")
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--skip-warm", action="store_true")
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "torch_loader.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-torch-bench-"))
    try:
        results = {} if args.skip_warm else warm_bench(args, work)
        if not args.skip_cold:
            results.update(cold_bench(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
