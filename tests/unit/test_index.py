"""The LMDB index: usage accounting, LRU eviction to watermarks, version replacement, repair."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from warpdrive.cache.index import CacheIndex
from warpdrive.cache.keys import ObjectVersion

BS = 1 << 20


def _obj(key: str, size: int = 8 * BS, etag: str = "e1", backend: str = "b") -> ObjectVersion:
    return ObjectVersion(backend, key, etag, size, 0.0, BS)


def _index(tmp_path: Path, max_size: int = 10 * BS) -> CacheIndex:
    return CacheIndex(str(tmp_path), max_size, 0.9, 0.5)


def test_insert_counts_usage_per_backend_and_replacing_a_block_does_not_double_count(
    tmp_path: Path,
) -> None:
    index = _index(tmp_path, 100 * BS)
    a, b = _obj("a"), _obj("x", backend="other")
    index.insert(a, 0, 1, BS, b"")
    index.insert(a, 1, 2, BS, b"")
    index.insert(b, 0, 3, BS // 2, b"")
    dead, _ = index.insert(a, 1, 4, BS, b"")  # the same block written again (another process)
    assert dead == []  # same bytes at the same place: the first record stays
    assert index.usage().bytes == 2 * BS + BS // 2
    assert index.usage().blocks == 3
    assert index.usage("b").bytes == 2 * BS
    assert index.usage("other").blocks == 1
    assert index.get(a.block_key(1)).generation == 2  # type: ignore[union-attr]
    index.close()


def test_eviction_runs_past_high_water_down_to_low_water_oldest_first(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import warpdrive.cache.index as mod

    clock = iter(range(1_000_000, 2_000_000, 10_000))
    monkeypatch.setattr(mod, "now_ms", lambda: next(clock))
    index = _index(tmp_path)  # high 9 MiB, low 5 MiB
    obj = _obj("a", size=20 * BS)
    for i in range(9):
        dead, evicted = index.insert(obj, i, i, BS, b"")
        assert (dead, evicted) == ([], 0)
    index.touch({obj.block_key(0): next(clock), obj.block_key(1): next(clock)})  # recently used
    dead, evicted = index.insert(obj, 9, 9, BS, b"")
    assert evicted == 5
    assert index.usage().bytes == 5 * BS
    evicted_idx = sorted(int.from_bytes(k[-4:], "big") for k, _, _ in dead)
    assert evicted_idx == [2, 3, 4, 5, 6]  # least recently used; touched 0, 1 and new 9 stay
    assert sorted(dead) == sorted((obj.block_key(i), i * BS, BS) for i in evicted_idx)
    assert index.counters()["evictions"] == 5
    index.close()


def test_new_version_of_a_name_drops_the_old_versions_blocks(tmp_path: Path) -> None:
    index = _index(tmp_path, 100 * BS)
    old, new = _obj("k", etag="v1"), _obj("k", etag="v2")
    index.insert(old, 0, 1, BS, b"")
    index.insert(old, 1, 2, BS, b"")
    dead, _ = index.insert(new, 0, 3, BS, b"")
    assert sorted(dead) == sorted([(old.block_key(0), 0, BS), (old.block_key(1), BS, BS)])
    assert index.get(old.block_key(0)) is None
    assert index.object(old.oid) is None
    assert index.object(new.oid).etag == "v2"  # type: ignore[union-attr]
    assert index.usage().blocks == 1
    index.close()


def test_remove_checks_the_generation_and_forgets_empty_objects(tmp_path: Path) -> None:
    index = _index(tmp_path, 100 * BS)
    obj = _obj("k")
    index.insert(obj, 2, 7, BS, b"")
    assert index.remove(obj.block_key(2), generation=8) == []  # a newer write: kept
    assert index.remove(obj.block_key(2), generation=7) == [(obj.block_key(2), 2 * BS, BS)]
    assert index.object(obj.oid) is None
    assert index.usage().bytes == 0
    index.close()


def test_reconcile_drops_records_without_matching_files_and_recounts(tmp_path: Path) -> None:
    index = _index(tmp_path, 100 * BS)
    a, b, c = _obj("a"), _obj("b"), _obj("c")
    for i in range(3):
        index.insert(a, i, 10 + i, BS, b"")
        index.insert(c, i, 30 + i, BS, b"")
    index.insert(b, 0, 20, BS, b"")
    files = {a.oid: 8 * BS, c.oid: 2 * BS}  # b has no file; c's is cut after block 1
    dropped, keep = index.reconcile(files)
    assert dropped == 2
    assert keep == {a.oid, c.oid}
    assert index.get(c.block_key(2)) is None and index.get(c.block_key(1)) is not None
    assert index.usage().bytes == 5 * BS and index.usage("b").bytes == 5 * BS
    assert index.object(b.oid) is None
    index.close()


def _insert_many(path: str, backend: str, n: int) -> None:
    index = CacheIndex(path, 1 << 40, 0.9, 0.8)
    obj = ObjectVersion(backend, "k", "e", n * BS, 0.0, BS)
    for i in range(n):
        index.insert(obj, i, i, BS, b"")
        index.add_counters({"hits": 1})
    index.close()


def test_several_processes_share_one_index_consistently(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_insert_many, args=(str(tmp_path), f"p{i}", 50)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    index = _index(tmp_path, 1 << 40)
    assert index.usage().blocks == 200
    assert index.usage().bytes == 200 * BS
    assert index.counters()["hits"] == 200
    assert all(index.usage(f"p{i}").blocks == 50 for i in range(4))
    index.close()


def test_two_instances_in_one_process_share_the_environment(tmp_path: Path) -> None:
    one, two = _index(tmp_path, 100 * BS), _index(tmp_path, 100 * BS)
    one.insert(_obj("a"), 0, 1, BS, b"")
    assert two.contains(_obj("a").block_key(0))
    one.close()
    assert two.usage().blocks == 1  # still open for the other user
    two.close()


def test_iterating_objects_and_blocks_reads_in_batches(tmp_path: Path) -> None:
    index = _index(tmp_path, 1 << 40)
    objs = [_obj(f"k{i}", size=3 * BS) for i in range(5)]
    for obj in objs:
        for b in range(3):
            index.insert(obj, b, b, BS, b"")
    assert sorted(o.key for o in index.iter_objects()) == [f"k{i}" for i in range(5)]
    everything = list(index._scan(index.blocks, b"", batch=4))  # several transactions
    assert len(everything) == 15
    assert [int.from_bytes(k[-4:], "big") for k, _ in index.iter_blocks(objs[2].oid)] == [0, 1, 2]
    index.close()


def test_confirmations_move_forward_only_for_the_cached_version(tmp_path: Path) -> None:
    index = _index(tmp_path, 100 * BS)
    a = _obj("d/a")
    index.insert(a, 0, 1, BS, b"")
    first = index.newest("b", "d/a")
    assert first is not None and first.confirmed_at == first.cached_at  # the fetch confirmed it
    later = first.confirmed_at + 100
    seen = {
        ("b", "d/a"): ("e2", later),  # another version: says nothing of the cached one
        ("b", "d/not-cached"): ("e1", later),  # most names a listing shows
        ("other", "d/a"): ("e1", later),
    }
    assert index.confirm(seen) == 0
    assert index.confirm({("b", "d/a"): ("e1", later)}) == 1
    assert index.confirm({("b", "d/a"): ("e1", later - 50)}) == 0  # never backwards
    record = index.newest("b", "d/a")
    assert record is not None and record.confirmed_at == later
    assert record.cached_at == first.cached_at
    index.close()


def test_children_lists_one_level_of_what_is_cached(tmp_path: Path) -> None:
    index = _index(tmp_path, 100 * BS)
    keys = ["top", "d/a", "d/b", "d/sub/x", "d/sub/deeper/y", "d/sub0", "d/tub/z", "e/q"]
    for i, key in enumerate(keys):
        index.insert(_obj(key), 0, i, 100, b"")
    index.insert(_obj("d/a", backend="other"), 0, 99, 100, b"")
    dirs, objects = index.children("b", "d/", batch=2)  # several transactions
    assert dirs == ["sub", "tub"]
    assert [r.key for r in objects] == ["d/a", "d/b", "d/sub0"]
    dirs, objects = index.children("b", "")
    assert (dirs, [r.key for r in objects]) == (["d", "e"], ["top"])
    assert index.children("b", "nothing/") == ([], [])
    assert index.cached_under("b", "d/sub/") and index.cached_under("b", "e/")
    assert not index.cached_under("b", "d/a/") and not index.cached_under("b", "f/")
    index.close()
