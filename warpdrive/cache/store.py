"""Object files on local disk: one sparse file per cached object version, blocks at their offsets.

Layout under ``<cache.path>/v2/objects/``: ``<oid[:2]>/<oid>``, files 0600 in 0700 directories.
A file is as long as its object from its first block on; blocks not cached are holes. Which
blocks are present is the index's business, never the file's: a hole reads as zeros, so the
index names a block only after its bytes are written, and reads trust the bytes only as far as
:mod:`warpdrive.cache.blockcache` says (checksums, generations).

Writing a block and freeing one are ordered by open-file-description (OFD) byte-range locks on
the block's range, which exclude threads as well as processes: a writer holds the lock from its
``pwrite`` until the index has the block; an evictor takes it after the index dropped the block,
checks that no writer indexed the block again meanwhile, and only then punches the hole. So a
hole is never punched under bytes the index names. Removing a whole file takes a lock on all of
it and the same re-check; a writer that finds its file unlinked under it opens the new one.

Checksums are xxh3-64 over 64 KiB chunks, kept in the index (:func:`chunk_sums`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import xxhash

from warpdrive.cache.keys import OID_LEN
from warpdrive.perms import private_dir

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
_hash = xxhash.xxh3_64_intdigest
_U64 = struct.Struct("<Q")
_FLOCK = struct.Struct("hhxxxxqqixxxx")  # struct flock (64-bit Linux); l_pid 0 for OFD locks
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)  # os has no fallocate(2) with flags
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
R = TypeVar("R")


def chunk_sums(data: bytes | memoryview) -> bytes:
    """The packed per-chunk checksums of a block's bytes (8 bytes per 64 KiB chunk)."""
    view = memoryview(data)
    sums = array("Q", (_hash(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)))
    return sums.tobytes()


