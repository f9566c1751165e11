"""A region down: what is cached stays readable by new processes. Azurite serves a container,
a first reader (or mount) caches part of it, then Azurite is stopped (connections refused) and
new readers start: a new WarpDrive and ``fsspec.open``, a DataLoader with two workers, and a
mount restarted with ``--degraded-ok`` read the cached objects byte-exact and list their
directories (from the cache index, so only what is cached); what is not cached, or was last
confirmed longer than ``cache.offline_max_age`` ago, fails as before."""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest
from torch.utils.data import DataLoader

from tests.conftest import _azure_store
from warpdrive import BackendUnavailableError, WarpDrive, load_config
from warpdrive.admin import Admin
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import Server, ServerError, free_port, start_azurite
from warpdrive_torch import FileDataset

pytestmark = pytest.mark.integration

CACHED = {
    "train/c0/0000.jpg": 300_000,
    "train/c0/0001.jpg": 70_000,
    "train/c1/0002.jpg": 5_000,
    "train/c1/0003.jpg": 1_000_000,
    "labels.bin": 3_000,
}
UNCACHED = "train/c0/0009.jpg"


@dataclass
class Region:
    azurite: Server
    files: dict[str, bytes]
    config: Path
    point: Path
    port: int

    def offline_served(self, wd: WarpDrive) -> float:
        value = wd.metrics.registry.get_sample_value(
            "warpdrive_offline_served_total", {"backend": "az"}
        )
        return value or 0.0


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Region]:
    """Azurite (this test's own: it gets stopped) with a container of small files, and a
    config for it with fast retries and a short staleness bound (and no directory-scan
    prefetch: UNCACHED stays uncached)."""
    try:
        azurite = start_azurite()
    except ServerError as exc:
        pytest.skip(f"Azurite unavailable: {exc}")
    try:
        store = _azure_store(tmp_path, azurite)
        rnd = random.Random(5)
        files = {key: rnd.randbytes(size) for key, size in CACHED.items()}
        for key, data in {**files, UNCACHED: b"not cached"}.items():
            store.put(key, data)
        point, port = tmp_path / "wd", free_port()
        config = tmp_path / "config.yaml"
        config.write_text(
            f"mount_point: {point}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
            f"cache: {{path: {store.cache_dir}, max_size: 64MB, block_size: 256KB, "
            "stale_ttl: 1s, list_ttl: 1s, offline_max_age: 20s, scan_prefetch: false}\n"
            "fetch: {max_attempts: 2, initial_backoff: 20ms, max_backoff: 50ms, "
            "request_timeout: 2s}\n"
            f"backends:\n{store.backend_yaml}"
        )
        yield Region(azurite, files, config, point, port)
    finally:
        azurite.stop()


def warm(region: Region) -> None:
    """An earlier job read the cached files (and listed their directories)."""
    with WarpDrive(load_config(region.config)) as wd:
        for key, data in region.files.items():
            assert wd.read(f"/az/{key}") == data
        wd.listdir("/az/train/c0")


def test_a_new_reader_reads_and_lists_what_is_cached_with_the_backend_down(
    region: Region,
) -> None:
    warm(region)
    region.azurite.stop()
    with WarpDrive(load_config(region.config)) as wd:
        for key, data in region.files.items():
            assert wd.read(f"/az/{key}") == data
        assert wd.stat("/az/train").is_dir and wd.stat("/az/train/c1").is_dir
        assert [e.name for e in wd.listdir("/az/train")] == ["c0", "c1"]
        listed = wd.listdir("/az/train/c0")  # the cached part only
        assert [(e.name, e.size) for e in listed] == [("0000.jpg", 300_000), ("0001.jpg", 70_000)]
        with pytest.raises(BackendUnavailableError, match=r"az: stat 'train/c0/0009\.jpg'"):
            wd.read(f"/az/{UNCACHED}")
        assert region.offline_served(wd) >= 2
    url = "warpdrive://az/train/c1/0003.jpg"  # a process that only knows a URL
    with fsspec.open(url, "rb", config=str(region.config)) as f:
        assert f.read() == region.files["train/c1/0003.jpg"]


def test_dataloader_workers_read_a_cached_epoch_with_the_backend_down(region: Region) -> None:
    warm(region)
    region.azurite.stop()
    wd = WarpDrive(load_config(region.config))
    ds = FileDataset("warpdrive://az/train", wd=wd)  # listed from the cache index
    assert len(ds) == 4
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=2, collate_fn=list)
    epoch = {s["__key__"]: s["jpg"] for batch in loader for s in batch}
    assert epoch == {
        f"/az/{key.removesuffix('.jpg')}": data
        for key, data in region.files.items()
        if key.endswith(".jpg")
    }
    assert region.offline_served(wd) >= 1
    wd.close()


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine")
def test_a_mount_restarted_in_an_outage_serves_cached_objects_under_directories(
    region: Region,
) -> None:
    mount = start_mount(region.config, region.point, region.port)
    try:
        for key, data in region.files.items():
            assert (region.point / "az" / key).read_bytes() == data
    finally:
        mount.cleanup()
    region.azurite.stop()
    with WarpDrive(load_config(region.config)) as wd:  # when a backend last confirmed it
        with Admin(wd.config) as admin:
            record = admin.index.newest("az", "train/c0/0000.jpg")
        assert record is not None
        expires = record.confirmed_at + load_config(region.config).cache.offline_max_age
    mount = start_mount(region.config, region.point, region.port, "--degraded-ok")
    try:
        assert time.time() < expires - 5, "the restart took too long for this test"
        az = region.point / "az"
        assert sorted(os.listdir(az)) == ["labels.bin", "train"]
        assert sorted(os.listdir(az / "train" / "c0")) == ["0000.jpg", "0001.jpg"]
        for key, data in region.files.items():
            assert read_from_mount(az / key) == data
        with pytest.raises(OSError, match="Input/output error") as info:
            (az / UNCACHED).read_bytes()
        assert info.value.errno == errno.EIO
        assert mount.metric("warpdrive_offline_served_total", backend="az") >= 1
        log = mount.log.read_text()
        assert log.count("az: the backend cannot be reached") == 1, log
        # Past the bound, the cached version is asked about, and the backend cannot answer.
        time.sleep(max(0.0, expires - time.time()) + 1.5)  # the kernel's entries expired too
        with pytest.raises(OSError, match="Input/output error") as info:
            read_from_mount(az / "train" / "c0" / "0000.jpg")
        assert info.value.errno == errno.EIO
        assert mount.proc.poll() is None
    finally:
        mount.cleanup()


def read_from_mount(path: Path) -> bytes:
    """The file's bytes from the mount process, not the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
    finally:
        os.close(fd)
