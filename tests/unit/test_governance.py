"""Teams, quotas and access records: hard limits evict the team's own blocks, quotas and team
assignments persist in the index, reads are aggregated rather than logged one by one."""

from __future__ import annotations

import os
from pathlib import Path

from warpdrive.cache import Quota
from warpdrive.cache.accounts import quota_status
from warpdrive.cache.index import CacheIndex
from warpdrive.cache.keys import ObjectVersion
from warpdrive.governance.store import GovernanceStore

BS = 1 << 20


def _obj(key: str, backend: str = "b") -> ObjectVersion:
    return ObjectVersion(backend, key, "e1", 64 * BS, 0.0, BS)


def _index(tmp_path: Path, max_size: int = 100 * BS) -> CacheIndex:
    return CacheIndex(str(tmp_path), max_size, 0.9, 0.5)


def _blocks_of(index: CacheIndex, obj: ObjectVersion) -> list[int]:
    return sorted(int.from_bytes(k[-4:], "big") for k, _ in index.iter_blocks(obj.oid))


def test_a_team_over_its_hard_limit_evicts_its_own_oldest_blocks(tmp_path: Path) -> None:
    index = _index(tmp_path)
    index.set_quota(Quota("vision", "", soft=2 * BS, hard=4 * BS))
    mine, theirs = _obj("mine"), _obj("theirs")
    for i in range(3):  # older than anything vision caches
        index.insert(theirs, i, i, BS, b"", team="nlp")
    for i in range(10):
        index.insert(mine, i, 100 + i, BS, b"", team="vision")
        assert index.team_usage()["vision"].bytes <= 4 * BS
    assert _blocks_of(index, theirs) == [0, 1, 2]  # never another team's
    kept = _blocks_of(index, mine)
    assert kept[-1] == 9 and kept == list(range(10 - len(kept), 10))  # the newest stayed
    [(quota, usage)] = index.quotas()
    assert quota_status(quota, usage) == "WARNING"
    index.close()


def test_a_backend_quota_counts_only_that_backends_blocks(tmp_path: Path) -> None:
    index = _index(tmp_path)
    index.set_quota(Quota("vision", "east", soft=BS, hard=2 * BS))
    east, west = _obj("x", "east"), _obj("x", "west")
    for i in range(5):
        index.insert(west, i, i, BS, b"", team="vision")
        index.insert(east, i, 10 + i, BS, b"", team="vision")
    assert index.team_usage("east")["vision"].bytes <= 2 * BS
    assert index.team_usage("west")["vision"].bytes == 5 * BS
    index.close()


def test_lowering_a_quota_evicts_at_once_and_quotas_and_teams_survive_reopening(
    tmp_path: Path,
) -> None:
    index = _index(tmp_path)
    obj = _obj("a")
    for i in range(8):
        index.insert(obj, i, i, BS, b"", team="vision")
    _, evicted = index.set_quota(Quota("vision", "", soft=BS, hard=3 * BS))
    assert evicted >= 5 and index.team_usage()["vision"].bytes <= 3 * BS
    index.set_user_team("alice", "vision")
    index.close()

    again = _index(tmp_path)
    [(quota, usage)] = again.quotas()
    assert quota == Quota("vision", "", BS, 3 * BS) and usage.bytes <= 3 * BS
    assert again.user_team("alice") == "vision"
    assert again.remove_quota("vision", "") and again.quotas() == []
    again.close()


def test_many_reads_of_one_file_make_one_access_record(tmp_path: Path) -> None:
    from warpdrive import Admin, WarpDrive, parse_config

    source = tmp_path / "src"
    source.mkdir()
    payload = os.urandom(3 * 256 * 1024)
    (source / "f.bin").write_bytes(payload)
    cfg = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 256KB}}\n"
        "governance: {access_flush_interval: 1h}\n"
        f"backends: [{{name: s, type: local, config: {{root: {source}}}}}]\n",
        env={},
    )
    with WarpDrive(cfg) as wd:
        for _ in range(200):
            with wd.open("/s/f.bin") as f:
                assert f.read() == payload
        root = Admin(cfg).cache_root
    store = GovernanceStore(root)  # closing the WarpDrive wrote the pending records
    try:
        rows = store.db.execute("SELECT key, bytes, cache_bytes, opens FROM access").fetchall()
        [usage] = store.usage("backend", None)
    finally:
        store.close()
    [(key, nbytes, cache_bytes, opens)] = rows
    assert (key, nbytes, opens) == ("f.bin", 200 * len(payload), 200)
    # every read after the first came from the cache (the first may have, once prefetched)
    assert 199 * len(payload) <= cache_bytes <= nbytes
    assert usage["files_accessed"] == 1 and usage["hit_ratio"] >= 199 / 200
