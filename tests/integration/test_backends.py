"""One contract, every store: the Backend protocol against local, Azurite and moto S3."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Store
from warpdrive import WarpDrive, parse_config
from warpdrive.backends import Backend
from warpdrive.errors import ConfigError, IsDirectoryError, NotFoundError, ObjectChangedError
from warpdrive.testing.servers import AZURITE_KEY, Server, free_port

pytestmark = pytest.mark.integration


def _backend(store: Store, page_size: int = 1000) -> tuple[WarpDrive, Backend]:
    yaml = store.backend_yaml.replace("config: {", f"config: {{list_page_size: {page_size}, ", 1)
    cfg = parse_config(
        f"cache: {{path: {store.cache_dir}, max_size: 64MB, block_size: 256KB}}\nbackends:\n{yaml}"
    )
    wd = WarpDrive(cfg)
    return wd, wd._core.backends[store.name]


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
    # "No such object" is a stat's answer, not a backend error (alerts on errors stay quiet).
    errors = wd.metrics.backend_errors.labels(any_store.name, "not_found")
    assert errors._value.get() == 0
    any_store.delete("a/x.bin")
    with pytest.raises((NotFoundError, ObjectChangedError)):
        backend.read_range("a/x.bin", 0, 5, second.etag)  # gone while being read: a fault
    assert (
        sum(
            wd.metrics.backend_errors.labels(any_store.name, kind)._value.get()
            for kind in ("not_found", "changed")
        )
        == 1
    )
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
