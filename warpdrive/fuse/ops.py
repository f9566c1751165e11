"""pyfuse3 operations: decode the request, call one :class:`~warpdrive.fs.WarpDriveFS` method in
a worker thread, reply.

Only FUSEError may leave a handler (anything else would end pyfuse3's loop and hang the mount),
so every handler goes through :func:`_handler`: known errors become their errno
(``warpdrive.errors.errno_for``), unknown ones are logged with a traceback and answered EIO; all
are counted. Blocking work never runs on the trio loop: calls into the file system core go
through ``trio.to_thread.run_sync``, bounded by one capacity limiter, except a read whose bytes
are cached and in memory (checked without blocking), which is served on the loop, and so are
lookup, getattr and open of objects whose metadata is cached, and release: with small files a
thread hand-off per request cost more than the work (~0.5 ms each of lookup, open, release).
The mount is ``ro``: the kernel itself answers EROFS to anything that would write, and ``open``
refuses write flags.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT

from warpdrive.errors import WarpDriveError, errno_for
from warpdrive.fs import Attr, WarpDriveFS
from warpdrive.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
PREFERRED_IO = 1 << 20  # st_blksize: what cp/cat size their reads by
# Kernel entry and attribute timeout (seconds) of what lies under a backend's `immutable`
# prefixes: its size and etag never change, so the kernel answers stats and lookups itself. A
# day, not for ever: longer than any training epoch re-reads a file, yet a prefix wrongly
# declared immutable heals within a day without a remount (as offline_max_age's default).
IMMUTABLE_TIMEOUT = 86400.0
_OPERATIONS = (
    "lookup",
    "getattr",
    "forget",
    "statfs",
    "opendir",
    "readdir",
    "releasedir",
    "open",
    "read",
    "release",
)

Method = Callable[Concatenate["Operations", P], Coroutine[Any, Any, R]]


def _handler(operation: str) -> Callable[[Method[P, R]], Method[P, R]]:
    """Time and count the request; turn every exception into a FUSEError (see module doc)."""

    def wrap(fn: Method[P, R]) -> Method[P, R]:
        async def run(self: Operations, /, *args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await fn(self, *args, **kwargs)
            except pyfuse3.FUSEError as exc:
                self._failed(operation, exc.errno)
                raise
            except WarpDriveError as exc:
                code = errno_for(exc)
                if code == errno.EIO:
                    log.warning("%s failed: %s", operation, exc)
                self._failed(operation, code)
                raise pyfuse3.FUSEError(code) from None
            except OSError as exc:
                code = exc.errno or errno.EIO
                self._failed(operation, code)
                raise pyfuse3.FUSEError(code) from None
            except Exception:
                log.exception("%s failed unexpectedly", operation)
                self._failed(operation, errno.EIO)
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:
                self._timed(operation, time.perf_counter() - started)

        return run

    return wrap


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        fs: WarpDriveFS,
        metrics: Metrics,
        attr_timeout: float,
        dir_timeout: float,
        threads: int,
    ) -> None:
        super().__init__()
        self.fs = fs
        self.metrics = metrics
        self.attr_timeout = attr_timeout
        self.dir_timeout = dir_timeout
        self.uid, self.gid = os.getuid(), os.getgid()
        self.limiter = trio.CapacityLimiter(threads)
        self._ops = {
            op: (metrics.fuse_operations.labels(op), metrics.fuse_duration.labels(op))
            for op in (
                "lookup",
                "getattr",
                "opendir",
                "readdir",
                "open",
                "read",
                "release",
                "releasedir",
                "statfs",
                "forget",
                "write",
            )
        }

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        return result

    def _timed(self, operation: str, seconds: float) -> None:
        counter, histogram = self._ops[operation]
        counter.inc()
        histogram.observe(seconds)

    def _failed(self, operation: str, code: int) -> None:
        name = errno.errorcode.get(code, "EIO")
        self.metrics.fuse_errors.labels(operation, name).inc()

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attr.ino
        entry.generation = 0
        if attr.volatile:
            timeout = 0.0
        elif attr.immutable:
            timeout = IMMUTABLE_TIMEOUT
        else:
            timeout = self.dir_timeout if attr.is_dir else self.attr_timeout
        entry.entry_timeout = timeout
        entry.attr_timeout = timeout
        if attr.is_dir:
            entry.st_mode = stat.S_IFDIR | 0o555
            entry.st_nlink = 2
        else:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_nlink = 1
        entry.st_size = attr.size
        entry.st_blksize = PREFERRED_IO
        entry.st_blocks = -(-attr.size // 512)
        entry.st_uid, entry.st_gid = self.uid, self.gid
        ns = int(attr.mtime * 1e9)
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = ns
        return entry

    # -- metadata --------------------------------------------------------------------------

    @_handler("lookup")
    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path_name = os.fsdecode(name)
        attr = self.fs.lookup_cached(parent_inode, path_name)
        if attr is None:
            attr = await self._call(self.fs.lookup, parent_inode, path_name)
        return self._entry(attr)

    @_handler("getattr")
    async def getattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        attr = self.fs.getattr_cached(inode)
        if attr is None:
            attr = await self._call(self.fs.getattr, inode)
        return self._entry(attr)

    @_handler("forget")
    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        self.fs.forget(inode_list)  # in memory only: no thread needed

    @_handler("statfs")
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stats = await self._call(self.fs.statfs)
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = stats.block_size
        out.f_blocks = stats.blocks
        out.f_bfree = out.f_bavail = stats.free_blocks
        out.f_files = stats.files
        out.f_ffree = out.f_favail = 0
        out.f_namemax = 255
        return out

    # -- directories -----------------------------------------------------------------------

    @_handler("opendir")
    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        return FileHandleT(await self._call(self.fs.opendir, inode))

    @_handler("readdir")
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        first = start_id
        while True:
            try:
                batch = await self._call(self.fs.readdir, fh, start_id)
            except WarpDriveError:
                if start_id > first:  # the listing broke off: what it got goes out, and the
                    return  # next request, from here, gets the error (the handle keeps it)
                raise
            if not batch:
                return
            for name, attr, next_id in batch:
                if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(attr), next_id):
                    return
                self.fs.ref(attr.ino)  # the kernel now holds a reference (readdirplus)
                start_id = next_id

    @_handler("releasedir")
    async def releasedir(self, fh: FileHandleT) -> None:
        self.fs.releasedir(fh)

    # -- files -----------------------------------------------------------------------------

    @_handler("open")
    async def open(
        self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        opened = self.fs.open_cached(inode, flags, ctx.uid)
        if opened is None:
            opened = await self._call(self.fs.open, inode, flags, ctx.uid)
        return pyfuse3.FileInfo(
            fh=FileHandleT(opened.fh), keep_cache=opened.keep_cache, direct_io=opened.direct_io
        )

    @_handler("read")
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        # Cached bytes already in memory are read right here (it cannot block, and a thread
        # hand-off costs more than the read); anything else goes to a worker thread. pyfuse3
        # replies with any contiguous buffer, so nothing is copied into bytes.
        data = self.fs.read_cached(fh, off, size)
        if data is None:
            data = await self._call(self.fs.read, fh, off, size)
        return cast(bytes, data)

    @_handler("release")
    async def release(self, fh: FileHandleT) -> None:
        self.fs.release(fh)  # closes a descriptor and adds to in-memory records: no blocking
