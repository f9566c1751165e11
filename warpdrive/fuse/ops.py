"""FUSE requests: decode one, make one call into :class:`~warpdrive.fs.WarpDriveFS`, reply.

:meth:`Operations.handle` runs in one of the session's worker threads (``session.py``), which
read requests from ``/dev/fuse``; every call into the file system core may block, on the
backend or the disk, and blocks only its own thread. Every request of the operations below is
timed and counted (``warpdrive_fuse_operations_total`` and
``warpdrive_fuse_operation_duration_seconds`` by ``operation``); errors are translated once,
here: our errors become their errno (``warpdrive.errors.errno_for``; EIO ones logged as a
warning), an OSError keeps its errno, anything else is logged with a traceback and answered
EIO, all counted in ``warpdrive_fuse_errors_total{operation,errno}``. Nothing leaves
:meth:`~Operations.handle`.

What each request gets (as the pyfuse3 adapter this replaced answered): entries and attributes
with ``st_blksize`` 1 MiB, the mount process's uid/gid, modes 0444/0555, kernel timeouts of
``cache.stale_ttl`` (files) and ``cache.list_ttl`` (directories), a day under ``immutable``
prefixes, none for the health file; READDIRPLUS entries count one kernel reference each, only
once they are in the reply; a listing that breaks off after some entries ends the reply there
and the next request, from there on, gets the error. FLUSH, ACCESS (``default_permissions``: the
kernel checks modes itself) and the xattr requests are answered ENOSYS, which the kernel
remembers and stops sending; FORGET, BATCH_FORGET, INTERRUPT get no reply. Opens of objects
whose cache file the core hands over (``backing=True``) go through kernel passthrough when
INIT agreed it (``passthrough.py``). The mount is ``ro``: the kernel itself answers EROFS to
anything that would write, and ``open`` refuses write flags.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from warpdrive.errors import WarpDriveError, errno_for
from warpdrive.fs import Attr, WarpDriveFS
from warpdrive.fuse import protocol as p
from warpdrive.fuse.passthrough import Backings
from warpdrive.metrics import Metrics

log = logging.getLogger(__name__)
requests_log = logging.getLogger("warpdrive.fuse.requests")  # fuse_debug: one line each
PREFERRED_IO = 1 << 20  # st_blksize: what cp/cat size their reads by
# Kernel entry and attribute timeout (seconds) of what lies under a backend's `immutable`
# prefixes: its size and etag never change, so the kernel answers stats and lookups itself. A
# day, not for ever: longer than any training epoch re-reads a file, yet a prefix wrongly
# declared immutable heals within a day without a remount (as offline_max_age's default).
IMMUTABLE_TIMEOUT = 86400.0
MAX_PAGES = 256  # pages per request: 1 MiB reads
MAX_WRITE = 128 * 1024  # nothing is written (ro), but the kernel sizes read buffers by it
BUFFER_SIZE = MAX_WRITE + 4096  # a request: header, arguments, up to MAX_WRITE of data
WANTED = (
    p.ASYNC_READ
    | p.BIG_WRITES
    | p.AUTO_INVAL_DATA
    | p.ASYNC_DIO
    | p.DO_READDIRPLUS  # without READDIRPLUS_AUTO: every listing carries attributes (as pyfuse3)
    | p.PARALLEL_DIROPS
    | p.MAX_PAGES
    | p.INIT_EXT
)
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
    "write",
)

_NO_REPLY = frozenset((p.FORGET, p.BATCH_FORGET, p.INTERRUPT, p.NOTIFY_REPLY))
Parts = Sequence[Any]  # buffers of a reply after its header (bytes, bytearray, memoryview)
Handler = Callable[[int, int, memoryview, int], Parts | None]  # nodeid, uid, args, fd


class FuseError(Exception):
    """A reply with this errno (and nothing else)."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.errno = code


def send(fd: int, unique: int, parts: Parts, error: int = 0) -> bool:
    """Write one reply; False when the kernel no longer waits for it (the request was
    interrupted: ENOENT) or the connection is gone (ENODEV)."""
    size = p.OUT_HEADER.size
    for part in parts:
        size += part.nbytes if isinstance(part, memoryview) else len(part)
    try:
        os.writev(fd, [p.OUT_HEADER.pack(size, -error, unique), *parts])
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True


