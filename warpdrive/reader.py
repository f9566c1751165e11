"""The one read path: ``WarpDrive(config).open(path)``, ``.read(path, offset, size)``, ``.stat``,
``.listdir``, ``.prefetch``. The FUSE mount, ``warpdrive-ctl``, the torch adapters and the
``warpdrive://`` fsspec filesystem all read through it.

A read splits into blocks; each block comes from the cache (verified on read) or from the
fetcher (one backend request per missing block per process, shared by every reader). An open
handle is pinned to the object version it saw at open: it never mixes two versions, and reads
fail with ObjectChangedError (ESTALE) once the backend holds another.

A ``WarpDrive`` holds only its configuration until first used; the live parts (backend
clients, LMDB, threads) are created per process, so an instance may be pickled or inherited
across ``fork()`` (DataLoader workers) and each process opens its own.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing.util
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from warpdrive.backends import Backend, ClientWrapper, ObjectMeta, make_backend
from warpdrive.cache import (
    BlockCache,
    CacheIndex,
    ObjectFile,
    ObjectRecord,
    ObjectVersion,
    Quota,
    Usage,
)
from warpdrive.cache.store import in_memory, read_in_memory
from warpdrive.config import Config, load_config
from warpdrive.errors import BackendError, InvalidPathError
from warpdrive.fetch import BlockData, Fetcher, Priority
from warpdrive.governance.access import AccessLog
from warpdrive.governance.teams import TeamResolver
from warpdrive.metrics import Metrics
from warpdrive.namespace import FileInfo, Namespace
from warpdrive.prefetch import HintItem, Prefetcher, Readahead

DEFAULT_BUFFER = 1 << 20
WHOLE_CHECK_EVERY = 16  # reads through the read path between looks for a whole cache file
DISK_AHEAD = 16 << 20  # bytes of a whole cache file read ahead of a sequential reader
_MAX_VERIFY_RETRIES = 3


class _Core:
    """The live parts of a WarpDrive in one process."""

    def __init__(self, config: Config, metrics: Metrics, wrap: ClientWrapper | None) -> None:
        self.config = config
        self.metrics = metrics
        self.backends: dict[str, Backend] = {}
        try:
            for b in config.backends:
                self.backends[b.name] = make_backend(b, config, metrics, wrap)
            self.cache = BlockCache(config.cache, metrics)
        except BaseException:
            for backend in self.backends.values():
                backend.close()
            raise
        self.namespace = Namespace(config, self.backends, CachedVersions(self.cache), metrics)
        self.fetcher = Fetcher(
            self.cache,
            self.backends,
            metrics,
            config.cache.max_parallel_fetch,
            max(config.fetch.coalesce_size, config.cache.block_size),
        )
        self.teams = TeamResolver(config.governance.teams, self.cache.index.user_team)
        self.user, self.team = self.teams.user_and_team()  # this process's reader
        self.prefetcher = Prefetcher(
            self.cache, self.fetcher, metrics, config.cache.readahead_blocks
        )
        self._access: AccessLog | None = None  # started by the first file read
        self._access_lock = threading.Lock()

    def open_handle(
        self,
        path: str,
        team: str | None = None,
        user: str | None = None,
        scan: bool = True,
        nowait: bool = False,
    ) -> Handle | None:
        """A handle on the current version of ``path`` for ``user`` of ``team`` (default: this
        process's user and team); tells the prefetcher a file opened (``scan``; none when the
        config's ``scan_prefetch`` is off). With ``nowait``: None, having done nothing, unless
        the object's metadata is cached (then nothing here blocks)."""
        norm = self.namespace.normalize(path)
        if nowait:
            known = self.namespace.known_meta(norm)
            if known is None:
                return None
            obj = self._version_of(*known)
        else:
            obj = self.version(norm)
        if user is None:
            user, team = self.user, self.team
        if scan and self.config.cache.scan_prefetch:
            self.prefetcher.on_open(norm, obj, self.namespace, self.version, team)
        return Handle(self, norm, obj, team, user)

    def record_access(self, handle: Handle) -> None:
        """A handle that read something closed: add it to the access records."""
        access = self._access
        if access is None:
            if sys.is_finalizing():  # a handle left open, closed by the exiting interpreter:
                return  # no new thread can start now (it would wait for ever)
            with self._access_lock:
                if self._access is None:
                    interval = self.config.governance.access_flush_interval
                    self._access = AccessLog(self.cache.root, interval)
                access = self._access
        obj = handle.obj
        access.record(
            obj.backend, obj.key, handle.user, handle.team, handle.bytes_read, handle.cache_bytes
        )

    def version(self, path: str) -> ObjectVersion:
        return self._version_of(*self.namespace.object_meta(path))

    def _version_of(self, backend: Backend, meta: ObjectMeta) -> ObjectVersion:
        return ObjectVersion(
            backend.name, meta.key, meta.etag, meta.size, meta.mtime, self.config.cache.block_size
        )

    def read_into(
        self,
        obj: ObjectVersion,
        offset: int,
        dst: memoryview,
        ra: Readahead | None = None,
        file: CacheFile | None = None,
    ) -> None:
        """Fill ``dst`` with bytes ``[offset, offset+len(dst))`` of ``obj`` (caller clamps):
        what is cached in one read of the object's cache file, then each missing block."""
        if file is None:
            with CacheFile(self.cache, obj) as own:
                return self.read_into(obj, offset, dst, ra, own)
        end = offset + len(dst)
        if ra is not None:
            self.prefetcher.readahead(ra, offset, end)
        bs = obj.block_size
        first, last = offset // bs, (end - 1) // bs
        if last > first:  # start every missing block now, so they arrive in parallel
            missing = [b for b in range(first, last + 1) if not self.cache.contains(obj, b)]
            if missing:
                team = ra.team if ra is not None else self.team
                self.fetcher.request(obj, missing, Priority.DEMAND, team)
        opened = file.get()
        unfilled = (
            self.cache.read_into(obj, opened, offset, dst)
            if opened is not None
            else list(range(first, last + 1))
        )
        todo = iter(unfilled)
        next_miss = next(todo, -1)
        for index in range(first, last + 1):
            lo, hi = max(offset, index * bs), min(end, index * bs + bs)
            if index != next_miss:
                self._hit(obj, index, hi - lo, ra)
                continue
            next_miss = next(todo, -1)
            part = dst[lo - offset : hi - offset]
            part[:] = self._miss(obj, index, lo - index * bs, hi - lo, ra, file)

    def read(
        self,
        obj: ObjectVersion,
        offset: int,
        n: int,
        ra: Readahead | None,
        file: CacheFile,
        nowait: bool = False,
    ) -> bytes | bytearray | memoryview | None:
        """``n`` bytes at ``offset`` of ``obj`` (caller clamps), as any bytes-like object.

        A read inside one block (the usual FUSE request) allocates no zeroed buffer: a cached
        block is read with ``pread`` into a fresh bytes object, a fetched one is returned as a
        view of the fetched bytes. With ``nowait`` the read is done only if it cannot block
        (one block, cached, verified, in memory); otherwise None and no effect, so the caller
        can retry from a thread."""
        bs = obj.block_size
        index = offset // bs
        if (offset + n - 1) // bs != index:
            if nowait:
                return None
            buf = bytearray(n)
            self.read_into(obj, offset, memoryview(buf), ra, file)
            return buf
        if ra is not None and not nowait:
            self.prefetcher.readahead(ra, offset, offset + n)
        lo = offset - index * bs
        opened = file.get()
        data = (
            self.cache.read_block(obj, opened, index, lo, n, nowait) if opened is not None else None
        )
        if data is not None:
            self._hit(obj, index, n, ra)
            if nowait and ra is not None:
                self.prefetcher.readahead(ra, offset, offset + n)
            return data
        if nowait:
            return None
        return self._miss(obj, index, lo, n, ra, file)

    def _miss(
        self,
        obj: ObjectVersion,
        index: int,
        lo: int,
        n: int,
        ra: Readahead | None,
        file: CacheFile,
    ) -> bytes | memoryview:
        """Bytes ``[lo, lo+n)`` of block ``index``, which the cache could not serve: fetched,
        or read from the cache if another reader cached it meanwhile."""
        metrics = self.metrics
        team = ra.team if ra is not None else self.team
        for _ in range(_MAX_VERIFY_RETRIES):
            metrics.cache_misses.inc()
            if ra is not None and self.prefetcher.prefetched(ra, obj.block_key(index), index):
                self.prefetcher.late(ra)  # prefetched, but not early enough
            data = self.fetcher.fetch(obj, index, team)
            if data is not None:
                metrics.served_from_backend.inc(n)
                self.prefetcher.note_read(ra, obj.block_key(index), index)
                return memoryview(data)[lo : lo + n]
            opened = file.get(reopen=True)  # cached meanwhile: read it there
            got = self.cache.read_block(obj, opened, index, lo, n) if opened else None
            if got is not None:
                self._hit(obj, index, n, ra)
                return got
        raise BackendError(
            f"{obj.backend}: {obj.key!r} block {index}: cached copy kept failing verification"
        )

    def whole_hit(self, obj: ObjectVersion, offset: int, n: int, ra: Readahead) -> None:
        """A read of ``[offset, offset+n)`` served straight from a whole cache file: counted
        as the read path counts its hits."""
        bs = obj.block_size
        first, last = offset // bs, (offset + n - 1) // bs
        self.metrics.cache_hits.inc(last - first + 1)
        self.metrics.served_from_cache.inc(n)
        ra.served_cache += n
        if self.prefetcher.tracking(ra):
            for index in range(first, last + 1):
                self.prefetcher.note_read(ra, obj.block_key(index), index)

    def _hit(self, obj: ObjectVersion, index: int, n: int, ra: Readahead | None) -> None:
        self.metrics.cache_hits.inc()
        self.metrics.served_from_cache.inc(n)
        if ra is not None:
            ra.served_cache += n  # approximate under concurrent reads of one handle: a statistic
        self.prefetcher.note_read(ra, obj.block_key(index), index)

    def close(self) -> None:
        with self._access_lock:
            access, self._access = self._access, None
        if access is not None:
            access.close()  # writes what is pending
        self.namespace.close()
        self.prefetcher.close()
        self.fetcher.close()
        self.cache.close()
        for backend in self.backends.values():
            backend.close()


class CachedVersions:
    """The versions every process cached, as the namespace asks about them (its
    ``VersionIndex``): a new process's first answers, and the answers in an outage."""

    __slots__ = ("_cache",)

    def __init__(self, cache: BlockCache) -> None:
        self._cache = cache

    def known(self, backend: str, key: str) -> tuple[ObjectMeta, float] | None:
        rec = self._cache.index.newest(backend, key)
        return None if rec is None else (_meta(rec), rec.confirmed_at)

    def cached_under(self, backend: str, prefix: str) -> bool:
        return self._cache.index.cached_under(backend, prefix)

    def children(
        self, backend: str, prefix: str
    ) -> tuple[list[str], list[tuple[ObjectMeta, float]]]:
        dirs, records = self._cache.index.children(backend, prefix)
        return dirs, [(_meta(rec), rec.confirmed_at) for rec in records]

    def confirm(self, backend: str, meta: ObjectMeta, when: float) -> None:
        self._cache.confirm(backend, meta.key, meta.etag, when)


def _meta(rec: ObjectRecord) -> ObjectMeta:
    return ObjectMeta(rec.key, rec.size, rec.etag, rec.mtime)


class CacheFile:
    """The cache file of one object as a handle reads it: opened at the first read that finds
    it, opened again if it was removed (the handle's copy then holds no cached bytes)."""

    __slots__ = ("_cache", "_file", "_lock", "_obj")

    def __init__(self, cache: BlockCache, obj: ObjectVersion) -> None:
        self._cache = cache
        self._obj = obj
        self._file: ObjectFile | None = None
        self._lock = threading.Lock()

    def get(self, reopen: bool = False) -> ObjectFile | None:
        """The open file, or None while the object has none; ``reopen``: check that it is
        still the cache's file first (after a read it should have served failed)."""
        file = self._file
        if file is not None and not reopen:
            return file
        with self._lock:
            if self._file is not None and reopen and self._file.unlinked():
                self._file.close()
                self._file = None
            if self._file is None:
                self._file = self._cache.open_object(self._obj)
            return self._file

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> CacheFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Handle(io.RawIOBase):
    """An open object: readinto/seek/tell over one pinned version, with readahead."""

    def __init__(
        self, core: _Core, path: str, obj: ObjectVersion, team: str | None, user: str
    ) -> None:
        super().__init__()
        self._core = core
        self.user = user
        self.name = path
        self.obj = obj
        self.size = obj.size
        self.bytes_read = 0  # what this handle returned, for access records
        self._pos = 0
        self._ra = core.prefetcher.open(obj, team)
        self._file = CacheFile(core.cache, obj)
        # Set while every block is cached and verified: reads go straight to the cache file.
        self._whole: ObjectFile | None = None
        self._slow_reads = 0  # reads through the read path since the last look for a whole file
        self._next = 0  # where a sequential reader of the whole file reads next
        self._advised = 0  # the kernel was asked to read the whole file ahead up to here

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.pread_into(self._pos, buffer)
        self._pos += n
        return n

    def pread(
        self, offset: int, size: int, nowait: bool = False
    ) -> bytes | bytearray | memoryview | None:
        """Up to ``size`` bytes at ``offset``, as a bytes-like object, without moving the
        position (what the mount replies with). Thread-safe, as :meth:`pread_into`. With
        ``nowait``: None, having done nothing, if the read would block (see ``_Core.read``)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        n = min(size, self.size - offset)
        if n <= 0:
            return b""
        whole = self._whole if self._slow_reads else self._first_look()
        if whole is not None:
            served = self._read_whole(whole, offset, n, nowait)
            if served is not None:
                return served
        data = self._core.read(self.obj, offset, n, self._ra, self._file, nowait)
        if data is not None:
            self.bytes_read += n
            self._after_slow_read()
        return data

    def pread_into(self, offset: int, buffer: Any) -> int:
        """Read at ``offset`` into ``buffer`` without moving the position; bytes read.
        Thread-safe: the kernel may send several reads of one open file at once."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        dst = memoryview(buffer).cast("B")
        n = min(len(dst), self.size - offset)
        if n <= 0:
            return 0
        whole = self._whole if self._slow_reads else self._first_look()
        if whole is not None and self._read_whole(whole, offset, n, dst=dst[:n]) is not None:
            return n
        self._core.read_into(self.obj, offset, dst[:n], self._ra, self._file)
        self.bytes_read += n
        self._after_slow_read()
        return n

    def _read_whole(
        self,
        whole: ObjectFile,
        offset: int,
        n: int,
        nowait: bool = False,
        dst: memoryview | None = None,
    ) -> bytes | bytearray | memoryview | None:
        """A read straight from the cache file, while nothing was evicted since every block
        was found cached and verified (the eviction clock reads the same before and after) and
        the verification is recent; into ``dst`` (returned) or as new bytes. None: take the
        read path (and stop coming here until the file is found whole again)."""
        clock = self._core.cache.clock
        at = whole.whole_at
        data: bytes | bytearray | memoryview | None = None
        if clock.now() == at and time.monotonic() < whole.whole_until:
            try:
                if dst is not None:
                    got = os.preadv(whole.fd, [dst], offset)
                    data = dst if got == n else None
                elif nowait:
                    data = read_in_memory(whole.fd, n, offset)
                    if data is None:
                        return None  # on disk: the caller retries from a thread, through here
                else:
                    data = os.pread(whole.fd, n, offset)
                    if len(data) != n:
                        data = None
            except OSError:
                data = None
            if data is not None and clock.now() == at:
                self.bytes_read += n
                self._core.whole_hit(self.obj, offset, n, self._ra)
                if offset == self._next:
                    self._disk_ahead(whole, offset + n)
                self._next = offset + n
                return data
        self._whole = None
        return None

    def _first_look(self) -> ObjectFile | None:
        """Before the first read: if the object is whole in the cache, no read takes the read
        path (a warm epoch's files are)."""
        if self._whole is None and self._core.cache.contains(self.obj, self.obj.nblocks - 1):
            self._slow_reads = WHOLE_CHECK_EVERY - 1  # the next slow read does not look again
            file = self._file.get()
            if file is not None and self._core.cache.whole(self.obj, file):
                self._whole = file
        return self._whole

    def _disk_ahead(self, whole: ObjectFile, end: int) -> None:
        """Keep the next ``DISK_AHEAD`` bytes of a sequentially read file on their way into
        memory: the kernel's own readahead (128 KiB by default) leaves a disk idle between
        1 MiB reads. Asked once per half window, and only when not resident already."""
        if end + DISK_AHEAD // 2 <= self._advised or end >= self.size:
            return
        start = max(self._advised, end)
        self._advised = start + DISK_AHEAD
        last = min(self._advised, self.size) - 1
        if not in_memory(whole.fd, last):
            with contextlib.suppress(OSError):
                os.posix_fadvise(whole.fd, start, DISK_AHEAD, os.POSIX_FADV_WILLNEED)

    def _after_slow_read(self) -> None:
        """Now and then, see whether the read path is still needed (every block cached and
        verified: then reads go straight to the file)."""
        self._slow_reads += 1
        if self._slow_reads % WHOLE_CHECK_EVERY != 1:
            return
        file = self._file.get()
        if file is not None and self._core.cache.whole(self.obj, file):
            self._whole = file

    @property
    def cache_bytes(self) -> int:
        """Of :attr:`bytes_read`, how many came from the cache (the rest from a backend)."""
        return self._ra.served_cache

    @property
    def team(self) -> str | None:
        return self._ra.team

    def readall(self) -> bytes:
        buf = bytearray(max(0, self.size - self._pos))
        n = self.readinto(buf)
        return bytes(buf[:n])

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos} in {self.name!r}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._whole = None
            self._file.close()
            self._core.prefetcher.release(self._ra)
            if self.bytes_read:
                self._core.record_access(self)
        super().close()


