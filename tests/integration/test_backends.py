"""One contract, every store: the Backend protocol against local, Azurite and moto S3."""

from __future__ import annotations

import dataclasses
import errno
import os
import re

import pytest

from tests.conftest import Store
from warpdrive import WarpDrive, parse_config
from warpdrive.backends import Backend
from warpdrive.errors import (
    ConfigError,
    ContainerNotFoundError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ObjectChangedError,
)
from warpdrive.testing.servers import AZURITE_KEY, Server, free_port

pytestmark = pytest.mark.integration


def _backend(store: Store, page_size: int = 1000) -> tuple[WarpDrive, Backend]:
    yaml = store.backend_yaml.replace("config: {", f"config: {{list_page_size: {page_size}, ", 1)
    cfg = parse_config(
        f"cache: {{path: {store.cache_dir}, max_size: 64MB, block_size: 256KB}}\nbackends:\n{yaml}"
    )
    wd = WarpDrive(cfg)
    return wd, wd._core.backends[store.name]


def _errors(wd: WarpDrive, backend: str) -> dict[str, float]:
    """The backend's non-zero ``warpdrive_backend_errors_total`` samples, by error_type."""
    return {
        s.labels["error_type"]: s.value
        for family in wd.metrics.backend_errors.collect()
        for s in family.samples
        if s.name.endswith("_total") and s.labels["backend"] == backend and s.value
    }


def _requests(wd: WarpDrive, backend: str) -> float:
    return sum(
        s.value
        for family in wd.metrics.backend_duration.collect()
        for s in family.samples
        if s.name.endswith("_count") and s.labels["backend"] == backend
    )


def test_stat_reports_size_and_a_version_that_changes_on_overwrite(any_store: Store) -> None:
    any_store.put("a/x.bin", b"12345")
    wd, backend = _backend(any_store)
    first = backend.stat("a/x.bin")
    assert (first.key, first.size) == ("a/x.bin", 5)
    assert first.etag and first.mtime > 0
    any_store.put("a/x.bin", b"123456789")
    second = backend.stat("a/x.bin")
    assert second.size == 9 and second.etag != first.etag
    with pytest.raises(NotFoundError):
        backend.stat("a/missing.bin")
    with pytest.raises(IsDirectoryError):
        backend.stat("a")
    any_store.delete("a/x.bin")
    with pytest.raises((NotFoundError, ObjectChangedError)):
        backend.read_range("a/x.bin", 0, 5, second.etag)  # gone while being read
    wd.close()


def test_answers_are_not_counted_as_backend_errors(any_store: Store) -> None:
    """No such object, a directory, an object listed as a directory, another version: a healthy
    store's answers, never counted in warpdrive_backend_errors_total (whose ratio to requests
    pages someone); the requests themselves are counted."""
    any_store.put("d/sub/x.bin", b"12345")
    any_store.put("d/y.bin", b"abc")
    wd, backend = _backend(any_store)
    meta = backend.stat("d/y.bin")
    for directory in ("d", "d/sub"):
        with pytest.raises(IsDirectoryError):
            backend.stat(directory)
    with pytest.raises(NotFoundError):
        backend.stat("d/missing.bin")
    try:  # object stores list an object's "children" as nothing; a file system refuses
        assert [e for page in backend.list_pages("d/y.bin/") for e in page] == []
    except NotDirectoryError:
        assert any_store.type == "local"
    try:  # a missing prefix: nothing in an object store, no such directory in a file system
        assert [e for page in backend.list_pages("nowhere/") for e in page] == []
    except NotFoundError:
        assert any_store.type == "local"
    if any_store.type != "gcs":  # the emulator ignores generation= on downloads
        any_store.put("d/y.bin", b"another version")
        with pytest.raises(ObjectChangedError):
            backend.read_range("d/y.bin", 0, 3, meta.etag)
    any_store.delete("d/y.bin")
    with pytest.raises((NotFoundError, ObjectChangedError)):
        backend.read_range("d/y.bin", 0, 3, meta.etag)  # deleted since its stat
    assert _requests(wd, any_store.name) >= 7
    assert _errors(wd, any_store.name) == {}
    wd.close()


def test_a_missing_container_is_a_failure_not_an_answer(any_store: Store) -> None:
    """A container, bucket or root that is not there is a broken backend: EIO and counted
    (container_not_found), never passed off as "no such object"."""
    yaml = any_store.backend_yaml
    for field in ("container: ", "bucket: ", "root: "):
        if field in yaml:
            name = yaml.split(field, 1)[1].split(",")[0].split("}")[0]
            yaml = yaml.replace(f"{field}{name}", f"{field}{name}-gone", 1)
    missing = dataclasses.replace(any_store, backend_yaml=yaml)
    wd, backend = _backend(missing)
    with pytest.raises(ContainerNotFoundError):
        next(iter(backend.list_pages("")))
    with pytest.raises(ContainerNotFoundError):
        backend.stat("x.bin")
    assert ContainerNotFoundError.errno == errno.EIO
    assert _errors(wd, any_store.name) == {"container_not_found": 2}
    wd.close()