class Operations:
    def __init__(
        self,
        fs: WarpDriveFS,
        metrics: Metrics,
        attr_timeout: float,
        dir_timeout: float,
        threads: int = 16,
        passthrough: bool = True,
        debug: bool = False,
    ) -> None:
        self.fs = fs
        self.metrics = metrics
        self.attr_timeout = attr_timeout
        self.dir_timeout = dir_timeout
        self.threads = threads
        self.want_passthrough = passthrough
        self.debug = debug
        self.uid, self.gid = os.getuid(), os.getgid()
        self.protocol: tuple[int, int] | None = None  # the kernel's, once INIT is answered
        self.backings: Backings | None = None  # set by INIT when passthrough was agreed
        self._ops = {
            op: (metrics.fuse_operations.labels(op), metrics.fuse_duration.labels(op))
            for op in _OPERATIONS
        }
        none = (None, self._enosys)
        self._table: dict[int, tuple[str | None, Handler]] = {
            p.INIT: (None, self._init),
            p.DESTROY: (None, self._empty),
            p.LOOKUP: ("lookup", self._lookup),
            p.FORGET: ("forget", self._forget),
            p.BATCH_FORGET: ("forget", self._batch_forget),
            p.GETATTR: ("getattr", self._getattr),
            p.STATFS: ("statfs", self._statfs),
            p.OPENDIR: ("opendir", self._opendir),
            p.READDIR: ("readdir", self._readdir),
            p.READDIRPLUS: ("readdir", self._readdirplus),
            p.RELEASEDIR: ("releasedir", self._releasedir),
            p.OPEN: ("open", self._open),
            p.READ: ("read", self._read),
            p.RELEASE: ("release", self._release),
            p.INTERRUPT: (None, self._no_reply),
            p.NOTIFY_REPLY: (None, self._no_reply),
            p.FLUSH: none,
            p.ACCESS: none,
            p.GETXATTR: none,
            p.LISTXATTR: none,
        }

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, fd: int, buf: memoryview, n: int) -> None:
        """Answer the request in ``buf[:n]`` on ``fd``; never raises (see module doc)."""
        _, opcode, unique, nodeid, uid, _, _, _, _ = p.IN_HEADER.unpack_from(buf)
        if self.debug:
            requests_log.debug(
                "%s unique=%d nodeid=%d uid=%d len=%d",
                p.OPCODE_NAMES.get(opcode, opcode),
                unique,
                nodeid,
                uid,
                n,
            )
        operation, fn = self._table.get(opcode, (None, self._enosys))
        started = time.perf_counter()
        code = 0
        parts: Parts | None = None
        try:
            parts = fn(nodeid, uid, buf[p.IN_HEADER.size : n], fd)
        except FuseError as exc:
            code = exc.errno
        except WarpDriveError as exc:
            code = errno_for(exc)
            if code == errno.EIO:
                log.warning("%s failed: %s", operation, exc)
        except OSError as exc:
            code = exc.errno or errno.EIO
        except Exception:
            log.exception("%s failed unexpectedly", operation or opcode)
            code = errno.EIO
        if operation is not None:
            counter, histogram = self._ops[operation]
            counter.inc()
            histogram.observe(time.perf_counter() - started)
            if code:
                self.metrics.fuse_errors.labels(operation, errno.errorcode.get(code, "EIO")).inc()
        if opcode in _NO_REPLY:  # the kernel waits for no answer, even to a failure
            return
        try:
            if code:
                send(fd, unique, (), code)
            elif parts is not None and not send(fd, unique, parts):
                self._abandoned(opcode, parts, fd)
        except OSError as exc:
            log.error("cannot reply to %s: %s", p.OPCODE_NAMES.get(opcode, opcode), exc)

    def _abandoned(self, opcode: int, parts: Parts, fd: int) -> None:
        """An OPEN or OPENDIR answered after its caller gave up: the kernel will never
        release the handle, so it is released here."""
        if opcode not in (p.OPEN, p.OPENDIR):
            return
        fh = p.OPEN_OUT.unpack_from(parts[0])[0]
        if opcode == p.OPENDIR:
            self.fs.releasedir(fh)
            return
        ready = [(fh, False)] if self.backings is None else self.backings.release(fd, fh)
        for each, _ in ready:
            self.fs.release(each)  # never read: not even by the kernel

    def _enosys(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        raise FuseError(errno.ENOSYS)

    def _no_reply(self, nodeid: int, uid: int, args: memoryview, fd: int) -> None:
        return None

    def _empty(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        return ()

    def _init(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        wanted = WANTED | (p.PASSTHROUGH if self.want_passthrough else 0)
        major, minor, reply = p.negotiate(args, wanted, MAX_WRITE, MAX_PAGES)
        self.protocol = (major, minor)
        if reply.passthrough:
            self.backings = Backings(self.metrics.fuse_passthrough_opens)
            mode = "passthrough on"
        elif self.want_passthrough:
            mode = "passthrough off (kernel does not offer it)"
        else:
            mode = "passthrough off (disabled by config)"
        log.info("FUSE protocol %d.%d, %s, %d threads", major, minor, mode, self.threads)
        return (reply.payload,)

    # -- attributes ------------------------------------------------------------------------

    def _timeout(self, attr: Attr) -> float:
        if attr.volatile:
            return 0.0
        if attr.immutable:
            return IMMUTABLE_TIMEOUT
        return self.dir_timeout if attr.is_dir else self.attr_timeout

    def _attr(self, attr: Attr) -> tuple[int, ...]:
        return p.attr_fields(
            attr.ino, attr.is_dir, attr.size, attr.mtime, self.uid, self.gid, PREFERRED_IO
        )

    def _entry(self, attr: Attr) -> bytes:
        return p.entry_out(attr.ino, self._timeout(attr), self._attr(attr))

    # -- metadata --------------------------------------------------------------------------

    def _lookup(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        return (self._entry(self.fs.lookup(nodeid, os.fsdecode(p.name_arg(args)))),)

    def _getattr(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        attr = self.fs.getattr(nodeid)
        return (p.attr_out(self._timeout(attr), self._attr(attr)),)

    def _forget(self, nodeid: int, uid: int, args: memoryview, fd: int) -> None:
        self.fs.forget([(nodeid, p.FORGET_IN.unpack_from(args)[0])])

    def _batch_forget(self, nodeid: int, uid: int, args: memoryview, fd: int) -> None:
        self.fs.forget(p.forgets(args))

    def _statfs(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        s = self.fs.statfs()
        return (p.statfs_out(s.block_size, s.blocks, s.free_blocks, s.files),)

    # -- directories -----------------------------------------------------------------------

    def _opendir(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        return (p.open_out(self.fs.opendir(nodeid), 0),)

    def _readdir(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        return self._list(args, plus=False)

    def _readdirplus(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        return self._list(args, plus=True)

    def _list(self, args: memoryview, plus: bool) -> Parts:
        fh, start, size = p.READ_IN.unpack_from(args)
        out = bytearray()
        first = start
        while True:
            try:
                batch = self.fs.readdir(fh, start)
            except WarpDriveError:
                if start > first:  # the listing broke off: what it got goes out, and the
                    return (out,)  # next request, from here, gets the error (the handle keeps it)
                raise
            if not batch:
                return (out,)
            for name, attr, next_id in batch:
                entry = p.dirent(attr.ino, next_id, os.fsencode(name), attr.is_dir)
                if plus:
                    entry = self._entry(attr) + entry
                if len(out) + len(entry) > size:
                    return (out,)
                out += entry
                if plus:
                    self.fs.ref(attr.ino)  # the kernel now holds a reference
                start = next_id

    def _releasedir(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        self.fs.releasedir(p.RELEASE_IN.unpack_from(args)[0])
        return ()

    # -- files -----------------------------------------------------------------------------

    def _open(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        flags = p.OPEN_IN.unpack_from(args)[0]
        backings = self.backings
        opened = self.fs.open(nodeid, flags, uid, backing=backings is not None)
        open_flags = (p.FOPEN_KEEP_CACHE if opened.keep_cache else 0) | (
            p.FOPEN_DIRECT_IO if opened.direct_io else 0
        )
        backing_id = 0
        if backings is not None:
            try:
                open_flags, backing_id = backings.open(
                    fd, nodeid, opened.fh, open_flags, opened.backing_fd
                )
            except BaseException:
                self.fs.release(opened.fh)  # the error reply leaves no handle to release
                raise
        elif opened.backing_fd is not None:
            os.close(opened.backing_fd)
        return (p.open_out(opened.fh, open_flags, backing_id),)

    def _read(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        fh, offset, size = p.READ_IN.unpack_from(args)
        return (self.fs.read(fh, offset, size),)  # replied as it is: no copy

    def _release(self, nodeid: int, uid: int, args: memoryview, fd: int) -> Parts:
        fh = p.RELEASE_IN.unpack_from(args)[0]
        # The core closes a descriptor and adds to the access records (and unpins an object
        # read through passthrough: that waits while its inode's backing file is in use).
        ready = [(fh, False)] if self.backings is None else self.backings.release(fd, fh)
        for each, by_kernel in ready:
            self.fs.release(each, read_by_kernel=by_kernel)
        return ()
