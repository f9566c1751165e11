"""Passthrough opens (#20, the cache side): a fully cached, verified object's cache file handed
out as a descriptor, an object of several blocks pinned against every eviction — in-process
watermarks, quotas, ``Admin.evict``, a new version, and evictions in other processes — until
release; a pin of a killed process pins nothing; an object of one block needs no pin (its
eviction unlinks the file the kernel reads, never punches it)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from warpdrive import Admin, Config, WarpDrive, parse_config
from warpdrive.cache import CacheIndex, ObjectVersion, Quota
from warpdrive.fs import ROOT_INODE, WarpDriveFS

BS = 512 * 1024
SIZES = {"f.bin": 3 * BS + 100, "o1.bin": 3 * BS, "o2.bin": 3 * BS, "o3.bin": 3 * BS}


@dataclass
class Setup:
    config: Config
    source: dict[str, bytes]
    tmp: Path


def _config(tmp: Path, max_size: str) -> Config:
    return parse_config(
        f"cache: {{path: {tmp / 'cache'}, max_size: {max_size}, block_size: 512KB,"
        " readahead_blocks: 0, scan_prefetch: false}\n"
        f"backends: [{{name: s, type: local, config: {{root: {tmp / 'src'}}}}}]\n",
        env={},
    )


def _setup(tmp: Path, max_size: str = "64MB") -> Setup:
    (tmp / "src").mkdir(exist_ok=True)
    source = {name: os.urandom(size) for name, size in SIZES.items()}
    for name, data in source.items():
        (tmp / "src" / name).write_bytes(data)
    return Setup(_config(tmp, max_size), source, tmp)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return _setup(tmp_path)


@pytest.fixture
def small(tmp_path: Path) -> Setup:
    """A cache of 8 blocks (evicts past 7.2, down to 6.4): the pinned f.bin is 4 of them."""
    return _setup(tmp_path, "4MB")


def _ino(fs: WarpDriveFS, name: str) -> int:
    return fs.lookup(fs.lookup(ROOT_INODE, "s").ino, name).ino


def _pread_all(fd: int, size: int) -> bytes:
    return os.pread(fd, size + 10, 0)  # asks past the end: the file ends where the object does


def _blocks(index: CacheIndex, obj: ObjectVersion) -> list[int]:
    return [i for i in range(obj.nblocks) if index.contains(obj.block_key(i))]


@pytest.fixture
def fs(setup: Setup) -> Iterator[WarpDriveFS]:
    with WarpDrive(setup.config, observers=[]) as wd:
        yield WarpDriveFS(wd)


def test_a_whole_cached_object_opens_with_its_cache_file_and_a_partial_one_without(
    setup: Setup, fs: WarpDriveFS
) -> None:
    ino, data = _ino(fs, "f.bin"), setup.source["f.bin"]
    cold = fs.open(ino, os.O_RDONLY, backing=True)
    assert cold.backing_fd is None  # nothing cached: served here, as before
    assert fs.read(cold.fh, 0, BS) == data[:BS]  # caches block 0 only
    partial = fs.open(ino, os.O_RDONLY, backing=True)
    assert partial.backing_fd is None
    assert fs.read(partial.fh, BS, 3 * BS) == data[BS:]  # now the rest
    assert fs.open(ino, os.O_RDONLY).backing_fd is None  # not asked for: none
    whole = fs.open(ino, os.O_RDONLY, backing=True)
    assert whole.backing_fd is not None
    try:
        assert _pread_all(whole.backing_fd, len(data)) == data
        assert os.get_inheritable(whole.backing_fd) is False  # O_CLOEXEC
        assert os.fstat(whole.backing_fd).st_size == len(data)
    finally:
        os.close(whole.backing_fd)
    for opened in (cold, partial, whole):
        fs.release(opened.fh)


def test_a_cache_that_cannot_record_pins_opens_without_a_backing_file(setup: Setup) -> None:
    with WarpDrive(setup.config, observers=[]) as wd:
        fs = WarpDriveFS(wd)
        assert wd.read("/s/f.bin") == setup.source["f.bin"]
        (setup.tmp / "cache" / "v2" / "pins").write_bytes(b"")  # no holder file can be made
        opened = fs.open(_ino(fs, "f.bin"), os.O_RDONLY, backing=True)
        assert opened.backing_fd is None  # served here instead; the open still works
        assert fs.read(opened.fh, 0, 10) == setup.source["f.bin"][:10]
        fs.release(opened.fh)


def test_an_empty_object_opens_without_a_backing_file(setup: Setup) -> None:
    (setup.tmp / "src" / "empty.bin").write_bytes(b"")
    with WarpDrive(setup.config, observers=[]) as wd:
        fs = WarpDriveFS(wd)
        opened = fs.open(_ino(fs, "empty.bin"), os.O_RDONLY, backing=True)
        assert opened.backing_fd is None  # nothing to read: no cache file, no pin
        assert fs.read(opened.fh, 0, 10) == b""
        fs.release(opened.fh)


def test_pins_are_counted_across_handles_and_released_with_the_last(
    setup: Setup, fs: WarpDriveFS
) -> None:
    ino, data = _ino(fs, "f.bin"), setup.source["f.bin"]
    assert fs.wd.read("/s/f.bin") == data
    index = fs.wd._core.cache.index
    first = fs.open(ino, os.O_RDONLY, backing=True)
    second = fs.open(ino, os.O_RDONLY, backing=True)
    assert first.backing_fd is not None and second.backing_fd is not None
    os.close(first.backing_fd)
    os.close(second.backing_fd)
    oid = fs.wd.version("/s/f.bin").oid
    assert index.pinned() == {oid: len(data)}
    registry = fs.wd.metrics.registry
    assert registry.get_sample_value("warpdrive_cache_pinned_objects") == 1
    assert registry.get_sample_value("warpdrive_cache_pinned_bytes") == len(data)
    fs.release(first.fh)
    assert index.pinned() == {oid: len(data)}  # the second handle still holds it
    fs.release(second.fh)
    assert index.pinned() == {oid: len(data)}  # until the next flush: no write on the close
    again = fs.open(ino, os.O_RDONLY, backing=True)  # and none on an open meanwhile
    assert again.backing_fd is not None
    os.close(again.backing_fd)
    fs.release(again.fh)
    fs.wd.flush()
    assert index.pinned() == {}
    assert registry.get_sample_value("warpdrive_cache_pinned_bytes") == 0


def _corrupt(setup: Setup, block: int) -> None:
    (victim,) = [f for f in (setup.tmp / "cache").rglob("objects/*/*") if f.is_file()]
    with open(victim, "r+b") as f:
        f.seek(block * BS + 1000)
        byte = f.read(1)[0]
        f.seek(block * BS + 1000)
        f.write(bytes([byte ^ 0x5A]))


def test_a_corrupted_block_found_at_open_means_no_backing_file_and_a_refetch(
    setup: Setup,
) -> None:
    data = setup.source["f.bin"]
    with WarpDrive(setup.config, observers=[]) as wd:
        assert wd.read("/s/f.bin") == data
    _corrupt(setup, 1)
    with WarpDrive(setup.config, observers=[]) as wd:  # a new process: nothing verified yet
        fs = WarpDriveFS(wd)
        ino = _ino(fs, "f.bin")
        opened = fs.open(ino, os.O_RDONLY, backing=True)
        assert opened.backing_fd is None
        assert wd.metrics.checksum_errors._value.get() == 1
        assert wd._core.cache.index.pinned() == {}  # the failed open pins nothing
        assert fs.read(opened.fh, 0, len(data)) == data  # block 1 fetched again
        fs.release(opened.fh)
        again = fs.open(ino, os.O_RDONLY, backing=True)  # whole and verified now
        assert again.backing_fd is not None
        assert _pread_all(again.backing_fd, len(data)) == data
        os.close(again.backing_fd)
        fs.release(again.fh)


def test_no_eviction_in_the_process_touches_a_pinned_object_until_it_is_released(
    small: Setup,
) -> None:
    data = small.source["f.bin"]
    with WarpDrive(small.config, observers=[]) as wd:
        fs = WarpDriveFS(wd)
        handle = wd.open_handle("/s/f.bin", "vision", "alice")  # fetched for team vision
        assert handle.read() == data
        obj, index = handle.obj, wd._core.cache.index
        fd = handle.backing_fd()
        assert fd is not None
        try:
            for name in ("o1.bin", "o2.bin", "o3.bin"):  # 9 blocks past a cache of 8
                assert wd.read(f"/s/{name}") == small.source[name]
            assert _blocks(index, obj) == [0, 1, 2, 3]
            assert index.counters()["evictions"] > 0  # others went instead
            with Admin(small.config) as admin:
                # quota enforcement: vision over its hard limit loses only unpinned blocks
                admin.set_quota(Quota("vision", "", soft=BS, hard=2 * BS))
                assert admin.evict_unpinned([obj.oid]) == (0, [obj.oid])
                assert admin.evict([obj.oid]) == 0
            assert _blocks(index, obj) == [0, 1, 2, 3]
            assert _pread_all(fd, len(data)) == data  # no hole was punched under it
            assert fs.statfs().blocks == 8
        finally:
            os.close(fd)
            handle.close()  # unpins, at the next flush
        wd.flush()
        assert index.pinned() == {}
        for name in ("o1.bin", "o2.bin", "o3.bin"):
            assert wd.read(f"/s/{name}") == small.source[name]
        assert _blocks(index, obj) != [0, 1, 2, 3]  # evictable again, and evicted


def test_a_pinned_old_version_stays_until_released_then_goes(tmp_path: Path) -> None:
    index = CacheIndex(str(tmp_path), 100 * BS, 0.9, 0.8)
    old = ObjectVersion("b", "k", "e1", 2 * BS, 0.0, BS)
    new = ObjectVersion("b", "k", "e2", 2 * BS, 0.0, BS)
    index.insert(old, 0, 1, BS, b"")
    assert not index.pin(old, index.holders.me())  # not all cached: no pin
    assert index.pinned() == {}
    index.insert(old, 1, 2, BS, b"")
    assert index.pin(old, index.holders.me())
    dead, _ = index.insert(new, 0, 3, BS, b"")  # a new version: the old one is pinned
    assert dead == []
    assert _blocks(index, old) == [0, 1]
    assert index.newest("b", "k").etag == "e2"  # type: ignore[union-attr]
    dead = index.unpin(old.oid, index.holders.me())  # released: gone, as a new version does
    assert sorted(d[0] for d in dead) == [old.block_key(0), old.block_key(1)]
    assert index.object(old.oid) is None
    assert _blocks(index, new) == [0]
    index.close()


def test_a_new_version_leaves_the_pinned_old_one_readable_until_release(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    config = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, block_size: 512KB, stale_ttl: 0,"
        " readahead_blocks: 0, scan_prefetch: false}\n"
        f"backends: [{{name: s, type: local, config: {{root: {tmp_path / 'src'}}}}}]\n",
        env={},
    )
    old_data, new_data = setup.source["f.bin"], os.urandom(2 * BS + 7)
    with WarpDrive(config, observers=[]) as wd:
        fs = WarpDriveFS(wd)
        assert wd.read("/s/f.bin") == old_data
        old = wd.version("/s/f.bin")
        opened = fs.open(_ino(fs, "f.bin"), os.O_RDONLY, backing=True)
        assert opened.backing_fd is not None
        (tmp_path / "src" / "f.bin").write_bytes(new_data)  # a new etag (size, mtime)
        assert wd.read("/s/f.bin") == new_data  # cached as a new version, in a new file
        index = wd._core.cache.index
        assert index.newest("s", "f.bin").etag != old.etag  # type: ignore[union-attr]
        assert _blocks(index, old) == [0, 1, 2, 3]  # pinned: kept
        assert _pread_all(opened.backing_fd, len(old_data)) == old_data
        os.close(opened.backing_fd)
        fs.release(opened.fh)
        wd.flush()
        assert index.object(old.oid) is None  # released: gone, as a new version makes it
        assert _blocks(index, old) == []
        assert wd._core.cache.store.open(old.oid) is None  # and its file
        assert wd.read("/s/f.bin") == new_data


def test_with_the_pinned_bytes_past_the_watermark_everything_else_goes_and_it_is_counted(
    tmp_path: Path,
) -> None:
    index = CacheIndex(str(tmp_path), 10 * BS, 0.9, 0.5)  # evicts past 9 blocks, down to 5
    pinned = ObjectVersion("b", "pinned", "e1", 8 * BS, 0.0, BS)
    other = ObjectVersion("b", "other", "e1", 8 * BS, 0.0, BS)
    for i in range(8):
        index.insert(pinned, i, i, BS, b"")
    assert index.pin(pinned, index.holders.me())
    for i in range(3):
        index.insert(other, i, 10 + i, BS, b"")
    assert _blocks(index, pinned) == list(range(8))
    assert _blocks(index, other) == [2]  # all but the block just inserted
    assert index.usage().bytes == 9 * BS  # over the watermark by what is pinned, never more
    assert index.counters()["pin_blocked"] >= 1
    assert index.unpin(pinned.oid, index.holders.me()) == []  # the newest version: stays
    index.insert(other, 3, 13, BS, b"")
    assert index.usage().bytes <= 5 * BS  # unpinned: evictable again
    index.close()


# -- other processes ------------------------------------------------------------------------


def _hold_pin(config: Config, conn: Connection) -> None:
    """A mount in another process: opens f.bin with passthrough and keeps it open."""
    with WarpDrive(config, observers=[]) as wd:
        fs = WarpDriveFS(wd)
        opened = fs.open(_ino(fs, "f.bin"), os.O_RDONLY, backing=True)
        conn.send(opened.backing_fd is not None)
        conn.recv()  # until told (or killed)
        fs.release(opened.fh)
        wd.flush()
        conn.send(wd._core.cache.index.pinned() == {})


def _evict_elsewhere(config: Config, oid: bytes, names: list[str], conn: Connection) -> None:
    """Another process's evictions: an explicit one, then watermarks (it reads other objects)."""
    with Admin(config) as admin:
        skipped = admin.evict_unpinned([oid])[1]
    with WarpDrive(config, observers=[]) as wd:
        for name in names:
            wd.read(f"/s/{name}")
        index = wd._core.cache.index
        conn.send((skipped, [index.contains(oid + i.to_bytes(4, "big")) for i in range(4)]))


