"""Folders of small files (ImageNet-style): a warm epoch asks the backend nothing per file, in a
new process and through the mount, after stale_ttl too; a changed object is seen within one
revalidation and never mixed. Requests are counted by a relaying proxy in front of Azurite (by
HTTP method: a stat is a HEAD) and on the mount's /metrics."""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from warpdrive import WarpDrive, parse_config
from warpdrive.testing.faultproxy import FaultProxy
from warpdrive.testing.mounts import Mount, start_mount
from warpdrive.testing.servers import AZURITE_KEY, Server, free_port
from warpdrive_torch import FileDataset

pytestmark = pytest.mark.integration

FILES = 120
CLASSES = 4


@pytest.fixture
def folder(azurite: Server) -> Iterator[tuple[str, dict[str, bytes], FaultProxy]]:
    from azure.storage.blob import BlobServiceClient

    name = f"small{random.randrange(1 << 30)}"
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string()
    ).create_container(name)
    rnd = random.Random(3)
    files = {
        f"train/c{i % CLASSES}/{i:04d}.jpg": rnd.randbytes(rnd.randrange(1000, 3000))
        for i in range(FILES)
    }
    for key, data in files.items():
        container.upload_blob(key, data)
    proxy = FaultProxy(azurite.port)
    try:
        yield name, files, proxy
    finally:
        proxy.close()


def config_text(container: str, proxy: FaultProxy, cache: Path, extra: str = "", **top: str) -> str:
    os.environ["WD_TEST_AZURE_KEY"] = AZURITE_KEY
    head = "".join(f"{k}: {v}\n" for k, v in top.items())
    return (
        f"{head}cache: {{path: {cache}, max_size: 64MB, block_size: 64KB, stale_ttl: 1s, "
        "list_ttl: 1s}\n"
        f"backends:\n  - name: small\n    type: azureblob\n{extra}"
        f"    config: {{account: devstoreaccount1, container: {container}, "
        f"endpoint: '{proxy.endpoint}/devstoreaccount1'}}\n"
        "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
    )


def epoch(ds: FileDataset) -> dict[str, bytes]:
    """One shuffled epoch with two new DataLoader worker processes."""
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, collate_fn=list)
    return {s["__key__"]: s["jpg"] for batch in loader for s in batch}


def expected(files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"/small/{k.removesuffix('.jpg')}": v for k, v in files.items()}


@pytest.mark.parametrize("immutable", [False, True])
def test_a_warm_epoch_in_new_processes_asks_nothing_per_file_after_stale_ttl(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path, immutable: bool
) -> None:
    container, files, proxy = folder
    extra = "    immutable: true\n" if immutable else ""
    wd = WarpDrive(parse_config(config_text(container, proxy, tmp_path / "cache", extra)))
    ds = FileDataset("warpdrive://small/train", wd=wd)
    assert epoch(ds) == expected(files)  # cold: every file fetched
    time.sleep(1.2)  # past stale_ttl: every version known is stale now
    before = dict(proxy.by_method)
    fetched = wd.index.counters()["bytes_fetched"]
    assert epoch(ds) == expected(files)
    asked = {m: n - before.get(m, 0) for m, n in proxy.by_method.items()}
    # The workers are new processes: they took each file's version from the cache index.
    assert asked.get("HEAD", 0) == 0, asked
    assert wd.index.counters()["bytes_fetched"] == fetched
    if immutable:
        assert sum(asked.values()) == 0, asked  # never revalidated
    else:  # revalidated by listing directories, a page each (a round per stale_ttl and
        # worker process): nowhere near a request per file
        assert asked.get("GET", 0) < FILES // 4, asked
    wd.close()


def test_a_changed_small_file_is_seen_within_one_revalidation_never_mixed(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    from azure.storage.blob import BlobServiceClient

    container, files, proxy = folder
    config = parse_config(config_text(container, proxy, tmp_path / "cache"))
    with WarpDrive(config) as wd:
        assert wd.read("/small/train/c1/0001.jpg") == files["train/c1/0001.jpg"]
    new = os.urandom(5000)
    client = BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={proxy.endpoint}/devstoreaccount1;"
    )
    client.get_blob_client(container, "train/c1/0001.jpg").upload_blob(new, overwrite=True)
    # A new process knows the old version from the index: it may answer with it once, while a
    # listing revalidates; then it reads the new one. Every read is one version, whole.
    with WarpDrive(config) as wd:
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline:
            data = wd.read("/small/train/c1/0001.jpg")
            assert data in (files["train/c1/0001.jpg"], new)
            seen.append(data == new)
            if seen[-1]:
                break
            time.sleep(0.1)
        assert seen[-1], seen
    # stale_ttl 0: every open asks the backend, no stale answer at all.
    strict = parse_config(
        config_text(container, proxy, tmp_path / "cache").replace("stale_ttl: 1s", "stale_ttl: 0s")
    )
    client.get_blob_client(container, "train/c1/0001.jpg").upload_blob(b"x" * 10, overwrite=True)
    with WarpDrive(strict) as wd:
        assert wd.read("/small/train/c1/0001.jpg") == b"x" * 10


