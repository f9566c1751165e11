"""A bounded concurrency soak (and, with larger env values, the long load run): reader processes
read random ranges through a real mount (buffered and O_DIRECT) and in-process, over a cache
smaller than the data (it evicts all the time), while warm, evict and stale --evict run against
the same cache. No error, every byte exact, the indexed size never above max_size plus one fetch
window, and the mount's RSS flat.

Sizes come from the environment: ``WD_SOAK_READERS`` (8), ``WD_SOAK_SECONDS`` (15); the long run
(`make reliability`) uses 16 and 600. The mount's RSS and the cache's size are sampled every
``SECONDS / 30`` seconds, between 1 and 10."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Store
from tests.reliability import report
from warpdrive import WarpDrive, parse_config
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import free_port

SECONDS = float(os.environ.get("WD_SOAK_SECONDS", "15"))
READERS = int(os.environ.get("WD_SOAK_READERS", "8"))
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
    pytest.mark.timeout(300 + 2 * SECONDS),
]
SAMPLE_EVERY = min(10.0, max(1.0, SECONDS / 30))
BLOCK = 256 * 1024
MAX_SIZE = 24 * 1024 * 1024
PARALLEL = 8  # max_parallel_fetch: one fetch window is this many blocks
RSS_SLACK = 8 * 1024 * 1024  # last-third median <= first-third median * 1.3 + this
# Reader i reads this way: most through the mount (its RSS is what is watched), some in-process
# (other processes sharing the cache and its index).
MODES = ["buffered", "direct", "buffered", "inproc"]
PAGE = 4096


def _read_mount(path: str, offset: int, length: int, direct: bool) -> bytes:
    """Bytes through the mount. Buffered reads drop the file's page cache afterwards, so the next
    read asks the mount again; O_DIRECT reads (page-aligned) bypass the page cache altogether."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        if not direct:
            data = os.pread(fd, length, offset)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return data
        buf = mmap.mmap(-1, length)  # page-aligned, as O_DIRECT wants
        try:
            got = os.preadv(fd, [buf], offset)
            return bytes(buf[:got])
        finally:
            buf.close()
    finally:
        os.close(fd)


