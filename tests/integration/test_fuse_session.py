"""The FUSE session in this process, over a real ``/dev/fuse`` mount: kernel passthrough of
cached objects (the core's ``open(backing=True)``), the kernel's io-mode rules around it (with
an injected fault: the core withholding a backing file it would hand over, as it does for an
object not cached whole), and requests served by several threads at once."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Store
from warpdrive.fs import Opened, WarpDriveFS
from warpdrive.fuse.mountinfo import find_mount
from warpdrive.fuse.ops import Operations
from warpdrive.fuse.session import Session
from warpdrive.read.reader import WarpDrive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.getuid() != 0, reason="mount(2) and passthrough need root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
]
MB = 1 << 20


class BackedFS(WarpDriveFS):
    """The real core, which withholds the backing file it would hand over (its cache file)
    while ``give_backing`` is off."""

    def __init__(self, wd: WarpDrive) -> None:
        super().__init__(wd)
        self.give_backing = True

    def open(
        self, ino: int, flags: int, uid: int | None = None, *, backing: bool = False
    ) -> Opened:
        opened = super().open(ino, flags, uid, backing=backing)
        if opened.backing_fd is None or self.give_backing:
            return opened
        os.close(opened.backing_fd)
        return dataclasses.replace(opened, backing_fd=None)


@dataclasses.dataclass
class Served:
    wd: WarpDrive
    fs: BackedFS
    session: Session
    point: Path

    def count(self, name: str, **labels: str) -> float:
        value = self.wd.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def reads(self) -> float:
        return self.count("warpdrive_fuse_operations_total", operation="read")

    def wait_released(self, timeout: float = 10) -> None:
        """Until every OPEN has had its RELEASE answered: the kernel sends RELEASE in the
        background after ``close()`` returns, and an open that comes first finds the inode
        still in user-space mode (no passthrough for it)."""
        deadline = time.monotonic() + timeout
        while self.count("warpdrive_fuse_operations_total", operation="release") < self.count(
            "warpdrive_fuse_operations_total", operation="open"
        ):
            assert time.monotonic() < deadline, "opens not released"
            time.sleep(0.01)


def serve(
    store: Store, tmp_path: Path, passthrough: bool = True, threads: int = 4
) -> Iterator[Served]:
    wd = store.reader()
    fs = BackedFS(wd)
    ops = Operations(fs, wd.metrics, 1.0, 1.0, threads=threads, passthrough=passthrough)
    point = tmp_path / "wd"
    point.mkdir()
    session = Session(ops, str(point), threads=threads)
    session.mount()
    try:
        session.start()
        yield Served(wd, fs, session, point)
    finally:
        session.close()
        if find_mount(str(point)) is not None:
            subprocess.run(["umount", "-l", str(point)], check=False)
        fs.close()
        wd.close()


@pytest.fixture
def files(local_store: Store) -> dict[str, bytes]:
    rnd = random.Random(7)
    data = {f"d/f{i}.bin": rnd.randbytes(3 * MB + i * 4097) for i in range(4)}
    for key, payload in data.items():
        local_store.put(key, payload)
    return data


@pytest.fixture
def served(local_store: Store, tmp_path: Path, files: dict[str, bytes]) -> Iterator[Served]:
    for served in serve(local_store, tmp_path):
        for key, data in files.items():  # cached whole, and verified by this process
            assert served.wd.read(f"/src/{key}") == data
        yield served


def test_passthrough_reads_never_reach_user_space(served: Served, files: dict[str, bytes]) -> None:
    if served.session.ops.backings is None:
        pytest.skip("this kernel does not offer FUSE passthrough")
    before = served.reads()
    for key, data in files.items():
        path = served.point / "src" / key
        assert path.read_bytes() == data
        with open(path, "rb") as f:  # random reads, and the end
            for off in (0, 4095, 2 * MB + 17, len(data) - 10):
                f.seek(off)
                assert f.read(70000) == data[off : off + 70000]
    assert served.reads() == before, "a READ reached user space"
    assert served.count("warpdrive_fuse_passthrough_opens_total") == 2 * len(files)


def test_without_passthrough_reads_reach_user_space(
    local_store: Store, tmp_path: Path, files: dict[str, bytes]
) -> None:
    for served in serve(local_store, tmp_path, passthrough=False):
        assert served.session.ops.backings is None
        key, data = next(iter(files.items()))
        assert (served.point / "src" / key).read_bytes() == data
        assert served.reads() > 0
        assert served.count("warpdrive_fuse_passthrough_opens_total") == 0


def test_mixed_opens_follow_the_kernels_io_mode(served: Served, files: dict[str, bytes]) -> None:
    """The kernel fails (EIO) an open that does not follow the inode's io mode: while a file is
    open in user-space mode, a backing file offered is not used; while it is open in
    passthrough, an open without one shares the open one's backing file; all read exact bytes."""
    if served.session.ops.backings is None:
        pytest.skip("this kernel does not offer FUSE passthrough")
    key, data = next(iter(files.items()))
    path = served.point / "src" / key
    served.fs.give_backing = False
    with open(path, "rb") as cached:
        served.fs.give_backing = True
        with open(path, "rb") as second:
            assert second.read() == data
        assert cached.read() == data
    served.wait_released()
    with open(path, "rb") as passthrough:
        served.fs.give_backing = False
        with open(path, "rb") as without:
            assert without.read() == data
        assert passthrough.read() == data
        served.fs.give_backing = True
        with open(path, "rb") as shared:  # the same backing file: the same backing id
            assert shared.read(MB) == data[:MB]
    assert served.count("warpdrive_fuse_passthrough_opens_total") == 3
    assert served.count("warpdrive_fuse_errors_total", operation="open", errno="EIO") == 0


