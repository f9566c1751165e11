"""The kernel FUSE protocol (``include/uapi/linux/fuse.h``, 7.45): opcodes, flags, the byte
layouts of the requests and replies the session uses, and their encoders. Pure functions of
bytes: no I/O here, so everything can be unit-tested without ``/dev/fuse``.

A request is a ``fuse_in_header`` (40 bytes) and an opcode's arguments; a reply is a
``fuse_out_header`` (16 bytes: total length, ``-errno`` or 0, the request's ``unique``) and the
opcode's reply, written in one ``write``. Layouts are little-endian (x86-64, arm64), as the
kernel's in-memory structs are. Fields this mount never uses are kept as padding.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass

KERNEL_MAJOR = 7
KERNEL_MINOR = 45  # the layouts below; the session answers INIT with min(kernel's, this)

# Opcodes (enum fuse_opcode).
LOOKUP = 1
FORGET = 2
GETATTR = 3
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
GETXATTR = 22
LISTXATTR = 23
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
ACCESS = 34
INTERRUPT = 36
DESTROY = 38
NOTIFY_REPLY = 41
BATCH_FORGET = 42
READDIRPLUS = 44

# INIT flags: bits 0-31 in fuse_init_in/out.flags, 32-63 in flags2 (with INIT_EXT).
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
PARALLEL_DIROPS = 1 << 18
AUTO_INVAL_DATA = 1 << 12
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_PASSTHROUGH = 1 << 7

# ioctls on a /dev/fuse descriptor (magic 229).
DEV_IOC_CLONE = 0x8004E500  # _IOR(229, 0, uint32): the session fd -> this fd joins it
DEV_IOC_BACKING_OPEN = 0x4010E501  # _IOW(229, 1, fuse_backing_map): returns the backing id
DEV_IOC_BACKING_CLOSE = 0x4004E502  # _IOW(229, 2, uint32): the backing id

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
# fuse_attr: ino size blocks atime mtime ctime, *time_nsec, mode nlink uid gid rdev blksize flags
_ATTR = "QQQQQQIIIIIIIIII"
ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)  # nodeid generation entry/attr_valid (s, ns), attr
ATTR_OUT = struct.Struct("<QII" + _ATTR)  # attr_valid attr_valid_nsec dummy, attr
DIRENT = struct.Struct("<QQII")  # ino off namelen type, then the name padded to 8 bytes
OPEN_IN = struct.Struct("<II")  # flags open_flags
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQI")  # fh offset size (read_flags lock_owner flags follow)
RELEASE_IN = struct.Struct("<Q")  # fh (flags release_flags lock_owner follow)
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count dummy, then count × FORGET_ONE
FORGET_ONE = struct.Struct("<QQ")  # nodeid nlookup
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (flags2 follows from 7.36)
FLAGS2 = struct.Struct("<I")
# major minor max_readahead flags max_background congestion_threshold max_write time_gran
# max_pages map_alignment flags2 max_stack_depth request_timeout, unused[11]: 64 bytes
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
KSTATFS = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize pad
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding

_SIZES = (ENTRY_OUT.size, ATTR_OUT.size, INIT_OUT.size, KSTATFS.size, IN_HEADER.size)
assert _SIZES == (128, 104, 64, 80, 40), _SIZES  # the kernel's sizeof()s

MODE_DIR = stat.S_IFDIR | 0o555
MODE_FILE = stat.S_IFREG | 0o444


@dataclass(frozen=True, slots=True)
class InitReply:
    """What the session answers to the kernel's INIT, and what was agreed."""

    minor: int  # the protocol minor both sides speak
    flags: int  # granted INIT flags, 64 bits
    payload: bytes  # the fuse_init_out

    @property
    def passthrough(self) -> bool:
        return bool(self.flags & PASSTHROUGH)