def test_a_warm_epoch_through_the_mount_stats_nothing_after_stale_ttl(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    container, files, proxy = folder
    port = free_port()
    point = tmp_path / "wd"
    point.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        config_text(
            container,
            proxy,
            tmp_path / "cache",
            mount_point=str(point),
            metrics=f"{{addr: '127.0.0.1:{port}'}}",
        )
    )
    mount = start_mount(config, point, port)
    try:
        paths = sorted(point.glob("small/train/*/*.jpg"))
        assert {f"train/{p.parent.name}/{p.name}": p.read_bytes() for p in paths} == files
        time.sleep(1.2)  # stale: the kernel's entries and attributes have expired too
        stats = mount.metric("warpdrive_backend_request_duration_seconds_count", operation="stat")
        reads = mount.metric("warpdrive_backend_request_duration_seconds_count", operation="read")
        for p in random.Random(1).sample(paths, len(paths)):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the mount serves it
                assert os.read(fd, 1 << 16) == files[f"train/{p.parent.name}/{p.name}"]
            finally:
                os.close(fd)
        assert (
            mount.metric("warpdrive_backend_request_duration_seconds_count", operation="stat")
            == stats
        )
        assert (
            mount.metric("warpdrive_backend_request_duration_seconds_count", operation="read")
            == reads
        )
    finally:
        mount.cleanup()


def _mount(
    container: str, proxy: FaultProxy, tmp_path: Path, extra: str = "", **cache: str
) -> Mount:
    port = free_port()
    point = tmp_path / "wd"
    point.mkdir()
    config = tmp_path / "config.yaml"
    text = config_text(
        container,
        proxy,
        tmp_path / "cache",
        extra,
        mount_point=str(point),
        metrics=f"{{addr: '127.0.0.1:{port}'}}",
    )
    for key, value in cache.items():
        text = re.sub(rf"{key}: [^,}}]+", f"{key}: {value}", text)
    config.write_text(text)
    return start_mount(config, point, port)


def _read_uncached(path: Path) -> bytes:
    """The file's bytes as the mount serves them (the kernel's pages of it dropped first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def test_a_warm_immutable_epoch_through_the_mount_asks_the_backend_nothing(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    """Past stale_ttl and list_ttl: no stat, no read, and no listing either (the scan
    prefetch used to list each directory again once its listing was older than list_ttl)."""
    container, files, proxy = folder
    mount = _mount(container, proxy, tmp_path, "    immutable: true\n")
    try:
        paths = sorted(mount.point.glob("small/train/*/*.jpg"))
        assert {f"train/{p.parent.name}/{p.name}": p.read_bytes() for p in paths} == files
        time.sleep(1.2)  # past stale_ttl and list_ttl (1 s)
        before = dict(proxy.by_method)
        for p in paths:  # name order: the directory scan prefetch runs
            assert _read_uncached(p) == files[f"train/{p.parent.name}/{p.name}"]
        asked = {m: n - before.get(m, 0) for m, n in proxy.by_method.items()}
        assert sum(asked.values()) == 0, asked
    finally:
        mount.cleanup()


@pytest.mark.parametrize("immutable", [False, True])
def test_the_kernel_keeps_entries_and_attributes_of_immutable_data(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path, immutable: bool
) -> None:
    """Under an immutable prefix, stats of its files past stale_ttl are answered by the kernel
    (no lookup or getattr reaches the mount); elsewhere they reach it once stale_ttl has
    passed. (The directories above the prefix keep list_ttl, long here.)"""
    container, files, proxy = folder
    extra = "    immutable: [train/]\n" if immutable else ""
    mount = _mount(container, proxy, tmp_path, extra, list_ttl="60s")
    try:
        paths = sorted(mount.point.glob("small/train/*/*.jpg"))
        sizes = {p: p.stat().st_size for p in paths}
        assert sizes == {p: len(files[f"train/{p.parent.name}/{p.name}"]) for p in paths}
        time.sleep(1.2)  # past stale_ttl (1 s): the kernel's timeout for mutable data

        def handled() -> float:
            name = "warpdrive_fuse_operation_duration_seconds_count"
            return sum(mount.metric(name, operation=op) for op in ("lookup", "getattr"))

        before = handled()
        assert {p: p.stat().st_size for p in paths} == sizes
        reached = handled() - before
        if immutable:
            assert reached == 0
        else:
            assert reached >= len(paths)
    finally:
        mount.cleanup()


def test_listing_again_within_list_ttl_asks_the_backend_nothing(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    container, files, proxy = folder
    mount = _mount(container, proxy, tmp_path, list_ttl="60s", stale_ttl="60s")
    try:

        def ls_r() -> str:
            done = subprocess.run(
                ["ls", "-R", str(mount.point)], capture_output=True, text=True, check=True
            )
            return done.stdout.replace(str(mount.point), "")

        first = ls_r()
        assert all(k.rsplit("/", 1)[1] in first.split() for k in files)
        lists = mount.metric("warpdrive_backend_request_duration_seconds_count", operation="list")
        before = dict(proxy.by_method)
        assert ls_r() == first
        assert (
            mount.metric("warpdrive_backend_request_duration_seconds_count", operation="list")
            == lists
        )
        assert proxy.by_method == before
    finally:
        mount.cleanup()
