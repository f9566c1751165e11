"""Folders of small files (ImageNet-style): a warm epoch asks the backend nothing per file, in a
new process and through the mount, after stale_ttl too; a changed object is seen within one
revalidation and never mixed; a cold shuffled epoch (through the mount, or FileDataset in its
workers) fetches every file once, reading a directory ahead with many requests in flight, and
FileDataset hints the batches a worker reads next. Requests are counted by a relaying proxy in
front of Azurite (by HTTP method: a stat is a HEAD; block reads by object) and on /metrics."""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from warpdrive import WarpDrive, parse_config
from warpdrive.admin import Admin, cache_counters
from warpdrive.testing.faultproxy import Fault, FaultProxy, Request
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
    fetched = cache_counters(wd.config)["bytes_fetched"]
    assert epoch(ds) == expected(files)
    asked = {m: n - before.get(m, 0) for m, n in proxy.by_method.items()}
    # The workers are new processes: they took each file's version from the cache index.
    assert asked.get("HEAD", 0) == 0, asked
    assert cache_counters(wd.config)["bytes_fetched"] == fetched
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
    mount = mount_folder(container, proxy, tmp_path)
    point = mount.point
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


def block_reads(proxy: FaultProxy) -> Counter[str]:
    """Ranged GETs (block reads) the proxy relays from now on, by object key."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def record(request: Request) -> bool:
        with lock:
            seen[request.path.split("/", 3)[3]] += 1
        return False  # never a fault: only counted

    proxy.inject(Fault("status", count=None, match=record))
    return seen


class MountedFiles(Dataset[tuple[str, bytes]]):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, bytes]:
        p = self.paths[i]
        return f"train/{p.parent.name}/{p.name}", p.read_bytes()


def test_a_cold_shuffled_epoch_through_the_mount_fetches_every_file_once(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    container, files, proxy = folder
    reads = block_reads(proxy)
    mount = mount_folder(container, proxy, tmp_path)
    point = mount.point
    try:
        paths = sorted(point.glob("small/train/*/*.jpg"))
        loader = DataLoader(
            MountedFiles(paths), batch_size=8, shuffle=True, num_workers=2, collate_fn=list
        )
        assert dict(s for batch in loader for s in batch) == files
        # Every file in one request, once, although the directories were read ahead.
        assert reads == Counter(dict.fromkeys(files, 1)), reads
        fetched = mount.metric("warpdrive_backend_bytes_read_total")
        assert fetched == sum(len(data) for data in files.values())
    finally:
        mount.cleanup()


def test_a_directory_read_in_shuffled_order_is_fetched_ahead_many_requests_at_once(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    # The first request for each file the reader does not open is held for 5 s (then dropped:
    # the client retries). Eight of them started within 5 s of each other were all in flight.
    container, files, proxy = folder
    opened = ("train/c0/0100.jpg", "train/c0/0060.jpg")  # descending: no name-order scan
    started: dict[str, float] = {}
    lock = threading.Lock()

    def hold_first(request: Request) -> bool:
        key = request.path.split("/", 3)[3]
        with lock:
            if key in opened or key in started:
                return False
            started[key] = time.monotonic()
            return True

    proxy.inject(Fault("stall", count=None, seconds=5.0, match=hold_first))
    mount = mount_folder(container, proxy, tmp_path)
    point = mount.point
    try:
        for key in opened:
            assert (point / "small" / key).read_bytes() == files[key]
        in_flight = 0
        deadline = time.monotonic() + 15
        while in_flight < 8 and time.monotonic() < deadline:
            with lock:
                times = sorted(started.values())
            in_flight = max((sum(1 for t in times if s <= t < s + 5.0) for s in times), default=0)
            time.sleep(0.05)
        assert in_flight >= 8, started
        assert all(k.startswith("train/c0/") for k in started)  # the directory being read
        proxy.clear()
        for key in sorted(k for k in files if k.startswith("train/c0/")):
            assert (point / "small" / key).read_bytes() == files[key]
    finally:
        mount.cleanup()


def test_a_cold_filedataset_epoch_in_workers_fetches_every_file_once(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    container, files, proxy = folder
    reads = block_reads(proxy)
    wd = WarpDrive(parse_config(config_text(container, proxy, tmp_path / "cache")))
    ds = FileDataset("warpdrive://small/train", wd=wd)
    loader = DataLoader(
        ds, batch_size=8, sampler=ds.sampler(seed=3), num_workers=2, collate_fn=list
    )
    assert {s["__key__"]: s["jpg"] for batch in loader for s in batch} == expected(files)
    # Each worker hinted only the batches dealt to it: no file was fetched by both.
    assert reads == Counter(dict.fromkeys(files, 1)), reads
    assert cache_counters(wd.config)["bytes_fetched"] == sum(len(d) for d in files.values())
    wd.close()


def test_filedataset_hints_the_next_batches_before_they_are_read(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    container, files, proxy = folder
    reads = block_reads(proxy)
    with WarpDrive(parse_config(config_text(container, proxy, tmp_path / "cache"))) as wd:
        ds = FileDataset("warpdrive://small/train", wd=wd, hint_batches=2)
        order = list(ds.sampler(seed=1))  # a DataLoader without workers: this process reads
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]

        def keys(batch: list[int]) -> set[str]:
            return {ds.paths(i)["jpg"].removeprefix("/small/") for i in batch}

        first = ds.__getitems__(batches[0])
        assert [s["jpg"] for s in first] == [files[ds.paths(i)["jpg"][7:]] for i in batches[0]]
        ahead = keys(batches[1]) | keys(batches[2])
        deadline = time.monotonic() + 10
        while not ahead <= set(reads) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ahead <= set(reads), ahead - set(reads)  # fetched before anyone read them
        assert not keys(batches[3]) & set(reads)  # two batches ahead, not more
        before = Counter(reads)
        second = ds.__getitems__(batches[1])
        assert [s["jpg"] for s in second] == [files[ds.paths(i)["jpg"][7:]] for i in batches[1]]
        assert all(reads[k] == before[k] for k in keys(batches[1]))  # read from the cache


def test_the_next_epoch_reads_a_directory_through_again(
    folder: tuple[str, dict[str, bytes], FaultProxy], tmp_path: Path
) -> None:
    # A dataset larger than the cache: between epochs a directory's files left it. The second
    # epoch's reader opens two of them; the others are fetched ahead of it again, as in the
    # first epoch (before, a directory read through once was never read through again).
    container, files, proxy = folder
    keys = sorted(k for k in files if k.startswith("train/c0/"))
    with WarpDrive(parse_config(config_text(container, proxy, tmp_path / "cache"))) as wd:
        for key in keys:  # epoch 1, in name order: read through, every file cached
            with wd.open(f"/small/{key}") as f:
                assert f.read() == files[key]
        oids = [wd.version(f"/small/{key}").oid for key in keys]
        with Admin(wd.config) as admin:
            assert admin.evict(oids) == len(keys)  # all gone: the next epoch is cold
        reads = block_reads(proxy)
        for key in keys[:2]:  # epoch 2 begins
            with wd.open(f"/small/{key}") as f:
                assert f.read() == files[key]
        ahead = set(keys[2:])
        deadline = time.monotonic() + 10
        while not ahead <= set(reads) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ahead <= set(reads), sorted(ahead - set(reads))  # fetched before being opened
        for key in keys[2:]:
            with wd.open(f"/small/{key}") as f:
                assert f.read() == files[key]
        assert all(reads[key] == 1 for key in keys), reads  # each once, then from the cache


def mount_folder(
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
    mount = mount_folder(container, proxy, tmp_path, "    immutable: true\n")
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
    mount = mount_folder(container, proxy, tmp_path, extra, list_ttl="60s")
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
    mount = mount_folder(container, proxy, tmp_path, list_ttl="60s", stale_ttl="60s")
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
