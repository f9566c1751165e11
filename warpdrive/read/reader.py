"""The one read path: ``WarpDrive(config).open(path)``, ``.read(path, offset, size)``, ``.stat``,
``.listdir``, ``.prefetch``. The FUSE mount, ``warpdrive-ctl warm``, the torch adapters and the
``warpdrive://`` fsspec filesystem all read through it.

Data flows one way: a handle reads through its stream (``stream.py``: readahead, the reader's
record, a whole cached file read straight), the stream through the block source (``blocks.py``:
cache or fetch, verified), the block source through the cache and the fetcher (``fetch.py``: one
backend request per missing block per process, shared by every reader). An open handle is pinned
to the object version it saw at open: it never mixes two versions, and reads fail with
ObjectChangedError (ESTALE) once the backend holds another.

What a handle read is reported, as it closes, to the observers its builder registered
(:class:`ClosedHandle`; the node's access records are one, in ``warpdrive.governance``, which
this module never imports). Admin operations (eviction, quotas, teams, the index) are
``warpdrive.admin.Admin``'s; this facade only reads.

A ``WarpDrive`` holds only its configuration until first used; the live parts (backend
clients, LMDB, threads) are created per process, so an instance may be pickled or inherited
across ``fork()`` (DataLoader workers) and each process opens its own.
"""

from __future__ import annotations

import io
import logging
import multiprocessing.util
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from warpdrive.backends import Backend, ClientWrapper, ObjectMeta, make_backend
from warpdrive.cache import BlockCache, ObjectRecord, ObjectVersion, Usage
from warpdrive.config import Config, load_config
from warpdrive.errors import BackendError, InvalidPathError
from warpdrive.metrics import Metrics
from warpdrive.read.blocks import BlockSource
from warpdrive.read.fetch import BlockData, Fetcher, Priority
from warpdrive.read.namespace import FileInfo, Namespace
from warpdrive.read.prefetch import HintItem, Prefetcher
from warpdrive.read.stream import Stream
from warpdrive.teams import TeamResolver

DEFAULT_BUFFER = 1 << 20
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClosedHandle:
    """What one handle read, reported to the observers when it closes (if it read anything).
    ``hits``/``fetched``: blocks its reads found in the cache / had fetched from the backend;
    ``late``: of those fetched, how many had been prefetched but not early enough."""

    backend: str
    key: str
    etag: str
    user: str
    team: str | None
    bytes_read: int
    cache_bytes: int  # of bytes_read, how many came from the cache (the rest from a backend)
    hits: int
    fetched: int
    late: int


class HandleObserver(Protocol):
    """Told of every handle that read something, as it closes (on the closing thread: keep it
    short, never raise). ``close`` is called once, when the reader closes."""

    def closed(self, record: ClosedHandle) -> None: ...

    def close(self) -> None: ...


# Builds one observer per process from the reader's config (a class or a module-level function:
# it travels, pickled, with a WarpDrive to DataLoader workers, where each builds its own).
ObserverFactory = Callable[[Config], HandleObserver]
_default_observers: list[ObserverFactory] = []


def observe_by_default(factory: ObserverFactory) -> None:
    """Give every WarpDrive made without ``observers=`` an observer built by ``factory`` (the
    ``warpdrive`` package registers the node's access records this way: see
    ``warpdrive.governance.access``). Registering the same factory twice adds it once."""
    if factory not in _default_observers:
        _default_observers.append(factory)


