"""Access records of the mount: bytes each user read of each object each day, and how much of
it came from the cache. Aggregated in memory (bounded) and written to the governance store by a
background thread every ``governance.access_flush_interval`` — never one record per read.

The read path never imports this: :class:`AccessRecorder` observes its closed handles (see
``warpdrive.read.reader.HandleObserver``), registered by whoever builds the reader (the
``warpdrive`` package registers it for every reader by default; the mount passes it
explicitly)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from warpdrive.cache.blockcache import LAYOUT_VERSION
from warpdrive.config import Config
from warpdrive.governance.store import AccessKey, AccessTotals, GovernanceStore, day_of

if TYPE_CHECKING:
    from warpdrive.read.reader import ClosedHandle

log = logging.getLogger(__name__)
MAX_PENDING = 50_000  # distinct (object, user, day) keys held before an early flush


class AccessLog:
    def __init__(self, cache_root: str, interval: float) -> None:
        self.cache_root = cache_root
        self.interval = interval
        self._pending: dict[AccessKey, AccessTotals] = {}
        self._lock = threading.Lock()  # guards _pending
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warpdrive-access-log", daemon=True)
        self._thread.start()

    def record(
        self, backend: str, key: str, user: str, team: str | None, nbytes: int, cache_bytes: int
    ) -> None:
        """One open file was read: ``nbytes``, of which ``cache_bytes`` came from the cache."""
        now = time.time()
        akey = AccessKey(backend, key, user, team, day_of(now))
        with self._lock:
            totals = self._pending.setdefault(akey, AccessTotals())
            totals.bytes += nbytes
            totals.cache_bytes += cache_bytes
            totals.opens += 1
            totals.last_ts = now
            full = len(self._pending) >= MAX_PENDING
        if full:
            self._wake.set()

    def flush(self, store: GovernanceStore) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            store.add_access(pending)
        return len(pending)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        store = GovernanceStore(self.cache_root)  # this thread's own connection
        try:
            while not self._stop.is_set():
                self._wake.wait(self.interval)
                self._wake.clear()
                try:
                    self.flush(store)
                except Exception:  # records wait for the next flush; reads go on regardless
                    log.exception("writing access records failed")
            self.flush(store)
        finally:
            store.close()


class AccessRecorder:
    """A reader's observer that adds each closed handle to the node's access records; its
    :class:`AccessLog` (a thread) starts at the first record. Built per process from the
    reader's config (``WarpDrive(config, observers=[AccessRecorder])``)."""

    def __init__(self, config: Config) -> None:
        self.cache_root = os.path.join(config.cache.path, LAYOUT_VERSION)
        self.interval = config.governance.access_flush_interval
        self._log: AccessLog | None = None
        self._lock = threading.Lock()  # guards _log (starting and closing it)

    def closed(self, record: ClosedHandle) -> None:
        access = self._log
        if access is None:
            if sys.is_finalizing():  # no new thread can start now (it would wait for ever)
                return
            with self._lock:
                if self._log is None:
                    self._log = AccessLog(self.cache_root, self.interval)
                access = self._log
        access.record(
            record.backend,
            record.key,
            record.user,
            record.team,
            record.bytes_read,
            record.cache_bytes,
        )

    def close(self) -> None:
        """Write what is pending and stop; idempotent."""
        with self._lock:
            access, self._log = self._log, None
        if access is not None:
            access.close()
