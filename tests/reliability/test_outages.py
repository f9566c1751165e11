"""Backend outages as users meet them, through warpdrive.testing.faultproxy in front of Azurite:
one object stalled forever does not stall readers of the others (through the mount and
in-process); half of all requests answered 503 cost time, never an error to a reader; the
backend going down in the middle of ``ls`` of a large directory is an error (no hang, no short
listing passed off as the whole), and the mount lists the directory again once it is back.

Short in CI; as long as you like by hand (each fault phase ``WD_FAULT_SECONDS``, the directory
``WD_LS_ENTRIES`` entries; the figures in docs/reliability.md come from this command)::

    WD_FAULT_SECONDS=60 WD_LS_ENTRIES=100000 WD_RELIABILITY_REPORT=out.json \\
        python3 -m pytest -o timeout=2400 tests/reliability/test_outages.py
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_threads
from tests.reliability import report
from warpdrive import BackendUnavailableError, WarpDrive, parse_config
from warpdrive.admin import Admin
from warpdrive.testing.faultproxy import Fault, FaultProxy, Request
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import Server, free_port

pytestmark = pytest.mark.integration
SECONDS = float(os.environ.get("WD_FAULT_SECONDS", "5"))  # each fault phase
BASELINE = min(SECONDS, 10.0)  # the healthy phase it is compared with
ENTRIES = int(os.environ.get("WD_LS_ENTRIES", "3000"))
OBJECT = 1024 * 1024  # the objects readers read whole, cold, again and again
READERS = 4
_n = iter(range(10**6))


@dataclass
class Proxied:
    """A fresh container in Azurite, a fault proxy in front, and configs reading through it."""

    azurite: Server
    container: str
    proxy: FaultProxy
    tmp: Path
    metrics_port: int = field(default_factory=free_port)

    def put(self, items: dict[str, bytes]) -> None:
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(self.azurite.connection_string())
        container = client.get_container_client(self.container)
        for key, data in items.items():
            container.upload_blob(key, data)

    def config(self, fetch: str, cache: str = "", list_page_size: int = 5000) -> Path:
        path = self.tmp / "config.yaml"
        path.write_text(
            f"mount_point: {self.tmp / 'wd'}\n"
            f"metrics: {{addr: '127.0.0.1:{self.metrics_port}'}}\n"
            f"cache: {{path: {self.tmp / 'cache'}, max_size: 256MB, block_size: 256KB{cache}}}\n"
            f"fetch: {{{fetch}}}\n"
            "backends:\n  - name: az\n    type: azureblob\n"
            f"    config: {{account: devstoreaccount1, container: {self.container}, "
            f"endpoint: '{self.proxy.endpoint}/devstoreaccount1', "
            f"list_page_size: {list_page_size}}}\n"
            "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
        )
        return path


@pytest.fixture
def backend(azurite: Server, tmp_path: Path) -> Iterator[Proxied]:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    name = f"outage{next(_n)}-{os.getpid()}"
    client.create_container(name)
    proxy = FaultProxy(azurite.port, seed=19)
    yield Proxied(azurite, name, proxy, tmp_path)
    proxy.close()
    client.delete_container(name)  # the emulator holds every blob in memory


@dataclass
class Phase:
    """What the readers of one phase did."""

    bytes: int = 0
    reads: int = 0
    seconds: float = 0.0
    slowest: float = 0.0  # the longest read of one object
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Bytes per second of whole, exact reads."""
        return self.bytes / self.seconds


def _cold_reads(read: Callable[[str], bytes], data: dict[str, bytes], seconds: float) -> Phase:
    """READERS threads, each reading its own objects whole for ``seconds``, one after another;
    ``read`` makes each read cold (the caller drops what it cached). Wrong bytes are errors."""
    phase, lock = Phase(), threading.Lock()
    keys = sorted(data)
    until = time.monotonic() + seconds

    def reader(i: int) -> None:
        mine, n = keys[i::READERS], 0
        while time.monotonic() < until:
            key, n = mine[n % len(mine)], n + 1
            started = time.monotonic()
            try:
                got = read(key)
            except Exception as exc:  # any error fails the test
                with lock:
                    phase.errors.append(f"{key}: {exc!r}")
                continue
            took = time.monotonic() - started
            with lock:
                if got != data[key]:
                    phase.errors.append(f"{key}: wrong bytes")
                phase.bytes += len(got)
                phase.reads += 1
                phase.slowest = max(phase.slowest, took)

    started = time.monotonic()
    run_threads(reader, READERS)
    phase.seconds = time.monotonic() - started
    return phase