class _Core:
    """The live parts of a WarpDrive in one process."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        wrap: ClientWrapper | None,
        observers: Sequence[ObserverFactory] = (),
    ) -> None:
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
            self.cache,
            self.fetcher,
            metrics,
            config.cache.readahead_blocks,
            min(config.cache.scan_budget, config.cache.max_size // 4),
        )
        self.blocks = BlockSource(self.cache, self.fetcher, metrics)
        self._observer_factories = tuple(observers)
        self._observers: tuple[HandleObserver, ...] | None = None  # built at the first report
        self._observers_lock = threading.Lock()

    def open_handle(
        self,
        path: str,
        team: str | None = None,
        user: str | None = None,
        scan: bool = True,
    ) -> Handle:
        """A handle on the current version of ``path`` for ``user`` of ``team`` (default: this
        process's user and team); tells the prefetcher a file opened (``scan``; none when the
        config's ``scan_prefetch`` is off)."""
        norm = self.namespace.normalize(path)
        return self._open(norm, self.version(norm), team, user, scan)

    def _open(
        self, norm: str, obj: ObjectVersion, team: str | None, user: str | None, scan: bool
    ) -> Handle:
        if user is None:
            user, team = self.user, self.team
        if scan and self.config.cache.scan_prefetch:
            self.prefetcher.on_open(norm, obj, self.namespace, self.version, team)
        return Handle(self, norm, Stream(self.blocks, self.prefetcher, obj, user, team))

    def report_closed(self, record: ClosedHandle) -> None:
        """A handle that read something closed: tell the observers."""
        observers = self._observers
        if observers is None:
            if sys.is_finalizing():  # a handle left open, closed by the exiting interpreter:
                return  # an observer could not start a thread now (it would wait for ever)
            with self._observers_lock:
                if self._observers is None:
                    self._observers = tuple(f(self.config) for f in self._observer_factories)
                observers = self._observers
        for observer in observers:
            try:
                observer.closed(record)
            except Exception:  # an observer's failure never fails a read or a close
                log.exception("observer %r failed", observer)

    def version(self, path: str) -> ObjectVersion:
        return self._version_of(*self.namespace.object_meta(path))

    def _version_of(self, backend: Backend, meta: ObjectMeta) -> ObjectVersion:
        return ObjectVersion(
            backend.name, meta.key, meta.etag, meta.size, meta.mtime, self.config.cache.block_size
        )

    def read(self, obj: ObjectVersion, offset: int, n: int) -> bytes:
        """Bytes ``[offset, offset+n)`` of ``obj`` (caller clamps; n > 0), as :meth:`read_into`
        reads them. Inside one block (a small object read whole, say) that is one new bytes
        object read from the cache file: no zeroed buffer, no copy."""
        stream = Stream(self.blocks, self.prefetcher, obj, self.user, self.team, readahead=False)
        try:
            data = stream.read(offset, n)
        finally:
            stream.close()
        if len(data) != n:  # never a short answer taken for the object's end
            raise BackendError(
                f"{obj.backend}: {obj.key!r}: a read of {n} bytes at {offset} gave {len(data)}"
            )
        return data if type(data) is bytes else bytes(data)

    def read_into(self, obj: ObjectVersion, offset: int, dst: memoryview) -> None:
        """Fill ``dst`` with bytes ``[offset, offset+len(dst))`` of ``obj`` (caller clamps), as
        this process's reader, with no readahead (the caller names the bytes it wants)."""
        stream = Stream(self.blocks, self.prefetcher, obj, self.user, self.team, readahead=False)
        try:
            stream.read_into(offset, dst)
        finally:
            stream.close()

    def close(self) -> None:
        with self._observers_lock:
            observers, self._observers = self._observers or (), ()
        for observer in observers:
            observer.close()  # writes what is pending
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


class Handle(io.RawIOBase):
    """An open object: readinto/seek/tell over one pinned version, read through its stream
    (readahead, the reader's record, what its reads found)."""

    def __init__(self, core: _Core, path: str, stream: Stream) -> None:
        super().__init__()
        self._core = core
        self._stream = stream
        self.user = stream.user
        self.name = path
        self.obj = stream.obj
        self.size = stream.obj.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.pread_into(self._pos, buffer)
        self._pos += n
        return n

    def pread(self, offset: int, size: int) -> bytes | bytearray | memoryview:
        """Up to ``size`` bytes at ``offset``, as a bytes-like object, without moving the
        position (what the mount replies with). Thread-safe, as :meth:`pread_into`."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        n = min(size, self.size - offset)
        if n <= 0:
            return b""
        return self._whole_reply(offset, n, self._stream.read(offset, n))

    def _whole_reply(
        self, offset: int, n: int, data: bytes | bytearray | memoryview
    ) -> bytes | bytearray | memoryview:
        """``data`` if it is all ``n`` bytes asked for. A short reply inside the object would
        be taken for its end, and the kernel fills the rest of a mount's read with zeros: an
        error instead, never a wrong byte."""
        if len(data) != n:
            log.error(
                "%s:%s: a read of %d bytes at %d gave %d: refused (EIO)",
                self.obj.backend, self.obj.key, n, offset, len(data),
            )  # fmt: skip
            raise BackendError(
                f"{self.obj.backend}: {self.obj.key!r}: a read of {n} bytes at {offset} gave "
                f"{len(data)}"
            )
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
        self._stream.read_into(offset, dst[:n])
        return n

    def backing_fd(self) -> int | None:
        """A new read-only descriptor of this version's cache file, the caller's to close, for
        the kernel to read the object itself (FUSE passthrough), if it is cached whole and
        verified; it stays pinned in the cache (no process evicts it) until this handle closes.
        None: read through this handle. Blocks this process has not verified yet are verified
        now (one read of the cache file)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._stream.backing()

    def read_by_kernel(self) -> None:
        """The kernel read this version's cache file itself (FUSE passthrough), which says
        nothing of how much: counted as one whole read from the cache (hits, bytes served,
        the access record, job reports), as training reads its files."""
        self._stream.read_by_kernel()

    @property
    def bytes_read(self) -> int:
        """What this handle returned (for access records)."""
        return self._stream.bytes_read

    @property
    def cache_bytes(self) -> int:
        """Of :attr:`bytes_read`, how many came from the cache (the rest from a backend)."""
        return self._stream.cache_bytes

    @property
    def team(self) -> str | None:
        return self._stream.team

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
            stream = self._stream
            stream.close()
            if stream.bytes_read:
                obj = stream.obj
                self._core.report_closed(
                    ClosedHandle(
                        obj.backend,
                        obj.key,
                        obj.etag,
                        stream.user,
                        stream.team,
                        stream.bytes_read,
                        stream.cache_bytes,
                        stream.hits,
                        stream.fetched,
                        stream.late,
                    )
                )
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
        observers: Sequence[ObserverFactory] | None = None,
    ) -> None:
        """``config``: a Config, a YAML path, or None for ``$WARPDRIVE_CONFIG``.
        ``wrap_client`` wraps each backend's client (request counting, fault injection).
        ``observers``: what is told of each handle that read something as it closes (a
        :class:`ClosedHandle`), one built per process from each factory; default: those
        registered with :func:`observe_by_default` (the node's access records)."""
        if observers is None:
            observers = _default_observers
        self._setup(
            config if isinstance(config, Config) else load_config(config),
            metrics,
            wrap_client,
            tuple(observers),
        )

    def _setup(
        self,
        config: Config,
        metrics: Metrics | None,
        wrap: ClientWrapper | None,
        observers: tuple[ObserverFactory, ...],
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self._wrap = wrap
        self._observers = observers
        self._core_pid = -1
        self._core_obj: _Core | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Only the configuration travels (to DataLoader workers, say): they open their own."""
        return {"config": self.config, "wrap": self._wrap, "observers": self._observers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["config"], None, state["wrap"], state["observers"])

    @property
    def _core(self) -> _Core:
        core = self._core_obj
        if core is not None and self._core_pid == os.getpid():
            return core
        with self._lock:
            if self._core_obj is None or self._core_pid != os.getpid():
                # A core inherited from our parent is abandoned, never closed or used here.
                self._core_obj = _Core(self.config, self.metrics, self._wrap, self._observers)
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
        return self._core.open_handle(path, team, user, scan)

    def user_and_team(self, uid: int | None = None) -> tuple[str, str | None]:
        """The user name of ``uid`` (default: this process's) and their team."""
        return self._core.teams.user_and_team(uid)

    @property
    def backends(self) -> Mapping[str, Backend]:
        """The backends by name (for health checks and tools)."""
        return self._core.backends

    def usage(self) -> Usage:
        """Bytes and blocks in the shared cache (all processes): how full it is, as the mount's
        ``statfs`` answers. Everything else about the cache is :class:`warpdrive.admin.Admin`'s."""
        return self._core.cache.usage()

    def cached(self, obj: ObjectVersion, index: int) -> bool:
        """Whether block ``index`` of ``obj`` is in the cache (by the index; not verified)."""
        return self._core.cache.contains(obj, index)

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
        return self._core.read(obj, offset, end - offset)

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

    def remember(self, infos: Iterable[FileInfo], listed_at: float) -> None:
        """Object metadata a listing showed at ``listed_at`` (``time.time()``), handed to this
        process (a loader's worker, say): reads of these objects then ask the backend nothing
        first, under the staleness contract of a listing made then."""
        self._core.namespace.remember(infos, listed_at)

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