@contextmanager
def _spawn(
    target: Callable[..., None], *args: object
) -> Iterator[tuple[mp.process.BaseProcess, Connection]]:
    """A fresh process running ``target(*args, conn)``, killed if a failed test leaves it."""
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, theirs), daemon=True)
    proc.start()
    try:
        yield proc, mine
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(30)


def test_evictions_in_another_process_skip_a_pinned_object(small: Setup) -> None:
    data = small.source["f.bin"]
    with WarpDrive(small.config, observers=[]) as wd:
        fs = WarpDriveFS(wd)
        assert wd.read("/s/f.bin") == data
        opened = fs.open(_ino(fs, "f.bin"), os.O_RDONLY, backing=True)
        assert opened.backing_fd is not None
        oid = wd.version("/s/f.bin").oid
        names = ["o1.bin", "o2.bin", "o3.bin"]
        with _spawn(_evict_elsewhere, small.config, oid, names) as (_, conn):
            assert conn.poll(120)
            skipped, present = conn.recv()
        assert skipped == [oid] and present == [True] * 4
        assert _pread_all(opened.backing_fd, len(data)) == data
        os.close(opened.backing_fd)
        fs.release(opened.fh)
        fs.wd.flush()
        with Admin(small.config) as admin:
            assert admin.evict_unpinned([oid]) == (4, [])  # released: evictable


