#!/usr/bin/env python3
"""Read-path benchmark: WarpDrive against baselines measured in the same run.

1. Warm: ~1 GiB read sequentially in-process through a warm cache vs the same bytes read from
   local files, with the same calls (``readinto`` of 1 MiB into one buffer on unbuffered
   handles, and ``read(1 MiB)`` returning new bytes on default buffered ones). Measured with
   the page cache hot (memory-bound: the per-read checksum
   shows) and with it dropped before each pass (``posix_fadvise(DONTNEED)`` on every source and
   cache file: disk-bound, as a dataset larger than RAM is).
2. Cold: large objects in Azurite behind a WAN emulator (default 80 ms RTT, 800 Mbit/s, 4 MiB
   TCP-like window per connection) read sequentially through an empty cache vs a plain sequential
   fsspec (adlfs) read of the same objects through the same link: one object, then four read one
   after another (as is, and with a prefetch hint for the next object, as a loader gives).

Prints a table and writes bench/out/read_path.json. Run: ``make bench`` or
``python bench/read_path.py [--warm-mib 1024] [--cold-mib 512] [--rtt 80ms] [--bandwidth 800mbit]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import print_table, row, write_json
from warpdrive import WarpDrive, parse_config
from warpdrive.testing.servers import AZURITE_KEY, start_azurite, start_wan_proxy
from warpdrive.testing.wanproxy import parse_bandwidth

MIB = 1 << 20
READ = MIB


def drop_page_cache(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def timed_pass(paths: list[str], opener: Callable[[str], object], mode: str) -> float:
    """Seconds to read every path sequentially with ``mode``: readinto | read."""
    buf = bytearray(READ)
    started = time.perf_counter()
    for path in paths:
        with opener(path) as f:  # type: ignore[attr-defined]
            if mode == "readinto":
                while f.readinto(buf):
                    pass
            else:
                while f.read(READ):
                    pass
    return time.perf_counter() - started


def bench_warm(total_mib: int, work: Path, runs: int) -> dict[str, float]:
    src, cache = work / "src", work / "cache"
    src.mkdir()
    nfiles = 8
    size = total_mib * MIB // nfiles
    for i in range(nfiles):
        (src / f"shard-{i:03d}.bin").write_bytes(os.urandom(size))
    cfg = parse_config(
        f"cache: {{path: {cache}, max_size: {2 * total_mib + 256}MB, block_size: 4MB}}\n"
        f"backends: [{{name: local, type: local, config: {{root: {src}}}}}]",
        env={},
    )
    local_paths = sorted(str(p) for p in src.iterdir())
    wd_paths = [f"/local/{Path(p).name}" for p in local_paths]
    results: dict[str, float] = {}
    with WarpDrive(cfg) as wd:
        for p in wd_paths:  # fill the cache
            wd.read(p)
        for drop in (False, True):
            for mode in ("readinto", "read"):
                local_t, wd_t = [], []
                for _ in range(runs):
                    if drop:
                        drop_page_cache(src, cache)
                    # readinto: raw, unbuffered handles; read: the default buffered open()
                    raw = 0 if mode == "readinto" else -1
                    local_t.append(
                        timed_pass(local_paths, partial(open, mode="rb", buffering=raw), mode)
                    )
                    if drop:
                        drop_page_cache(src, cache)
                    wd_t.append(timed_pass(wd_paths, partial(wd.open, buffering=raw), mode))
                total = nfiles * size
                label = f"warm {'disk' if drop else 'memory'} {mode}"
                results[f"{label} local MB/s"] = total / statistics.median(local_t) / 1e6
                results[f"{label} warpdrive MB/s"] = total / statistics.median(wd_t) / 1e6
    return results


@contextlib.contextmanager
def emulated_region(rtt: str, bandwidth: str) -> Iterator[tuple[str, object]]:
    az = start_azurite()
    proxy = start_wan_proxy(az.port, rtt=rtt, bandwidth=bandwidth)
    try:
        yield az.connection_string(), (az, proxy)
    finally:
        proxy.stop()
        az.stop()


def _read_sequentially(
    wd: WarpDrive, keys: list[str], digests: dict[str, str], hint: bool
) -> float:
    """Seconds to read ``keys`` one after another (optionally hinting the next one), verified."""
    started = time.perf_counter()
    for i, key in enumerate(keys):
        if hint and i + 1 < len(keys):
            wd.prefetch([f"/far/{keys[i + 1]}"])  # what a loader that knows its order does
        h = hashlib.sha256()
        with wd.open(f"/far/{key}") as f:
            while chunk := f.read(READ):
                h.update(chunk)
        if h.hexdigest() != digests[key]:
            raise SystemExit(f"bytes differ for {key}")
    return time.perf_counter() - started


def bench_cold(total_mib: int, work: Path, rtt: str, bandwidth: str) -> dict[str, float]:
    from adlfs import AzureBlobFileSystem
    from azure.storage.blob import BlobServiceClient

    results: dict[str, float] = {}
    sets = {
        "one object": [("single/one.bin", total_mib)],
        "4 objects": [(f"multi/obj-{i}.bin", total_mib // 4) for i in range(4)],
    }
    with emulated_region(rtt, bandwidth) as (conn, (az, proxy)):
        container = BlobServiceClient.from_connection_string(conn).create_container("data")
        digests = {}
        for objects in sets.values():
            for key, mib in objects:
                data = os.urandom(mib * MIB)
                digests[key] = hashlib.sha256(data).hexdigest()
                container.upload_blob(key, data)
                del data
        far = az.blob_endpoint().replace(str(az.port), str(proxy.port))  # type: ignore[attr-defined]
        far_conn = conn.replace(str(az.port), str(proxy.port))  # type: ignore[attr-defined]
        os.environ["WD_BENCH_KEY"] = AZURITE_KEY
        link = parse_bandwidth(bandwidth)
        results["cold link MB/s"] = link / 1e6
        for name, objects in sets.items():
            keys = [k for k, _ in objects]
            total = sum(mib for _, mib in objects) * MIB
            fs = AzureBlobFileSystem(connection_string=far_conn, skip_instance_cache=True)
            fs.info(f"data/{keys[0]}")  # connect first, as WarpDrive does below
            started = time.perf_counter()
            for key in keys:
                with fs.open(f"data/{key}", "rb", block_size=4 * MIB) as f:
                    while f.read(4 * MIB):
                        pass
            results[f"cold {name} plain fsspec MB/s"] = (
                total / (time.perf_counter() - started) / 1e6
            )
            for hint in (False, True) if len(keys) > 1 else (False,):
                cache = work / f"cold-{len(keys)}-{hint}"
                cfg = parse_config(
                    f"cache: {{path: {cache}, max_size: {2 * total_mib + 256}MB, block_size: 4MB}}"
                    "\n"
                    "backends:\n  - name: far\n    type: azureblob\n"
                    "    config: {account: devstoreaccount1, container: data, "
                    f"endpoint: '{far}'}}\n"
                    "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
                )
                with WarpDrive(cfg) as wd:
                    wd.stat(f"/far/{keys[0]}")
                    seconds = _read_sequentially(wd, keys, digests, hint)
                label = f"cold {name}{' + next-object hint' if hint else ''}"
                results[f"{label} warpdrive MB/s"] = total / seconds / 1e6
    return results


def main() -> int:
    p = argparse.ArgumentParser(description="WarpDrive read-path benchmark")
    p.add_argument("--warm-mib", type=int, default=1024)
    p.add_argument("--cold-mib", type=int, default=512)
    p.add_argument("--rtt", default="80ms")
    p.add_argument("--bandwidth", default="800mbit")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--skip-warm", action="store_true")
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "read_path.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-bench-"))
    results: dict[str, float] = {}
    try:
        if not args.skip_warm:
            results.update(bench_warm(args.warm_mib, work, args.runs))
        if not args.skip_cold:
            results.update(bench_cold(args.cold_mib, work, args.rtt, args.bandwidth))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for key in [k for k in results if k.endswith("local MB/s")]:
        label = key.removesuffix(" local MB/s")
        rows.append(row(label, results[f"{label} warpdrive MB/s"], results[key], "local file"))
    link = results.get("cold link MB/s", 0.0)
    for key in [k for k in results if k.startswith("cold") and k.endswith("warpdrive MB/s")]:
        label = key.removesuffix(" warpdrive MB/s")
        plain = results[label.split(" + ")[0] + " plain fsspec MB/s"]
        rows.append(row(f"{label} ({args.rtt}, {args.bandwidth})", results[key], link, "link", 1))
        rows.append(row("", results[key], plain, "plain fsspec", 1))
    print_table(rows)
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
