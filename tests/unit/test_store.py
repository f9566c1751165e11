"""The cache on disk: one sparse file per object, blocks at their offsets, holes punched by
eviction; reads of any range equal the source, and no hole or torn write is ever served."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warpdrive.cache import BlockCache, ObjectVersion
from warpdrive.cache.store import CHUNK, chunk_sums, verify
from warpdrive.config import parse_config
from warpdrive.errors import CacheDamagedError
from warpdrive.metrics import Metrics

BS = 4 * CHUNK  # 256 KiB blocks: several chunks each, many blocks per object


def _cache(root: Path, max_size: str = "64MB") -> BlockCache:
    config = parse_config(
        f"cache: {{path: {root}, max_size: {max_size}, block_size: 256KB}}\n"
        f"backends: [{{name: b, type: local, config: {{root: {root}}}}}]\n",
        env={},
    )
    return BlockCache(config.cache, Metrics(), flush_interval=3600)


def _source(key: str, size: int) -> bytes:
    return random.Random(key).randbytes(size)


def _obj(key: str, size: int) -> ObjectVersion:
    return ObjectVersion("b", key, "e1", size, 0.0, BS)


def _put(cache: BlockCache, obj: ObjectVersion, data: bytes, index: int) -> None:
    assert cache.put(obj, index, data[index * BS : index * BS + obj.block_len(index)])


def _read(cache: BlockCache, obj: ObjectVersion, offset: int, n: int) -> tuple[bytes, list[int]]:
    """(bytes, unfilled blocks) of one read through a freshly opened file."""
    buf = bytearray(n)
    file = cache.open_object(obj)
    if file is None:
        return bytes(buf), list(range(offset // BS, (offset + n - 1) // BS + 1))
    try:
        unfilled = cache.read_into(obj, file, offset, memoryview(buf))
        return bytes(buf), unfilled
    finally:
        file.close()


def _check(obj: ObjectVersion, data: bytes, offset: int, got: bytes, unfilled: list[int]) -> None:
    """Every block of the range not reported unfilled holds exactly the source's bytes."""
    end = offset + len(got)
    for index in range(offset // BS, (end - 1) // BS + 1):
        if index in unfilled:
            continue
        lo, hi = max(offset, index * BS), min(end, index * BS + BS)
        assert got[lo - offset : hi - offset] == data[lo:hi], (index, lo, hi)


def test_verify_matches_chunk_sums_and_refuses_any_change() -> None:
    for size in (1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7):
        data = bytearray(os.urandom(size))
        sums = chunk_sums(data)
        assert verify(data, sums)
        data[size // 2] ^= 1
        assert not verify(data, sums)
        assert not verify(data[:-1], chunk_sums(bytes(data)))


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[BlockCache]:
    c = _cache(tmp_path)
    yield c
    c.close()


def test_blocks_land_at_their_offsets_in_one_sparse_file(cache: BlockCache) -> None:
    size = 7 * BS + 123
    obj, data = _obj("sparse", size), _source("sparse", size)
    for index in (6, 0, 7, 3):
        _put(cache, obj, data, index)
    path = Path(cache.store.path(obj.oid))
    assert path.stat().st_size == size
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_blocks * 512 < 5 * BS  # 4 blocks written, 4 still holes
    raw = path.read_bytes()
    for index in (0, 3, 6, 7):
        assert (
            raw[index * BS : index * BS + obj.block_len(index)]
            == data[index * BS : (index + 1) * BS]
        )
    got, unfilled = _read(cache, obj, 0, size)
    assert unfilled == [1, 2, 4, 5]
    _check(obj, data, 0, got, unfilled)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_reads_equal_the_source_with_holes_punched_in_between(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    cache = _cache(tmp_path_factory.mktemp("c"))
    try:
        size = data.draw(st.integers(1, 9 * BS + 1000))
        obj, source = _obj("prop", size), _source(f"prop{size}", size)
        cached: set[int] = set()
        for _ in range(data.draw(st.integers(1, 25))):
            action = data.draw(st.sampled_from(["put", "evict", "read"]))
            index = data.draw(st.integers(0, obj.nblocks - 1))
            if action == "put":
                _put(cache, obj, source, index)
                cached.add(index)
            elif action == "evict" and index in cached:
                cache._free(cache.index.remove(obj.block_key(index)))
                cached.discard(index)
            else:
                a = data.draw(st.integers(0, size - 1))
                b = data.draw(st.integers(a + 1, size))
                got, unfilled = _read(cache, obj, a, b - a)
                wanted = set(range(a // BS, (b - 1) // BS + 1))
                assert set(unfilled) == wanted - cached
                _check(obj, source, a, got, unfilled)
    finally:
        cache.close()


def test_punched_blocks_give_their_space_back(cache: BlockCache) -> None:
    obj, data = _obj("punch", 8 * BS), _source("punch", 8 * BS)
    for index in range(8):
        _put(cache, obj, data, index)
    path = Path(cache.store.path(obj.oid))
    full = path.stat().st_blocks
    cache._free(cache.index.remove(obj.block_key(2)) + cache.index.remove(obj.block_key(5)))
    assert path.stat().st_blocks <= full - 2 * BS // 512
    assert path.read_bytes()[2 * BS : 3 * BS] == bytes(BS)  # a hole again
    cache.evict_objects([obj.oid])  # the whole object: its file goes
    assert not path.exists()


def test_a_block_evicted_while_it_is_read_is_never_served(cache: BlockCache) -> None:
    """One thread reads verified blocks (no hashing: the generation check alone guards them)
    while another evicts (punching holes) and re-stores them; with threads switching every
    microsecond, punches land between the index checks and the reads."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    size = 6 * BS
    obj, data = _obj("race", size), _source("race", size)
    for index in range(obj.nblocks):
        _put(cache, obj, data, index)
    stop = threading.Event()
    unfilled_seen = 0

    def churn() -> None:
        rnd = random.Random(1)
        while not stop.is_set():
            index = rnd.randrange(obj.nblocks)
            cache._free(cache.index.remove(obj.block_key(index)))
            _put(cache, obj, data, index)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        file = cache.open_object(obj)
        assert file is not None
        buf = bytearray(size)
        for _ in range(3000):
            unfilled = cache.read_into(obj, file, 0, memoryview(buf))
            unfilled_seen += len(unfilled)
            _check(obj, data, 0, bytes(buf), unfilled)
        file.close()
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    assert unfilled_seen > 0  # the race was exercised


def test_a_corrupted_block_is_found_discarded_and_counted(tmp_path: Path) -> None:
    obj, data = _obj("bad", 3 * BS), _source("bad", 3 * BS)
    with_cache = _cache(tmp_path)
    for index in range(3):
        _put(with_cache, obj, data, index)
    with_cache.close()
    with open(with_cache.store.path(obj.oid), "r+b") as f:  # a flipped byte in block 1
        f.seek(BS + 1000)
        byte = f.read(1)
        f.seek(BS + 1000)
        f.write(bytes([byte[0] ^ 0x40]))
    cache = _cache(tmp_path)  # a new process: verifies before it trusts
    try:
        got, unfilled = _read(cache, obj, 0, 3 * BS)
        assert unfilled == [1]
        _check(obj, data, 0, got, unfilled)
        assert cache.metrics.checksum_errors._value.get() == 1
        assert not cache.contains(obj, 1) and cache.contains(obj, 2)
    finally:
        cache.close()


def test_a_removed_object_file_drops_its_blocks(cache: BlockCache) -> None:
    obj, data = _obj("gone", 2 * BS), _source("gone", 2 * BS)
    _put(cache, obj, data, 0)
    _put(cache, obj, data, 1)
    os.unlink(cache.store.path(obj.oid))
    assert cache.open_object(obj) is None
    assert not cache.contains(obj, 0) and cache.index.object(obj.oid) is None
    _put(cache, obj, data, 0)  # and it can be cached again
    got, unfilled = _read(cache, obj, 0, 2 * BS)
    assert unfilled == [1]
    _check(obj, data, 0, got, unfilled)


def test_a_file_cut_short_is_found_by_readers_and_by_reconcile(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    obj, data = _obj("cut", 4 * BS), _source("cut", 4 * BS)
    for index in range(4):
        _put(cache, obj, data, index)
    file = cache.open_object(obj)
    assert file is not None
    buf = bytearray(4 * BS)
    assert cache.read_into(obj, file, 0, memoryview(buf)) == []  # all verified now
    os.truncate(cache.store.path(obj.oid), 2 * BS + 10)
    unfilled = cache.read_into(obj, file, 0, memoryview(buf))  # one short read of the run
    assert {2, 3} <= set(unfilled)
    _check(obj, data, 0, bytes(buf), unfilled)
    unfilled = cache.read_into(obj, file, 0, memoryview(buf))  # the retry verifies: 2, 3 bad
    assert unfilled == [2, 3]
    _check(obj, data, 0, bytes(buf), unfilled)
    assert not cache.contains(obj, 2) and cache.contains(obj, 1)
    file.close()
    cache.close()
    cache = _cache(tmp_path)  # alone at start: reconciles
    try:
        assert cache.reconciled
        assert [cache.contains(obj, i) for i in range(4)] == [True, True, False, False]
    finally:
        cache.close()


def test_an_old_layout_is_removed_and_its_governance_records_kept(tmp_path: Path) -> None:
    old = tmp_path / "v1"
    (old / "blocks" / "ab").mkdir(parents=True)
    (old / "blocks" / "ab" / "x.0.1").write_bytes(b"old block")
    (old / "governance.sqlite").write_bytes(b"records")
    (old / "governance.sqlite-wal").write_bytes(b"wal")
    cache = _cache(tmp_path)
    try:
        assert not old.exists()
        assert (tmp_path / "v2" / "governance.sqlite").read_bytes() == b"records"
        assert (tmp_path / "v2" / "governance.sqlite-wal").read_bytes() == b"wal"
    finally:
        cache.close()


def _damage_index(root: Path, where: str) -> None:
    """Overwrite the index file as a power loss might leave it: its meta pages, or the pages
    they point at."""
    data = root / "v2" / "index" / "data.mdb"
    with data.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        start = 0 if where == "meta pages" else 2 * 4096
        end = 2 * 4096 if where == "meta pages" else size
        f.seek(start)
        f.write(b"\xab" * (end - start))


@pytest.mark.parametrize("where", ["meta pages", "data pages"])
def test_a_damaged_index_starts_an_empty_cache_that_fills_again(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _cache(tmp_path)
    obj, data = _obj("kept", 3 * BS), _source("kept", 3 * BS)
    for index in range(3):
        _put(cache, obj, data, index)
    cache.close()
    _damage_index(tmp_path, where)
    cache = _cache(tmp_path)  # raised lmdb.Error before
    try:
        assert cache.metrics.index_resets._value.get() == 1
        assert "is damaged" in caplog.text and "starting with an empty cache" in caplog.text
        assert not any(cache.contains(obj, i) for i in range(3))
        assert not os.path.exists(cache.store.path(obj.oid))  # removed with the index
        for index in range(3):
            _put(cache, obj, data, index)
        got, unfilled = _read(cache, obj, 0, obj.size)
        assert (got, unfilled) == (data, [])
    finally:
        cache.close()
    cache = _cache(tmp_path)  # and the new index survives a restart
    try:
        assert cache.metrics.index_resets._value.get() == 0
        assert all(cache.contains(obj, i) for i in range(3))
    finally:
        cache.close()


def _use_cache(root: str, ready: mp.synchronize.Event, done: mp.synchronize.Event) -> None:
    cache = _cache(Path(root))
    ready.set()
    done.wait(60)
    cache.close()


def test_a_damaged_index_in_use_by_another_process_is_left_alone(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    obj, data = _obj("kept", BS), _source("kept", BS)
    _put(cache, obj, data, 0)
    cache.close()
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_use_cache, args=(str(tmp_path), ready, done))
    other.start()
    try:
        assert ready.wait(60)
        _damage_index(tmp_path, "meta pages")
        with pytest.raises(CacheDamagedError, match=r"is damaged .* other processes use the cache"):
            _cache(tmp_path)
        assert os.path.exists(cache.store.path(obj.oid))  # nothing removed under the other
    finally:
        done.set()
        other.join(60)


# -- processes -----------------------------------------------------------------------------


def _writer(root: str, seed: int, rounds: int) -> None:
    """Store and evict blocks of a few objects at random; with ``rounds`` 0, until killed."""
    cache = _cache(Path(root), max_size="4MB")  # eviction all the time
    rnd = random.Random(seed)
    objects = [(_obj(f"o{i}", 5 * BS + i), _source(f"o{i}", 5 * BS + i)) for i in range(6)]
    n = 0
    while rounds == 0 or n < rounds:
        n += 1
        obj, data = objects[rnd.randrange(len(objects))]
        index = rnd.randrange(obj.nblocks)
        if rnd.random() < 0.2:
            cache._free(cache.index.remove(obj.block_key(index)))
        elif rounds:  # a reader too: every byte it is given is right
            got, unfilled = _read(cache, obj, 0, obj.size)
            _check(obj, data, 0, got, unfilled)
            for missing in unfilled:
                _put(cache, obj, data, missing)
        else:
            _put(cache, obj, data, index)
    cache.close()


def _all_records_hold_their_bytes(root: Path) -> int:
    cache = _cache(root, max_size="4MB")
    checked = 0
    try:
        for i in range(6):
            obj, data = _obj(f"o{i}", 5 * BS + i), _source(f"o{i}", 5 * BS + i)
            path = cache.store.path(obj.oid)
            for index in range(obj.nblocks):
                rec = cache.index.get(obj.block_key(index))
                if rec is None:
                    continue
                with open(path, "rb") as f:
                    f.seek(index * BS)
                    raw = f.read(rec.size)
                assert raw == data[index * BS : index * BS + rec.size], (i, index)
                assert verify(raw, rec.sums)
                checked += 1
    finally:
        cache.close()
    return checked


def test_kill_9_during_writes_never_indexes_a_hole_or_a_torn_block(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    for seed in range(4):
        proc = ctx.Process(target=_writer, args=(str(tmp_path), seed, 0))
        proc.start()
        index_dir = tmp_path / "v2" / "index"
        deadline = time.monotonic() + 60
        objects = tmp_path / "v2" / "objects"
        while time.monotonic() < deadline and sum(1 for _ in objects.rglob("*")) < 4:
            time.sleep(0.01)  # polling the files it writes: no event crosses the process
        time.sleep(random.Random(seed).uniform(0.05, 0.4))  # a random moment mid-writes
        assert proc.pid is not None and index_dir.exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert _all_records_hold_their_bytes(tmp_path) > 0


def test_two_processes_share_one_cache_with_eviction_all_the_time(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), seed, 400)) for seed in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    _all_records_hold_their_bytes(tmp_path)
