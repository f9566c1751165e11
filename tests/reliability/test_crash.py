"""Crash safety: the mount and a warm-up killed with SIGKILL at random moments of a cold read,
again and again, leave a cache whose every block verifies and whose every byte is exact; and a
cache on a full file system leads to uncached serving, never to a partial block or a crash."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Store
from tests.reliability import report
from warpdrive import WarpDrive, parse_config
from warpdrive.admin import Admin
from warpdrive.ctl import cachecmds
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import free_port

KILLS = int(os.environ.get("WD_CRASH_KILLS", "5"))  # rounds: each kills the mount and a warm
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
    pytest.mark.timeout(300 + 30 * KILLS),
]


def _config(store: Store, tmp_path: Path, cache: Path, max_size: str = "256MB") -> tuple[Path, int]:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {cache}, max_size: {max_size}, block_size: 256KB, readahead_blocks: 4}}\n"
        f"backends:\n{store.backend_yaml}"
    )
    return config, port


@pytest.fixture
def objects(local_store: Store) -> dict[str, bytes]:
    rnd = random.Random(5)
    data = {f"train/shard-{i:03d}.tar": rnd.randbytes(1_200_000 + i * 7919) for i in range(12)}
    for key, payload in data.items():
        local_store.put(key, payload)
    return data


def _verify(config: Path, store: Store, objects: dict[str, bytes]) -> int:
    """Read everything back in-process: cached blocks are checksum-verified on every read; a
    bad one would be counted (and refetched). Returns the bytes compared."""
    with WarpDrive(parse_config(config.read_text())) as wd:
        for key, payload in objects.items():
            assert wd.read(store.path(key)) == payload, key
        assert wd.metrics.totals()["checksum_errors"] == 0
        return sum(map(len, objects.values()))


def _evict_some(config: Path, store: Store, keys: list[str], rnd: random.Random) -> None:
    """Drop half the objects from the cache (in-process, as `warpdrive-ctl evict` does), so the
    next kill lands in cold reads again, among blocks that earlier kills left behind."""
    cfg = parse_config(config.read_text())
    with WarpDrive(cfg) as wd, Admin(cfg) as admin:
        for key in rnd.sample(keys, len(keys) // 2):
            cachecmds.evict(admin, cachecmds.evict_plan(wd, admin, store.path(key), False))


def test_kill_9_during_cold_reads_and_warm_up_then_remount_serves_exact_bytes(
    local_store: Store, objects: dict[str, bytes], tmp_path: Path
) -> None:
    """KILLS times: the mount and a warm-up, SIGKILLed at a random moment of cold reads; the
    mount started again on what the kill left (timed) and every object read through it, byte
    for byte; then half the objects evicted for the next round."""
    config, port = _config(local_store, tmp_path, tmp_path / "cache")
    point = tmp_path / "wd"
    rnd = random.Random(11)
    remounts: list[float] = []
    mount = start_mount(config, point, port)
    checked = 0
    try:
        for _ in range(KILLS):
            files = [str(point / local_store.name / key) for key in objects]
            reader = subprocess.Popen(["cat", *rnd.sample(files, len(files))], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)  # fmt: skip
            warm = subprocess.Popen(
                [sys.executable, "-c", "import sys; from warpdrive.cli import ctl_main; sys.exit(ctl_main())",
                 "warm", str(point / local_store.name / "train"), "--recursive", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(rnd.uniform(0.05, 1.5))
            mount.proc.kill()  # SIGKILL: no unmount, no flush
            warm.kill()
            for proc in (mount.proc, reader, warm):
                proc.wait(timeout=30)
            mount.cleanup()  # the stale FUSE mount goes; the cache stays as the kill left it
            started = time.monotonic()
            mount = start_mount(config, point, port)
            remounts.append(time.monotonic() - started)
            for key, payload in objects.items():
                assert (point / local_store.name / key).read_bytes() == payload, key
                checked += len(payload)
            assert mount.metric("warpdrive_cache_checksum_errors_total") == 0
            _evict_some(config, local_store, list(objects), rnd)
    finally:
        mount.cleanup()
    verified = _verify(config, local_store, objects)
    ordered = sorted(remounts)
    report.add(crashes_survived=2 * KILLS, bytes_verified=verified + checked)
    report.put(
        crash_kills=2 * KILLS,
        crash_remount_p50_s=round(ordered[len(ordered) // 2], 3),
        crash_remount_max_s=round(ordered[-1], 3),
    )


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: the cache's file system fills long before max_size."""
    target = tmp_path / "smallfs"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(target)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_cache_disk_serves_uncached_and_stays_sound(
    local_store: Store, objects: dict[str, bytes], tmp_path: Path, small_fs: Path
) -> None:
    config, port = _config(local_store, tmp_path, small_fs / "cache", max_size="1GB")
    point = tmp_path / "wd"
    mount = start_mount(config, point, port)
    try:
        for _ in range(2):
            for key, payload in objects.items():
                assert (point / local_store.name / key).read_bytes() == payload
        assert mount.metric("warpdrive_cache_write_errors_total", reason="nospace") > 0
        assert mount.proc.poll() is None and mount.health()[0] == 200
    finally:
        mount.cleanup()
    assert _verify(config, local_store, objects) == sum(map(len, objects.values()))
    tmp_files = [
        p for p in (small_fs / "cache").rglob("*") if p.is_file() and p.name.startswith(".tmp")
    ]
    assert tmp_files == []  # no half-written block left behind
    report.add(enospc_reads=2 * len(objects), bytes_verified=3 * sum(map(len, objects.values())))
