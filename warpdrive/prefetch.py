"""Prefetch: a sequential detector per open handle, and hints from loaders that know what comes
next.

Readahead lifecycle of one handle (:class:`ReadPattern`)::

    IDLE ──first read at 0, or at the expected offset──▶ SEQUENTIAL(window) ──jump──▶ RANDOM
      ▲                                                        ▲                    │
      └────────────────────────────────────────────────────────┴── expected offset ─┘

In SEQUENTIAL, each read keeps a window of blocks past it requested at READAHEAD priority
(blocks already cached are only announced to the kernel, which reads their files ahead). The
window starts at ``readahead_blocks`` and doubles, up to 4×, each time the reader still has to
wait for a block it prefetched, so a far region gets more requests in flight than a near one; new
handles on that backend start at the grown window. A jump away from the expected offset switches
to RANDOM and stops scheduling; reading at the expected offset again resumes. Blocks a handle
prefetched and then read count as readahead hits; those unread when it closes count as wasted.

Hints (:meth:`Prefetcher.hint`) name whole objects or byte ranges; a background thread resolves
them and queues their blocks at HINT priority, waiting while the fetch queue is full, so a loader
can hint far ahead without flooding the backend or the cache.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from enum import Enum

from warpdrive.cache import BlockCache, ObjectVersion
from warpdrive.fetch import Fetcher, Priority
from warpdrive.metrics import Metrics

log = logging.getLogger(__name__)

HintItem = str | tuple[str, int, int]
Resolver = Callable[[str], ObjectVersion]
MAX_TRACKED_HINTS = 1 << 16
GROWTH_LIMIT = 4  # a late readahead window grows to at most this many times readahead_blocks


class ReadPattern(Enum):
    IDLE = "idle"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


class Readahead:
    """The sequential detector of one open handle. Not thread-safe (one handle, one reader)."""

    __slots__ = ("_ahead", "_next", "max_window", "obj", "pending", "state", "window")

    def __init__(self, obj: ObjectVersion, window: int, start: int | None = None) -> None:
        self.obj = obj
        self.max_window = window * GROWTH_LIMIT
        self.window = min(self.max_window, start or window)
        self.state = ReadPattern.IDLE
        self._next = 0  # offset a sequential reader reads next
        self._ahead = -1  # highest block index already scheduled or read
        self.pending: set[int] = set()  # blocks this handle prefetched and has not read yet

    def on_read(self, offset: int, end: int) -> range:
        """Note a read of ``[offset, end)``; the blocks to prefetch now."""
        bs = self.obj.block_size
        sequential = (offset == 0 and self.state is ReadPattern.IDLE) or (
            self._next - bs <= offset <= self._next + bs
        )
        self._next = end
        if not sequential:
            self.state = ReadPattern.RANDOM
            return range(0)
        self.state = ReadPattern.SEQUENTIAL
        if self.window <= 0:
            return range(0)
        last_needed = (end - 1) // bs
        target = min(self.obj.nblocks - 1, last_needed + self.window)
        first = max(self._ahead + 1, last_needed + 1)
        self._ahead = max(self._ahead, target)
        return range(first, target + 1)

    def late(self) -> int:
        """A read had to wait for a block this handle prefetched: the window is shorter than
        the link's delay × bandwidth, so double it (up to ``GROWTH_LIMIT`` × the configured)."""
        self.window = min(self.max_window, self.window * 2)
        return self.window


class Prefetcher:
    """Schedules readahead for handles and hint prefetches for the whole process."""

    def __init__(self, cache: BlockCache, fetcher: Fetcher, metrics: Metrics, window: int) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.metrics = metrics
        self.window = window
        # Hinted blocks not yet read, oldest first (bounded; overflow counts as wasted).
        self._hinted: OrderedDict[bytes, None] = OrderedDict()
        self._hinted_lock = threading.Lock()
        # Window each backend's sequential readers grew to: new handles start there.
        self._learned: dict[str, int] = {}
        self._queue: queue.SimpleQueue[tuple[HintItem, Resolver] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- readahead -------------------------------------------------------------------------

    def open(self, obj: ObjectVersion) -> Readahead:
        """The readahead state of a new handle, starting at the window its backend needed."""
        return Readahead(obj, self.window, self._learned.get(obj.backend))

    def late(self, ra: Readahead) -> None:
        window = ra.late()
        if window > self._learned.get(ra.obj.backend, 0):
            self._learned[ra.obj.backend] = window

    def readahead(self, ra: Readahead, offset: int, end: int) -> None:
        blocks = ra.on_read(offset, end)
        if not blocks:
            return
        obj = ra.obj
        wanted = []
        for b in blocks:
            if self.fetcher.in_flight(obj, b):
                continue
            if not self.cache.advise(obj, b):  # cached: the kernel reads its file ahead instead
                wanted.append(b)
        if wanted:
            scheduled = self.fetcher.request(obj, wanted, Priority.READAHEAD)
            ra.pending.update(wanted[: len(scheduled)])

    def note_read(self, ra: Readahead | None, bkey: bytes, index: int) -> None:
        """A read used block ``index``: count it as a prefetch hit if it was prefetched."""
        if ra is not None and index in ra.pending:
            ra.pending.discard(index)
            self.metrics.readahead_hits.inc()
        elif self._hinted and bkey in self._hinted:
            with self._hinted_lock:
                found = self._hinted.pop(bkey, False) is None
            if found:
                self.metrics.readahead_hits.inc()

    def release(self, ra: Readahead) -> None:
        """The handle closed: blocks it prefetched and never read were wasted."""
        if ra.pending:
            self.metrics.readahead_wasted.inc(len(ra.pending))
            ra.pending.clear()

    # -- hints -----------------------------------------------------------------------------

    def hint(self, items: Iterable[HintItem], resolve: Resolver) -> None:
        """Queue objects (paths) or ``(path, start, end)`` ranges to prefetch; returns at once."""
        if self._closed:
            return
        for item in items:
            self._queue.put((item, resolve))
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._hint_loop, name="warpdrive-hints", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _hint_loop(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None or self._closed:
                return
            item, resolve = entry
            try:
                self._prefetch_item(item, resolve)
            except Exception as exc:  # a hint is advice: failing it must not break reads
                log.debug("hint %r not prefetched: %s", item, exc)

    def _prefetch_item(self, item: HintItem, resolve: Resolver) -> None:
        path, start, end = (item, 0, None) if isinstance(item, str) else item
        obj = resolve(path)
        end = obj.size if end is None else min(end, obj.size)
        if end <= start:
            return
        bs = obj.block_size
        blocks = [
            b
            for b in range(start // bs, (end - 1) // bs + 1)
            if not self.fetcher.in_flight(obj, b) and not self.cache.contains(obj, b)
        ]
        while blocks and not self._closed:
            room = self.fetcher.background_room()
            if room == 0:
                self.fetcher.wait_for_room(timeout=1.0)
                continue
            batch, blocks = blocks[:room], blocks[room:]
            scheduled = self.fetcher.request(obj, batch, Priority.HINT)
            self._track(obj.block_key(b) for b in batch[: len(scheduled)])

    def _track(self, bkeys: Iterable[bytes]) -> None:
        with self._hinted_lock:
            for bkey in bkeys:
                self._hinted[bkey] = None
            overflow = len(self._hinted) - MAX_TRACKED_HINTS
            for _ in range(max(0, overflow)):
                self._hinted.popitem(last=False)
        if overflow > 0:
            self.metrics.readahead_wasted.inc(overflow)