def verify(data: bytes | bytearray | memoryview, sums: bytes) -> bool:
    """Whether ``data`` (a whole block) matches its packed chunk checksums."""
    view = memoryview(data)
    expected = array("Q")
    expected.frombytes(sums)
    if len(expected) != -(-len(view) // CHUNK):
        return False
    return all(
        _hash(view[i : i + CHUNK]) == expected[i // CHUNK] for i in range(0, len(view), CHUNK)
    )


@dataclass(frozen=True, slots=True)
class ObjectFileEntry:
    """An object file found on disk by :meth:`ObjectStore.scan`."""

    path: str
    oid: bytes
    size: int


class ObjectFile:
    """An open object file for reading. ``pread``/``preadv`` on one descriptor are thread-safe.

    ``present`` remembers, for the reader's sake, the generation of blocks the index named as of
    eviction-clock value ``seen_at`` (see :class:`EvictionClock`); ``whole_at`` is the clock
    value at which every block was present and verified, trusted until ``whole_until``
    (monotonic seconds), or -1."""

    __slots__ = ("fd", "ino", "present", "seen_at", "whole_at", "whole_until")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ino = os.fstat(fd).st_ino
        self.present: dict[int, int] = {}
        self.seen_at = -1
        self.whole_at = -1
        self.whole_until = 0.0

    def unlinked(self) -> bool:
        """Whether the file was removed since it was opened (its bytes are not the cache's)."""
        try:
            return os.fstat(self.fd).st_nlink == 0
        except OSError:
            return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class EvictionClock:
    """A counter shared by every process of a cache (an 8-byte file, memory-mapped), advanced
    after the index drops blocks and before their ranges are freed. A reader that sees the same
    value before and after a read knows no range was freed meanwhile, and that what the index
    said at the first look still holds: the check costs two memory loads, not two index reads."""

    def __init__(self, root: str) -> None:
        self._fd = os.open(
            os.path.join(root, "evictions"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        if os.fstat(self._fd).st_size < _U64.size:
            os.ftruncate(self._fd, _U64.size)
        # Back the page now, while the disk has room: a store through the map into a hole of a
        # full file system (tmpfs) is a SIGBUS, which kills the process (a full cache disk
        # evicts, and evicting advances this clock). Best effort: some file systems cannot.
        with contextlib.suppress(OSError):
            os.posix_fallocate(self._fd, 0, _U64.size)
        self._map = mmap.mmap(self._fd, _U64.size)

    def now(self) -> int:
        value: int = _U64.unpack_from(self._map)[0]
        return value

    def advance(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # advances from several processes never merge
        try:
            _U64.pack_into(self._map, 0, self.now() + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class ObjectStore:
    """The object files under ``<root>/objects``."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "objects")
        private_dir(self.dir)
        self._punch_warned = False

    def path(self, oid: bytes) -> str:
        name = oid.hex()
        return f"{self.dir}/{name[:2]}/{name}"

    def open(self, oid: bytes) -> ObjectFile | None:
        """The object's file for reading, or None if there is none."""
        try:
            return ObjectFile(os.open(self.path(oid), os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            return None

    def write(
        self, oid: bytes, size: int, offset: int, data: bytes | memoryview, commit: Callable[[], R]
    ) -> tuple[R, int]:
        """Write ``data`` at ``offset`` of the object's file (made ``size`` long and sparse if
        new), then run ``commit`` (which indexes it) before the range is unlocked; its result
        and the file's inode number."""
        path = self.path(oid)
        while True:
            fd = self._open_for_write(path)
            try:
                _lock(fd, offset, len(data), fcntl.F_WRLCK)
                st = os.fstat(fd)
                if st.st_nlink == 0:  # removed while we waited: write the new file
                    continue
                if st.st_size < size:
                    os.ftruncate(fd, size)
                view, pos = memoryview(data), offset
                while view:
                    written = os.pwrite(fd, view, pos)
                    view, pos = view[written:], pos + written
                return commit(), st.st_ino
            finally:
                os.close(fd)  # releases the lock

    def punch(self, oid: bytes, offset: int, length: int, still_free: Callable[[], bool]) -> None:
        """Free ``[offset, offset+length)`` of the object's file if ``still_free()`` holds once
        the range is locked (no writer indexed it again)."""
        try:
            fd = os.open(self.path(oid), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            _lock(fd, offset, length, fcntl.F_WRLCK)
            if still_free() and _libc.fallocate(
                fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length
            ):
                err = ctypes.get_errno()
                if err not in (errno.EOPNOTSUPP, errno.ENOSYS) or not self._punch_warned:
                    self._punch_warned = True
                    log.warning(
                        "cannot free evicted blocks in %s (%s): their space returns only when "
                        "their object leaves the cache",
                        self.dir,
                        os.strerror(err),
                    )
        finally:
            os.close(fd)

    def remove(self, oid: bytes, still_unused: Callable[[], bool]) -> None:
        """Unlink the object's file if ``still_unused()`` holds with the whole file locked."""
        path = self.path(oid)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            _lock(fd, 0, 0, fcntl.F_RDLCK)
            if still_unused() and os.fstat(fd).st_nlink:
                _unlink(path)
        finally:
            os.close(fd)

    def scan(self) -> Iterator[ObjectFileEntry | str]:
        """Every object file (as :class:`ObjectFileEntry`) and every stray file (as its path)."""
        try:
            shards = sorted(os.scandir(self.dir), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                yield shard.path
                continue
            with os.scandir(shard.path) as entries:
                for entry in entries:
                    oid = _parse_name(entry.name)
                    if oid is None or not entry.is_file(follow_symlinks=False):
                        yield entry.path
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                    yield ObjectFileEntry(entry.path, oid, size)

    def _open_for_write(self, path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            private_dir(os.path.dirname(path))
            return os.open(path, flags, 0o600)


def _lock(fd: int, start: int, length: int, kind: int) -> None:
    """Wait for an OFD lock on ``[start, start+length)`` (0: to the end); released by close."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))


def _parse_name(name: str) -> bytes | None:
    try:
        oid = bytes.fromhex(name)
    except ValueError:
        return None
    return oid if len(oid) == OID_LEN else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
