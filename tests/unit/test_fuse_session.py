"""The FUSE protocol's encoders and decoders, and the request adapter (ops.py) driven with
hand-made requests over a pipe: no /dev/fuse needed."""

from __future__ import annotations

import errno
import os
import struct
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from warpdrive.errors import BackendUnavailableError, NotFoundError
from warpdrive.fs import Attr, FsStats, Opened, WarpDriveFS
from warpdrive.fuse import protocol as p
from warpdrive.fuse.mount import MountError, require_fuse
from warpdrive.fuse.ops import IMMUTABLE_TIMEOUT, Operations
from warpdrive.metrics import Metrics


def init_body(minor: int, flags: int, flags2: int = 0) -> bytes:
    return p.INIT_IN.pack(7, minor, 1 << 20, flags) + struct.pack("<I", flags2) + bytes(44)


def test_init_grants_what_both_want_and_passthrough_from_flags2() -> None:
    offered = p.ASYNC_READ | p.MAX_PAGES | p.INIT_EXT | p.READDIRPLUS_AUTO
    major, minor, reply = p.negotiate(
        init_body(45, offered, p.PASSTHROUGH >> 32),
        p.ASYNC_READ | p.MAX_PAGES | p.INIT_EXT | p.PASSTHROUGH | p.PARALLEL_DIROPS,
        128 * 1024,
        256,
    )
    assert (major, minor, reply.minor) == (7, 45, 45)
    assert reply.flags == p.ASYNC_READ | p.MAX_PAGES | p.INIT_EXT | p.PASSTHROUGH
    assert reply.passthrough
    fields = p.INIT_OUT.unpack(reply.payload)
    assert len(reply.payload) == 64
    assert fields[:4] == (7, 45, 1 << 20, (p.ASYNC_READ | p.MAX_PAGES | p.INIT_EXT))
    assert fields[6] == 128 * 1024  # max_write
    assert fields[8] == 256  # max_pages
    assert fields[10] == p.PASSTHROUGH >> 32  # flags2
    assert fields[11] == 1  # max_stack_depth


def test_init_without_passthrough_offered_or_with_an_older_kernel() -> None:
    _, _, reply = p.negotiate(init_body(45, p.INIT_EXT), p.INIT_EXT | p.PASSTHROUGH, 4096, 256)
    assert not reply.passthrough
    assert p.INIT_OUT.unpack(reply.payload)[11] == 0
    _, minor, reply = p.negotiate(p.INIT_IN.pack(7, 34, 0, p.ASYNC_READ), p.ASYNC_READ, 4096, 1)
    assert (minor, reply.minor, reply.flags) == (34, 34, p.ASYNC_READ)
    assert p.INIT_OUT.unpack(reply.payload)[8] == 0  # no MAX_PAGES: no max_pages
    _, _, reply = p.negotiate(init_body(46, 0), 0, 4096, 1)
    assert reply.minor == p.KERNEL_MINOR  # the layouts we speak
    with pytest.raises(ValueError, match=r"8\.1 is not supported"):
        p.negotiate(p.INIT_IN.pack(8, 1, 0, 0), 0, 4096, 1)


def test_entry_attr_and_dirent_layouts() -> None:
    attr = p.attr_fields(9, False, 1000, 12.5, 1000, 1001, 1 << 20)
    entry = p.entry_out(9, 1.25, attr)
    fields = p.ENTRY_OUT.unpack(entry)
    assert fields[:6] == (9, 0, 1, 1, 250_000_000, 250_000_000)
    ino, size, blocks, atime, mtime, ctime, ans, mns, cns, mode, nlink, uid, gid = fields[6:19]
    assert (ino, size, blocks, atime, mtime, ctime) == (9, 1000, 2, 12, 12, 12)
    assert (ans, mns, cns) == (500_000_000,) * 3
    assert (mode, nlink, uid, gid) == (0o100444, 1, 1000, 1001)
    assert fields[20] == 1 << 20  # blksize
    out = p.ATTR_OUT.unpack(p.attr_out(0.0, p.attr_fields(1, True, 0, 0, 0, 0, 4096)))
    assert out[:2] == (0, 0)
    assert out[3 + 9 : 3 + 11] == (0o40555, 2)
    d = p.dirent(5, 3, b"abc", True)
    assert len(d) == 32  # 24 + 3, padded to 8
    assert p.DIRENT.unpack_from(d) == (5, 3, 3, 4)  # DT_DIR
    assert d[24:27] == b"abc"
    assert p.DIRENT.unpack_from(p.dirent(5, 3, b"12345678", False))[3] == 8  # DT_REG