def _objects(prefix: str, count: int) -> dict[str, bytes]:
    return {f"{prefix}/o{i:02d}.bin": os.urandom(OBJECT) for i in range(count)}


def _sample(wd: WarpDrive, name: str, **labels: str) -> float:
    return wd.metrics.registry.get_sample_value(name, {"backend": "az", **labels}) or 0.0


# -- one object stalled forever ----------------------------------------------------------------


class _Readers:
    """How the test reads, in-process or through the mount: ``read`` reads an object whole and
    drops what it cached (the next read is cold); ``read_stalled`` reads the rest of the stalled
    object from an offset."""

    def __init__(self, via: str, backend: Proxied, config: Path, data: dict[str, bytes]) -> None:
        self.via = via
        self.wd = WarpDrive(parse_config(config.read_text()))  # the mount's cache, or ours
        self.point = backend.tmp / "wd"
        self.oids = {key: self.wd.version(f"/az/{key}").oid for key in data}

    def read(self, key: str) -> bytes:
        if self.via == "mount":
            with open(self.point / "az" / key, "rb") as f:
                got = f.read()
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the page cache
        else:
            with self.wd.open(f"/az/{key}") as f:
                got = f.read()
        with Admin(self.wd.config) as admin:
            admin.evict([self.oids[key]])  # and the block cache
        return got

    def read_stalled(self, offset: int) -> bytes:
        path = "slow/stalled.bin"
        with (
            open(self.point / "az" / path, "rb")
            if self.via == "mount"
            else self.wd.open(f"/az/{path}")
        ) as f:
            f.seek(offset)
            return f.read()


