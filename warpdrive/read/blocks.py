"""The block source: the bytes of an object version's blocks, from the cache or fetched, never a
wrong byte.

A stream asks for a range; the block source serves what the cache holds (verified as
``cache/blockcache.py`` says) and fetches the rest (``fetch.py``: one request per missing block
per process), and tells the stream what each block was: a hit, a miss about to be fetched, a
fetch. The stream decides what that means for its readahead; the block source knows nothing of
readahead, handles or readers beyond the team a fetch counts against.

Two ways to read: :meth:`BlockSource.read` / :meth:`BlockSource.read_into` always answer (they
may wait for the disk, hashing or the backend); :meth:`BlockSource.read_cached` never waits
(one block, cached, verified and in memory) and answers None, having done nothing, otherwise —
what the mount's event loop uses before it hands a request to a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from warpdrive.cache import BlockCache, ObjectFile, ObjectVersion
from warpdrive.errors import BackendError
from warpdrive.metrics import Metrics
from warpdrive.read.fetch import Fetcher, Priority

MAX_VERIFY_RETRIES = 3  # a cached copy that fails verification this often in a row: an error


class BlockReport(Protocol):
    """What a block source tells the stream it reads for (approximate under concurrent reads
    of one stream: statistics)."""

    @property
    def team(self) -> str | None:
        """Whose quota this stream's fetches count against."""

    def hit(self, index: int, n: int) -> None:
        """``n`` bytes of block ``index`` came from the cache."""

    def hit_run(self, first: int, last: int, n: int) -> None:
        """``n`` bytes of blocks ``first..last`` came from the cache in one read."""

    def missed(self, index: int) -> None:
        """Block ``index`` is not in the cache: it is fetched now (the read waits for it)."""

    def fetched_block(self, index: int, n: int) -> None:
        """``n`` bytes of block ``index`` came from the backend."""


class CacheFile:
    """The cache file of one object as a stream reads it: opened at the first read that finds
    it, opened again if it was removed (the stream's copy then holds no cached bytes)."""

    __slots__ = ("_cache", "_file", "_lock", "_obj")

    def __init__(self, cache: BlockCache, obj: ObjectVersion) -> None:
        self._cache = cache
        self._obj = obj
        self._file: ObjectFile | None = None
        self._lock = threading.Lock()  # guards _file (opening, reopening, closing)

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


class BlockSource:
    """Cache-or-fetch of blocks with verification. Thread-safe; one per process."""

    def __init__(self, cache: BlockCache, fetcher: Fetcher, metrics: Metrics) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.metrics = metrics

    def file(self, obj: ObjectVersion) -> CacheFile:
        """The cache file of ``obj`` as one stream reads it (closed with the stream)."""
        return CacheFile(self.cache, obj)

    def read(
        self, obj: ObjectVersion, offset: int, n: int, file: CacheFile, report: BlockReport
    ) -> bytes | bytearray | memoryview:
        """``n`` bytes at ``offset`` of ``obj`` (caller clamps), as any bytes-like object.

        A read inside one block (the usual FUSE request) allocates no zeroed buffer: a cached
        block is read with ``pread`` into a fresh bytes object, a fetched one is returned as a
        view of the fetched bytes."""
        bs = obj.block_size
        index = offset // bs
        if (offset + n - 1) // bs != index:
            buf = bytearray(n)
            self.read_into(obj, offset, memoryview(buf), file, report)
            return buf
        lo = offset - index * bs
        opened = file.get()
        data = self.cache.read_block(obj, opened, index, lo, n) if opened is not None else None
        if data is not None:
            self._hit(index, n, report)
            return data
        return self._miss(obj, index, lo, n, file, report)

    def read_into(
        self, obj: ObjectVersion, offset: int, dst: memoryview, file: CacheFile, report: BlockReport
    ) -> None:
        """Fill ``dst`` with bytes ``[offset, offset+len(dst))`` of ``obj`` (caller clamps):
        what is cached in one read of the object's cache file, then each missing block."""
        end = offset + len(dst)
        bs = obj.block_size
        first, last = offset // bs, (end - 1) // bs
        if last > first:  # start every missing block now, so they arrive in parallel
            missing = [b for b in range(first, last + 1) if not self.cache.contains(obj, b)]
            if missing:
                self.fetcher.request(obj, missing, Priority.DEMAND, report.team, whole=True)
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
                self._hit(index, hi - lo, report)
                continue
            next_miss = next(todo, -1)
            part = dst[lo - offset : hi - offset]
            part[:] = self._miss(obj, index, lo - index * bs, hi - lo, file, report)

    def cached(self, obj: ObjectVersion, index: int) -> bool:
        """Whether block ``index`` of ``obj`` is in the cache (by the index; not verified)."""
        return self.cache.contains(obj, index)

    def seen_whole(self, obj: ObjectVersion) -> bool:
        """Whether this process found ``obj`` whole and nothing left the cache since."""
        return self.cache.seen_whole(obj)

    def whole(self, obj: ObjectVersion, file: CacheFile) -> ObjectFile | None:
        """The object's cache file if every block is cached and verified (then reads may go
        straight to it while the eviction clock stands still, see ``ObjectFile.whole_at``)."""
        opened = file.get()
        if opened is not None and self.cache.whole(obj, opened):
            return opened
        return None

    def open_backing(self, obj: ObjectVersion) -> int | None:
        """A descriptor of ``obj``'s cache file for the kernel to read (FUSE passthrough), the
        object pinned until :meth:`unpin`, if it is cached whole and verified; else None (see
        ``BlockCache.open_backing``)."""
        return self.cache.open_backing(obj)

    def unpin(self, obj: ObjectVersion) -> None:
        self.cache.unpin(obj)

    @property
    def clock(self) -> Callable[[], int]:
        """The eviction clock's reading (it moves whenever anything leaves the cache)."""
        return self.cache.clock.now

    def served_whole(self, blocks: int, n: int) -> None:
        """``blocks`` block reads, ``n`` bytes, were served straight from whole cache files:
        counted as the cache's hits are (the stream adds them up over several reads)."""
        self.metrics.cache_hits.inc(blocks)
        self.metrics.served_from_cache.inc(n)

    def _hit(self, index: int, n: int, report: BlockReport) -> None:
        self.metrics.cache_hits.inc()
        self.metrics.served_from_cache.inc(n)
        report.hit(index, n)

    def _miss(
        self,
        obj: ObjectVersion,
        index: int,
        lo: int,
        n: int,
        file: CacheFile,
        report: BlockReport,
    ) -> bytes | memoryview:
        """Bytes ``[lo, lo+n)`` of block ``index``, which the cache could not serve: fetched,
        or read from the cache if another reader cached it meanwhile."""
        metrics = self.metrics
        for _ in range(MAX_VERIFY_RETRIES):
            metrics.cache_misses.inc()
            report.missed(index)
            data = self.fetcher.fetch(obj, index, report.team)
            if data is not None:
                metrics.served_from_backend.inc(n)
                report.fetched_block(index, n)
                return memoryview(data)[lo : lo + n]
            opened = file.get(reopen=True)  # cached meanwhile: read it there
            got = self.cache.read_block(obj, opened, index, lo, n) if opened else None
            if got is not None:
                self._hit(index, n, report)
                return got
        raise BackendError(
            f"{obj.backend}: {obj.key!r} block {index}: cached copy kept failing verification"
        )
