"""Fetcher and prefetcher logic over a real local backend: singleflight, parallelism, coalescing,
priorities, the readahead state machine and hints."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Store
from warpdrive.backends.base import ObjectClient
from warpdrive.backends.wrappers import CountingClient
from warpdrive.cache.keys import ObjectVersion
from warpdrive.read.prefetch import Readahead, ReadPattern

KB = 1024


class SlowClient(CountingClient):
    """Counts calls, and holds each read for ``delay`` seconds (a far-away store)."""

    def __init__(self, inner: ObjectClient, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay
        self.active = 0
        self.peak = 0
        self._gauge = threading.Lock()

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        with self._gauge:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            return super().read_range(key, start, end, etag)
        finally:
            with self._gauge:
                self.active -= 1


def _slow(delay: float) -> tuple[list[SlowClient], object]:
    made: list[SlowClient] = []

    def wrap(client: ObjectClient) -> ObjectClient:
        made.append(SlowClient(client, delay))
        return made[-1]

    return made, wrap


def test_concurrent_readers_of_a_missing_block_cause_one_request(local_store: Store) -> None:
    data = os.urandom(256 * KB)
    local_store.put("obj", data)
    made, wrap = _slow(0.3)
    wd = local_store.reader(readahead_blocks=0, wrap_client=wrap)
    results: list[bytes] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(wd.read(local_store.path("obj"), 1000, 5000))
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data[1000:6000]] * 8
    assert made[0].calls["read"] == 1
    wd.close()


def test_a_large_read_fetches_its_blocks_in_parallel(local_store: Store) -> None:
    data = os.urandom(16 * 256 * KB)
    local_store.put("big", data)
    made, wrap = _slow(0.2)
    wd = local_store.reader(readahead_blocks=0, max_parallel_fetch=16, wrap_client=wrap)
    assert wd.read(local_store.path("big")) == data
    assert made[0].peak >= 8, made[0].peak  # many of its 16 requests were in flight at once
    wd.close()


def test_parallelism_is_bounded_by_max_parallel_fetch(local_store: Store) -> None:
    local_store.put("big", os.urandom(32 * 256 * KB))
    made, wrap = _slow(0.05)
    wd = local_store.reader(readahead_blocks=0, max_parallel_fetch=4, wrap_client=wrap)
    wd.read(local_store.path("big"))
    assert made[0].peak <= 4
    wd.close()


class HangingClient(CountingClient):
    """Reads of one key hang until ``release`` is set (or 10 s pass): a stalled object."""

    def __init__(self, inner: ObjectClient, key: str) -> None:
        super().__init__(inner)
        self.key = key
        self.release = threading.Event()

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        data = super().read_range(key, start, end, etag)
        if key == self.key:
            self.release.wait(10)
        return data


def test_a_large_read_of_a_stalled_object_leaves_workers_for_the_others(
    local_store: Store,
) -> None:
    """One read of 16 blocks of an object whose requests all hang would take every worker;
    it gets three quarters of them, and a read of another object goes through meanwhile."""
    local_store.put("stuck", os.urandom(16 * 256 * KB))
    other = os.urandom(256 * KB)
    local_store.put("other", other)
    made: list[HangingClient] = []

    def wrap(client: ObjectClient) -> ObjectClient:
        made.append(HangingClient(client, "stuck"))
        return made[-1]

    wd = local_store.reader(readahead_blocks=0, max_parallel_fetch=8, wrap_client=wrap)
    stuck = threading.Thread(target=wd.read, args=(local_store.path("stuck"),))
    stuck.start()
    try:
        deadline = time.monotonic() + 5
        while made[0].calls["read"] < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert wd.read(local_store.path("other")) == other
        assert time.monotonic() - started < 5  # not behind the hanging requests
        assert sum(key == "stuck" for key, _, _ in made[0].ranges) == 6  # 3/4 of 8 workers
    finally:
        made[0].release.set()
        stuck.join()
    wd.close()


def test_adjacent_missing_blocks_are_coalesced_up_to_coalesce_size(local_store: Store) -> None:
    data = os.urandom(8 * 256 * KB)
    local_store.put("obj", data)
    made, wrap = _slow(0.0)
    # One worker: eight requests would queue one behind the other, so one 2 MB request pays.
    wd = local_store.reader(readahead_blocks=0, max_parallel_fetch=1, wrap_client=wrap)
    assert wd.read(local_store.path("obj")) == data
    assert made[0].calls["read"] == 1
    assert made[0].ranges == [("obj", 0, len(data))]
    wd.close()


def test_sequential_reader_gets_readahead_and_counts_hits(local_store: Store) -> None:
    data = os.urandom(20 * 256 * KB)
    local_store.put("seq", data)
    made, wrap = _slow(0.02)
    wd = local_store.reader(readahead_blocks=4, wrap_client=wrap)
    with wd.open(local_store.path("seq")) as f:
        chunks = []
        while chunk := f.read(64 * KB):
            chunks.append(chunk)
    assert b"".join(chunks) == data
    totals = wd.metrics.totals()
    assert totals["readahead_hits"] >= 15  # nearly every block after the first came from readahead
    assert totals["readahead_wasted"] == 0
    assert made[0].calls["read"] == 20
    wd.close()


def test_random_reader_gets_no_readahead(local_store: Store) -> None:
    data = os.urandom(40 * 256 * KB)
    local_store.put("rnd", data)
    made, wrap = _slow(0.0)
    wd = local_store.reader(readahead_blocks=8, wrap_client=wrap)
    with wd.open(local_store.path("rnd"), buffering=0) as f:
        for block in (30, 2, 17, 9, 25):
            f.seek(block * 256 * KB + 100)
            assert f.read(1000) == data[block * 256 * KB + 100 : block * 256 * KB + 1100]
    assert made[0].calls["read"] <= 5 + 8  # the first read at 0 never happened: no window
    wd.close()


def test_readahead_state_machine() -> None:
    obj = ObjectVersion("b", "k", "e", 100 * 1024, 0, 1024)
    ra = Readahead(obj, window=4)
    assert ra.state is ReadPattern.IDLE
    assert list(ra.on_read(0, 512)) == [1, 2, 3, 4]
    assert ra.state is ReadPattern.SEQUENTIAL
    assert list(ra.on_read(512, 1024)) == []  # still inside block 0: window already out
    assert list(ra.on_read(1024, 2048)) == [5]
    assert list(ra.on_read(60 * 1024, 61 * 1024)) == []
    assert ra.state is ReadPattern.RANDOM
    assert list(ra.on_read(61 * 1024, 62 * 1024)) == [62, 63, 64, 65]  # sequential again
    assert ra.state is ReadPattern.SEQUENTIAL
    assert list(ra.on_read(99 * 1024, 100 * 1024)) == []  # end of object: nothing past it


def test_prefetch_hints_fill_the_cache_in_the_background(local_store: Store) -> None:
    files = {f"shard-{i}.tar": os.urandom(600 * KB) for i in range(4)}
    for key, data in files.items():
        local_store.put(key, data)
    made, wrap = _slow(0.0)
    wd = local_store.reader(wrap_client=wrap)
    wd.prefetch([local_store.path(k) for k in files] + [(local_store.path("shard-0.tar"), 0, 10)])
    deadline = time.monotonic() + 10
    while made[0].calls["read"] < 4 * 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = made[0].calls["read"]
    for key, data in files.items():
        assert wd.read(local_store.path(key)) == data
    assert made[0].calls["read"] == before  # every block was there already
    assert wd.metrics.totals()["readahead_hits"] > 0
    wd.close()


def test_hints_for_missing_paths_are_ignored(local_store: Store, tmp_path: Path) -> None:
    local_store.put("real", b"x" * 1000)
    wd = local_store.reader()
    wd.prefetch(["/src/nope", "/elsewhere/x", local_store.path("real")])
    time.sleep(0.3)
    assert wd.read(local_store.path("real")) == b"x" * 1000
    wd.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_demand_reads_overtake_queued_prefetch(local_store: Store, workers: int) -> None:
    for i in range(6):
        local_store.put(f"h{i}", os.urandom(1024 * KB))
    local_store.put("urgent", b"u" * 1000)
    made, wrap = _slow(0.05)
    wd = local_store.reader(max_parallel_fetch=workers, readahead_blocks=0, wrap_client=wrap)
    wd.prefetch([local_store.path(f"h{i}") for i in range(6)])  # 24 hint requests queued
    while made[0].calls["read"] == 0:
        time.sleep(0.01)
    assert wd.read(local_store.path("urgent")) == b"u" * 1000
    order = [key for key, _, _ in made[0].ranges]
    served_before = order.index("urgent")
    # Of the 24 hint requests queued before it, only those already running went first.
    assert served_before <= workers + 2, order
    wd.close()


def test_scanning_a_directory_prefetches_its_next_files_and_the_other_regions(
    tmp_path: Path,
) -> None:
    from warpdrive import WarpDrive, parse_config

    regions = {"east": tmp_path / "east", "west": tmp_path / "west"}
    files = {}
    for i in range(6):
        region = "east" if i % 2 == 0 else "west"
        path = regions[region] / "train" / f"shard-{i:03d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        files[f"/{region}/train/{path.name}"] = os.urandom(300 * KB)
        path.write_bytes(files[f"/{region}/train/{path.name}"])
    made: list[SlowClient] = []

    def wrap(client: ObjectClient) -> ObjectClient:
        made.append(SlowClient(client, 0.0))
        return made[-1]

    cfg = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 256KB}}\nbackends:\n"
        + "".join(
            f"  - {{name: {r}, type: local, config: {{root: {p}}}}}\n" for r, p in regions.items()
        ),
        env={},
    )
    with WarpDrive(cfg, wrap_client=wrap) as wd:
        with wd.open("/east/train/shard-000.tar") as f:  # the first file: a scan begins
            f.read(10)
        others = {f"train/shard-{i:03d}.tar" for i in range(1, 6)}
        deadline = time.monotonic() + 10
        covered: dict[str, int] = {}
        while time.monotonic() < deadline:
            covered = {}
            for c in made:
                for key, start, end in list(c.ranges):
                    covered[key] = covered.get(key, 0) + end - start
            if all(covered.get(k, 0) >= 300 * KB for k in others):
                break
            time.sleep(0.05)
        fetched = set(covered)
        # east's next files, and west's (the same directory in the other region), unopened
        assert {"train/shard-002.tar", "train/shard-004.tar"} <= fetched
        assert {"train/shard-001.tar", "train/shard-003.tar", "train/shard-005.tar"} <= fetched
        before = sum(c.calls["read"] for c in made)
        for path, data in files.items():
            assert wd.read(path) == data
        assert sum(c.calls["read"] for c in made) == before


def test_background_work_is_shared_between_backends(tmp_path: Path) -> None:
    from warpdrive import WarpDrive, parse_config

    roots = {name: tmp_path / name for name in ("near", "far")}
    for root in roots.values():
        root.mkdir()
        for i in range(4):
            (root / f"f{i}").write_bytes(os.urandom(1024 * KB))
    made: dict[str, SlowClient] = {}

    def wrap(client: ObjectClient) -> ObjectClient:
        made[client.name] = SlowClient(client, 0.2)
        return made[client.name]

    cfg = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 256KB, max_parallel_fetch: 8}}\n"
        # Objects above coalesce_size: small ones are whole requests, held only to the share.
        "fetch: {coalesce_size: 256KB}\n"
        "backends:\n"
        + "".join(
            f"  - {{name: {n}, type: local, config: {{root: {p}}}}}\n" for n, p in roots.items()
        ),
        env={},
    )
    with WarpDrive(cfg, wrap_client=wrap) as wd:
        wd.prefetch([f"/near/f{i}" for i in range(4)])  # 16 blocks of near, queued first
        wd.prefetch([f"/far/f{i}" for i in range(4)])
        time.sleep(0.5)
        # far got its own workers although near's hints were queued before it; and hints run
        # at most two at a time per backend, so neither link is flooded.
        assert made["far"].peak >= 1
        assert made["near"].peak <= 2
        assert made["far"].peak <= 2


def test_a_directory_read_in_any_order_is_fetched_ahead_whole_once_many_at_a_time(
    tmp_path: Path,
) -> None:
    # Small files read in no name order (as a shuffled loader does): after two opens the
    # directory's other files are fetched ahead, one request per object, many in flight (the
    # name-order scan handed the fetcher two at a time, and only in name order).
    from warpdrive import WarpDrive, parse_config

    root = tmp_path / "src" / "train"
    root.mkdir(parents=True)
    files = {f"train/{i:04d}.jpg": os.urandom(100 * KB + i) for i in range(200)}
    for key, data in files.items():
        (tmp_path / "src" / key).write_bytes(data)
    made: list[SlowClient] = []

    def wrap(client: ObjectClient) -> ObjectClient:
        made.append(SlowClient(client, 0.1))
        return made[-1]

    cfg = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 256MB, block_size: 64KB}}\n"
        f"backends:\n  - {{name: ds, type: local, config: {{root: {tmp_path / 'src'}}}}}\n",
        env={},
    )
    with WarpDrive(cfg, wrap_client=wrap) as wd:
        for key in ("train/0150.jpg", "train/0070.jpg"):  # descending, neither the first
            with wd.open(f"/ds/{key}") as f:
                assert f.read() == files[key]
        client = made[0]
        deadline = time.monotonic() + 20
        while len({r[0] for r in client.ranges}) < len(files) and time.monotonic() < deadline:
            time.sleep(0.02)
        fetched = dict.fromkeys(files, 0)
        for key, start, end in list(client.ranges):
            fetched[key] += end - start
        assert fetched == {key: len(data) for key, data in files.items()}  # each byte once
        # One request per object (two blocks each), many of them at once.
        assert client.calls["read"] == len(files), client.calls
        assert client.peak >= 8, client.peak
        for key in ("train/0000.jpg", "train/0199.jpg"):
            assert wd.read(f"/ds/{key}") == files[key]
        assert client.calls["read"] == len(files)


def test_the_mount_core_answers_from_known_metadata_without_the_backend(
    local_store: Store,
) -> None:
    from warpdrive.config import HEALTH_FILE
    from warpdrive.fs import ROOT_INODE, WarpDriveFS

    local_store.put("train/a.jpg", b"a" * 1000)
    local_store.put("train/b.jpg", b"b" * 2000)
    made: list[CountingClient] = []

    def wrap(client: ObjectClient) -> ObjectClient:
        made.append(CountingClient(client))
        return made[-1]

    with local_store.reader(wrap_client=wrap) as wd:
        fs = WarpDriveFS(wd)
        top = fs.lookup(ROOT_INODE, local_store.name)  # a mount path: no call
        assert top.is_dir
        train = fs.lookup(top.ino, "train")
        dh = fs.opendir(train.ino)
        assert [name for name, _, _ in fs.readdir(dh, 0)] == ["a.jpg", "b.jpg"]
        before = sum(c.calls["stat"] for c in made)
        # The listing named both objects with their etags: lookup, getattr and open are
        # answered without a backend call.
        a = fs.lookup(train.ino, "a.jpg")
        assert a.size == 1000
        assert fs.getattr(a.ino) == a
        opened = fs.open(a.ino, os.O_RDONLY)
        assert bytes(fs.read(opened.fh, 0, 1000) or b"") == b"a" * 1000
        fs.release(opened.fh)
        # The health file: served by the core itself (no backend), nothing of it kept by the
        # kernel (volatile attributes, direct_io), and not listed.
        health = fs.lookup(ROOT_INODE, HEALTH_FILE)
        assert health.volatile and not health.is_dir
        assert fs.getattr(health.ino) == health
        opened = fs.open(health.ino, os.O_RDONLY)
        assert opened.direct_io and not opened.keep_cache
        content = f"ok {os.getpid()}\n".encode()
        assert bytes(fs.read(opened.fh, 0, 64) or b"") == content
        fs.release(opened.fh)
        root = fs.opendir(ROOT_INODE)
        assert [name for name, _, _ in fs.readdir(root, 0)] == [local_store.name]
        assert sum(c.calls["stat"] for c in made) == before
