"""Fixtures: real emulators (Azurite, moto's S3 server) started once per session on free ports
of 127.0.0.1, and a ``store`` fixture that gives each test an empty container/bucket/directory on
one backend type, with a config for it."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from warpdrive import Config, WarpDrive, parse_config
from warpdrive.testing.servers import (
    AZURITE_KEY,
    MOTO_KEY_ID,
    MOTO_SECRET,
    Server,
    ServerError,
    start_azurite,
    start_gcs_emulator,
    start_moto,
)

# Secrets reach backends through the environment, as in production (names, not values, in YAML).
os.environ.setdefault("WD_TEST_AZURE_KEY", AZURITE_KEY)
os.environ.setdefault("WD_TEST_S3_KEY", MOTO_KEY_ID)
os.environ.setdefault("WD_TEST_S3_SECRET", MOTO_SECRET)
_counter = itertools.count()

# `make test` (CI) draws every property test's examples from hypothesis's fixed seed, so a
# landing never depends on a lucky draw; plain `pytest` draws anew each run, which is how the
# fuzzing finds new bad inputs (run it with more examples by hand to hunt).
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

BACKEND_TYPES = ["local", "azureblob", "s3"]


def run_threads(target: Callable[[int], None], count: int) -> None:
    """Run ``target(i)`` for i in range(count), each in its own thread, and wait for all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Server]:
    try:
        server = start_azurite()
    except ServerError as exc:
        pytest.skip(f"Azurite unavailable: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[Server]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Server]:
    server = start_gcs_emulator()
    yield server
    server.stop()


@dataclass
class Store:
    """An empty place on one backend type, with helpers to put objects there."""

    type: str
    name: str  # backend name in the config
    backend_yaml: str  # the backends[] entry
    put: Callable[[str, bytes], None]
    delete: Callable[[str], None]
    cache_dir: Path
    # What gcp-storage-emulator lacks: zero-byte objects, and honouring maxResults.
    empty_objects: bool = True
    paged_listings: bool = True

    def config(self, fetch: dict[str, Any] | None = None, **cache: Any) -> Config:
        """A config with this backend and a cache in ``cache_dir``; keyword arguments override
        ``cache:`` keys, ``fetch`` overrides ``fetch:`` keys (fast retries by default)."""
        cache_keys = {"path": str(self.cache_dir), "max_size": "256MB", "block_size": "256KB"}
        cache_keys.update({k: str(v) for k, v in cache.items()})
        fetch_keys = {"initial_backoff": "10ms", "max_backoff": "100ms", "request_timeout": "10s"}
        fetch_keys.update({k: str(v) for k, v in (fetch or {}).items()})
        text = "\n".join(
            ["cache:", *(f"  {k}: {v}" for k, v in cache_keys.items())]
            + ["fetch:", *(f"  {k}: {v}" for k, v in fetch_keys.items())]
            + ["backends:", self.backend_yaml]
        )
        return parse_config(text)

    def reader(self, wrap_client: Any = None, **kwargs: Any) -> WarpDrive:
        return WarpDrive(self.config(**kwargs), wrap_client=wrap_client)

    def path(self, key: str) -> str:
        return f"/{self.name}/{key}"


def _local_store(tmp_path: Path) -> Store:
    root = tmp_path / "source"
    root.mkdir()

    def put(key: str, data: bytes) -> None:
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def delete(key: str) -> None:
        (root / key).unlink()

    yaml = f"  - name: src\n    type: local\n    config: {{root: {root}}}\n"
    return Store("local", "src", yaml, put, delete, tmp_path / "cache")


def _azure_store(tmp_path: Path, server: Server) -> Store:
    from azure.storage.blob import BlobServiceClient

    container = f"c{next(_counter)}-{os.getpid()}"
    client = BlobServiceClient.from_connection_string(server.connection_string())
    cc = client.create_container(container)

    def put(key: str, data: bytes) -> None:
        cc.upload_blob(key, data, overwrite=True)

    def delete(key: str) -> None:
        cc.delete_blob(key)

    yaml = (
        "  - name: az\n    type: azureblob\n"
        f"    config: {{account: devstoreaccount1, container: {container}, endpoint: '{server.blob_endpoint()}'}}\n"
        "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
    )
    return Store("azureblob", "az", yaml, put, delete, tmp_path / "cache")


def _s3_store(tmp_path: Path, server: Server) -> Store:
    import boto3

    bucket = f"b{next(_counter)}-{os.getpid()}"
    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=MOTO_KEY_ID,
        aws_secret_access_key=MOTO_SECRET,
    )
    s3.create_bucket(Bucket=bucket)

    def put(key: str, data: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=f"pre/{key}", Body=data)

    def delete(key: str) -> None:
        s3.delete_object(Bucket=bucket, Key=f"pre/{key}")

    yaml = (
        "  - name: s3\n    type: s3\n"
        f"    config: {{bucket: {bucket}, prefix: pre, endpoint_url: '{server.endpoint}', region: us-east-1}}\n"
        "    auth: {method: static, access_key_id_env: WD_TEST_S3_KEY, secret_access_key_env: WD_TEST_S3_SECRET}\n"
    )
    return Store("s3", "s3", yaml, put, delete, tmp_path / "cache")


def _gcs_store(tmp_path: Path, server: Server) -> Store:
    import json
    import urllib.request
    from urllib.parse import quote

    bucket = f"g{next(_counter)}-{os.getpid()}"
    base = server.endpoint

    def call(
        method: str, url: str, data: bytes | None = None, kind: str = "application/octet-stream"
    ) -> None:
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": kind}
        )
        urllib.request.urlopen(request).read()

    call(
        "POST",
        f"{base}/storage/v1/b?project=test",
        json.dumps({"name": bucket}).encode(),
        "application/json",
    )

    def put(key: str, data: bytes) -> None:
        name = quote(f"pre/{key}", safe="")
        call("POST", f"{base}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", data)

    def delete(key: str) -> None:
        call("DELETE", f"{base}/storage/v1/b/{bucket}/o/{quote(f'pre/{key}', safe='')}")

    yaml = (
        "  - name: gs\n    type: gcs\n"
        f"    config: {{bucket: {bucket}, prefix: pre, project: test, endpoint_url: '{base}'}}\n"
        "    auth: {method: anonymous}\n"
    )
    return Store("gcs", "gs", yaml, put, delete, tmp_path / "cache", False, False)


def _make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "local":
        return _local_store(tmp_path)
    if kind == "azureblob":
        return _azure_store(tmp_path, request.getfixturevalue("azurite"))
    if kind == "gcs":
        return _gcs_store(tmp_path, request.getfixturevalue("gcs_emulator"))
    return _s3_store(tmp_path, request.getfixturevalue("moto"))


@pytest.fixture(params=BACKEND_TYPES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An empty store on each backend type in turn (local directory, Azurite, moto S3)."""
    return _make_store(request.param, request, tmp_path)


@pytest.fixture(params=[*BACKEND_TYPES, "gcs"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Like ``store``, plus GCS (gcp-storage-emulator), for the contract and byte-exactness
    tests; the emulator cannot show version refusal (it ignores ``generation=``)."""
    return _make_store(request.param, request, tmp_path)


@pytest.fixture
def local_store(tmp_path: Path) -> Store:
    return _local_store(tmp_path)


@pytest.fixture
def azure_store(tmp_path: Path, azurite: Server) -> Store:
    return _azure_store(tmp_path, azurite)


@pytest.fixture
def s3_store(tmp_path: Path, moto: Server) -> Store:
    return _s3_store(tmp_path, moto)
