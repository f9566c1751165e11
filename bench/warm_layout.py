#!/usr/bin/env python3
"""Warm reads against local files, on shard-sized files and on one large object.

1. In-process: every byte of 24 WebDataset shards of ~11.4 MB, and of one 1 GiB object, read
   with ``readinto`` of 1 MiB on unbuffered handles from a warm cache vs the same bytes from
   local files, page cache hot and dropped (``/proc/sys/vm/drop_caches`` before each pass).
   Passes alternate between the two, medians of ``--runs``.
2. Loaders, warm, DataLoader with 2 workers: ``ShardDataset`` and ``webdataset.WebDataset``
   over ``warpdrive://`` vs webdataset on the local files (samples/s), and the time from
   ``iter(loader)`` to the first batch (the workers' start-up: imports, backend clients, cache).

Prints a table and writes bench/out/warm_layout.json. Run: ``python bench/warm_layout.py
[--work DIR] [--runs 3] [--big-mib 1024]``. Needs root (drop_caches).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import webdataset
from torch.utils.data import DataLoader

from bench.data import drop_caches, make_shard
from bench.report import print_table, row, write_json
from warpdrive import WarpDrive, parse_config
from warpdrive_torch import ShardDataset, register_webdataset

MIB = 1 << 20
SHARDS = 24


def read_all(paths: list[str], opener: Callable[[str], Any]) -> int:
    buf = bytearray(MIB)
    total = 0
    for path in paths:
        with opener(path) as f:
            while n := f.readinto(buf):
                total += n
    return total


def paired(
    local: Callable[[], int], ours: Callable[[], int], runs: int, drop: bool
) -> tuple[float, float]:
    """Median MB/s of (local, ours), passes interleaved. Hot: after one drop, both read once
    first, so their pages came into memory the same way (pages written by a process sit in
    larger folios than pages read in, which a hot read copies faster: 1135 vs 1733 µs of CPU
    per 11.4 MB file here, a difference of history, not of read path)."""
    if not drop:
        drop_caches()
        local(), ours()
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in ((local, rates[0]), (ours, rates[1])):
            if drop:
                drop_caches()
            started = time.perf_counter()
            nbytes = fn()
            out.append(nbytes / (time.perf_counter() - started) / 1e6)
    return statistics.median(rates[0]), statistics.median(rates[1])


def digest(batches: Iterable[list[dict[str, Any]]]) -> tuple[int, int, float]:
    """(samples, jpg bytes, seconds to the first batch) of one pass over a loader."""
    started = time.perf_counter()
    first = 0.0
    n = total = 0
    for batch in batches:
        if not first:
            first = time.perf_counter() - started
        for sample in batch:
            n += 1
            total += len(sample["jpg"])
    return n, total, first


AZURE_SHARDS = 8


def first_batch_child(kind: str, config: str, urls: list[str]) -> None:
    """In a fresh process (imports done): seconds from making the dataset to the first batch of
    a 2-worker DataLoader, printed."""
    started = time.perf_counter()
    if kind == "local":
        ds: Any = webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)
    elif kind == "shard":
        ds = ShardDataset(urls, wd=config, shuffle=False, prefetch_shards=0)
    else:
        register_webdataset(config)
        ds = webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)
    loader = DataLoader(ds, batch_size=32, num_workers=2, collate_fn=list)
    next(iter(loader))
    print(time.perf_counter() - started)


def bench_first_batch_azure(work: Path, shards: list[str], runs: int) -> dict[str, float]:
    """Time to the first warm batch with the shards behind an Azure backend (Azurite): the
    DataLoader workers of a fresh process start cold on imports and clients."""
    from azure.storage.blob import BlobServiceClient

    from warpdrive.testing.servers import AZURITE_KEY, start_azurite

    shutil.rmtree(work / "azure-cache", ignore_errors=True)
    az = start_azurite()
    try:
        container = BlobServiceClient.from_connection_string(
            az.connection_string()
        ).create_container("wds")
        for path in shards[:AZURE_SHARDS]:
            container.upload_blob(f"train/{Path(path).name}", Path(path).read_bytes())
        config = work / "azure.yaml"
        config.write_text(
            f"cache: {{path: {work / 'azure-cache'}, max_size: 1GB, block_size: 4MB}}\n"
            "backends:\n  - name: az\n    type: azureblob\n"
            "    config: {account: devstoreaccount1, container: wds, "
            f"endpoint: '{az.blob_endpoint()}'}}\n"
            "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
        )
        env = {**os.environ, "WD_BENCH_KEY": AZURITE_KEY}
        os.environ["WD_BENCH_KEY"] = AZURITE_KEY
        urls = [f"warpdrive://az/train/{Path(p).name}" for p in shards[:AZURE_SHARDS]]
        with WarpDrive(str(config)) as wd:  # warm
            for url in urls:
                wd.read(url)
        kinds = {"local": shards[:AZURE_SHARDS], "shard": urls, "wds": urls}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(runs):
            for kind, args in kinds.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--first-batch", kind, str(config), *args],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                times[kind].append(float(out.stdout.strip().splitlines()[-1]))
    finally:
        az.stop()
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--first-batch":
        first_batch_child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    p = argparse.ArgumentParser(description="warm reads vs local files")
    p.add_argument("--work", default="/var/tmp/wd-bench-warm")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "warm_layout.json"))
    args = p.parse_args()
    work = Path(args.work)
    source = work / "source"
    if not (source / "big.bin").exists():
        shutil.rmtree(work, ignore_errors=True)
        (source / "train").mkdir(parents=True)
        for i in range(SHARDS):
            (source / "train" / f"shard-{i:06d}.tar").write_bytes(make_shard(i))
        with open(source / "big.bin", "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(MIB))
    shutil.rmtree(work / "cache", ignore_errors=True)
    config = parse_config(
        f"cache: {{path: {work / 'cache'}, max_size: {args.big_mib + 1024}MB, block_size: 4MB}}\n"
        f"backends:\n  - {{name: ds, type: local, config: {{root: {source}}}}}\n",
        env={},
    )
    shards = sorted(str(p) for p in (source / "train").iterdir())
    sets = {
        "24 shards of 11.4 MB": shards,
        f"one {args.big_mib} MiB object": [str(source / "big.bin")],
    }
    results: dict[str, float] = {}
    rows = []
    with WarpDrive(config) as wd:
        for local_paths in sets.values():  # cold pass fills the cache
            for path in local_paths:
                wd.read("/ds/" + os.path.relpath(path, source))
        wd.flush()
        for label, local_paths in sets.items():
            ours = ["/ds/" + os.path.relpath(p, source) for p in local_paths]
            for drop in (False, True):
                local_rate, our_rate = paired(
                    partial(read_all, local_paths, io.FileIO),
                    partial(read_all, ours, partial(wd.open, buffering=0)),
                    args.runs,
                    drop,
                )
                case = f"in-process, {label}, page cache {'dropped' if drop else 'hot'}"
                results[f"{case}: local MB/s"] = local_rate
                results[f"{case}: warpdrive MB/s"] = our_rate
                rows.append(row(case, our_rate, local_rate, "local files"))
        print("\nWarm in-process reads (MB/s)")
        print_table(rows, ("case", "WarpDrive MB/s", "local MB/s", "ratio"))

        register_webdataset(config)
        urls = f"warpdrive://ds/train/shard-{{000000..{SHARDS - 1:06d}}}.tar"
        wds_urls = [f"warpdrive://ds/train/shard-{i:06d}.tar" for i in range(SHARDS)]

        def loader(ds: Any) -> DataLoader[Any]:
            return DataLoader(ds, batch_size=32, num_workers=2, collate_fn=list)

        makers: dict[str, Callable[[], DataLoader[Any]]] = {
            "webdataset, local files": lambda: loader(
                webdataset.WebDataset(shards, shardshuffle=False, empty_check=False)
            ),
            "ShardDataset": lambda: loader(
                ShardDataset(urls, wd=wd, shuffle=False, prefetch_shards=0)
            ),
            "webdataset over warpdrive://": lambda: loader(
                webdataset.WebDataset(wds_urls, shardshuffle=False, empty_check=False)
            ),
        }
        rates: dict[str, list[float]] = {k: [] for k in makers}
        firsts: dict[str, list[float]] = {k: [] for k in makers}
        expected = None
        for _ in range(args.runs):
            for name, make in makers.items():
                dl = make()
                started = time.perf_counter()
                n, total, first = digest(dl)
                elapsed = time.perf_counter() - started
                if expected is None:
                    expected = (n, total)
                elif (n, total) != expected:
                    raise SystemExit(f"{name}: saw {(n, total)}, expected {expected}")
                rates[name].append(n / elapsed)
                firsts[name].append(first)
        base = "webdataset, local files"
        rows = []
        for name in makers:
            rate, first = statistics.median(rates[name]), statistics.median(firsts[name])
            results[f"loader warm 2 workers, {name}: samples/s"] = rate
            results[f"loader warm 2 workers, {name}: first batch s"] = first
            rows.append(row(f"{name}, samples/s", rate, statistics.median(rates[base]), base))
            rows.append(
                row(f"{name}, first batch s", first, statistics.median(firsts[base]), base, 2)
            )
        print("\nWarm loaders, DataLoader with 2 workers (ratio: ours / baseline)")
        print_table(rows, ("case", "value", "baseline", "ratio"))
    azure_first = bench_first_batch_azure(work, shards, args.runs)
    names = {"shard": "ShardDataset", "wds": "webdataset over warpdrive://"}
    rows = []
    for kind, name in names.items():
        results[f"first batch, Azure backend, {name}: s"] = azure_first[kind]
        rows.append(
            row(name, azure_first[kind], azure_first["local"], "webdataset, local files", 2)
        )
    results["first batch, webdataset on local files: s"] = azure_first["local"]
    print("\nWarm, Azure backend (Azurite): seconds from making the dataset to the first batch")
    print_table(rows, ("case", "s", "baseline s", "ratio"))
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