def test_read_range_is_exact_and_refuses_another_version(any_store: Store) -> None:
    payload = bytes(range(256)) * 40
    any_store.put("r.bin", payload)
    wd, backend = _backend(any_store)
    meta = backend.stat("r.bin")
    assert backend.read_range("r.bin", 0, len(payload), meta.etag) == payload
    assert backend.read_range("r.bin", 1000, 1001, meta.etag) == payload[1000:1001]
    if any_store.type == "gcs":
        wd.close()
        pytest.skip("gcp-storage-emulator ignores generation= on downloads (real GCS: 404)")
    any_store.put("r.bin", b"other" * 3000)
    with pytest.raises(ObjectChangedError):
        backend.read_range("r.bin", 0, 100, meta.etag)
    wd.close()


def test_read_range_of_a_name_that_needs_quoting(any_store: Store) -> None:
    # Spaces, '+', '%' and non-ASCII go into request URLs quoted exactly once.
    name = "odd names/a b+c%20\u00fc.bin"
    payload = os.urandom(3000)
    any_store.put(name, payload)
    wd, backend = _backend(any_store)
    meta = backend.stat(name)
    assert backend.read_range(name, 0, len(payload), meta.etag) == payload
    assert backend.read_range(name, 17, 2900, meta.etag) == payload[17:2900]
    wd.close()


def test_listing_is_one_level_and_paginated(any_store: Store) -> None:
    for i in range(23):
        any_store.put(f"many/f{i:03d}.bin", b"x" * (i + 1))
    any_store.put("many/sub/deep.bin", b"d")
    any_store.put("many/sub2/deeper/x.bin", b"d")
    wd, backend = _backend(any_store, page_size=5)
    pages = list(backend.list_pages("many/"))
    if any_store.paged_listings:
        assert len(pages) >= 5
    entries = [e for page in pages for e in page]
    files = sorted(e.name for e in entries if not e.is_dir)
    dirs = sorted(e.name for e in entries if e.is_dir)
    assert files == [f"f{i:03d}.bin" for i in range(23)]
    assert dirs == ["sub", "sub2"]
    sizes = {e.name: e.size for e in entries if not e.is_dir}
    assert sizes["f007.bin"] == 8
    paged = list(wd.iterdir(any_store.path("many")))
    assert sum(len(p) for p in paged) == 25
    assert [e.name for e in wd.listdir(any_store.path("many"))][:3] == [
        "f000.bin",
        "f001.bin",
        "f002.bin",
    ]
    wd.close()


def test_listings_and_stat_agree_on_the_version(any_store: Store) -> None:
    any_store.put("v/a.bin", b"abc")
    wd, backend = _backend(any_store)
    listed = {e.name: e for page in backend.list_pages("v/") for e in page}
    assert listed["a.bin"].etag == backend.stat("v/a.bin").etag
    assert listed["a.bin"].size == 3
    wd.close()


def test_root_listing_shows_top_level(any_store: Store) -> None:
    any_store.put("top.bin", b"t")
    any_store.put("dir/inner.bin", b"i")
    wd, backend = _backend(any_store)
    names = {(e.name, e.is_dir) for page in backend.list_pages("") for e in page}
    assert names == {("top.bin", False), ("dir", True)}
    wd.close()


def test_a_connection_string_and_the_configs_endpoint_and_account_must_agree(
    azure_store: Store, azurite: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auth.method: connection_string`` connects where its string says; a config endpoint or
    account saying otherwise is refused at the first request, naming both, never the secret."""
    azure_store.put("x.bin", b"abc")
    monkeypatch.setenv("WD_TEST_AZ_CS", azurite.connection_string())
    found = re.search(r"container: ([^,}]+)", azure_store.backend_yaml)
    assert found is not None
    real, dead = azurite.blob_endpoint(), f"http://127.0.0.1:{free_port()}/devstoreaccount1"

    def read(options: str) -> bytes:
        cfg = parse_config(
            f"cache: {{path: {azure_store.cache_dir}, max_size: 64MB, block_size: 256KB}}\n"
            "fetch: {max_attempts: 1, request_timeout: 5s}\n"
            f"backends:\n  - name: az\n    type: azureblob\n"
            f"    config: {{container: {found.group(1)}, {options}}}\n"
            "    auth: {method: connection_string, connection_string_env: WD_TEST_AZ_CS}\n"
        )
        with WarpDrive(cfg) as wd:
            return wd.read("/az/x.bin")

    for options, named in [
        (f"account: devstoreaccount1, endpoint: '{dead}'", (dead, real, ".config.endpoint")),
        ("account: otheraccount", ("'otheraccount'", "'devstoreaccount1'", ".config.account")),
        (f"account: otheraccount, endpoint: '{real}'", ("'otheraccount'", ".config.account")),
    ]:
        with pytest.raises(ConfigError) as err:
            read(options)
        message = str(err.value)
        assert all(part in message for part in named), message
        assert "\n" not in message and AZURITE_KEY not in message
    # Agreeing (up to a trailing slash and the scheme's case), or saying nothing: read.
    agreeing = real.replace("http://", "HTTP://") + "/"
    assert read(f"account: devstoreaccount1, endpoint: '{agreeing}'") == b"abc"
    assert read("account: devstoreaccount1") == b"abc"
    assert read(f"endpoint: '{real}'") == b"abc"