class SlowFS(WarpDriveFS):
    """Each first read of a file waits until ``parties`` such reads are in progress at once:
    with fewer threads serving, they time out and fail."""

    def __init__(self, wd: WarpDrive, parties: int) -> None:
        super().__init__(wd)
        self.barrier = threading.Barrier(parties, timeout=20)

    def read(self, fh: int, offset: int, size: int) -> bytes | bytearray | memoryview:
        if offset == 0:
            self.barrier.wait()
        return super().read(fh, offset, size)


def test_requests_run_on_several_threads(
    local_store: Store, tmp_path: Path, files: dict[str, bytes]
) -> None:
    wd = local_store.reader()
    fs = SlowFS(wd, len(files))
    ops = Operations(fs, wd.metrics, 1.0, 1.0, threads=8, passthrough=False)
    point = tmp_path / "wd"
    point.mkdir()
    session = Session(ops, str(point), threads=8)
    session.mount()
    results: dict[str, bytes] = {}
    try:
        session.start()

        def read(key: str) -> None:
            results[key] = (point / "src" / key).read_bytes()

        readers = [threading.Thread(target=read, args=(key,)) for key in files]
        for t in readers:
            t.start()
        for t in readers:
            t.join(60)
        assert results == files
    finally:
        session.close()
        fs.close()
        wd.close()
    assert find_mount(str(point)) is None
    assert not session.serving, "every thread ended with the unmount"


def test_fusermount_mounts_and_unmounts(
    local_store: Store, tmp_path: Path, files: dict[str, bytes]
) -> None:
    """The path users without CAP_SYS_ADMIN take (fusermount3 mounts and passes the descriptor
    back over _FUSE_COMMFD; ``fusermount3 -u -z`` unmounts), taken here as root."""
    wd = local_store.reader()
    fs = WarpDriveFS(wd)
    ops = Operations(fs, wd.metrics, 1.0, 1.0, threads=2, passthrough=False)
    point = tmp_path / "wd"
    point.mkdir()
    session = Session(ops, str(point), threads=2)
    session.mount(fusermount=True)
    try:
        entry = find_mount(str(point))
        assert entry is not None and entry.fstype == "fuse.warpdrive"
        session.start()
        key, data = next(iter(files.items()))
        assert (point / "src" / key).read_bytes() == data
    finally:
        session.close()
        fs.close()
        wd.close()
    assert find_mount(str(point)) is None
    assert not session.serving
