"""Directory read-through: when a directory of small objects is being read in any order (a
reader in name order, a shuffled DataLoader), its remaining objects are fetched ahead, many at
once, so that a link's delay × bandwidth is filled with requests.

Lifecycle of one directory (:class:`_Dir`)::

    SEEN (one file opened) ──its first name, or a second file──▶ ACTIVE ──all requested──▶ DONE
      ▲ ▲                                                          │                       │
      │ └─────────── idle READ_THROUGH_IDLE s: unread bytes given back (wasted) ◀──────────┤
      └───────────── a file of this pass opened again: the next pass (epoch) ◀─────────────┘

An ACTIVE directory hands its files (from the listing, after the highest name opened, wrapping
around) to the fetcher one whole object per request at SCAN priority, behind demand reads,
readahead and loader hints. Directories take turns, so two regions read alternately both stay
busy; and when one becomes ACTIVE, so does the same directory under the other backends' mount
paths (a dataset split across regions). Bounds:

* requests in flight per backend: ``slots`` (the fetcher's background workers, so it always has
  the next ones queued; it runs at most its per-backend share of them at once);
* bytes fetched ahead and not yet opened, all directories together: ``budget``. A file read
  ahead gives its bytes back when it is opened, so read-through goes on only as fast as what it
  fetched is read (it pays off, or it stops); a directory left idle gives back what was never
  read, counted as wasted.

Objects the fetcher does not fetch whole (``Fetcher.small``: up to 1 MiB or one block) are left
to the name-order scan and the readahead of their handles (:mod:`warpdrive.read.prefetch`).

Concurrency: ``_lock`` (with ``_wake``) guards every field below it; callers' threads
(:meth:`on_open`, from the FUSE loop too) only record and notify, never block; one thread lists
directories, another resolves versions and hands requests to the fetcher (so a slow listing never
holds up files ready to fetch); fetch completions (fetcher threads) only count down and notify.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from enum import Enum
from functools import partial
from typing import Protocol

from warpdrive.cache import BlockCache, ObjectVersion
from warpdrive.read.fetch import BlockData, Fetcher, Priority
from warpdrive.read.namespace import FileInfo

log = logging.getLogger(__name__)

MAX_TRACKED_DIRS = 1024
READ_THROUGH_IDLE = 60.0  # seconds without an open before a directory's unread bytes are wasted
Resolver = Callable[[str], ObjectVersion]
Tracker = Callable[[Iterable[bytes], str], None]


class Lister(Protocol):
    def listdir(self, path: str, stale_ok: bool = False) -> list[FileInfo]: ...  # by name

    def mirrors(self, path: str) -> list[str]: ...  # the same directory in the other regions


class DirState(Enum):
    SEEN = "seen"
    ACTIVE = "active"
    DONE = "done"


class _Dir:
    """One directory's read-through (fields guarded by ReadThrough._lock)."""

    __slots__ = (
        "ahead",
        "backend",
        "dirs",
        "last_open",
        "listed",
        "mirror",
        "opened",
        "path",
        "queued",
        "resolve",
        "sibling",
        "state",
        "team",
        "todo",
    )

    def __init__(self, path: str, dirs: Lister, resolve: Resolver, team: str | None) -> None:
        self.path = path
        self.dirs = dirs
        self.resolve = resolve
        self.team = team
        self.state = DirState.SEEN
        self.opened: set[str] = set()
        self.ahead: dict[str, int] = {}  # name → bytes fetched ahead, not opened yet
        self.todo: deque[FileInfo] = deque()  # files still to look at, in the order to fetch
        self.listed = False
        self.queued = False  # waiting for the thread to list it
        self.mirror = False  # another region's copy of an ACTIVE directory: read it through too
        self.backend: str | None = None  # known after the first resolve
        self.sibling: ObjectVersion | None = None  # a file opened here: its backend, its key
        self.last_open = time.monotonic()