def _flush_at_exit(ref: weakref.ref[WarpDrive]) -> None:
    wd = ref()
    if wd is not None:
        wd.flush()


class WarpDrive:
    """Reads objects of every configured backend through the shared block cache."""

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        metrics: Metrics | None = None,
        wrap_client: ClientWrapper | None = None,
    ) -> None:
        """``config``: a Config, a YAML path, or None for ``$WARPDRIVE_CONFIG``.
        ``wrap_client`` wraps each backend's client (request counting, fault injection)."""
        self._setup(
            config if isinstance(config, Config) else load_config(config), metrics, wrap_client
        )

    def _setup(self, config: Config, metrics: Metrics | None, wrap: ClientWrapper | None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self._wrap = wrap
        self._core_pid = -1
        self._core_obj: _Core | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Only the configuration travels (to DataLoader workers, say): they open their own."""
        return {"config": self.config, "wrap": self._wrap}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["config"], None, state["wrap"])

    @property
    def _core(self) -> _Core:
        core = self._core_obj
        if core is not None and self._core_pid == os.getpid():
            return core
        with self._lock:
            if self._core_obj is None or self._core_pid != os.getpid():
                # A core inherited from our parent is abandoned, never closed or used here.
                self._core_obj = _Core(self.config, self.metrics, self._wrap)
                self._core_pid = os.getpid()
                # A process may end without closing us (a DataLoader worker does): its last
                # counters still reach the shared index as it exits. A weak reference, so the
                # registration keeps nothing alive.
                multiprocessing.util.Finalize(
                    self, _flush_at_exit, args=(weakref.ref(self),), exitpriority=10
                )
            return self._core_obj

    # -- the API ---------------------------------------------------------------------------

    def open(
        self, path: str, mode: str = "rb", buffering: int = -1, *, scan: bool = True
    ) -> io.RawIOBase | io.BufferedReader:
        """A binary file-like over ``path`` (``buffering=0``: unbuffered, raw handle;
        ``scan``: as in :meth:`open_handle`)."""
        if mode not in ("rb", "r"):
            raise ValueError(f"WarpDrive is read-only: mode {mode!r} not supported (use 'rb')")
        handle = self.open_handle(path, scan=scan)
        if buffering == 0:
            return handle
        return io.BufferedReader(handle, buffering if buffering > 1 else DEFAULT_BUFFER)

    def open_handle(
        self, path: str, team: str | None = None, user: str | None = None, *, scan: bool = True
    ) -> Handle:
        """The unbuffered handle of :meth:`open`, typed (``pread``, ``pread_into``), reading on
        behalf of ``user`` of ``team`` (default: this process's user and team). Closing a handle
        that read something adds to the node's access records (see ``warpdrive-ctl usage``).

        ``scan=False`` keeps this open out of the directory-scan prefetch (the next files of a
        directory read in name order). A loader that deals a directory's files out to several
        workers or ranks must pass it: each worker would otherwise prefetch the files dealt to
        the others, and the processes, each with its own fetcher, fetch the same blocks twice."""
        handle = self._core.open_handle(path, team, user, scan)
        assert handle is not None  # only nowait opens give None
        return handle

    def open_cached(
        self, path: str, team: str | None = None, user: str | None = None
    ) -> Handle | None:
        """:meth:`open_handle`, but only if it needs no backend call (the object's metadata is
        cached and fresh): the FUSE loop opens such files without a thread hand-off."""
        return self._core.open_handle(path, team, user, True, nowait=True)

    @property
    def cache_root(self) -> str:
        """The versioned cache directory (``<cache.path>/v2``): object files, index, records."""
        return self._core.cache.root

    @property
    def index(self) -> CacheIndex:
        """The shared cache index (for tools: usage, teams, quotas, eviction by path)."""
        return self._core.cache.index

    def set_quota(self, quota: Quota) -> int:
        """Store a team's quota; how many blocks were evicted at once to honour it."""
        return self._core.cache.set_quota(quota)

    def evict(self, oids: list[bytes]) -> int:
        """Drop every cached block of these objects; how many blocks went."""
        return self._core.cache.evict_objects(oids)

    def user_and_team(self, uid: int | None = None) -> tuple[str, str | None]:
        """The user name of ``uid`` (default: this process's) and their team."""
        return self._core.teams.user_and_team(uid)

    def known_user_and_team(self, uid: int) -> tuple[str, str | None] | None:
        """:meth:`user_and_team` if answered lately; None rather than a passwd/NSS lookup."""
        return self._core.teams.known(uid)

    @property
    def backends(self) -> Mapping[str, Backend]:
        """The backends by name (for health checks and tools)."""
        return self._core.backends

    def usage(self) -> Usage:
        """Bytes and blocks in the shared cache (all processes)."""
        return self._core.cache.usage()

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        """Bytes ``[offset, offset+size)`` of ``path`` (to the end when ``size`` < 0)."""
        if offset < 0:
            raise InvalidPathError(f"{path!r}: negative offset {offset}")
        return self.read_version(self._core.version(path), offset, size)

    def read_version(self, obj: ObjectVersion, offset: int = 0, size: int = -1) -> bytes:
        """:meth:`read` of one version (from :meth:`version`), as a handle pinned to it reads:
        several reads of one object never mix two versions (ObjectChangedError once the
        backend holds another). No readahead: the caller names the bytes it wants."""
        if offset < 0:
            raise InvalidPathError(f"{obj.key!r}: negative offset {offset}")
        end = obj.size if size < 0 else min(obj.size, offset + size)
        if end <= offset:
            return b""
        buf = bytearray(end - offset)
        self._core.read_into(obj, offset, memoryview(buf))
        return bytes(buf)

    def version(self, path: str) -> ObjectVersion:
        """The current version of the object at ``path`` (what a handle opened now would pin)."""
        return self._core.version(path)

    def fetch_blocks(
        self,
        obj: ObjectVersion,
        indices: Sequence[int],
        priority: Priority = Priority.DEMAND,
        team: str | None = None,
    ) -> dict[int, Future[BlockData]]:
        """Start fetching these blocks into the cache (tools such as ``warm``); futures by
        block index, for blocks not cached already."""
        return self._core.fetcher.request(obj, indices, priority, team)

    def normalize(self, path: str) -> str:
        """The mount-relative form of ``path`` (a ``warpdrive://NAME/key`` URL, where NAME is a
        backend's name; a path under the mount point; or already relative); InvalidPathError
        if it cannot be one, NotFoundError for a URL naming no backend."""
        return self._core.namespace.normalize(path)

    def url(self, path: str) -> str | None:
        """The ``warpdrive://NAME/key`` URL of ``path`` (NAME: its backend's name, whatever its
        mount path); None for the virtual directories above the mount paths."""
        return self._core.namespace.url(path)

    def locate(self, path: str) -> tuple[str | None, str, str]:
        """(backend name, key, normalised path) of ``path``; backend None for the virtual
        directories above the mount paths."""
        loc = self._core.namespace.locate(path)
        return (loc.backend.name if loc.backend else None), loc.key, loc.path

    def path_of(self, backend: str, key: str) -> str:
        """The mount-relative path of ``key`` in ``backend``."""
        mount = self.config.backend(backend).mount_path
        return f"{mount}/{key}" if key else mount

    def stat(self, path: str) -> FileInfo:
        return self._core.namespace.stat(path)

    def stat_cached(self, path: str) -> FileInfo | None:
        """:meth:`stat`'s answer when it needs no backend call; None otherwise (never blocks)."""
        return self._core.namespace.cached_stat(path)

    def listdir(self, path: str = "/") -> list[FileInfo]:
        return self._core.namespace.listdir(path)

    def iterdir(self, path: str = "/") -> Iterator[list[FileInfo]]:
        """Children of ``path`` a page at a time, for directories too large to list at once."""
        return self._core.namespace.list_pages(path)

    def walk(self, path: str, recursive: bool = True) -> Iterator[FileInfo]:
        """The object at ``path``, or the objects in the directory at ``path`` (all of them
        below it when ``recursive``), in listing order; NotFoundError if there is none."""
        info = self.stat(path)
        if not info.is_dir:
            yield info
            return
        pending = [info.path]
        while pending:
            current = pending.pop(0)
            for page in self.iterdir(current):
                for entry in page:
                    if not entry.is_dir:
                        yield entry
                    elif recursive:
                        pending.append(entry.path)

    def prefetch(self, items: Iterable[HintItem]) -> None:
        """Fetch these objects (paths) or ``(path, start, end)`` ranges into the cache in the
        background, behind demand reads; returns immediately."""
        core = self._core
        core.prefetcher.hint(list(items), core.version, core.team)

    def flush(self) -> None:
        """Write batched access times and counters to the shared index now. Nothing to write
        when this process has no core open (never used, or closed): opening one just to flush
        would reopen a closed WarpDrive's cache behind its back."""
        core = self._core_obj
        if core is not None and self._core_pid == os.getpid():
            core.cache.flush()

    def close(self) -> None:
        """Stop background work and release the cache; idempotent."""
        with self._lock:
            core, self._core_obj = self._core_obj, None
        if core is not None and self._core_pid == os.getpid():
            core.close()

    def __enter__(self) -> WarpDrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
