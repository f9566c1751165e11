"""Prefetch: a sequential detector per open handle, and hints from loaders that know what comes
next.

Readahead lifecycle of one handle (:class:`ReadPattern`)::

    IDLE ──first read at 0, or at the expected offset──▶ SEQUENTIAL(window) ──jump──▶ RANDOM
      ▲                                                        ▲                    │
      └────────────────────────────────────────────────────────┴── expected offset ─┘

In SEQUENTIAL, each read keeps a window of blocks past it requested at READAHEAD priority.
Cached blocks need nothing here: an object's cached blocks are one file, which the kernel reads
ahead of a sequential reader by itself. The window starts at ``readahead_blocks`` and doubles,
up to 4×, each time the reader still has to wait for a block it prefetched, so a far region
gets more requests in flight than a near one; new
handles on that backend start at the grown window. A jump away from the expected offset switches
to RANDOM and stops scheduling; reading at the expected offset again resumes. Blocks a handle
prefetched and then read count as readahead hits; those unread when it closes count as wasted.

Across files (:meth:`Prefetcher.on_open`), as the original WarpDrive did: when the files of one
directory are opened in name order, the next files start fetching, within a byte budget, each
directory on its own (so two regions read alternately are both kept busy); and when such a scan
begins, the same directory under the other backends' mount paths starts too, so that
``cat /wd/*/train/shard-*`` over two regions keeps both links busy.

Hints (:meth:`Prefetcher.hint`) name whole objects or byte ranges; a background thread resolves
them and queues their blocks at HINT priority, waiting while the fetch queue is full, so a loader
can hint far ahead without flooding the backend or the cache.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from enum import Enum
from functools import partial
from typing import Protocol

from warpdrive.cache import BlockCache, ObjectVersion
from warpdrive.errors import WarpDriveError
from warpdrive.metrics import Metrics
from warpdrive.read.fetch import Fetcher, Priority
from warpdrive.read.namespace import FileInfo
from warpdrive.read.readthrough import ReadThrough

log = logging.getLogger(__name__)

HintItem = str | tuple[str, int, int]
Resolver = Callable[[str], ObjectVersion]


class Directories(Protocol):
    """What cross-file prefetch needs to know about directories (the namespace)."""

    def listdir(self, path: str, stale_ok: bool = False) -> list[FileInfo]: ...  # by name

    def mirrors(self, path: str) -> list[str]: ...


MAX_TRACKED_DIRS = 1024
MAX_TRACKED_HINTS = 1 << 16
GROWTH_LIMIT = 4  # a late readahead window grows to at most this many times readahead_blocks
HINT_SLOTS = 2  # prefetches (hints, next files) in flight per backend, until a deeper window


class ReadPattern(Enum):
    IDLE = "idle"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


def _name(info: FileInfo) -> str:
    return info.name


class Readahead:
    """The sequential detector of one open handle. ``lock`` guards every field: the kernel may
    send several reads of one handle at once."""

    __slots__ = (
        "_ahead",
        "_next",
        "lock",
        "max_window",
        "obj",
        "pending",
        "state",
        "team",
        "window",
    )

    def __init__(
        self, obj: ObjectVersion, window: int, start: int | None = None, team: str | None = None
    ) -> None:
        self.obj = obj
        self.team = team  # the reader's team: what this handle fetches counts against its quota
        self.max_window = window * GROWTH_LIMIT
        self.window = min(self.max_window, start or window)
        self.state = ReadPattern.IDLE
        self._next = 0  # offset a sequential reader reads next
        self._ahead = -1  # highest block index already scheduled or read
        self.pending: set[int] = set()  # blocks this handle prefetched and has not read yet
        self.lock = threading.Lock()

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

    def __init__(
        self,
        cache: BlockCache,
        fetcher: Fetcher,
        metrics: Metrics,
        window: int,
        scan_budget: int = 1 << 30,
    ) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.metrics = metrics
        self.window = window
        # Directories of small objects read through in any order (see warpdrive.read.readthrough).
        self.readthrough = ReadThrough(cache, fetcher, scan_budget, self._track)
        # Blocks prefetched for a hint or a directory scan, not yet read, oldest first, with
        # what asked for them (bounded; overflow counts as wasted).
        self._hinted: OrderedDict[bytes, str] = OrderedDict()
        self._hinted_lock = threading.Lock()
        # Window each backend's sequential readers grew to: new handles start there.
        self._learned: dict[str, int] = {}
        # Files opened lately per directory, to see a reader walking it in sorted order.
        self._opened: OrderedDict[str, deque[str]] = OrderedDict()
        self._scanned: set[str] = set()  # directories whose scan (or a mirror's) began
        # Per scanned directory: the file the reader was at and the last file handed to the
        # fetcher, so that each open extends the window instead of walking all of it again.
        self._scan_ahead: OrderedDict[str, tuple[str, str, bool]] = OrderedDict()
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- readahead -------------------------------------------------------------------------

    def open(self, obj: ObjectVersion, team: str | None = None) -> Readahead:
        """The readahead state of a new handle, starting at the window its backend needed."""
        return Readahead(obj, self.window, self._learned.get(obj.backend), team)

    def late(self, ra: Readahead) -> None:
        with ra.lock:
            window = ra.late()
        backend = ra.obj.backend
        if window > self._learned.get(backend, 0):
            self._learned[backend] = window
            # A link that needs a deep readahead window also takes more parallel prefetches.
            self.fetcher.hint_slots[backend] = max(HINT_SLOTS, window // 4)

    def readahead(self, ra: Readahead, offset: int, end: int) -> None:
        with ra.lock:
            blocks = ra.on_read(offset, end)
        obj = ra.obj
        wanted = [
            b
            for b in blocks
            if not self.fetcher.in_flight(obj, b) and not self.cache.contains(obj, b)
        ]
        if wanted:
            scheduled = self.fetcher.request(obj, wanted, Priority.READAHEAD, ra.team)
            with ra.lock:
                ra.pending.update(scheduled)

    def prefetched(self, ra: Readahead, bkey: bytes, index: int) -> bool:
        """Whether the block was asked for ahead of time (by the handle, a hint or a scan)."""
        return index in ra.pending or bkey in self._hinted

    def tracking(self, ra: Readahead) -> bool:
        """Whether some block might count as a prefetch hit when read (see :meth:`note_read`)."""
        return bool(ra.pending or self._hinted)

    def note_read(self, ra: Readahead | None, bkey: bytes, index: int) -> None:
        """A read used block ``index``: count it as a prefetch hit if it was prefetched."""
        if ra is not None and ra.pending:
            with ra.lock:
                hit = index in ra.pending
                ra.pending.discard(index)
            if hit:
                self.metrics.readahead_hits.inc()
                return
        if self._hinted and bkey in self._hinted:
            with self._hinted_lock:
                source = self._hinted.pop(bkey, None)
            if source is not None:
                self.metrics.readahead_hits.inc()
                if source == "hint":
                    self.metrics.hint_hits.inc()

    def release(self, ra: Readahead) -> None:
        """The handle closed: blocks it prefetched and never read were wasted."""
        with ra.lock:
            wasted = len(ra.pending)
            ra.pending.clear()
        if wasted:
            self.metrics.readahead_wasted.inc(wasted)

    # -- across files ----------------------------------------------------------------------

    def on_open(
        self,
        path: str,
        obj: ObjectVersion,
        dirs: Directories,
        resolve: Resolver,
        team: str | None = None,
    ) -> None:
        """A file was opened. A directory is being scanned when its first file (in name order)
        is opened, or two of its files were opened in name order; then the files after this one
        are prefetched in the background, up to the bytes a grown readahead window holds (the
        file itself is left to its handle's readahead). Directories are tracked separately, so
        a reader alternating between two regions keeps both links busy. Small objects (one
        request each) are read through instead, in any order (:mod:`warpdrive.read.readthrough`)."""
        if self.fetcher.small(obj):
            self.readthrough.on_open(path, obj, dirs, resolve, team)
            return
        parent, _, name = path.rpartition("/")
        order = self._opened.get(parent)
        if order is None:
            order = self._opened[parent] = deque(maxlen=3)
            if len(self._opened) > MAX_TRACKED_DIRS:
                self._opened.popitem(last=False)
        if order and order[-1] == name:
            return
        order.append(name)
        pairs = zip(order, list(order)[1:], strict=False)
        in_order = len(order) >= 2 and all(a < b for a, b in pairs)
        scanned = self._scan_ahead.get(parent)
        if in_order and scanned is not None and scanned[2] and name < scanned[1]:
            # A warm epoch: the files up to the scan's last were found cached, nothing to do
            # until the reader gets there (no task, no thread woken: they cost a hot read 10%).
            return
        if in_order or len(order) == 1:
            budget = self.window * GROWTH_LIMIT * obj.block_size
            task = partial(self._prefetch_scan, parent, name, in_order, budget, dirs, resolve, team)
            self._submit(task)

    def _prefetch_scan(
        self,
        parent: str,
        name: str,
        in_order: bool,
        budget: int,
        dirs: Directories,
        resolve: Resolver,
        team: str | None,
    ) -> None:
        # A listing past list_ttl will do (revalidated in the background): the files to come
        # are advice, and a warm epoch's opens must not wait for, or pay for, a listing each.
        files = [info for info in dirs.listdir(parent, stale_ok=True) if not info.is_dir]
        if not in_order and (not files or files[0].name != name):
            return  # one file opened, and not the first: no sign of a scan yet
        if parent not in self._scanned:
            # A scan begins: the same directory in the other regions is likely next (a dataset
            # split across regions), so their first files start fetching too, on their links.
            self._scanned.add(parent)
            for mirror in dirs.mirrors(parent):
                if mirror not in self._scanned:
                    self._scanned.add(mirror)
                    with contextlib.suppress(WarpDriveError):
                        entries = dirs.listdir(mirror, stale_ok=True)
                        self._prefetch_files(mirror, entries, "", budget, resolve, team)
        self._prefetch_files(parent, files, name, budget, resolve, team)

    def _prefetch_files(
        self,
        directory: str,
        entries: list[FileInfo],
        after: str,
        budget: int,
        resolve: Resolver,
        team: str | None,
    ) -> None:
        """Prefetch the files named after ``after``, in name order, up to ``budget`` bytes
        ahead of it; those an earlier call of this scan handed over already are not looked at
        again (with small files, one open would otherwise check hundreds of them)."""
        was_at, done, warm = self._scan_ahead.get(directory, ("", "", False))
        if after < was_at:
            done = ""  # the reader started over: a new pass over the directory
        ahead = 0
        for info in entries[bisect.bisect_right(entries, after, key=_name) :]:
            if info.is_dir:
                continue
            if ahead and ahead + info.size > budget:
                break
            ahead += info.size
            if info.name > done:
                item = (info.path, 0, min(info.size, budget))
                warm = self._prefetch_item(item, resolve, team, "scan")
                done = info.name
        self._scan_ahead[directory] = (after, done, warm)
        self._scan_ahead.move_to_end(directory)
        if len(self._scan_ahead) > MAX_TRACKED_DIRS:
            self._scan_ahead.popitem(last=False)

    # -- hints -----------------------------------------------------------------------------

    def hint(self, items: Iterable[HintItem], resolve: Resolver, team: str | None = None) -> None:
        """Queue objects (paths) or ``(path, start, end)`` ranges to prefetch; returns at once."""
        for item in items:
            self._submit(partial(self._prefetch_item, item, resolve, team))

    def _submit(self, task: Callable[[], object]) -> None:
        if self._closed:
            return
        self._queue.put(task)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._hint_loop, name="warpdrive-hints", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._closed = True
        self.readthrough.close()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _hint_loop(self) -> None:
        while True:
            task = self._queue.get()
            if task is None or self._closed:
                return
            try:
                task()
            except Exception as exc:  # a hint is advice: failing it must not break reads
                log.debug("prefetch hint dropped: %s", exc)

    def _prefetch_item(
        self, item: HintItem, resolve: Resolver, team: str | None = None, source: str = "hint"
    ) -> bool:
        """Queue the item's missing blocks; whether it was cached whole already."""
        path, start, end = (item, 0, None) if isinstance(item, str) else item
        obj = resolve(path)
        end = obj.size if end is None else min(end, obj.size)
        if end <= start:
            return True
        bs = obj.block_size
        missing = self.cache.missing(obj, range(start // bs, (end - 1) // bs + 1))
        if not missing:  # cached: the reader's own reads bring it in (see BlockCache's doc)
            return True
        blocks = [b for b in missing if not self.fetcher.in_flight(obj, b)]
        while blocks and not self._closed:
            room = self.fetcher.background_room()
            if room == 0:
                self.fetcher.wait_for_room(timeout=1.0)
                continue
            batch, blocks = blocks[:room], blocks[room:]
            scheduled = self.fetcher.request(obj, batch, Priority.HINT, team, whole=True)
            self._track((obj.block_key(b) for b in scheduled), source)
        return False

    def _track(self, bkeys: Iterable[bytes], source: str) -> None:
        with self._hinted_lock:
            for bkey in bkeys:
                self._hinted[bkey] = source
            overflow = len(self._hinted) - MAX_TRACKED_HINTS
            for _ in range(max(0, overflow)):
                self._hinted.popitem(last=False)
        if overflow > 0:
            self.metrics.readahead_wasted.inc(overflow)