def negotiate(
    body: bytes | memoryview, wanted: int, max_write: int, max_pages: int
) -> tuple[int, int, InitReply]:
    """The kernel's (major, minor) and our reply to its INIT: the flags both want, limits.
    Raises ValueError for a kernel this cannot speak to (major other than 7, minor < 31)."""
    major, minor, max_readahead, flags = INIT_IN.unpack_from(body)
    if major != KERNEL_MAJOR or minor < 31:
        raise ValueError(f"kernel FUSE protocol {major}.{minor} is not supported (7.31+)")
    offered = flags
    if flags & INIT_EXT and len(body) >= INIT_IN.size + FLAGS2.size:
        offered |= FLAGS2.unpack_from(body, INIT_IN.size)[0] << 32
    granted = offered & wanted
    agreed = min(minor, KERNEL_MINOR)
    payload = INIT_OUT.pack(
        KERNEL_MAJOR,
        agreed,
        max_readahead,
        granted & 0xFFFFFFFF,
        0,  # max_background: the kernel's default (as libfuse leaves it)
        0,  # congestion_threshold: likewise
        max_write,
        1,  # time_gran: nanoseconds
        max_pages if granted & MAX_PAGES else 0,
        0,
        granted >> 32,
        1 if granted & PASSTHROUGH else 0,  # max_stack_depth: backing files on plain fs
        0,
    )
    return major, minor, InitReply(agreed, granted, payload)


def _split(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def attr_fields(
    ino: int, is_dir: bool, size: int, mtime: float, uid: int, gid: int, blksize: int
) -> tuple[int, ...]:
    """The fuse_attr of an entry: read-only modes, st_blocks in 512-byte units."""
    ns = int(mtime * 1e9)
    secs, nsec = divmod(ns, 1_000_000_000)
    mode, nlink = (MODE_DIR, 2) if is_dir else (MODE_FILE, 1)
    return (
        ino, size, -(-size // 512), secs, secs, secs, nsec, nsec, nsec,
        mode, nlink, uid, gid, 0, blksize, 0,
    )  # fmt: skip


def entry_out(nodeid: int, timeout: float, attr: tuple[int, ...]) -> bytes:
    secs, nsec = _split(timeout)
    return ENTRY_OUT.pack(nodeid, 0, secs, secs, nsec, nsec, *attr)


def attr_out(timeout: float, attr: tuple[int, ...]) -> bytes:
    secs, nsec = _split(timeout)
    return ATTR_OUT.pack(secs, nsec, 0, *attr)


def dirent(ino: int, next_off: int, name: bytes, is_dir: bool) -> bytes:
    """A fuse_dirent: DT_DIR or DT_REG, the name padded with zeros to 8 bytes."""
    kind = (MODE_DIR if is_dir else MODE_FILE) >> 12
    pad = -len(name) % 8
    return DIRENT.pack(ino, next_off, len(name), kind) + name + b"\0" * pad


def open_out(fh: int, open_flags: int, backing_id: int = 0) -> bytes:
    return OPEN_OUT.pack(fh, open_flags, backing_id)


def statfs_out(block_size: int, blocks: int, free: int, files: int) -> bytes:
    return KSTATFS.pack(blocks, free, free, files, 0, block_size, 255, block_size, 0)


def name_arg(body: bytes | memoryview) -> bytes:
    """A NUL-terminated name argument (LOOKUP)."""
    raw = bytes(body)
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def forgets(body: bytes | memoryview) -> list[tuple[int, int]]:
    """The (nodeid, nlookup) pairs of a BATCH_FORGET."""
    count = BATCH_FORGET_IN.unpack_from(body)[0]
    return [
        FORGET_ONE.unpack_from(body, BATCH_FORGET_IN.size + i * FORGET_ONE.size)
        for i in range(count)
    ]


# For the request log (fuse_debug); others show as their number.
OPCODE_NAMES = {
    LOOKUP: "lookup",
    FORGET: "forget",
    GETATTR: "getattr",
    OPEN: "open",
    READ: "read",
    WRITE: "write",
    STATFS: "statfs",
    RELEASE: "release",
    GETXATTR: "getxattr",
    LISTXATTR: "listxattr",
    FLUSH: "flush",
    INIT: "init",
    OPENDIR: "opendir",
    READDIR: "readdir",
    RELEASEDIR: "releasedir",
    ACCESS: "access",
    INTERRUPT: "interrupt",
    DESTROY: "destroy",
    NOTIFY_REPLY: "notify_reply",
    BATCH_FORGET: "batch_forget",
    READDIRPLUS: "readdirplus",
}
