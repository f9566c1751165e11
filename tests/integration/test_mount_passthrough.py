"""Kernel FUSE passthrough through a real ``warpdrive-mount``: a fully cached object's opens
hand the kernel its cache file, and what the cache does meanwhile (evict others, see a new
version, lose the mount to SIGKILL) never shows a reader a wrong or zero byte."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Store
from tests.integration.test_mount import write_config
from warpdrive.testing.mounts import Mount, start_mount

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.getuid() != 0, reason="passthrough needs CAP_SYS_ADMIN"),
]
KB = 1024


def drop_page_cache() -> None:
    """Reads after this come from the disk: a hole punched under a pinned file would read as
    zeros, not as the bytes still in memory."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def passthrough_opens(mount: Mount) -> float:
    return mount.metric("warpdrive_fuse_passthrough_opens_total")


def user_space_reads(mount: Mount) -> float:
    return mount.metric("warpdrive_fuse_operations_total", operation="read")


@pytest.fixture
def mounted(local_store: Store, tmp_path: Path) -> Iterator[tuple[Mount, dict[str, bytes]]]:
    """A mount over a cache of 16 blocks of 256 KiB (eviction from 3.6 MiB down to 3.2) and
    eleven 1 MiB objects: any four of them fill it."""
    rnd = random.Random(11)
    files = {f"d/f{i:02d}.bin": rnd.randbytes(1 << 20) for i in range(11)}
    for key, data in files.items():
        local_store.put(key, data)
    config, point, port = write_config(local_store, tmp_path, max_size="4MiB", stale_ttl="1s")
    mount = start_mount(config, point, port)
    if "passthrough on" not in mount.log.read_text():
        mount.cleanup()
        pytest.skip("this kernel does not offer FUSE passthrough")
    try:
        yield mount, files
    finally:
        mount.cleanup()


def test_a_cached_object_is_read_by_the_kernel_and_stays_exact_under_eviction(
    mounted: tuple[Mount, dict[str, bytes]],
) -> None:
    mount, files = mounted
    base = mount.path("src")
    key, data = "d/f00.bin", files["d/f00.bin"]
    assert (base / key).read_bytes() == data  # cold: user space, cached whole now
    mount.wait_released()
    with open(base / key, "rb", buffering=0) as held:  # cached and verified: passthrough
        assert passthrough_opens(mount) == 1
        for other, other_data in files.items():  # ten times the cache: evictions all along
            if other != key:
                assert (base / other).read_bytes() == other_data
        assert mount.metric("warpdrive_cache_evictions_total") > 0
        reads = user_space_reads(mount)
        drop_page_cache()
        assert held.read() == data  # from the disk: no hole was punched under it
        assert user_space_reads(mount) == reads  # the kernel read the cache file itself
    for other, other_data in files.items():  # released: it may go now, and others come
        if other != key:
            assert (base / other).read_bytes() == other_data
    assert (base / key).read_bytes() == data


def test_a_new_version_at_the_backend_is_read_whole_after_stale_ttl(
    mounted: tuple[Mount, dict[str, bytes]], local_store: Store
) -> None:
    mount, files = mounted
    path, key = mount.path("src", "d/f01.bin"), "d/f01.bin"
    old = files[key]
    assert path.read_bytes() == old
    mount.wait_released()
    assert path.read_bytes() == old  # passthrough now
    opens = passthrough_opens(mount)
    assert opens >= 1
    new = random.Random(12).randbytes(700 * KB)
    local_store.put(key, new)
    deadline = time.monotonic() + 15
    seen = old
    while seen == old and time.monotonic() < deadline:
        seen = path.read_bytes()
        assert seen in (old, new), "a mix of two versions"
        time.sleep(0.2)
    assert seen == new
    mount.wait_released()
    assert path.read_bytes() == new  # cached whole: the next open reads it in passthrough
    assert path.read_bytes() == new
    assert passthrough_opens(mount) > opens


def test_kill_9_with_passthrough_files_open_then_remount_reads_exact(
    mounted: tuple[Mount, dict[str, bytes]],
) -> None:
    mount, files = mounted
    keys = ["d/f02.bin", "d/f03.bin"]
    for key in keys:
        assert mount.path("src", key).read_bytes() == files[key]
    mount.wait_released()
    held = [open(mount.path("src", key), "rb", buffering=0) for key in keys]  # noqa: SIM115
    try:
        assert passthrough_opens(mount) == len(keys)
        mount.proc.kill()  # SIGKILL: no unmount, pins left in the index
        mount.proc.wait()
    finally:
        for f in held:
            f.close()
    mount.cleanup()  # the stale mount goes
    again = start_mount(mount.config, mount.point, mount.metrics_port)
    try:
        for key in keys:
            assert again.path("src", key).read_bytes() == files[key]
            assert again.path("src", key).read_bytes() == files[key]
        # cached whole: the first open after the restart too (it verifies the file first)
        assert passthrough_opens(again) == 2 * len(keys)
        drop_page_cache()
        for key, data in files.items():  # the dead process's pins hold nothing: all fit
            assert again.path("src", key).read_bytes() == data
    finally:
        again.cleanup()