def test_a_pin_held_by_another_process_holds_until_it_is_released_or_killed(
    small: Setup,
) -> None:
    with WarpDrive(small.config, observers=[]) as wd:
        assert wd.read("/s/f.bin") == small.source["f.bin"]
        oid = wd.version("/s/f.bin").oid
        index = wd._core.cache.index
        with _spawn(_hold_pin, small.config) as (_, conn):
            assert conn.poll(120) and conn.recv() is True
            with Admin(small.config) as admin:
                assert admin.evict_unpinned([oid]) == (0, [oid])  # alive: pinned
            for name in ("o1.bin", "o2.bin", "o3.bin"):
                wd.read(f"/s/{name}")
            assert all(index.contains(oid + i.to_bytes(4, "big")) for i in range(4))
            conn.send("release")
            assert conn.poll(60) and conn.recv() is True  # released: its pin is gone

        assert wd.read("/s/f.bin") == small.source["f.bin"]
        with _spawn(_hold_pin, small.config) as (proc, conn):
            assert conn.poll(120) and conn.recv() is True
            assert oid in index.pinned()
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)  # dies holding the pin
            proc.join(30)
        assert index.pinned() == {}  # a dead holder pins nothing
        with Admin(small.config) as admin:
            assert admin.evict_unpinned([oid]) == (4, [])
        assert not list(index.iter_blocks(oid))