class ReadThrough:
    """Fetches ahead the small objects of directories being read through (see module doc)."""

    def __init__(
        self,
        cache: BlockCache,
        fetcher: Fetcher,
        budget: int,
        track: Tracker,
    ) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.budget = budget
        self.slots = fetcher.bg_limit
        self._track = track
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirs: OrderedDict[str, _Dir] = OrderedDict()  # least recently opened first
        self._turns: deque[_Dir] = deque()  # ACTIVE directories with files left, in turn
        self._unlisted: deque[_Dir] = deque()  # directories whose listing the thread needs
        # Other regions' copies of ACTIVE directories (which may not exist), listed after the
        # directories readers opened.
        self._mirrors: deque[_Dir] = deque()
        self._in_flight: dict[str, int] = {}  # requests in flight by backend
        self._unread = 0  # bytes fetched ahead and not opened yet, all directories
        # One thread lists directories, one hands files to the fetcher: a slow listing (of a
        # directory another region may not have) never holds up the files of those that exist.
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- callers ---------------------------------------------------------------------------

    def on_open(
        self, path: str, obj: ObjectVersion, dirs: Lister, resolve: Resolver, team: str | None
    ) -> None:
        """A small file was opened (``obj``: its version); never blocks."""
        parent, _, name = path.rpartition("/")
        with self._wake:
            if self._closed:
                return
            d = self._dirs.get(parent)
            if d is None:
                d = self._dirs[parent] = _Dir(parent, dirs, resolve, team)
                if len(self._dirs) > MAX_TRACKED_DIRS:
                    self._forget_locked(self._dirs.popitem(last=False)[1])
            else:
                self._dirs.move_to_end(parent)
            d.sibling = obj
            d.last_open = time.monotonic()
            got = d.ahead.pop(name, None)
            if got is not None:
                self._unread -= got  # paid off: the budget is free for the next one
                if self._unread + got >= self.budget:
                    self._wake.notify_all()
            if name in d.opened:
                if d.state is not DirState.DONE:
                    return
                # Every file was handed out and one is opened again: the reader's next pass
                # (epoch) over the directory, read through as the first was (what left the
                # cache since is fetched ahead again; cached files cost an index read each).
                self._forget_locked(d)
                d.opened.clear()
                d.state = DirState.SEEN
            d.opened.add(name)
            if d.state is DirState.SEEN and not d.queued and (len(d.opened) >= 2 or not d.listed):
                d.queued = True  # the listing says whether the first open was its first file
                self._unlisted.append(d)
                self._wake.notify_all()  # two threads wait here: wake the lister for sure
        self._start()

    def stats(self) -> dict[str, int]:
        """Requests in flight and bytes fetched ahead not yet opened (for tests and tools)."""
        with self._lock:
            return {"in_flight": sum(self._in_flight.values()), "unread": self._unread}

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    # -- the thread ------------------------------------------------------------------------

    def _start(self) -> None:
        if not self._threads:
            with self._lock:
                if self._threads or self._closed:
                    return
                picks = {"list": self._next_listing_locked, "fetch": self._next_file_locked}
                self._threads = [
                    threading.Thread(target=self._loop, args=(pick,), name=f"warpdrive-rt-{n}")
                    for n, pick in picks.items()
                ]
            for thread in self._threads:
                thread.daemon = True
                thread.start()

    def _loop(self, pick: Callable[[], Callable[[], None] | None]) -> None:
        while True:
            with self._wake:
                task = pick()
                while task is None and not self._closed:
                    self._wake.wait(1.0)
                    self._write_off_idle_locked()
                    task = pick()
                if self._closed:
                    return
            try:
                assert task is not None
                task()
            except Exception as exc:  # read-ahead is advice: failing it must not break reads
                log.debug("read-through dropped: %s", exc)
            with self._wake:
                self._wake.notify_all()  # a listing may have given the other thread work

    def _next_listing_locked(self) -> Callable[[], None] | None:
        """A directory to list: one a reader opened first, else another region's copy."""
        if self._unlisted:
            return partial(self._list, self._unlisted.popleft())
        if self._mirrors:
            return partial(self._list, self._mirrors.popleft())
        return None

    def _next_file_locked(self) -> Callable[[], None] | None:
        """The next file to fetch ahead: directories in turn, within the bounds."""
        if self._unread >= self.budget:
            return None
        for _ in range(len(self._turns)):
            d = self._turns[0]
            self._turns.rotate(-1)
            if d.backend is not None and self._in_flight.get(d.backend, 0) >= self.slots:
                continue
            while d.todo:
                info = d.todo.popleft()
                if info.name not in d.opened:
                    return partial(self._fetch, d, info)
            d.state = DirState.DONE
            self._turns.remove(d)
            return self._next_file_locked()
        return None

    def _list(self, d: _Dir) -> None:
        # A listing past list_ttl will do (revalidated in the background, never under an
        # immutable prefix): what to fetch ahead is advice, and a warm epoch's next pass
        # must not list every directory again.
        files = [info for info in d.dirs.listdir(d.path, stale_ok=True) if not info.is_dir]
        with self._wake:
            d.listed, d.queued = True, False
            if d.state is not DirState.SEEN:
                return
            first_opened = bool(files) and files[0].name in d.opened
            if len(d.opened) < 2 and not first_opened and not d.mirror:
                return  # one file opened, not the first: no sign of a read-through yet
            names = [info.name for info in files]
            cut = bisect.bisect_right(names, max(d.opened, default=""))
            d.todo = deque(files[cut:] + files[:cut])  # after the reader, then wrap around
            d.state = DirState.ACTIVE
            self._turns.append(d)
            if d.mirror:
                return
            # A dataset split across regions: the same directory in the others is read next.
            for path in d.dirs.mirrors(d.path):
                if path not in self._dirs:
                    m = self._dirs[path] = _Dir(path, d.dirs, d.resolve, d.team)
                    m.mirror = m.queued = True
                    self._mirrors.append(m)

    def _fetch(self, d: _Dir, info: FileInfo) -> None:
        obj = self._version(d, info)
        d.backend = obj.backend
        if not self.fetcher.small(obj):
            return  # left to the name-order scan
        missing = [b for b in range(obj.nblocks) if not self.cache.contains(obj, b)]
        if not missing:
            return
        futures = self.fetcher.request(obj, missing, Priority.SCAN, d.team, whole=True)
        if not futures:
            return  # the fetcher's queue is full: dropped
        with self._wake:
            if info.name not in d.opened:  # opened meanwhile: the reader's, not ahead
                d.ahead[info.name] = obj.size
                self._unread += obj.size
            self._in_flight[obj.backend] = self._in_flight.get(obj.backend, 0) + 1
        self._track((obj.block_key(b) for b in futures), "scan")
        # A small object is one request: its blocks complete together.
        futures[max(futures)].add_done_callback(partial(self._done, obj.backend))

    @staticmethod
    def _version(d: _Dir, info: FileInfo) -> ObjectVersion:
        """The version the listing just showed (the fetch checks it: If-Match), made without
        the namespace, whose stale entries would each ask for a revalidating listing."""
        near = d.sibling
        if near is None or info.etag is None:
            return d.resolve(info.path)
        key = f"{near.key.rpartition('/')[0]}/{info.name}" if "/" in near.key else info.name
        return ObjectVersion(near.backend, key, info.etag, info.size, info.mtime, near.block_size)

    def _done(self, backend: str, _fut: Future[BlockData]) -> None:
        with self._wake:
            left = self._in_flight.get(backend, 0) - 1
            if left > 0:
                self._in_flight[backend] = left
            else:
                self._in_flight.pop(backend, None)
            self._wake.notify_all()

    # -- helpers (caller holds _lock) ------------------------------------------------------

    def _write_off_idle_locked(self) -> None:
        """Directories nobody opened for READ_THROUGH_IDLE seconds: what they fetched ahead and
        nobody read is wasted; they start over if read again."""
        idle = time.monotonic() - READ_THROUGH_IDLE
        for d in list(self._dirs.values()):
            if d.last_open >= idle:
                break  # least recently opened first: the rest are newer
            self._forget_locked(d)
            del self._dirs[d.path]

    def _forget_locked(self, d: _Dir) -> None:
        # Blocks never read are counted wasted where every prefetch is tracked (the prefetcher).
        self._unread -= sum(d.ahead.values())
        d.ahead.clear()
        if d in self._turns:
            self._turns.remove(d)
        d.todo.clear()
        d.state = DirState.DONE
