"""The block cache as the read path uses it: look up, read verified, store, forget.

Disk layout: ``<cache.path>/v1/{blocks/, index/, users.lock}`` (and the governance store's
``governance.sqlite``). Every process using the cache holds a shared ``flock`` on
``users.lock``; a process that can take it exclusively at start is alone, and only then
reconciles (orphan and temporary files removed, index entries without a file dropped, usage
recounted), so it never deletes a block another process is writing.

Last-access times and counters are batched in memory and flushed to the index every couple of
seconds by one background thread, so a cache hit costs one index read and no write.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from warpdrive.cache.accounts import Quota, Usage, quota_status
from warpdrive.cache.index import CacheIndex, now_ms
from warpdrive.cache.keys import ObjectVersion
from warpdrive.cache.store import BlockFile, BlockStore, BlockView, chunk_sums, in_memory
from warpdrive.config import CacheConfig
from warpdrive.metrics import Metrics
from warpdrive.units import format_size

log = logging.getLogger(__name__)
LAYOUT_VERSION = "v1"
QUOTA_CHECK_ROUNDS = 15  # flush rounds between soft-quota checks (30 s at the default 2 s)


class BlockCache:
    """Thread-safe; one per process (never used across ``fork()``)."""

    def __init__(self, cfg: CacheConfig, metrics: Metrics, flush_interval: float = 2.0) -> None:
        os.makedirs(cfg.path, mode=0o700, exist_ok=True)
        self.root = os.path.join(cfg.path, LAYOUT_VERSION)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.cfg = cfg
        self.metrics = metrics
        self.store = BlockStore(self.root)
        self.index = CacheIndex(self.root, cfg.max_size, cfg.evict_high_water, cfg.evict_low_water)
        self._users = os.open(
            os.path.join(self.root, "users.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self.reconciled = self._join()
        self._pending: dict[bytes, int] = {}
        self._reported: dict[str, float] = metrics.totals()  # counted before us: not ours
        self._warned: dict[str, float] = {}
        self._quota_states: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_loop,
            args=(flush_interval,),
            name="warpdrive-cache-flush",
            daemon=True,
        )
        self._flusher.start()
        self._closed = False
        metrics.add_collector(self._collect)

    # -- the read path ---------------------------------------------------------------------

    def open_block(self, obj: ObjectVersion, index: int) -> BlockView | None:
        """The cached block as a view (verify on read), or None when it is not cached."""
        bkey = obj.block_key(index)
        rec = self.index.get(bkey)
        if rec is None:
            return None
        view = self.store.open(bkey, rec.nonce, rec.size, rec.sums)
        if view is None:  # evicted by another process between index read and open
            return None
        if rec.size != obj.block_len(index):
            view.close()
            self.discard(obj, index, rec.nonce)
            return None
        self._pending[bkey] = now_ms()
        return view

    def advise(self, obj: ObjectVersion, index: int) -> bool:
        """If the block is cached, make sure its file is on its way into memory (a sequential
        reader will want it soon) and return True; False if it is not cached.

        The last byte is probed without blocking (RWF_NOWAIT); only when it is not resident is
        the kernel asked to read the file ahead, since WILLNEED on resident pages is not free."""
        bkey = obj.block_key(index)
        rec = self.index.get(bkey)
        if rec is None:
            return False
        try:
            fd = os.open(self.store.path(bkey, rec.nonce), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not in_memory(fd, rec.size - 1):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
        return True

    def contains(self, obj: ObjectVersion, index: int) -> bool:
        return self.index.contains(obj.block_key(index))

    def discard(self, obj: ObjectVersion, index: int, nonce: int | None = None) -> None:
        """Forget a block whose file failed verification; the next read refetches it."""
        self.metrics.checksum_errors.inc()
        self._unlink(self.index.remove(obj.block_key(index), nonce))

    def put(
        self, obj: ObjectVersion, index: int, data: bytes | memoryview, team: str | None = None
    ) -> bool:
        """Store a block fetched for ``team``; False (and counted) if the disk would not take it."""
        bkey = obj.block_key(index)
        sums = chunk_sums(data)
        for attempt in (1, 2):
            try:
                nonce = self.store.write(bkey, data)
                break
            except OSError as exc:
                reason = "nospace" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io"
                self.metrics.cache_write_errors.labels(reason).inc()
                if reason != "nospace" or attempt == 2:
                    self._warn_once(reason, f"cannot store block in {self.root}: {exc.strerror}")
                    return False
                dead, evicted = self.index.evict(4 * len(data))
                self.metrics.cache_evictions.inc(evicted)
                self._unlink(dead)
        dead, evicted = self.index.insert(obj, index, nonce, len(data), sums, team)
        self.metrics.cache_evictions.inc(evicted)
        self._unlink(dead)
        return True

    def usage(self) -> Usage:
        return self.index.usage()

    def evict_objects(self, oids: list[bytes]) -> int:
        """Drop every cached block of these objects (and their files); how many blocks went."""
        dead, evicted = self.index.evict_objects(oids)
        self.metrics.cache_evictions.inc(evicted)
        self._unlink(dead)
        return evicted

    def set_quota(self, quota: Quota) -> int:
        """Store a quota; blocks evicted at once because the team was already over it."""
        dead, evicted = self.index.set_quota(quota)
        self.metrics.cache_evictions.inc(evicted)
        self._unlink(dead)
        return evicted

    # -- lifecycle -------------------------------------------------------------------------

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        self.index.touch(pending)
        self.index.add_counters(self._counter_deltas())

    def close(self) -> None:
        """Flush and release; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._flusher.join(timeout=10)
        try:
            self.flush()
            self.index.sync()  # commits skip fsync; a clean close makes them durable
        finally:
            self.index.close()
            os.close(self._users)

    def reconcile(self) -> tuple[int, int]:
        """Make index and files agree (see module doc). Returns (records dropped, files removed).
        Only safe while no other process uses the cache: :meth:`_join` checks that."""
        files: dict[bytes, dict[int, int]] = {}
        strays: list[str] = []
        found: list[BlockFile] = []
        for item in self.store.scan():
            if isinstance(item, str):
                strays.append(item)
            else:
                found.append(item)
                files.setdefault(item.bkey, {})[item.nonce] = item.size
        dropped, keep = self.index.reconcile(files)
        removed = 0
        for path in strays + [f.path for f in found if (f.bkey, f.nonce) not in keep]:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    continue
                os.unlink(path)
                removed += 1
            except OSError:
                pass
        if dropped or removed:
            log.info(
                "cache %s reconciled: %d index entries dropped, %d files removed",
                self.root,
                dropped,
                removed,
            )
        return dropped, removed

    # -- helpers ---------------------------------------------------------------------------

    def _join(self) -> bool:
        """Register as a user of the cache; reconcile first if no one else is using it."""
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._users, fcntl.LOCK_SH)
            return False
        try:
            self.reconcile()
        finally:
            fcntl.flock(self._users, fcntl.LOCK_SH)  # may wait if another joins meanwhile
        return True

    def _unlink(self, dead: list[tuple[bytes, int]]) -> None:
        for bkey, nonce in dead:
            try:
                self.store.remove(bkey, nonce)
            except OSError as exc:
                log.warning("cannot remove evicted block file: %s", exc.strerror)

    def _flush_loop(self, interval: float) -> None:
        rounds = 0
        while not self._stop.wait(interval):
            rounds += 1
            try:
                self.flush()
                if rounds % QUOTA_CHECK_ROUNDS == 0:
                    self.check_quotas()
            except Exception:  # keep flushing; a failed batch only costs LRU precision
                log.exception("cache index flush failed")

    def _counter_deltas(self) -> dict[str, int]:
        now = self.metrics.totals()
        deltas = {name: int(value - self._reported.get(name, 0.0)) for name, value in now.items()}
        for name, delta in deltas.items():
            self._reported[name] = self._reported.get(name, 0.0) + delta
        return deltas

    def check_quotas(self) -> None:
        """Log once when a team's cached bytes cross a soft or hard limit (hard limits are
        enforced at every insert; this only tells)."""
        for quota, usage in self.index.quotas():
            state = quota_status(quota, usage)
            key = (quota.team, quota.backend)
            if state != "OK" and self._quota_states.get(key) != state:
                scope = f" on {quota.backend}" if quota.backend else ""
                limit = quota.hard if state == "EXCEEDED" else quota.soft
                log.warning(
                    "team %s caches %s%s, over its %s limit of %s",
                    quota.team,
                    format_size(usage.bytes),
                    scope,
                    "hard" if state == "EXCEEDED" else "soft",
                    format_size(limit),
                )
            self._quota_states[key] = state

    def _collect(self) -> Iterator[Metric]:
        usage = self.index.usage()
        yield GaugeMetricFamily(
            "warpdrive_cache_size_bytes", "Bytes of blocks in the cache", value=usage.bytes
        )
        yield GaugeMetricFamily("warpdrive_cache_blocks", "Blocks in the cache", value=usage.blocks)
        yield GaugeMetricFamily(
            "warpdrive_cache_utilization_ratio",
            "Cache size as a fraction of max_size",
            value=usage.bytes / self.cfg.max_size,
        )
        teams = GaugeMetricFamily(
            "warpdrive_team_cache_bytes", "Bytes cached on behalf of each team", labels=["team"]
        )
        for team, team_usage in self.index.team_usage().items():
            teams.add_metric([team], team_usage.bytes)
        yield teams
        states = GaugeMetricFamily(
            "warpdrive_quota_status",
            "Quota state per team and backend (all: every backend): 0 OK, 1 over soft, 2 over hard",
            labels=["team", "backend"],
        )
        for quota, quota_usage in self.index.quotas():
            level = ("OK", "WARNING", "EXCEEDED").index(quota_status(quota, quota_usage))
            states.add_metric([quota.team, quota.backend or "all"], level)
        yield states

    def _warn_once(self, reason: str, message: str) -> None:
        if time.monotonic() - self._warned.get(reason, -1e9) > 60:
            self._warned[reason] = time.monotonic()
            log.warning(message)