def test_request_argument_decoders() -> None:
    assert p.name_arg(b"name\0") == b"name"
    body = p.BATCH_FORGET_IN.pack(2, 0) + p.FORGET_ONE.pack(3, 1) + p.FORGET_ONE.pack(4, 7)
    assert p.forgets(memoryview(body)) == [(3, 1), (4, 7)]
    assert p.open_out(7, p.FOPEN_KEEP_CACHE, 2) == struct.pack("<QIi", 7, 2, 2)
    s = p.KSTATFS.unpack(p.statfs_out(4096, 100, 40, 5))
    assert s[:8] == (100, 40, 40, 5, 0, 4096, 255, 4096)


class FakeFS:
    """The core's methods the adapter calls, with canned answers and failures."""

    def __init__(self) -> None:
        self.refs: list[int] = []
        self.released: list[int] = []
        self.entries = [(f"f{i}", Attr(10 + i, False, i, 1.0), i + 1) for i in range(5)]
        self.fail_after: int | None = None

    def lookup(self, parent: int, name: str) -> Attr:
        if name == "missing":
            raise NotFoundError("no")
        if name == "down":
            raise BackendUnavailableError("store down")
        if name == "bug":
            raise KeyError("bug")
        return Attr(7, False, 3, 1.0, immutable=name == "frozen")

    def getattr(self, ino: int) -> Attr:
        return Attr(ino, True, 0, 1.0)

    def statfs(self) -> FsStats:
        return FsStats(4096, 10, 5, 2)

    def readdir(self, dh: int, start: int) -> list[tuple[str, Attr, int]]:
        if self.fail_after is not None and start >= self.fail_after:
            raise BackendUnavailableError("listing broke off")
        return self.entries[start : start + 2]

    def forget(self, items: list[tuple[int, int]]) -> None:
        self.forgotten = items

    def ref(self, ino: int) -> None:
        self.refs.append(ino)

    def open(
        self, ino: int, flags: int, uid: int | None = None, *, backing: bool = False
    ) -> Opened:
        return Opened(42, keep_cache=True)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return b"x" * size

    def release(self, fh: int, read_by_kernel: bool = False) -> None:
        self.released.append(fh)


class Wire:
    def __init__(self, **kwargs: Any) -> None:
        self.fs = FakeFS()
        self.metrics = Metrics(CollectorRegistry())
        self.ops = Operations(cast(WarpDriveFS, self.fs), self.metrics, 2.0, 3.0, **kwargs)
        self.r, self.w = os.pipe()

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)

    def ask(self, opcode: int, args: bytes, nodeid: int = 1) -> tuple[int, bytes]:
        """(errno, reply body) of one request."""
        header = p.IN_HEADER.pack(40 + len(args), opcode, 99, nodeid, 1000, 1000, 1, 0, 0)
        buf = bytearray(header + args) + bytearray(64)
        self.ops.handle(self.w, memoryview(buf), 40 + len(args))
        reply = os.read(self.r, 1 << 20)
        size, error, unique = p.OUT_HEADER.unpack_from(reply)
        assert (size, unique) == (len(reply), 99)
        return -error, reply[16:]

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def wire() -> Any:
    w = Wire()
    yield w
    w.close()


def test_lookup_replies_an_entry_with_the_timeouts(wire: Wire) -> None:
    code, body = wire.ask(p.LOOKUP, b"x\0")
    fields = p.ENTRY_OUT.unpack(body)
    assert (code, fields[0], fields[2], fields[3]) == (0, 7, 2, 2)  # attr_timeout 2 s
    assert p.ENTRY_OUT.unpack(wire.ask(p.LOOKUP, b"frozen\0")[1])[2] == IMMUTABLE_TIMEOUT
    assert p.ATTR_OUT.unpack(wire.ask(p.GETATTR, bytes(16), nodeid=3)[1])[0] == 3  # a directory
    assert wire.count("warpdrive_fuse_operations_total", operation="lookup") == 2


