"""Block fetching: singleflight per block, bounded parallelism, priorities, coalescing.

Every missing block has at most one fetch in flight per process: a second reader (or the
prefetcher) gets the same future. ``max_parallel_fetch`` worker threads take jobs from a priority
queue: demand reads first, then readahead, then hints; background work may occupy at most three
quarters of the workers, so a demand read always finds one soon. So may the fetches of any one
object: a read of another object finds a worker soon even while every request for that object
hangs until its timeout (one large read of a stalled object would otherwise hold them all). A
demand read for a block that is queued as prefetch raises the job's priority. Adjacent missing
blocks of one object are fetched with one ranged request (up to ``fetch.coalesce_size``) when
they outnumber the workers.

Background work is also shared out per backend: each gets an equal part of the background
workers, and prefetch hints only ``hint_slots`` requests in flight (2, more for a link whose
readers needed a deep readahead window), so that prefetching one region's next files neither
starves another region nor queues so much on its own link that the file being read waits.

A job stores each block (``BlockCache.put``) before it leaves the in-flight table and before its
waiters wake, so a reader that finds neither an in-flight fetch nor a cached block knows it must
fetch. Lock order: ``Fetcher._lock`` only; no I/O is done while holding it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from enum import IntEnum
from typing import TypeVar

from warpdrive.backends import Backend
from warpdrive.cache import BlockCache, ObjectVersion
from warpdrive.errors import BackendError
from warpdrive.metrics import Metrics

log = logging.getLogger(__name__)
K = TypeVar("K")

BlockData = bytes | memoryview | None  # None: the block is now in the cache, read it there
# Objects up to this size (or one block) are fetched whole, one request each: per-request
# latency dominates them, and many in flight fill a link. Larger ones are split into parallel
# ranges, which beat one long stream on a far link.
SMALL_OBJECT = 1 << 20


class Priority(IntEnum):
    DEMAND = 0
    READAHEAD = 1
    HINT = 2  # a loader named what it reads next
    SCAN = 3  # a directory being read through: behind a loader's hints


class _Job:
    __slots__ = ("count", "first", "futures", "obj", "priority", "started", "team", "whole")

    def __init__(
        self,
        obj: ObjectVersion,
        first: int,
        count: int,
        priority: Priority,
        team: str | None,
        whole: bool = False,
    ) -> None:
        self.obj = obj
        # A whole small object in one request: many of them fill a link, so they are not
        # held to the few prefetch slots that keep large prefetches off a reader's link.
        self.whole = whole
        self.team = team  # whose quota the blocks count against (the first requester's)
        self.first = first
        self.count = count
        self.priority = priority
        self.started = False
        self.futures: list[Future[BlockData]] = [Future() for _ in range(count)]


class Fetcher:
    """Fetches blocks into the cache for every reader of one process."""

    def __init__(
        self,
        cache: BlockCache,
        backends: Mapping[str, Backend],
        metrics: Metrics,
        max_parallel: int,
        coalesce_size: int,
    ) -> None:
        self.cache = cache
        self.backends = backends
        self.metrics = metrics
        self.max_parallel = max_parallel
        self.coalesce_size = coalesce_size
        self.small_object = min(coalesce_size, SMALL_OBJECT)
        self.bg_limit = max(1, max_parallel - max(1, max_parallel // 4))
        self.object_limit = self.bg_limit  # workers one object's jobs may hold at once
        self.max_queued_bg = 4 * max_parallel
        # Guarded by _lock: _inflight, _jobs, _heap, _queued_by_backend, _running_by_backend,
        # _running_by_object, _running_bg, _queued_bg, _threads, _closed.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inflight: dict[bytes, Future[BlockData]] = {}
        self._jobs: dict[bytes, _Job] = {}
        self._heap: list[tuple[int, int, int, _Job]] = []
        self._queued_by_backend: dict[str, int] = {}
        self._running_by_backend: dict[str, int] = {}
        self._running_hints: dict[str, int] = {}
        self._running_by_object: dict[bytes, int] = {}  # jobs running, by object (oid)
        # HINT jobs in flight allowed per backend (the prefetcher raises it for deep links).
        self.hint_slots: dict[str, int] = {}
        self._seq = itertools.count()
        self._running_bg = 0
        self._queued_bg = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- requests --------------------------------------------------------------------------

    def fetch(self, obj: ObjectVersion, index: int, team: str | None = None) -> BlockData:
        """The block's bytes, fetching it now if needed (None: it is cached, read it there).
        A small object's other missing blocks come in the same request: it is read whole."""
        if obj.nblocks > 1 and self.small(obj):
            whole = range(obj.nblocks)
            return self.request(obj, whole, Priority.DEMAND, team, whole=True)[index].result()
        return self.request(obj, (index,), Priority.DEMAND, team)[index].result()

    def request(
        self,
        obj: ObjectVersion,
        indices: Sequence[int],
        priority: Priority,
        team: str | None = None,
        whole: bool = False,
    ) -> dict[int, Future[BlockData]]:
        """Futures by block index (``indices`` ascending): joined to fetches in flight, else
        started. Blocks already cached get a future holding None (demand) or none at all
        (background); background requests beyond the queue bound are dropped. ``whole``: the
        blocks of a small object (:meth:`small`), fetched in one request a run."""
        futures: dict[int, Future[BlockData]] = {}
        with self._lock:
            if self._closed:
                raise BackendError("the fetcher is closed")
            missing: list[int] = []
            for index in indices:
                bkey = obj.block_key(index)
                fut = self._inflight.get(bkey)
                if fut is not None:
                    self._promote_locked(bkey, priority)
                    futures[index] = fut
                elif self.cache.contains(obj, index):  # cached since the caller looked
                    if priority == Priority.DEMAND:
                        done: Future[BlockData] = Future()
                        done.set_result(None)
                        futures[index] = done
                else:
                    missing.append(index)
            whole = whole and self.small(obj)
            for first, count in self._runs(obj, missing, split=not whole):
                if priority != Priority.DEMAND and self._queued_bg >= self.max_queued_bg:
                    break
                job = _Job(obj, first, count, priority, team, whole)
                for i, fut in enumerate(job.futures):
                    bkey = obj.block_key(first + i)
                    self._inflight[bkey] = fut
                    self._jobs[bkey] = job
                futures.update(zip(range(first, first + count), job.futures, strict=True))
                self._push_locked(job, priority)
            self._start_workers_locked()
        if priority != Priority.DEMAND and missing:
            self.metrics.prefetch_scheduled.labels(priority.name.lower()).inc(len(missing))
        return futures

    def small(self, obj: ObjectVersion) -> bool:
        """Whether ``obj`` is fetched whole, in one request (see SMALL_OBJECT)."""
        return obj.size <= max(self.small_object, obj.block_size)

    def in_flight(self, obj: ObjectVersion, index: int) -> bool:
        return obj.block_key(index) in self._inflight

    def background_room(self) -> int:
        """How many more background jobs the queue takes now."""
        return max(0, self.max_queued_bg - self._queued_bg)

    def wait_for_room(self, timeout: float) -> bool:
        with self._wake:
            return self._wake.wait_for(
                lambda: self._closed or self._queued_bg < self.max_queued_bg, timeout
            )

    def close(self) -> None:
        """Stop the workers; queued fetches fail with BackendError. Idempotent."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            queued = list({id(e[-1]): e[-1] for e in self._heap if not e[-1].started}.values())
            self._heap.clear()
            self._wake.notify_all()
            threads = list(self._threads)
        for job in queued:
            self._finish(job, error=BackendError("the fetcher was closed"))
        for thread in threads:
            thread.join(timeout=30)

    # -- workers ---------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            with self._wake:
                job = self._next_job_locked()
                if job is None:
                    return
            try:
                self._run(job)
            finally:
                with self._wake:
                    _decrement(self._running_by_object, job.obj.oid)
                    if job.priority != Priority.DEMAND:
                        self._running_bg -= 1
                        backend = job.obj.backend
                        _decrement(self._running_by_backend, backend)
                        if job.priority >= Priority.HINT and not job.whole:
                            _decrement(self._running_hints, backend)
                    self._wake.notify_all()

    def _next_job_locked(self) -> _Job | None:
        while True:
            if self._closed:
                return None
            while self._heap and self._heap[0][-1].started:
                heapq.heappop(self._heap)  # a stale entry of a promoted job
            job = None
            if self._heap and self._heap[0][0] == Priority.DEMAND:
                job = self._pop_demand_locked()
            if job is None and self._heap and self._running_bg < self.bg_limit:
                job = self._pop_background_locked()
            if job is not None:
                job.started = True
                self._dequeued_locked(job)
                oid = job.obj.oid
                self._running_by_object[oid] = self._running_by_object.get(oid, 0) + 1
                if job.priority != Priority.DEMAND:
                    self._queued_bg -= 1
                    self._running_bg += 1
                    backend = job.obj.backend
                    self._running_by_backend[backend] = self._running_by_backend.get(backend, 0) + 1
                    if job.priority >= Priority.HINT and not job.whole:
                        self._running_hints[backend] = self._running_hints.get(backend, 0) + 1
                self._wake.notify_all()
                return job
            self._wake.wait()

    def _pop_demand_locked(self) -> _Job | None:
        """The first queued demand job whose object holds fewer than ``object_limit`` workers."""
        return self._pop_first_locked(
            lambda job: self._running_by_object.get(job.obj.oid, 0) < self.object_limit,
            demand_only=True,
        )

    def _pop_background_locked(self) -> _Job | None:
        """The first queued background job whose backend is under its share of the background
        workers. Without shares one slow region's prefetch would take every worker, and its
        queue on the wire would delay that region's demand reads."""
        active = self._queued_by_backend.keys() | self._running_by_backend.keys()
        share = max(2, -(-self.bg_limit // max(1, len(active))))

        def fits(job: _Job) -> bool:
            backend = job.obj.backend
            return (
                self._running_by_backend.get(backend, 0) < share
                and self._running_by_object.get(job.obj.oid, 0) < self.object_limit
                and (
                    job.priority < Priority.HINT
                    or job.whole
                    or self._running_hints.get(backend, 0) < self.hint_slots.get(backend, 2)
                )
            )

        return self._pop_first_locked(fits, demand_only=False)

    def _pop_first_locked(self, fits: Callable[[_Job], bool], demand_only: bool) -> _Job | None:
        """The first queued job (by priority, then age) that ``fits``; the ones passed over
        stay queued. ``demand_only``: look no further than the demand jobs."""
        skipped = []
        job = None
        while self._heap and (not demand_only or self._heap[0][0] == Priority.DEMAND):
            entry = heapq.heappop(self._heap)
            candidate = entry[-1]
            if candidate.started:
                continue
            if fits(candidate):
                job = candidate
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        return job

    def _run(self, job: _Job) -> None:
        obj, bs = job.obj, job.obj.block_size
        start = job.first * bs
        end = min(obj.size, (job.first + job.count) * bs)
        try:
            data = self.backends[obj.backend].read_range(obj.key, start, end, obj.etag)
        except Exception as exc:
            self._finish(job, error=exc)
            return
        blocks: list[BlockData] = []
        view = memoryview(data)
        for i in range(job.count):
            block = data if job.count == 1 else view[i * bs : min(len(view), (i + 1) * bs)]
            try:
                self.cache.put(obj, job.first + i, block, job.team)
            except Exception:
                log.exception(
                    "storing block %d of %s:%s failed", job.first + i, obj.backend, obj.key
                )
            blocks.append(block)
        self._finish(job, blocks=blocks)

    def _finish(
        self, job: _Job, blocks: list[BlockData] | None = None, error: BaseException | None = None
    ) -> None:
        with self._lock:
            for i in range(job.count):
                bkey = job.obj.block_key(job.first + i)
                if self._jobs.get(bkey) is job:
                    del self._jobs[bkey]
                    del self._inflight[bkey]
            if not job.started:
                self._dequeued_locked(job)
                if job.priority != Priority.DEMAND:
                    self._queued_bg -= 1
        for i, fut in enumerate(job.futures):
            if error is not None:
                fut.set_exception(error)
            elif blocks is not None:
                fut.set_result(blocks[i])

    # -- helpers (caller holds _lock) ------------------------------------------------------

    def _runs(
        self, obj: ObjectVersion, indices: list[int], split: bool = True
    ) -> list[tuple[int, int]]:
        """Adjacent indices grouped into requests. A run is split into as many requests as
        there are workers (parallel streams beat one long one on a far link), but never into
        requests smaller than ``len(run) / coalesce`` blocks: when blocks outnumber workers,
        fewer, larger requests save per-request latency. Not ``split``: one request a run."""
        coalesce = max(1, self.coalesce_size // obj.block_size)
        runs: list[tuple[int, int]] = []
        for index in indices:
            if runs and runs[-1][0] + runs[-1][1] == index:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((index, 1))
        requests: list[tuple[int, int]] = []
        for first, length in runs:
            if not split:
                requests.append((first, length))
                continue
            pieces = max(-(-length // coalesce), min(length, self.max_parallel))
            size = -(-length // pieces)
            requests.extend(
                (i, min(size, first + length - i)) for i in range(first, first + length, size)
            )
        return requests

    def _push_locked(self, job: _Job, priority: Priority) -> None:
        backend = job.obj.backend
        self._queued_by_backend[backend] = self._queued_by_backend.get(backend, 0) + 1
        heapq.heappush(self._heap, self._key_locked(job, priority))
        if priority != Priority.DEMAND:
            self._queued_bg += 1
        self._wake.notify()

    def _key_locked(self, job: _Job, priority: Priority) -> tuple[int, int, int, _Job]:
        """Heap order: priority, then round robin across backends (a job ranks by how many of
        its backend's jobs are queued), then arrival; so two regions share the workers."""
        rank = self._queued_by_backend.get(job.obj.backend, 0)
        return (int(priority), rank, next(self._seq), job)

    def _dequeued_locked(self, job: _Job) -> None:
        _decrement(self._queued_by_backend, job.obj.backend)

    def _promote_locked(self, bkey: bytes, priority: Priority) -> None:
        job = self._jobs.get(bkey)
        if job is None or job.started or priority >= job.priority:
            return
        if job.priority != Priority.DEMAND and priority == Priority.DEMAND:
            self._queued_bg -= 1
        job.priority = priority
        heapq.heappush(self._heap, self._key_locked(job, priority))
        self._wake.notify()

    def _start_workers_locked(self) -> None:
        if self._threads:
            return
        for n in range(self.max_parallel):
            thread = threading.Thread(target=self._worker, name=f"warpdrive-fetch-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)


def _decrement(counts: dict[K, int], key: K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
