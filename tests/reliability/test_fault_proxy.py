"""Backend faults at the HTTP level (warpdrive.testing.faultproxy in front of Azurite): every
read gets exact bytes or, once retries run out, a clean typed error / EIO within the configured
time; the mount stays up; /metrics counts the errors by type; nothing wrong is cached."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import report
from warpdrive import BackendUnavailableError, WarpDrive, parse_config
from warpdrive.admin import cache_counters
from warpdrive.config import AzureBlobOptions
from warpdrive.testing.faultproxy import Fault, FaultProxy
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import Server, free_port

pytestmark = pytest.mark.integration
BLOCK = 256 * 1024
_n = iter(range(10**6))

# fault → the error_type(s) the retries count for it. Azure answers throttling with 503
# (ServerBusy); a body cut short is retried inside the SDK's downloader until the attempt's
# deadline, so it may end as "timeout" rather than "connection".
KINDS = {
    "status-500": (Fault("status", code=500), {"server"}),
    "status-503": (Fault("status", code=503), {"throttled"}),
    "throttle": (Fault("throttle", retry_after=0.05), {"throttled"}),
    "drop": (Fault("drop"), {"connection", "timeout"}),
    "stall": (Fault("stall", seconds=5), {"timeout"}),
    "trickle": (Fault("trickle", rate=48 * 1024), {"timeout"}),
    "reset": (Fault("reset"), {"connection"}),
}


@pytest.fixture
def proxied(azurite: Server, tmp_path: Path) -> Iterator[tuple[FaultProxy, str, bytes, Path]]:
    """An object in Azurite, a fault proxy in front, and a config reading through it."""
    from azure.storage.blob import BlobServiceClient

    container = f"faults{next(_n)}-{os.getpid()}"
    data = os.urandom(4 * BLOCK + 1234)
    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    client.create_container(container).upload_blob("d/obj.bin", data)
    proxy = FaultProxy(azurite.port)
    config = tmp_path / "config.yaml"
    port = free_port()
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 256KB, readahead_blocks: 0}}\n"
        "fetch: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 200ms, request_timeout: 1s}\n"
        "backends:\n  - name: az\n    type: azureblob\n"
        f"    config: {{account: devstoreaccount1, container: {container}, "
        f"endpoint: '{proxy.endpoint}/devstoreaccount1'}}\n"
        "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
    )
    yield proxy, str(port), data, config
    proxy.close()


def _errors(wd: WarpDrive, kinds: set[str]) -> float:
    return sum(
        wd.metrics.registry.get_sample_value(
            "warpdrive_backend_errors_total", {"backend": "az", "error_type": kind}
        )
        or 0.0
        for kind in kinds
    )


def _all_errors(wd: WarpDrive) -> float:
    return sum(
        s.value
        for family in wd.metrics.backend_errors.collect()
        for s in family.samples
        if s.name.endswith("_total")
    )


def _inject(proxy: FaultProxy, name: str, count: int | None) -> tuple[Fault, set[str]]:
    fault, error_types = KINDS[name]
    proxy.inject(Fault(**{**fault.__dict__, "count": count}))
    return fault, error_types


@pytest.mark.parametrize("name", list(KINDS))
def test_transient_faults_are_retried_to_exact_bytes(
    proxied: tuple[FaultProxy, str, bytes, Path], name: str
) -> None:
    proxy, _, data, config = proxied
    fault, error_type = _inject(proxy, name, count=2)  # two of the three attempts fail
    with WarpDrive(parse_config(config.read_text())) as wd:
        assert wd.read("/az/d/obj.bin", 0, BLOCK) == data[:BLOCK]
        # Each injected fault failed one attempt (a reset may be absorbed by a reconnect).
        assert 1 <= _errors(wd, error_type) == _all_errors(wd) <= 2, dict(proxy.injected)
    report.add(**{f"faults_{fault.kind}": 2, "bytes_verified": BLOCK})


@pytest.mark.parametrize("name", list(KINDS))
def test_persistent_faults_give_a_typed_error_in_time_and_cache_nothing(
    proxied: tuple[FaultProxy, str, bytes, Path], name: str
) -> None:
    proxy, _, data, config = proxied
    fault, error_type = _inject(proxy, name, count=None)
    with WarpDrive(parse_config(config.read_text())) as wd:
        started = time.monotonic()
        with pytest.raises(
            BackendUnavailableError, match=r"az: read 'd/obj.bin' failed after 3 attempts"
        ):
            wd.read("/az/d/obj.bin", BLOCK, BLOCK)
        # 3 attempts of at most 1 s each, two backoffs of at most 0.2 s, and slack for the machine.
        assert time.monotonic() - started < 3 * 1.0 + 2 * 0.2 + 5
        assert _errors(wd, error_type) == _all_errors(wd) == 3
        assert cache_counters(wd.config).get("checksum_errors", 0) == 0
        assert wd.usage().blocks == 0  # nothing was cached while it failed
        proxy.clear()
        assert wd.read("/az/d/obj.bin") == data  # the backend is back: exact bytes
    with WarpDrive(parse_config(config.read_text())) as again:
        requests = proxy.requests
        assert hashlib.sha256(again.read("/az/d/obj.bin")).digest() == hashlib.sha256(data).digest()
        assert proxy.requests - requests <= 1  # served from the cache (a stat at most)
    report.add(**{f"faults_{fault.kind}": 3, "bytes_verified": 2 * len(data)})


def test_a_fault_aimed_at_one_object_spares_the_others(
    proxied: tuple[FaultProxy, str, bytes, Path], azurite: Server
) -> None:
    """A rule sees each request's path (the blob's name, URL-decoded) and query: a stall
    aimed at one blob's block reads times that blob out, while its stat (a HEAD) and every read
    of another blob pass; a rule for all of a blob's requests fails its stat too, and only
    its."""
    from azure.storage.blob import BlobServiceClient

    proxy, _, data, config = proxied
    cfg = parse_config(config.read_text())
    options = cfg.backend("az").options
    assert isinstance(options, AzureBlobOptions)
    other = os.urandom(BLOCK + 5)
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string()
    ).get_container_client(options.container)
    container.upload_blob("d/other file.bin", other)
    container.upload_blob("d/never read.bin", b"n")  # no cached version answers its stat
    proxy.inject(Fault("stall", seconds=None, count=None, blob="d/obj.bin"))
    with WarpDrive(cfg) as wd:
        assert wd.stat("/az/d/obj.bin").size == len(data)  # a HEAD: not a block read
        assert wd.read("/az/d/other file.bin") == other
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"read 'd/obj.bin' failed after 3"):
            wd.read("/az/d/obj.bin", 0, BLOCK)
        assert time.monotonic() - started < 3 * 1.0 + 2 * 0.2 + 5
        assert _errors(wd, {"timeout"}) == _all_errors(wd) == 3
        assert wd.read("/az/d/other file.bin", BLOCK) == other[BLOCK:]  # cached or not: exact
    assert dict(proxy.injected) == {"stall": 3}
    proxy.clear()
    aim = "d/never read.bin"  # sent as d/never%20read.bin: rules see the name decoded
    proxy.inject(Fault("status", code=500, count=None, method=None, ranged_only=False, blob=aim))
    with WarpDrive(parse_config(config.read_text())) as wd:
        with pytest.raises(BackendUnavailableError, match=r"stat 'd/never read.bin' failed"):
            wd.stat(f"/az/{aim}")
        assert wd.stat("/az/d/obj.bin").size == len(data)  # asks the backend: nothing cached
    report.add(faults_stall=3, faults_status=3, bytes_verified=2 * len(other))


def test_through_the_mount_eio_then_recovery_and_metrics(
    proxied: tuple[FaultProxy, str, bytes, Path],
) -> None:
    proxy, port, data, config = proxied
    point = config.parent / "wd"
    mount = start_mount(config, point, int(port))
    try:
        path = point / "az" / "d" / "obj.bin"
        assert path.stat().st_size == len(data)
        proxy.inject(Fault("status", code=500, count=None))
        with pytest.raises(OSError, match="Input/output error") as info:
            path.read_bytes()
        assert info.value.errno == errno.EIO
        assert os.listdir(point / "az" / "d") == ["obj.bin"]  # still mounted, still answering
        assert mount.health()[0] in (200, 503)
        proxy.clear()
        assert path.read_bytes() == data
        assert mount.metric("warpdrive_backend_errors_total", error_type="server") >= 3
        assert mount.metric("warpdrive_fuse_errors_total", operation="read", errno="EIO") >= 1
        assert mount.proc.poll() is None
    finally:
        mount.cleanup()
    report.add(faults_status=3, bytes_verified=len(data))