def test_errors_map_to_errno_and_are_counted(wire: Wire) -> None:
    assert wire.ask(p.LOOKUP, b"missing\0") == (errno.ENOENT, b"")
    assert wire.ask(p.LOOKUP, b"down\0") == (errno.EIO, b"")
    assert wire.ask(p.LOOKUP, b"bug\0") == (errno.EIO, b"")  # logged with its traceback
    assert wire.count("warpdrive_fuse_errors_total", operation="lookup", errno="ENOENT") == 1
    assert wire.count("warpdrive_fuse_errors_total", operation="lookup", errno="EIO") == 2
    for opcode in (p.FLUSH, p.ACCESS, p.GETXATTR, p.LISTXATTR, 999):
        assert wire.ask(opcode, bytes(16))[0] == errno.ENOSYS


def test_readdirplus_refs_only_the_entries_it_sends(wire: Wire) -> None:
    one = 128 + 24 + 8
    code, body = wire.ask(p.READDIRPLUS, p.READ_IN.pack(1, 0, 3 * one + 10) + bytes(24))
    assert (code, len(body)) == (0, 3 * one)
    assert wire.fs.refs == [10, 11, 12]
    code, body = wire.ask(p.READDIR, p.READ_IN.pack(1, 3, 4096) + bytes(24))
    assert len(body) == 2 * 32 and wire.fs.refs == [10, 11, 12]  # plain: no references


def test_a_listing_that_breaks_off_ends_the_reply_then_fails(wire: Wire) -> None:
    wire.fs.fail_after = 2
    code, body = wire.ask(p.READDIRPLUS, p.READ_IN.pack(1, 0, 4096) + bytes(24))
    assert code == 0 and len(body) == 2 * (128 + 32)
    assert wire.ask(p.READDIRPLUS, p.READ_IN.pack(1, 2, 4096) + bytes(24)) == (errno.EIO, b"")
    assert wire.count("warpdrive_fuse_errors_total", operation="readdir", errno="EIO") == 1


def test_open_read_release_and_statfs(wire: Wire) -> None:
    code, body = wire.ask(p.OPEN, p.OPEN_IN.pack(os.O_RDONLY, 0))
    assert (code, p.OPEN_OUT.unpack(body)) == (0, (42, p.FOPEN_KEEP_CACHE, 0))
    assert wire.ask(p.READ, p.READ_IN.pack(42, 0, 5000) + bytes(24)) == (0, b"x" * 5000)
    assert wire.ask(p.RELEASE, p.RELEASE_IN.pack(42) + bytes(16)) == (0, b"")
    assert wire.fs.released == [42]
    assert p.KSTATFS.unpack(wire.ask(p.STATFS, b"")[1])[:3] == (10, 5, 5)


def test_no_reply_to_forget_and_interrupt(wire: Wire) -> None:
    os.set_blocking(wire.r, False)
    for opcode, args in ((p.FORGET, p.FORGET_IN.pack(1)), (p.INTERRUPT, p.FORGET_IN.pack(5))):
        header = p.IN_HEADER.pack(40 + len(args), opcode, 1, 3, 0, 0, 0, 0, 0)
        wire.ops.handle(wire.w, memoryview(bytearray(header + args)), 40 + len(args))
    with pytest.raises(BlockingIOError):
        os.read(wire.r, 100)
    assert wire.fs.forgotten == [(3, 1)]

    def boom(items: list[tuple[int, int]]) -> None:
        raise RuntimeError("bug")

    wire.fs.forget = boom  # type: ignore[method-assign]  # a failing FORGET: no reply either
    header = p.IN_HEADER.pack(48, p.FORGET, 1, 3, 0, 0, 0, 0, 0)
    wire.ops.handle(wire.w, memoryview(bytearray(header + p.FORGET_IN.pack(1))), 48)
    with pytest.raises(BlockingIOError):
        os.read(wire.r, 100)


def test_init_logs_the_mode(caplog: pytest.LogCaptureFixture) -> None:
    w = Wire(threads=3, passthrough=False)
    try:
        with caplog.at_level("INFO"):
            code, body = w.ask(p.INIT, init_body(45, p.INIT_EXT, p.PASSTHROUGH >> 32))
        assert code == 0 and len(body) == 64 and w.ops.backings is None
        assert "FUSE protocol 7.45, passthrough off (disabled by config), 3 threads" in caplog.text
    finally:
        w.close()


def test_require_fuse_names_the_missing_device(tmp_path: Any) -> None:
    with pytest.raises(MountError, match="nope is missing: load the fuse module"):
        require_fuse(str(tmp_path / "nope"))
