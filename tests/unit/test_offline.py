"""A backend that cannot be reached: the versions, directories and listings the cache index holds
are the answers, within ``cache.offline_max_age`` of their last confirmation, counted and logged
once; anything else fails as before. A local backend behind a client whose every call can be
made to fail to connect (what a stopped server does); tests/integration/test_outage.py does the
same with Azurite stopped, in DataLoader workers and through a remounted mount."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from warpdrive import BackendUnavailableError, WarpDrive, parse_config
from warpdrive.admin import Admin
from warpdrive.backends import RetryingBackend, RetryPolicy
from warpdrive.backends.base import ObjectClient
from warpdrive.backends.wrappers import CountingClient, FaultInjectingClient
from warpdrive.errors import NotFoundError, TransientBackendError, WarpDriveError
from warpdrive.metrics import Metrics

FILES = {
    "train/c0/a.bin": os.urandom(300_000),
    "train/c0/b.bin": os.urandom(70_000),
    "train/c1/c.bin": os.urandom(5_000),
    "top.bin": b"top" * 100,
}


class Outage:
    """A fault plan: while ``down``, every call fails as a refused connection does."""

    def __init__(self) -> None:
        self.down = False

    def __call__(self, op: str, key: str) -> WarpDriveError | None:
        if not self.down:
            return None
        return TransientBackendError(f"{key!r}: connection refused (injected)", kind="connection")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for key, data in FILES.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    (root / "train" / "c0" / "uncached.bin").write_bytes(b"never read")
    return root


def config_text(tmp_path: Path, **cache: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in cache.items())
    return (
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 16MB, block_size: 64KB{extra}}}\n"
        "fetch: {max_attempts: 3, initial_backoff: 300ms, max_backoff: 300ms}\n"
        f"backends: [{{name: s, type: local, config: {{root: {tmp_path / 'src'}}}}}]\n"
    )


def reader(
    tmp_path: Path, outage: Outage, counting: list[CountingClient], **cache: str
) -> WarpDrive:
    def wrap(client: ObjectClient) -> ObjectClient:
        counting.append(CountingClient(FaultInjectingClient(client, outage)))
        return counting[-1]

    return WarpDrive(parse_config(config_text(tmp_path, **cache), env={}), wrap_client=wrap)


def warm(tmp_path: Path) -> None:
    """Cache every file (and list the directories) as an earlier job did."""
    with WarpDrive(parse_config(config_text(tmp_path), env={})) as wd:
        for key, data in FILES.items():
            assert wd.read(f"/s/{key}") == data
        wd.listdir("/s/train/c0")


def offline_served(wd: WarpDrive) -> float:
    value = wd.metrics.registry.get_sample_value("warpdrive_offline_served_total", {"backend": "s"})
    return value or 0.0


def test_a_new_reader_serves_cached_objects_directories_and_listings_in_an_outage(
    tmp_path: Path, source: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warm(tmp_path)
    outage, counting = Outage(), []
    outage.down = True
    caplog.set_level(logging.WARNING, logger="warpdrive.read.namespace")
    with reader(tmp_path, outage, counting) as wd:
        for key, data in FILES.items():  # a new process: versions from the index
            assert wd.read(f"/s/{key}") == data
            with wd.open(f"/s/{key}") as f:
                assert f.read() == data
        # Directories: there is a cached object under them.
        assert wd.stat("/s/train").is_dir and wd.stat("/s/train/c0").is_dir
        # Listings: what the cache holds (partial: the uncached file is not there).
        assert [(e.name, e.is_dir) for e in wd.listdir("/s/train")] == [
            ("c0", True),
            ("c1", True),
        ]
        c0 = wd.listdir("/s/train/c0")
        assert [(e.name, e.size) for e in c0] == [("a.bin", 300_000), ("b.bin", 70_000)]
        assert sorted(info.path for info in wd.walk("/s")) == sorted(f"/s/{k}" for k in FILES)
        # What is not cached fails as before: the backend is asked, and cannot answer.
        with pytest.raises(BackendUnavailableError, match="connection refused"):
            wd.read("/s/train/c0/uncached.bin")
        with pytest.raises(BackendUnavailableError):
            wd.stat("/s/nowhere")
        assert offline_served(wd) >= 3  # at least the listings and the walk's directories
        assert wd.backends["s"].unreachable() is not None
    logged = [r.message for r in caplog.records if "cannot be reached" in r.message]
    assert len(logged) == 1, logged  # once per outage, however many answers
    assert "answering from the cache what a backend confirmed within 1d" in logged[0]


def test_in_an_outage_directory_answers_and_listings_wait_for_no_retries(
    tmp_path: Path, source: Path
) -> None:
    warm(tmp_path)
    outage, counting = Outage(), []
    outage.down = True
    with reader(tmp_path, outage, counting) as wd:
        started = time.monotonic()
        assert [e.name for e in wd.listdir("/s/train/c1")] == ["c.bin"]
        first = time.monotonic() - started
        assert first >= 0.25  # it met the outage: its retries (2 backoffs of 150-300 ms)
        calls = counting[0].calls["list"]
        started = time.monotonic()
        for _ in range(20):
            assert [e.name for e in wd.listdir("/s/train/c0")][:1] == ["a.bin"]
            assert wd.stat("/s/train/c1").is_dir
            assert wd.read("/s/train/c1/c.bin") == FILES["train/c1/c.bin"]
        assert time.monotonic() - started < 0.5  # no call waited on retries
        # Background listings probe (one per directory at most every 5 s: train, train/c0,
        # train/c1, three attempts each), but no answer asked the backend itself.
        assert counting[0].calls["list"] - calls <= 3 * 3
        assert counting[0].calls["stat"] == 0


def test_when_the_backend_answers_again_its_answers_count_again(
    tmp_path: Path, source: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warm(tmp_path)
    outage, counting = Outage(), []
    outage.down = True
    caplog.set_level(logging.WARNING, logger="warpdrive.read.namespace")
    with reader(tmp_path, outage, counting, list_ttl="0s") as wd:
        assert [e.name for e in wd.listdir("/s/train/c0")] == ["a.bin", "b.bin"]  # partial
        outage.down = False
        wd.backends["s"].stat("top.bin")  # any answer ends the outage
        assert wd.backends["s"].unreachable() is None
        names = [e.name for e in wd.listdir("/s/train/c0")]
        assert names == ["a.bin", "b.bin", "uncached.bin"]
        assert wd.read("/s/train/c0/uncached.bin") == b"never read"
    assert any("answers again" in r.message for r in caplog.records)


def test_past_offline_max_age_a_cached_version_is_asked_about_first(
    tmp_path: Path, source: Path
) -> None:
    warm(tmp_path)
    time.sleep(1.2)  # every version was last confirmed over a second ago
    outage, counting = Outage(), []
    with reader(tmp_path, outage, counting, offline_max_age="1s") as wd:
        outage.down = True
        with pytest.raises(BackendUnavailableError, match=r"longer than cache\.offline_max_age"):
            wd.read("/s/train/c0/a.bin")
        with pytest.raises(BackendUnavailableError):
            wd.listdir("/s/train/c0")  # a listing from the index shows only versions within it
        outage.down = False
        # With the backend there, the version is confirmed (one stat) and served.
        assert wd.read("/s/train/c0/a.bin") == FILES["train/c0/a.bin"]
        assert counting[0].calls["stat"] >= 1
        wd.flush()
        with Admin(wd.config) as admin:
            record = admin.index.newest("s", "train/c0/a.bin")
        assert record is not None and time.time() - record.confirmed_at < 1.0
    # The confirmation is in the index: a new process serves it in an outage again.
    outage, counting = Outage(), []
    outage.down = True
    with reader(tmp_path, outage, counting, offline_max_age="1s") as wd:
        assert wd.read("/s/train/c0/a.bin") == FILES["train/c0/a.bin"]


def test_offline_max_age_zero_answers_nothing_past_stale_ttl(tmp_path: Path, source: Path) -> None:
    warm(tmp_path)
    outage, counting = Outage(), []
    outage.down = True
    with reader(tmp_path, outage, counting, offline_max_age="0s") as wd:
        with pytest.raises(BackendUnavailableError):
            wd.read("/s/top.bin")
        with pytest.raises(BackendUnavailableError):
            wd.stat("/s/train")
        assert offline_served(wd) == 0


def test_an_object_a_listing_no_longer_shows_is_not_answered_from_the_index(
    tmp_path: Path, source: Path
) -> None:
    warm(tmp_path)
    (source / "train" / "c1" / "c.bin").unlink()
    outage, counting = Outage(), []
    with reader(tmp_path, outage, counting, stale_ttl="1s") as wd:
        # A new process answers with the cached version (fresh for stale_ttl after the backend
        # last showed it, then while one listing revalidates it)...
        assert wd.read("/s/train/c1/c.bin") == FILES["train/c1/c.bin"]
        deadline = time.monotonic() + 10
        while True:  # ...and once that listing showed it gone, the backend is asked
            try:
                wd.read("/s/train/c1/c.bin")
            except NotFoundError:
                break
            assert time.monotonic() < deadline, "still answered from the index"
            time.sleep(0.05)


def test_a_new_process_asks_nothing_within_stale_ttl_of_the_last_confirmation(
    tmp_path: Path, source: Path
) -> None:
    """A version the index holds is as fresh as when a backend last showed it: a DataLoader
    worker started right after its parent cached the files reads them without one request
    (not even the client's import); once stale_ttl has passed since, one listing revalidates."""
    warm(tmp_path)
    outage, counting = Outage(), []
    with reader(tmp_path, outage, counting, stale_ttl="3s") as wd:
        assert wd.read("/s/train/c0/a.bin") == FILES["train/c0/a.bin"]
        assert wd.read("/s/top.bin") == FILES["top.bin"]
        assert not wd._core.namespace._relisting, "a revalidation was asked for"
        assert sum(counting[0].calls.values()) == 0, counting[0].calls
    with Admin(wd.config) as admin:
        record = admin.index.newest("s", "train/c0/a.bin")
    assert record is not None
    wait = record.confirmed_at + 3.1 - time.time()
    if wait > 0:
        time.sleep(wait)  # the contract under test is a time: past stale_ttl since confirmed
    outage, counting = Outage(), []
    with reader(tmp_path, outage, counting, stale_ttl="3s") as wd:
        assert wd.read("/s/train/c0/a.bin") == FILES["train/c0/a.bin"]  # stale: served
        deadline = time.monotonic() + 10
        while counting[0].calls["list"] == 0:
            assert time.monotonic() < deadline, "no revalidating listing"
            time.sleep(0.02)
        assert counting[0].calls["stat"] == 0


def test_the_backend_knows_when_it_cannot_be_reached() -> None:
    class Failing(ObjectClient):
        def __init__(self) -> None:
            super().__init__("f", "local")
            self.error: WarpDriveError | None = None

        def stat(self, key: str):  # type: ignore[no-untyped-def]
            if self.error is not None:
                raise self.error
            raise NotFoundError(key)

        def list_page(self, prefix: str, token: str | None):  # type: ignore[no-untyped-def]
            return self.stat(prefix)

        def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
            return self.stat(key)  # type: ignore[no-any-return]

    client = Failing()
    backend = RetryingBackend(
        client, RetryPolicy(max_attempts=2), Metrics().backend("f"), sleep=lambda _: None
    )
    assert backend.unreachable() is None
    client.error = TransientBackendError("503", kind="server")
    with pytest.raises(BackendUnavailableError):
        backend.stat("k")
    assert backend.unreachable() is None  # there, only failing: not an outage
    client.error = TransientBackendError("refused", kind="connection")
    with pytest.raises(BackendUnavailableError):
        backend.stat("k")
    outage = backend.unreachable()
    assert outage is not None and "refused" in outage.cause
    client.error = TransientBackendError("timed out", kind="timeout")
    with pytest.raises(TransientBackendError):
        backend.probe()  # one attempt (health checks): the same outage goes on
    assert backend.unreachable() == type(outage)(outage.since, "timed out")
    client.error = None
    with pytest.raises(NotFoundError):
        backend.stat("k")  # an answer: the store is there
    assert backend.unreachable() is None
