"""The mount's file system, without FUSE: inodes, directory handles, file handles, attributes.

``warpdrive/fuse/ops.py`` is a thin adapter that decodes each kernel request, calls one method
here (in a worker thread: every method may block on the backend or the disk) and replies.
Everything the mount does can be exercised through this class without ``/dev/fuse``.

Inodes: a path gets a number the first time the kernel sees it (lookup or readdir) and keeps it
while the kernel holds references (its lookup count); ``forget`` releases them. Attributes come
from the reader's metadata cache (``cache.stale_ttl``), which is also the kernel's attribute
timeout (entries and attributes under a backend's ``immutable`` prefixes are kept by the
kernel far longer: ``fuse/ops.py``). An open file keeps the kernel's page cache when the
object's etag is the one the previous open of that inode saw, and drops it when the etag
changed.

The health file: ``/.warpdrive-health`` (:data:`~warpdrive.config.HEALTH_FILE`) is looked up by
name only (no listing shows it) and holds one line, ``ok PID``, PID being the process serving the
mount. It needs no backend, and nothing of it is cached by the kernel (entry and attribute
timeouts 0, opened ``direct_io``): an open and a read of it reach this process or fail, which is
what the health checks want to know (a stat may be answered from cached attributes).

Passthrough: ``open(..., backing=True)`` gives the caller (the FUSE session, which registers it
with the kernel) a descriptor of the object's cache file when the version is cached whole and
verified; the object is pinned in the cache until ``release`` (``docs/read-path.md``).

Locks: ``_lock`` guards the inode maps and the handle tables; no I/O runs under it. Reads run in
parallel, several at once even on one handle (the kernel's readahead sends them so), since the
reader's handles are thread-safe.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from warpdrive.config import HEALTH_FILE
from warpdrive.errors import InvalidPathError, NotFoundError, ReadOnlyError
from warpdrive.read.namespace import FileInfo
from warpdrive.read.reader import Handle, WarpDrive

ROOT_INODE = 1
HEALTH_INODE = 2  # the health file's, reserved: paths get numbers from 3 on
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    volatile: bool = False  # the kernel keeps neither entry nor attributes (the health file)
    immutable: bool = False  # under an ``immutable`` prefix: the kernel may keep them for long


@dataclass(frozen=True, slots=True)
class Opened:
    fh: int
    keep_cache: bool  # the kernel may keep the pages it cached for this inode
    direct_io: bool = False  # every read goes to this process (the health file)
    # Asked for with ``open(..., backing=True)``: an O_RDONLY descriptor of the object's cache
    # file when the object is fully cached and verified (the kernel then reads it itself:
    # passthrough); its ownership passes to the caller, and the object stays pinned until
    # ``release(fh)``. None: serve reads through ``read``.
    backing_fd: int | None = None


@dataclass(frozen=True, slots=True)
class FsStats:
    block_size: int
    blocks: int
    free_blocks: int
    files: int


class _DirHandle:
    """An open directory: its listing, fetched a backend page at a time as the kernel reads.

    A listing that fails (the backend went down after some pages) keeps its error: every read
    past the entries it got raises it again, so a caller that retries never takes the short
    listing for the whole directory. Opening the directory again lists it anew."""

    __slots__ = ("entries", "error", "lock", "pages", "path")

    def __init__(self, path: str, pages: Iterator[list[FileInfo]]) -> None:
        self.path = path
        self.pages: Iterator[list[FileInfo]] | None = pages
        self.entries: list[tuple[str, Attr]] = []
        self.error: Exception | None = None  # why the listing stopped short
        self.lock = threading.Lock()


class _OpenFile:
    __slots__ = ("handle", "ino")

    def __init__(self, ino: int, handle: Handle) -> None:
        self.ino = ino
        self.handle = handle


class WarpDriveFS:
    def __init__(self, wd: WarpDrive, readdir_batch: int = 512) -> None:
        self.wd = wd
        self.readdir_batch = readdir_batch
        self.started = time.time()
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {ROOT_INODE: "/"}
        self._inodes: dict[str, int] = {"/": ROOT_INODE}
        self._refs: dict[int, int] = {ROOT_INODE: 1}
        self._next_ino = itertools.count(HEALTH_INODE + 1)
        self._dirs: dict[int, _DirHandle] = {}
        self._files: dict[int, _OpenFile] = {}
        self._next_fh = itertools.count(1)
        self._served_etag: dict[int, str] = {}
        self._health = f"ok {os.getpid()}\n".encode()
        self._health_fhs: set[int] = set()

    # -- inodes ----------------------------------------------------------------------------

    def path_of(self, ino: int) -> str:
        try:
            return self._paths[ino]
        except KeyError:
            raise NotFoundError(f"inode {ino} is not known (forgotten)") from None

    def _inode_locked(self, path: str) -> int:
        ino = self._inodes.get(path)
        if ino is None:
            ino = next(self._next_ino)
            self._inodes[path] = ino
            self._paths[ino] = path
            self._refs[ino] = 0
        return ino

    def _attr(self, info: FileInfo, ino: int) -> Attr:
        if info.is_dir:
            return Attr(ino, True, 0, info.mtime or self.started, immutable=info.immutable)
        return Attr(ino, False, info.size, info.mtime, immutable=info.immutable)

    def ref(self, ino: int, n: int = 1) -> None:
        """The kernel took ``n`` more references to ``ino`` (a lookup or a readdirplus entry)."""
        with self._lock:
            if ino in self._refs:
                self._refs[ino] += n

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        """The kernel dropped references; inodes nobody holds are released."""
        with self._lock:
            for ino, n in items:
                left = self._refs.get(ino, 0) - n
                if left > 0 or ino == ROOT_INODE:
                    self._refs[ino] = max(left, 0) if ino != ROOT_INODE else 1
                    continue
                self._refs.pop(ino, None)
                path = self._paths.pop(ino, None)
                if path is not None and self._inodes.get(path) == ino:
                    del self._inodes[path]
                self._served_etag.pop(ino, None)

    # -- metadata --------------------------------------------------------------------------

    def lookup(self, parent: int, name: str) -> Attr:
        """Attributes of ``name`` in directory ``parent``; counts one kernel reference."""
        if not name or "/" in name or name in (".", ".."):
            raise InvalidPathError(f"invalid name {name!r}")
        if parent == ROOT_INODE and name == HEALTH_FILE:
            return self._health_attr()
        info = self.wd.stat(self.path_of(parent).rstrip("/") + "/" + name)
        with self._lock:
            ino = self._inode_locked(info.path)
            self._refs[ino] += 1
        return self._attr(info, ino)

    def getattr(self, ino: int) -> Attr:
        if ino == HEALTH_INODE:
            return self._health_attr()
        return self._attr(self.wd.stat(self.path_of(ino)), ino)

    def _health_attr(self) -> Attr:
        return Attr(HEALTH_INODE, False, len(self._health), self.started, volatile=True)

    def statfs(self) -> FsStats:
        cfg = self.wd.config.cache
        usage = self.wd.usage()
        bs = cfg.block_size
        return FsStats(
            bs, cfg.max_size // bs, max(0, cfg.max_size - usage.bytes) // bs, usage.blocks
        )

    # -- directories -----------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        path = self.path_of(ino)
        pages = self.wd.iterdir(path)
        handle = _DirHandle(path, pages)
        with self._lock:
            dh = next(self._next_fh)
            self._dirs[dh] = handle
        return dh

    def readdir(self, dh: int, start: int) -> list[tuple[str, Attr, int]]:
        """Entries from index ``start`` on (``(name, attr, next index)``), fetching listing
        pages only as far as the kernel reads: a huge prefix is never listed whole at once."""
        handle = self._dirs.get(dh)
        if handle is None:
            raise NotFoundError(f"directory handle {dh} is not open")
        with handle.lock:
            while len(handle.entries) < start + self.readdir_batch and handle.pages is not None:
                try:
                    page = next(handle.pages, None)
                except Exception as exc:  # a failed generator is over: it would say "end"
                    handle.pages, handle.error = None, exc
                    break
                if page is None:
                    handle.pages = None
                    break
                with self._lock:
                    handle.entries.extend(
                        (info.name, self._attr(info, self._inode_locked(info.path)))
                        for info in page
                    )
            batch = handle.entries[start : start + self.readdir_batch]
            if not batch and handle.error is not None:
                raise handle.error  # where the listing stopped: an error, never its end
        return [(name, attr, start + i + 1) for i, (name, attr) in enumerate(batch)]

    def releasedir(self, dh: int) -> None:
        with self._lock:
            self._dirs.pop(dh, None)

    # -- files -----------------------------------------------------------------------------

    def open(
        self, ino: int, flags: int, uid: int | None = None, *, backing: bool = False
    ) -> Opened:
        """A file handle for the user ``uid`` (whose team its fetches count against), and
        whether the kernel may keep the pages it cached for this inode (yes while the object's
        etag is the one the previous open saw; never for the health file, opened ``direct_io``).

        ``backing``: the caller can have the kernel read the file itself (FUSE passthrough).
        If the object version is cached whole and verified (blocks cached but not verified by
        this process are verified now, one read of the cache file), ``backing_fd`` is a new
        read-only descriptor of its cache file, the caller's to close, and the object is pinned
        in the cache (no process evicts it) until :meth:`release`. Otherwise (not all cached,
        a block failing verification, an empty object, the health file) ``backing_fd`` is
        None and reads come here; a later open of the object, once cached whole, gets one."""
        if flags & _WRITE_FLAGS:
            raise ReadOnlyError("the WarpDrive mount is read-only")
        if ino == HEALTH_INODE:
            with self._lock:
                fh = next(self._next_fh)
                self._health_fhs.add(fh)
            return Opened(fh, keep_cache=False, direct_io=True)
        path = self.path_of(ino)
        user, team = self.wd.user_and_team(uid)
        handle = self.wd.open_handle(path, team, user)
        fd = None
        if backing:
            try:
                fd = handle.backing_fd()
            except BaseException:
                handle.close()
                raise
        with self._lock:
            keep_cache = self._served_etag.get(ino) == handle.obj.etag
            self._served_etag[ino] = handle.obj.etag
            fh = next(self._next_fh)
            self._files[fh] = _OpenFile(ino, handle)
        return Opened(fh, keep_cache, backing_fd=fd)

    def read(self, fh: int, offset: int, size: int) -> bytes | bytearray | memoryview:
        f = self._files.get(fh)
        if f is None:
            if fh in self._health_fhs:
                return self._health[offset : offset + size]
            raise NotFoundError(f"file handle {fh} is not open")
        return f.handle.pread(offset, size)

    def release(self, fh: int, read_by_kernel: bool = False) -> None:
        """Close a file handle; ``read_by_kernel``: it was opened in passthrough, and is
        counted as a whole read of the object from the cache (see ``Handle.read_by_kernel``)."""
        with self._lock:
            f = self._files.pop(fh, None)
            self._health_fhs.discard(fh)
        if f is not None:
            if read_by_kernel:
                f.handle.read_by_kernel()
            f.handle.close()  # adds the read to the access records

    def close(self) -> None:
        with self._lock:
            files, self._files = list(self._files.values()), {}
            self._dirs.clear()
            self._health_fhs.clear()
        for f in files:
            f.handle.close()