def _reader(mode: str, config_text: str, source: str, root: str, keys: list[str], seed: int,
            until: float, out: mp.Queue) -> None:  # fmt: skip
    rnd = random.Random(seed)
    ops = errors = mismatches = 0
    wd = WarpDrive(parse_config(config_text)) if mode == "inproc" else None
    while time.monotonic() < until:
        key = rnd.choice(keys)
        size = os.path.getsize(os.path.join(source, key))
        offset = rnd.randrange(size)
        length = rnd.randrange(1, min(3 * BLOCK, size - offset) + 1)
        if mode == "direct":
            offset -= offset % PAGE
            length = -(-length // PAGE) * PAGE
        try:
            if wd is not None:
                got = wd.read(f"{root}/{key}", offset, length)
            else:
                got = _read_mount(f"{root}/{key}", offset, length, mode == "direct")
        except Exception:  # any error at all fails the soak
            errors += 1
            continue
        with open(os.path.join(source, key), "rb") as f:
            mismatches += got != os.pread(f.fileno(), length, offset)
        ops += 1
    if wd is not None:
        wd.close()
    out.put((mode, ops, errors, mismatches))


def _ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    entry = "import sys; from warpdrive.cli import ctl_main; sys.exit(ctl_main())"
    return subprocess.run([sys.executable, "-c", entry, *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class _Sampler:
    """Every ``every`` seconds until ``until``: the mount's RSS and the cache's indexed size."""

    def __init__(self, pid: int, config_text: str, every: float, until: float) -> None:
        self.rss: list[int] = []
        self.cache: list[int] = []
        self.failure: BaseException | None = None
        self._args = (pid, config_text, every, until)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pid, config_text, every, until = self._args
        try:
            with WarpDrive(parse_config(config_text)) as watcher:
                next_at = time.monotonic()
                while next_at < until:
                    self.rss.append(_rss(pid))
                    self.cache.append(watcher.usage().bytes)
                    next_at += every
                    time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # reported by join(): a dead sampler must fail the test
            self.failure = exc

    def join(self) -> None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive() and self.failure is None, self.failure


def test_random_readers_through_the_mount_with_warm_evict_and_stale(
    local_store: Store, tmp_path: Path
) -> None:
    rnd = random.Random(3)
    keys = [f"d{i % 4}/obj-{i:03d}.bin" for i in range(40)]
    for key in keys:
        local_store.put(key, rnd.randbytes(rnd.randrange(200_000, 1_400_000)))
    source = str(tmp_path / "source")  # the local store's root
    data_size = sum(os.path.getsize(os.path.join(source, key)) for key in keys)
    assert data_size > MAX_SIZE  # eviction all the time
    port = free_port()
    point = tmp_path / "wd"
    text = (
        f"mount_point: {point}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: {MAX_SIZE}, block_size: 256KB, "
        f"evict_high_water: 0.97, evict_low_water: 0.95, max_parallel_fetch: {PARALLEL}}}\n"
        f"backends:\n{local_store.backend_yaml}"
    )
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert _ctl(config, "warm", f"/{local_store.name}", "--recursive").returncode == 0
    mount = start_mount(config, point, port)
    try:
        root = str(point / local_store.name)
        for key in keys:  # one pass first: the RSS watched is the mount's in its steady state
            assert _read_mount(f"{root}/{key}", 0, 1 << 21, False) == Path(source, key).read_bytes()
        until = time.monotonic() + SECONDS
        ctx = mp.get_context("fork")
        out: mp.Queue = ctx.Queue()
        readers = [
            ctx.Process(
                target=_reader,
                args=(MODES[i % len(MODES)], text, source, root, keys, i, until, out),
            )
            for i in range(READERS)
        ]
        for proc in readers:
            proc.start()
        sampler = _Sampler(mount.proc.pid, text, SAMPLE_EVERY, until)
        admin_ops = 0
        while time.monotonic() < until:
            command = rnd.choice([
                ("warm", f"/{local_store.name}/d{rnd.randrange(4)}", "--recursive"),
                ("evict", f"/{local_store.name}/{rnd.choice(keys)}"),
                ("stale", "--days", "0", "--evict"),
            ])  # fmt: skip
            done = _ctl(config, *command)
            assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])
            admin_ops += 1
        results = [out.get(timeout=120) for _ in readers]
        for proc in readers:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        sampler.join()
        assert mount.proc.poll() is None and mount.health()[0] == 200
        # Errors of open and read (lookups of names that do not exist are answers, not failures).
        fuse_errors = sum(
            mount.metric("warpdrive_fuse_errors_total", operation=op) for op in ("open", "read")
        )
    finally:
        mount.cleanup()
    ops = {mode: sum(r[1] for r in results if r[0] == mode) for mode in set(MODES)}
    assert sum(r[2] for r in results) == 0 and sum(r[3] for r in results) == 0, results
    assert fuse_errors == 0
    assert ops["buffered"] > 50 and ops["direct"] > 20 and admin_ops >= 3, (ops, admin_ops)
    # The size bound: max_size plus one fetch window in flight; and the cache really was full.
    bound = MAX_SIZE + PARALLEL * BLOCK
    assert max(sampler.cache) <= bound, (max(sampler.cache), bound)
    assert max(sampler.cache) >= 0.8 * MAX_SIZE
    # The mount's RSS is flat: the last third's median within 30% (+ slack) of the first third's.
    third = max(1, len(sampler.rss) // 3)
    first, last = statistics.median(sampler.rss[:third]), statistics.median(sampler.rss[-third:])
    assert len(sampler.rss) >= 9, sampler.rss
    assert last <= first * 1.3 + RSS_SLACK, (first, last, sampler.rss)
    mib = 1024 * 1024
    report.add(
        soak_reads=sum(ops.values()), soak_reads_mount_buffered=ops["buffered"],
        soak_reads_mount_direct=ops["direct"], soak_reads_inprocess=ops["inproc"],
        soak_admin_commands=admin_ops,
    )  # fmt: skip
    report.put(
        soak_seconds=SECONDS, soak_readers=READERS, soak_data_mib=round(data_size / mib, 1),
        soak_rss_samples=len(sampler.rss), soak_rss_every_s=SAMPLE_EVERY,
        soak_rss_first_third_median_mib=round(first / mib, 1),
        soak_rss_last_third_median_mib=round(last / mib, 1),
        soak_rss_max_mib=round(max(sampler.rss) / mib, 1),
        soak_cache_max_mib=round(max(sampler.cache) / mib, 2),
        soak_cache_bound_mib=round(bound / mib, 2),
        soak_rss_series_mib=[round(rss / mib, 1) for rss in sampler.rss],
        soak_cache_series_mib=[round(size / mib, 1) for size in sampler.cache],
    )  # fmt: skip