@pytest.mark.parametrize("via", ["mount", "in-process"])
def test_one_object_stalled_forever_does_not_stall_readers_of_the_others(
    backend: Proxied, via: str
) -> None:
    """Readers of 8 objects (each read cold) keep at least half their healthy throughput, byte
    for byte, while every block read of one other object stalls forever and two readers keep
    reading it from two offsets; each of those gets EIO (BackendUnavailableError in-process)
    within the retry deadline, twice it through the mount: the kernel reads a page once more
    on its own after its readahead failed."""
    data = _objects("ok", 2 * READERS)
    stalled = os.urandom(8 * 1024 * 1024)
    backend.put({**data, "slow/stalled.bin": stalled})
    timeout, attempts, max_backoff = 2.0, 3, 0.2
    deadline = attempts * timeout + (attempts - 1) * max_backoff
    config = backend.config(
        f"max_attempts: {attempts}, initial_backoff: 10ms, max_backoff: {max_backoff}s, "
        f"request_timeout: {timeout}s",
        ", scan_prefetch: false",  # no prefetch of the next files: each read is one reader's
    )
    # --degraded-ok: a loaded machine may not answer the start's probe within request_timeout.
    mount = (
        start_mount(config, backend.tmp / "wd", backend.metrics_port, "--degraded-ok")
        if via == "mount"
        else None
    )
    stop, outcomes = threading.Event(), list[tuple[BaseException | None, float]]()

    def stalled_reader(i: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                readers.read_stalled(i * len(stalled) // 2)
                outcomes.append((None, time.monotonic() - started))
            except Exception as exc:
                outcomes.append((exc, time.monotonic() - started))

    readers = None
    try:
        readers = _Readers(via, backend, config, data)
        healthy = _cold_reads(readers.read, data, BASELINE)
        backend.proxy.inject(Fault("stall", seconds=None, count=None, blob="slow/stalled.bin"))
        stuck = [threading.Thread(target=stalled_reader, args=(i,)) for i in range(2)]
        for thread in stuck:
            thread.start()
        try:
            wait_until = time.monotonic() + 10
            while backend.proxy.injected["stall"] < 2 and time.monotonic() < wait_until:
                time.sleep(0.02)  # the stall has begun before the clock starts
            during = _cold_reads(readers.read, data, SECONDS)
        finally:
            stop.set()
            for thread in stuck:
                thread.join(2 * deadline + 30)
        assert not healthy.errors and not during.errors, healthy.errors + during.errors
        ratio = during.rate / healthy.rate
        assert ratio >= 0.5, (healthy, during)
        errors = [exc for exc, _ in outcomes]
        if mount is not None:
            assert errors and all(
                isinstance(e, OSError) and e.errno == errno.EIO for e in errors
            ), outcomes
            bound = 2 * deadline
            assert mount.metric("warpdrive_backend_errors_total", error_type="timeout") >= 3
            assert mount.metric("warpdrive_fuse_errors_total", operation="read", errno="EIO") >= 1
        else:
            assert errors and all(isinstance(e, BackendUnavailableError) for e in errors), outcomes
            bound = deadline
            assert _sample(readers.wd, "warpdrive_backend_errors_total", error_type="timeout") >= 3
        slowest_error = max(took for _, took in outcomes)
        assert slowest_error < bound + 3, outcomes  # + slack for a loaded machine
        backend.proxy.clear()
        assert readers.read_stalled(0) == stalled
        if mount is not None:
            assert mount.proc.poll() is None and mount.health()[0] == 200
    finally:
        if readers is not None:
            readers.wd.close()
        if mount is not None:
            mount.cleanup()
    key = f"stall_{via.replace('-', '')}"
    report.add(
        **{
            f"{key}_seconds": SECONDS,
            f"{key}_healthy_mb_s": round(healthy.rate / 1e6, 1),
            f"{key}_during_mb_s": round(during.rate / 1e6, 1),
            f"{key}_throughput_ratio": round(ratio, 2),
            f"{key}_slowest_other_read_s": round(during.slowest, 2),
            f"{key}_errors": len(outcomes),
            f"{key}_slowest_error_s": round(slowest_error, 2),
            "faults_stall": backend.proxy.injected["stall"],
            "bytes_verified": healthy.bytes + during.bytes + len(stalled),
        }
    )


# -- half the requests throttled ---------------------------------------------------------------


def test_half_the_requests_throttled_cost_time_never_a_readers_error(backend: Proxied) -> None:
    """In-process readers (cold each time) for WD_FAULT_SECONDS while a random half of all
    requests get 503: every read exact, none fails (each request may take 20 attempts: all 20
    failing has odds of 2^-20), every 503 counted as one throttled error and one retry, and the
    same reads are slower than healthy ones."""
    data = _objects("t", 2 * READERS)
    backend.put(data)
    config = backend.config(
        "max_attempts: 20, initial_backoff: 20ms, max_backoff: 200ms, request_timeout: 5s"
    )
    with WarpDrive(parse_config(config.read_text())) as wd:
        oids = {key: wd.version(f"/az/{key}").oid for key in data}

        def read(key: str) -> bytes:
            got = wd.read(f"/az/{key}")
            with Admin(wd.config) as admin:
                admin.evict([oids[key]])  # the next read is cold
            return got

        healthy = _cold_reads(read, data, BASELINE)
        assert _sample(wd, "warpdrive_backend_errors_total", error_type="throttled") == 0
        requests = backend.proxy.requests
        backend.proxy.inject(
            Fault("status", code=503, count=None, method=None, ranged_only=False, probability=0.5)
        )
        throttled = _cold_reads(read, data, SECONDS)
        backend.proxy.clear()
        requests = backend.proxy.requests - requests
        injected = backend.proxy.injected["status"]
        assert not healthy.errors and not throttled.errors, healthy.errors + throttled.errors
        assert _sample(wd, "warpdrive_backend_errors_total", error_type="throttled") == injected
        retries = sum(
            _sample(wd, "warpdrive_backend_retries_total", operation=op)
            for op in ("read", "stat", "list")
        )
        assert retries == injected  # each 503 retried; no request ran out of attempts
    assert requests >= 100 and 0.4 < injected / requests < 0.6, (injected, requests)
    assert throttled.rate < healthy.rate, (healthy, throttled)  # it costs time
    report.add(
        throttle_seconds=SECONDS,
        throttle_reads=throttled.reads,
        throttle_requests=requests,
        throttle_503s=injected,
        throttle_healthy_mb_s=round(healthy.rate / 1e6, 1),
        throttle_during_mb_s=round(throttled.rate / 1e6, 1),
        throttle_slowest_read_s=round(throttled.slowest, 2),
        bytes_verified=healthy.bytes + throttled.bytes,
    )


# -- the backend going down during ls of a large directory -------------------------------------


async def _upload_tiny(azurite: Server, container: str, names: list[str]) -> None:
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(azurite.connection_string()) as client:
        cc = client.get_container_client(container)
        todo = iter(names)

        async def worker() -> None:
            for name in todo:
                await cc.upload_blob(name, b"x", overwrite=True)  # the SDK may retry one

        await asyncio.gather(*(worker() for _ in range(64)))


class _Dirent(ctypes.Structure):  # glibc's struct dirent on 64-bit Linux
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


def _readdir_twice_at_the_end(path: Path) -> tuple[int, int, int]:
    """How many entries libc's readdir gave, the errno it stopped with (0: the end of the
    directory), and the errno of one more readdir on the same stream, as a caller that retries
    would call it (-1: that one gave an entry)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir.restype = ctypes.POINTER(_Dirent)
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    stream = libc.opendir(os.fsencode(path))
    assert stream, os.strerror(ctypes.get_errno())
    try:
        count = 0
        while True:
            ctypes.set_errno(0)
            if not libc.readdir(stream):
                stopped = ctypes.get_errno()
                break
            count += 1
        ctypes.set_errno(0)
        again = ctypes.get_errno() if not libc.readdir(stream) else -1
        return count, stopped, again
    finally:
        libc.closedir(stream)


def _lists(prefix: str) -> Callable[[Request], bool]:
    return lambda request: request.listing and request.query.get("prefix") == prefix


def _ls(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        ["ls", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LC_ALL": "C"},
    )
    return done, time.monotonic() - started


def test_backend_down_during_ls_of_a_large_directory(backend: Proxied) -> None:
    """WD_LS_ENTRIES blobs in one directory, listed through the mount in about 10 pages; the
    proxy resets every listing request after half of them: ``ls`` fails with EIO in time (its
    exit status says the listing is short), a retried readdir fails again instead of reporting
    the end, the mount stays up, and once the backend is back ``ls`` lists every entry."""
    names = [f"e{i:06d}" for i in range(ENTRIES)]
    started = time.monotonic()
    asyncio.run(_upload_tiny(backend.azurite, backend.container, [f"big/{n}" for n in names]))
    created = time.monotonic() - started
    page = min(5000, max(100, math.ceil(ENTRIES / 10)))
    pages = math.ceil(ENTRIES / page)
    # The default request_timeout (60 s): Azurite takes over 10 s for a page of a 10^5 listing.
    # Every listing must ask the backend: list_ttl 0 (a listing is reused for list_ttl) and
    # offline_max_age 0 (a mount that knows the backend is down answers from its last listing,
    # tests/integration/test_outage.py).
    config = backend.config(
        "max_attempts: 3, initial_backoff: 10ms, max_backoff: 200ms",
        cache=", list_ttl: 0s, offline_max_age: 0",
        list_page_size=page,
    )
    point = backend.tmp / "wd"
    big = point / "az" / "big"
    mount = start_mount(config, point, backend.metrics_port, "--degraded-ok")
    try:
        healthy, healthy_s = _ls(big)
        assert healthy.returncode == 0 and healthy.stdout.split() == names, healthy.stderr
        page_s = mount.metric(  # how long the backend took for a page, on average
            "warpdrive_backend_request_duration_seconds_sum", operation="list"
        ) / mount.metric("warpdrive_backend_request_duration_seconds_count", operation="list")

        def down_after(k: int) -> None:  # pages of big/ (not the revalidation of its parent)
            backend.proxy.clear()
            backend.proxy.inject(
                Fault("reset", count=None, ranged_only=False, match=_lists("big/"), after=k)
            )

        got = (pages // 2) * page  # the entries of the pages that pass
        down_after(pages // 2)
        failed, failed_s = _ls(big)
        assert failed.returncode != 0 and "Input/output error" in failed.stderr, failed.stderr
        assert failed.stdout.split() == names[:got]  # what it got, and its status says short
        assert failed_s < healthy_s + 15  # no hang: half the pages, then 3 resets at once
        down_after(pages // 2)
        listed, stopped, again = _readdir_twice_at_the_end(big)
        assert (listed, stopped) == (got, errno.EIO)
        assert again == errno.EIO  # a caller that retries is told again, never "the end"
        assert mount.proc.poll() is None and mount.health()[0] == 200
        assert mount.metric("warpdrive_fuse_errors_total", operation="readdir", errno="EIO") >= 2
        backend.proxy.clear()  # the backend is back
        back, back_s = _ls(big)
        assert back.returncode == 0 and back.stdout.split() == names, back.stderr
    finally:
        mount.cleanup()
    report.add(
        ls_entries=ENTRIES,
        ls_create_s=round(created, 1),
        ls_pages=pages,
        ls_healthy_s=round(healthy_s, 2),
        ls_failed_s=round(failed_s, 2),
        ls_failed_listed=len(failed.stdout.split()),
        ls_readdir_listed=listed,
        ls_back_s=round(back_s, 2),
        ls_page_s=round(page_s, 2),
        faults_reset=backend.proxy.injected["reset"],
    )
