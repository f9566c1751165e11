"""Backend faults: transient failures are retried with backoff, a dead or silent backend gives
a typed error within the configured time, and nothing half-fetched reaches the cache."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Store
from warpdrive import BackendUnavailableError, WarpDrive, parse_config
from warpdrive.backends.base import ObjectClient
from warpdrive.backends.wrappers import FaultInjectingClient, fail_first
from warpdrive.errors import NotFoundError, PermissionDeniedError
from warpdrive.testing.servers import free_port

pytestmark = pytest.mark.integration
KB = 1024


def test_a_read_succeeds_after_the_first_k_requests_fail(store: Store) -> None:
    data = os.urandom(3 * 256 * KB)
    store.put("f/obj.bin", data)

    def wrap(client: ObjectClient) -> ObjectClient:
        return FaultInjectingClient(client, fail_first(3, ops=("read", "stat")))

    cfg = store.config(readahead_blocks=0, fetch={"max_attempts": 5})
    with WarpDrive(cfg, wrap_client=wrap) as wd:
        assert wd.read(store.path("f/obj.bin")) == data
        reg = wd.metrics.registry
        name = store.name
        errors = reg.get_sample_value(
            "warpdrive_backend_errors_total", {"backend": name, "error_type": "server"}
        )
        retries = sum(
            reg.get_sample_value(
                "warpdrive_backend_retries_total", {"backend": name, "operation": op}
            )
            or 0
            for op in ("stat", "read")
        )
        assert errors == 3 and retries == 3


def test_persistent_failure_surfaces_as_typed_error_and_caches_nothing(store: Store) -> None:
    store.put("f/obj.bin", os.urandom(256 * KB))

    def wrap(client: ObjectClient) -> ObjectClient:
        return FaultInjectingClient(client, fail_first(10**6, ops=("read",)))

    cfg = store.config(readahead_blocks=0, fetch={"max_attempts": 3})
    with WarpDrive(cfg, wrap_client=wrap) as wd:
        with pytest.raises(
            BackendUnavailableError, match=r"read 'f/obj.bin' failed after 3 attempts"
        ):
            wd.read(store.path("f/obj.bin"))
        assert wd._core.cache.usage().blocks == 0
    with WarpDrive(store.config()) as wd:  # and the store is fine afterwards
        assert len(wd.read(store.path("f/obj.bin"))) == 256 * KB


def test_missing_objects_are_not_retried(store: Store) -> None:
    calls: list[str] = []

    def wrap(client: ObjectClient) -> ObjectClient:
        def plan(op: str, key: str) -> None:
            calls.append(op)

        return FaultInjectingClient(client, plan)

    with WarpDrive(store.config(), wrap_client=wrap) as wd, pytest.raises(NotFoundError):
        wd.read(store.path("does/not/exist.bin"))
    assert calls.count("stat") == 1


def _azure_config(tmp_path: Path, endpoint: str, timeout: str = "1s", attempts: int = 3) -> str:
    return f"""
cache: {{path: {tmp_path / "cache"}, max_size: 64MB, block_size: 256KB}}
fetch: {{max_attempts: {attempts}, initial_backoff: 50ms, max_backoff: 200ms, request_timeout: {timeout}}}
backends:
  - name: far
    type: azureblob
    config: {{account: devstoreaccount1, container: data, endpoint: "{endpoint}"}}
    auth: {{method: account_key, account_key_env: WD_TEST_AZURE_KEY}}
"""


def test_a_backend_that_is_down_fails_fast_with_a_typed_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: connection refused
    cfg = parse_config(_azure_config(tmp_path, f"http://127.0.0.1:{port}/devstoreaccount1"))
    with WarpDrive(cfg) as wd:
        started = time.monotonic()
        with pytest.raises(
            BackendUnavailableError, match=r"far: stat 'x\.bin' failed after 3 attempts"
        ):
            wd.read("/far/x.bin")
        assert time.monotonic() - started < 3 * 1.0 + 1
        reg = wd.metrics.registry
        assert (
            reg.get_sample_value(
                "warpdrive_backend_errors_total", {"backend": "far", "error_type": "connection"}
            )
            == 3
        )


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers (a stalled backend)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    sock.close()


def test_a_stalled_backend_times_out_per_request(tmp_path: Path, silent_server: int) -> None:
    cfg = parse_config(
        _azure_config(tmp_path, f"http://127.0.0.1:{silent_server}/devstoreaccount1", "500ms", 2)
    )
    with WarpDrive(cfg) as wd:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"no answer within 0\.5s"):
            wd.stat("/far/x.bin")
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 3, elapsed


def test_wrong_credentials_are_a_permission_error_not_retried(azure_store: Store) -> None:
    azure_store.put("k.bin", b"x")
    os.environ["WD_TEST_WRONG_KEY"] = "d3JvbmcK" * 11
    cfg = parse_config(_yaml_with_key(azure_store, "WD_TEST_WRONG_KEY"))
    with WarpDrive(cfg) as wd, pytest.raises(PermissionDeniedError):
        wd.read(azure_store.path("k.bin"))


def _yaml_with_key(store: Store, env_var: str) -> str:
    backend = store.backend_yaml.replace("WD_TEST_AZURE_KEY", env_var)
    return f"cache: {{path: {store.cache_dir}, max_size: 64MB, block_size: 256KB}}\nbackends:\n{backend}"
