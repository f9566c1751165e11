"""The read path's seams: closed handles reported to observers (governance observes, the read path
never imports it), and the admin facade apart from the read facade."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest

from warpdrive import Admin, Config, WarpDrive, parse_config
from warpdrive.read.reader import ClosedHandle
from warpdrive.read.stream import Stream

BS = 512 * 1024  # three blocks: above the size fetched whole (warpdrive.read.fetch.SMALL_OBJECT)


class Recorder:
    """An observer (built per process from the config, as the read path builds them)."""

    seen: ClassVar[list[ClosedHandle]] = []
    closed_count: ClassVar[int] = 0

    def __init__(self, config: Config) -> None:
        self.config = config

    def closed(self, record: ClosedHandle) -> None:
        Recorder.seen.append(record)

    def close(self) -> None:
        Recorder.closed_count += 1


class Broken(Recorder):
    def closed(self, record: ClosedHandle) -> None:
        raise RuntimeError("an observer that fails")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Config, bytes]:
    Recorder.seen, Recorder.closed_count = [], 0
    source = tmp_path / "src"
    source.mkdir()
    payload = os.urandom(3 * BS)
    (source / "f.bin").write_bytes(payload)
    cfg = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 512KB,"
        " readahead_blocks: 0, scan_prefetch: false}\n"
        f"backends: [{{name: s, type: local, config: {{root: {source}}}}}]\n",
        env={},
    )
    return cfg, payload


def _read_by_block(wd: WarpDrive, user: str, team: str | None) -> bytes:
    handle = wd.open_handle("/s/f.bin", team, user)
    try:
        return b"".join(bytes(handle.pread(i * BS, BS) or b"") for i in range(3))
    finally:
        handle.close()


def test_a_closed_handle_reaches_the_observers_with_its_hits_and_fetches(
    setup: tuple[Config, bytes],
) -> None:
    cfg, payload = setup
    with WarpDrive(cfg, observers=[Recorder]) as wd:
        assert _read_by_block(wd, "alice", "vision") == payload  # cold: every block fetched
        assert _read_by_block(wd, "bob", None) == payload  # warm: every block from the cache
        wd.open_handle("/s/f.bin").close()  # read nothing: nothing to report
    cold, warm = Recorder.seen
    assert (cold.backend, cold.key, cold.user, cold.team) == ("s", "f.bin", "alice", "vision")
    assert (cold.bytes_read, cold.cache_bytes, cold.hits, cold.fetched) == (3 * BS, 0, 0, 3)
    assert (warm.user, warm.team) == ("bob", None)
    assert (warm.bytes_read, warm.cache_bytes, warm.hits, warm.fetched) == (3 * BS, 3 * BS, 3, 0)
    assert cold.etag == warm.etag
    assert Recorder.closed_count == 1  # closing the reader closed its observer once


def test_an_observer_that_fails_never_fails_a_read_or_a_close(
    setup: tuple[Config, bytes],
) -> None:
    cfg, payload = setup
    with WarpDrive(cfg, observers=[Broken, Recorder]) as wd:
        assert _read_by_block(wd, "alice", None) == payload
    assert [r.fetched for r in Recorder.seen] == [3]  # the next observer was still told


def test_no_observers_means_no_access_records(setup: tuple[Config, bytes]) -> None:
    cfg, payload = setup
    with WarpDrive(cfg, observers=[]) as wd:
        assert wd.read("/s/f.bin") == payload
        with wd.open("/s/f.bin") as f:
            assert f.read() == payload
    root = Admin(cfg).cache_root
    assert not os.path.exists(os.path.join(root, "governance.sqlite"))


def test_the_admin_facade_evicts_what_the_read_facade_cached(
    setup: tuple[Config, bytes],
) -> None:
    cfg, payload = setup
    with WarpDrive(cfg, observers=[]) as wd:
        assert wd.read("/s/f.bin") == payload
        obj = wd.version("/s/f.bin")
        assert all(wd.cached(obj, i) for i in range(3))
        with Admin(cfg) as admin:
            assert admin.usage().blocks == 3
            assert admin.evict([obj.oid]) == 3
            assert admin.usage().blocks == 0
        assert not any(wd.cached(obj, i) for i in range(3))
        assert wd.read("/s/f.bin") == payload  # fetched again
    assert not hasattr(WarpDrive, "evict") and not hasattr(WarpDrive, "index")


def test_a_short_read_inside_the_object_is_an_error_never_a_short_reply(
    setup: tuple[Config, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount would reply with it, and the kernel takes a short reply for the end of the
    read and fills the rest of its pages with zeros. An injected fault: the stream's real read,
    one byte short."""
    import errno

    from warpdrive.errors import BackendError

    cfg, payload = setup
    with WarpDrive(cfg, observers=[]) as wd:
        handle = wd.open_handle("/s/f.bin")
        try:
            assert handle.pread(BS, 4096) == payload[BS : BS + 4096]  # cached now, verified
            real_read = Stream.read
            monkeypatch.setattr(Stream, "read", lambda s, o, n: real_read(s, o, n)[:-1])
            with pytest.raises(
                BackendError, match="a read of 4096 bytes at 524288 gave 4095"
            ) as err:
                handle.pread(BS, 4096)
            assert err.value.errno == errno.EIO
        finally:
            handle.close()