def test_an_object_of_one_block_is_handed_out_unpinned_and_stays_exact_once_evicted(
    setup: Setup,
) -> None:
    # No pin (no index write at open): its eviction unlinks the cache file, never punches it,
    # so the descriptor the kernel reads keeps the bytes; the next read fetches a new file.
    data = os.urandom(BS // 5)
    (setup.tmp / "src" / "one.jpg").write_bytes(data)
    with WarpDrive(setup.config, observers=[]) as wd:
        handle = wd.open_handle("/s/one.jpg")
        assert handle.read() == data
        obj, cache = handle.obj, wd._core.cache
        path = cache.store.path(obj.oid)
        fd = handle.backing_fd()
        assert fd is not None
        try:
            assert cache.index.pinned() == {}
            with Admin(setup.config) as admin:
                assert admin.evict_unpinned([obj.oid]) == (1, [])
            assert not os.path.exists(path) and not _blocks(cache.index, obj)
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")  # the bytes below come from the disk
            assert _pread_all(fd, len(data)) == data
            assert os.fstat(fd).st_nlink == 0  # the unlinked inode, whole
        finally:
            os.close(fd)
            handle.close()
        assert wd.read("/s/one.jpg") == data  # fetched again, into a new file
        assert os.path.exists(path) and _blocks(cache.index, obj) == [0]
