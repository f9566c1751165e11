"""The block cache as the read path uses it: look up, read verified, store, forget.

Disk layout: ``<cache.path>/v2/{objects/, index/, users.lock}`` (and the governance store's
``governance.sqlite``): one sparse file per object version (:mod:`warpdrive.cache.store`), the
LMDB index of its blocks (:mod:`warpdrive.cache.index`). A ``v1`` directory (one file per block,
from older releases) is removed at start when no process uses it; it only held copies.

Every process using the cache holds a shared ``flock`` on ``users.lock``; a process that can
take it exclusively at start is alone, and only then reconciles (stray files and files of no
indexed object removed, records whose file is missing or too short dropped, usage recounted), so
it never deletes what another process is writing. An index LMDB cannot read (a power loss can
damage it: commits skip fsync) is removed with the object files by a process that is alone,
which then starts with an empty cache (logged, ``warpdrive_cache_index_resets_total``): they
only held copies. With other processes still using the cache it refuses to start instead.

**When bytes are verified.** Checksums are computed from the fetched bytes before they are
written (so the writing process knows them verified). A block is verified (all of it, against
its chunk checksums) the first time a process reads it from a given file, and again after
``REVERIFY_AFTER``; in between, the process trusts
it as long as the block's generation in the index is the same before and after each read, which
proves no eviction freed its range meanwhile (ranges are freed only after their record is gone,
see the store). So a wrong byte can reach a reader only if the disk changes a verified block's
bytes under an unchanged record within ``REVERIFY_AFTER``; a machine crash that loses written
bytes but keeps their records is caught, since a new process verifies before trusting. A
mismatch is a counted miss (``warpdrive_checksum_errors_total``) and a refetch.

**The page cache.** Nothing here asks the kernel to read a cache file ahead
(``POSIX_FADV_WILLNEED``): the kernel brings advised ranges in as single pages, which later hot
reads copy about 1.5× slower than the large folios its own readahead makes for the reader, and
competing with that readahead they made a warm read with the page cache dropped 0.72–0.81× local
files instead of 0.95–1.00× (docs/read-path.md). A reader's own reads bring its bytes in.

**Passthrough** (:meth:`BlockCache.open_backing`): a whole object's cache file is handed out
for the kernel to read directly, which this process then never verifies; so it is handed out
only once every block is verified by this process (those that are not are verified then,
read in long runs), and an object of several blocks is pinned in the index
(:mod:`warpdrive.cache.pins`) until :meth:`BlockCache.unpin`, so no process evicts a range the
kernel may read (eviction frees one block of it by punching its range). Pins are counted per
process (every handle): only the first pin and the last unpin write to the index. An object of
one block is not pinned: its block goes only with its object, and then its file is unlinked,
never punched (:meth:`BlockCache._free`), so a descriptor handed out keeps reading its bytes from
the unlinked inode; that file's disk space comes back when the kernel closes it. (The pin, one
index write per open, was the costliest part of a small file's passthrough open.)

Last-access times, counters and the versions backends confirmed (stats and listings, for the
offline staleness bound) are batched in memory and flushed to the index every couple of seconds
by one background thread, so a cache hit costs index reads and no write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from functools import partial

import lmdb
from prometheus_client.core import GaugeMetricFamily, Metric

from warpdrive.cache.accounts import Quota, Usage, quota_status
from warpdrive.cache.index import BlockRecord, CacheIndex, Dead, now_ms
from warpdrive.cache.keys import OID_LEN, ObjectVersion
from warpdrive.cache.store import (
    EvictionClock,
    ObjectFile,
    ObjectFileEntry,
    ObjectStore,
    chunk_sums,
    verify,
)
from warpdrive.config import CacheConfig
from warpdrive.errors import CacheDamagedError
from warpdrive.metrics import Metrics
from warpdrive.perms import private_dir
from warpdrive.units import format_size

log = logging.getLogger(__name__)
LAYOUT_VERSION = "v2"
OLD_LAYOUTS = ("v1",)
QUOTA_CHECK_ROUNDS = 15  # flush rounds between soft-quota checks (30 s at the default 2 s)
REVERIFY_AFTER = 600.0  # seconds a process trusts a block it verified (same generation)
MAX_VERIFIED = 1 << 20  # blocks remembered as verified (~100 bytes each), then forgotten
VERIFY_RUN = 64 << 20  # bytes read at once when a passthrough open verifies a cache file


class BlockCache:
    """Thread-safe; one per process (never used across ``fork()``)."""

    def __init__(self, cfg: CacheConfig, metrics: Metrics, flush_interval: float = 2.0) -> None:
        private_dir(cfg.path)
        self.root = os.path.join(cfg.path, LAYOUT_VERSION)
        private_dir(self.root)
        self.cfg = cfg
        self.metrics = metrics
        self.store = ObjectStore(self.root)
        self.clock = EvictionClock(self.root)
        self._users = os.open(
            os.path.join(self.root, "users.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        # (file inode, block key) -> (generation, trusted until): see "When bytes are verified"
        self._verified: dict[tuple[int, bytes], tuple[int, float]] = {}
        # (file inode, object id) -> (eviction clock, trusted until) when last found whole: while
        # the clock stands still nothing left the cache, so the next open needs no index reads
        self._whole_seen: dict[tuple[int, bytes], tuple[int, float]] = {}
        self._whole_clock: dict[bytes, int] = {}  # object id -> the clock when last found whole
        try:
            self.index = self._new_index()
            self.reconciled = self._join()
        except lmdb.Error as exc:
            self.index, self.reconciled = self._start_empty(exc), True
        self._pending: dict[bytes, int] = {}
        # Objects whose last passthrough handle closed; unpinned in the index at the next flush
        self._unpinning: set[bytes] = set()
        # (backend, key) → (etag, when) a backend showed it: see CacheIndex.confirm
        self._confirmed: dict[tuple[str, str], tuple[str, float]] = {}
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

    def open_object(self, obj: ObjectVersion) -> ObjectFile | None:
        """The object's cache file for reading, or None when it has none (nothing cached yet,
        or the file was removed behind the index's back: then its blocks are forgotten)."""
        file = self.store.open(obj.oid)
        if file is None and self.index.object(obj.oid) is not None:
            # A writer creates the file before it indexes anything: if the file is there now,
            # an eviction removed it and a writer made it again between our two looks.
            file = self.store.open(obj.oid)
            if file is None:
                self.lost(obj)
        return file

    def read_into(
        self, obj: ObjectVersion, file: ObjectFile, offset: int, dst: memoryview
    ) -> list[int]:
        """Fill ``dst`` with the cached bytes of ``[offset, offset+len(dst))`` (the caller
        clamps to the object); returns the indices of the blocks it could not fill (not
        cached, evicted while being read, or failing verification), whose parts of ``dst`` the
        caller must overwrite.

        Blocks this process verified in this file are read with one ``preadv`` per run straight
        into ``dst``. They are trusted without hashing because the eviction clock shows that
        no range was freed since the index was read (else the index is read again, after the
        read, and a block whose generation changed meanwhile counts as not filled). Other
        blocks are read whole and verified first (:meth:`_verified_block`), once per process."""
        bs, end = obj.block_size, offset + len(dst)
        first, last = offset // bs, (end - 1) // bs
        before = self.clock.now()
        present = file.present
        if file.seen_at != before:  # something was evicted somewhere: look again
            present.clear()
            file.seen_at = before
        records: dict[int, BlockRecord] = {}
        if any(i not in present for i in range(first, last + 1)):
            indices = list(range(first, last + 1))
            for index, rec in zip(
                indices, self.index.get_many([obj.block_key(i) for i in indices]), strict=True
            ):
                if rec is not None and rec.size == obj.block_len(index):
                    records[index] = rec
                    present[index] = rec.generation
                else:
                    present.pop(index, None)
        unfilled: list[int] = []
        trusted: list[int] = []  # blocks read without hashing
        run: list[memoryview] = []
        run_blocks: list[int] = []
        run_start = 0
        for index in range(first, last + 1):
            lo, hi = max(offset, index * bs), min(end, index * bs + bs)
            part = dst[lo - offset : hi - offset]
            generation = present.get(index)
            if generation is not None:
                if self._is_verified(file, obj.block_key(index), generation):
                    if not run:
                        run_start = lo
                    run.append(part)
                    run_blocks.append(index)
                    continue
                rec = records.get(index) or self.index.get(obj.block_key(index))
                filled = False
                if rec is not None and rec.generation == generation:
                    if len(part) == rec.size:  # the whole block: read and checked in place
                        filled = self._verified_block_into(obj, file, index, rec, part)
                    else:
                        data = self._verified_block(obj, file, index, rec)
                        if data is not None:
                            part[:] = memoryview(data)[lo - index * bs : hi - index * bs]
                            filled = True
                if not filled:
                    present.pop(index, None)
                    unfilled.append(index)
            else:
                unfilled.append(index)
            if run:
                self._read_run(file, run_start, run, run_blocks, trusted, unfilled)
                run, run_blocks = [], []
        if run:
            self._read_run(file, run_start, run, run_blocks, trusted, unfilled)
        if trusted and self.clock.now() != before:  # a range was freed meanwhile: which?
            after = self.index.generations([obj.block_key(i) for i in trusted])
            for index, generation in zip(trusted, after, strict=True):
                if generation != present.get(index):
                    present.pop(index, None)
                    unfilled.append(index)
            unfilled.sort()
        if trusted:
            now = now_ms()
            for index in trusted:
                self._pending[obj.block_key(index)] = now
        return unfilled

    def whole(self, obj: ObjectVersion, file: ObjectFile) -> bool:
        """Whether every block of ``obj`` is cached and verified in ``file``; if so, marks the
        file so that reads may go straight to it while the eviction clock stands still (the
        caller checks it before and after each read, and the deadline ``whole_until``)."""
        before = self.clock.now()
        seen = self._whole_seen.get((file.ino, obj.oid))
        if seen is not None and seen[0] == before and seen[1] > time.monotonic():
            file.whole_at, file.whole_until = before, seen[1]
            now = now_ms()
            for index in range(obj.nblocks):
                self._pending[obj.block_key(index)] = now
            return True
        bkeys = [obj.block_key(i) for i in range(obj.nblocks)]
        until = float("inf")
        for index, (bkey, rec) in enumerate(zip(bkeys, self.index.get_many(bkeys), strict=True)):
            if rec is None or rec.size != obj.block_len(index):
                return False
            known = self._verified.get((file.ino, bkey))
            if known is None or known[0] != rec.generation:
                return False
            until = min(until, known[1])
        if until <= time.monotonic():
            return False
        file.whole_at, file.whole_until = before, until
        if len(self._whole_seen) >= MAX_VERIFIED:
            self._whole_seen.clear()
            self._whole_clock.clear()
        self._whole_seen[(file.ino, obj.oid)] = (before, until)
        self._whole_clock[obj.oid] = before
        now = now_ms()  # in use now (LRU): reads straight from the file are not seen here
        for bkey in bkeys:
            self._pending[bkey] = now
        return True

    def read_block(
        self, obj: ObjectVersion, file: ObjectFile, index: int, lo: int, n: int
    ) -> bytes | None:
        """Bytes ``[lo, lo+n)`` of block ``index`` as a new bytes object (no zeroed buffer, no
        copy when the block is verified already), or None if it cannot be served from the
        cache (checked as in :meth:`read_into`)."""
        bkey = obj.block_key(index)
        before = self.clock.now()
        if file.seen_at != before:
            file.present.clear()
            file.seen_at = before
        generation = file.present.get(index)
        rec = None
        if generation is None:
            rec = self.index.get(bkey)
            if rec is None or rec.size != obj.block_len(index):
                return None
            file.present[index] = generation = rec.generation
        if not self._is_verified(file, bkey, generation):
            rec = rec or self.index.get(bkey)
            whole = None
            if rec is not None and rec.generation == generation:
                whole = self._verified_block(obj, file, index, rec)
            if whole is None:
                file.present.pop(index, None)
                return None
            return whole[lo : lo + n]
        offset = index * obj.block_size + lo
        try:
            data = os.pread(file.fd, n, offset)
        except OSError:
            return None
        if len(data) != n or (
            self.clock.now() != before and self.index.generations([bkey])[0] != generation
        ):
            file.present.pop(index, None)
            return None
        self._pending[bkey] = now_ms()
        return data

    def contains(self, obj: ObjectVersion, index: int) -> bool:
        return self.index.contains(obj.block_key(index))

    def seen_whole(self, obj: ObjectVersion) -> bool:
        """Whether :meth:`whole` found ``obj`` whole in this process and nothing was evicted
        anywhere since (no index read): a warm open may then take its cache file at once."""
        return self._whole_clock.get(obj.oid) == self.clock.now()

    def missing(self, obj: ObjectVersion, indices: range) -> list[int]:
        """Those of ``indices`` whose blocks are not cached (one index read for all)."""
        present = self.index.contains_many([obj.block_key(i) for i in indices])
        return [i for i, here in zip(indices, present, strict=True) if not here]

    def discard(self, obj: ObjectVersion, index: int, generation: int | None = None) -> None:
        """Forget a block that failed verification; the next read refetches it."""
        self.metrics.checksum_errors.inc()
        self._free(self.index.remove(obj.block_key(index), generation))

    def lost(self, obj: ObjectVersion) -> None:
        """Forget every block of an object whose cache file is gone (removed by hand, say)."""
        log.warning(
            "cache file of %s:%s is missing: its blocks will be fetched again", obj.backend, obj.key
        )
        self.metrics.checksum_errors.inc()
        self._free(self.index.evict_objects([obj.oid], force=True)[0])

    def put(
        self, obj: ObjectVersion, index: int, data: bytes | memoryview, team: str | None = None
    ) -> bool:
        """Store a block fetched for ``team``; False (and counted) if the disk would not take it."""
        sums = chunk_sums(data)
        generation = secrets.randbits(64)
        offset = index * obj.block_size

        def commit() -> tuple[list[tuple[bytes, int, int]], int]:
            return self.index.insert(obj, index, generation, len(data), sums, team)

        for attempt in (1, 2):
            try:
                (dead, evicted), ino = self.store.write(obj.oid, obj.size, offset, data, commit)
                break
            except OSError as exc:
                reason = "nospace" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io"
                self.metrics.cache_write_errors.labels(reason).inc()
                if reason != "nospace" or attempt == 2:
                    self._warn_once(reason, f"cannot store block in {self.root}: {exc.strerror}")
                    return False
                dead, evicted = self.index.evict(4 * len(data))
                self.metrics.cache_evictions.inc(evicted)
                self._free(dead)
        self.metrics.cache_evictions.inc(evicted)
        self._free(dead)
        # The bytes in the file are the ones just hashed: verified, for this process.
        self._remember_verified(ino, obj.block_key(index), generation)
        return True

    def _is_verified(self, file: ObjectFile, bkey: bytes, generation: int) -> bool:
        known = self._verified.get((file.ino, bkey))
        return known is not None and known[0] == generation and known[1] > time.monotonic()

    def _remember_verified(self, ino: int, bkey: bytes, generation: int) -> None:
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[(ino, bkey)] = (generation, time.monotonic() + REVERIFY_AFTER)

    def _verified_block(
        self, obj: ObjectVersion, file: ObjectFile, index: int, rec: BlockRecord
    ) -> bytes | None:
        """The whole block, read and checked against its checksums, or None (see
        :meth:`_checked`)."""
        try:
            data = os.pread(file.fd, rec.size, index * obj.block_size)
        except OSError:
            data = b""
        return data if self._checked(obj, file, index, rec, data) else None

    def _verified_block_into(
        self, obj: ObjectVersion, file: ObjectFile, index: int, rec: BlockRecord, into: memoryview
    ) -> bool:
        """:meth:`_verified_block` into ``into`` (as long as the block): no new buffer, no
        copy. False: ``into`` holds whatever was read."""
        try:
            got = os.preadv(file.fd, [into], index * obj.block_size)
        except OSError:
            return self._checked(obj, file, index, rec, b"")
        return self._checked(obj, file, index, rec, into[:got])

    def _checked(
        self,
        obj: ObjectVersion,
        file: ObjectFile,
        index: int,
        rec: BlockRecord,
        data: bytes | memoryview,
    ) -> bool:
        """Whether ``data``, read from ``file``, is block ``index`` whole and matches its
        checksums (then this process knows it verified). A block that fails is discarded
        (counted) unless it changed meanwhile (evicted: no fault) or the file was removed
        under the caller (then it must open the object again)."""
        bkey = obj.block_key(index)
        if len(data) == rec.size and verify(data, rec.sums):
            self._remember_verified(file.ino, bkey, rec.generation)
            self._pending[bkey] = now_ms()
            return True
        if not file.unlinked() and self.index.generations([bkey])[0] == rec.generation:
            self.discard(obj, index, rec.generation)
        return False

    def _read_run(
        self,
        file: ObjectFile,
        offset: int,
        buffers: list[memoryview],
        blocks: list[int],
        trusted: list[int],
        unfilled: list[int],
    ) -> None:
        """One ``preadv`` of adjacent verified blocks into their parts of the caller's buffer;
        the blocks join ``trusted``, or ``unfilled`` if the read came up short (the file was
        cut behind our back). Then this process forgets that the file's blocks were verified,
        so the retry verifies them and finds the damage."""
        try:
            got = os.preadv(file.fd, buffers, offset)
        except OSError:
            got = -1
        if got == sum(len(b) for b in buffers):
            trusted += blocks
            return
        unfilled += blocks
        file.present.clear()
        for key in [k for k in self._verified if k[0] == file.ino]:
            self._verified.pop(key, None)

    def usage(self) -> Usage:
        return self.index.usage()

    # -- passthrough: a whole object's cache file handed to the kernel, pinned -------------

    def open_backing(self, obj: ObjectVersion) -> int | None:
        """A new read-only descriptor of ``obj``'s cache file, the caller's to close, if every
        block is cached and verified by this process; an object of several blocks is then
        pinned (no process evicts its blocks) until :meth:`unpin`, one of one block needs no
        pin (see the module doc). None otherwise, pinning nothing: zero-size
        objects (no cache file: nothing to read), objects not cached whole, and those with a
        block that fails verification (discarded and counted, as any read would: the caller
        reads through user space, which fetches it again).

        Blocks cached but not verified by this process are verified here, read in long runs
        (which also puts them in the page cache the kernel's reads will use). Costs, warm
        (another handle of this process pins the object, and nothing was evicted anywhere
        since it was found whole): an ``open`` and an ``fstat``, no index access; the first pin
        in a process adds one index write that reads every block's record."""
        if obj.size == 0:
            return None
        if obj.nblocks > 1 and not self._pin(obj):
            return None
        answer: int | None = None
        # Pinned (or of one block, unlinked if evicted): the file the index's blocks are in.
        file = self.store.open(obj.oid)
        try:
            whole = file is not None and (
                self.whole(obj, file) or (self._verify_whole(obj, file) and self.whole(obj, file))
            )
            if whole and file is not None:
                answer = file.fd
        finally:
            handed = answer is not None
            if file is not None:
                if handed:
                    file.fd = -1  # the caller's now
                file.close()
            if not handed:
                self.unpin(obj, at_once=True)
        return answer

    def _pin(self, obj: ObjectVersion) -> bool:
        """Count one more passthrough handle of ``obj``; the first one pins it in the index
        (False, pinning nothing, if not every block is cached or pins cannot be recorded)."""
        holders = self.index.holders
        with holders.lock:
            if obj.oid in self._unpinning:  # closed lately: the index pins it still
                self._unpinning.discard(obj.oid)
            elif holders.count(obj.oid) == 0:
                # Cheap refusal of objects being cached (sequential readers fill the last
                # block last) before the write, which may wait for another process's writer.
                if not self.index.contains(obj.block_key(obj.nblocks - 1)):
                    return False
                try:
                    token = holders.me()
                except OSError as exc:  # passthrough is a speed-up: read in user space
                    self._warn_once("pins", f"cannot pin cached objects: {exc}")
                    return False
                if not self.index.pin(obj, token):
                    return False
            holders.add(obj.oid, 1)
        return True

    def unpin(self, obj: ObjectVersion, at_once: bool = False) -> None:
        """Undo one :meth:`open_backing` that returned a descriptor. The last one of an object
        leaves its pin in the index until the next flush (:meth:`_release_pins`), unless
        ``at_once``: an epoch opens each file once, and a write per close on the request path
        cost as much as the open's own; a file opened again meanwhile needs no write at all."""
        if obj.nblocks == 1:
            return  # never pinned (see open_backing)
        holders = self.index.holders
        with holders.lock:
            if holders.count(obj.oid) == 0 or holders.add(obj.oid, -1) > 0:
                return
            self._unpinning.add(obj.oid)
        if at_once:
            self._release_pins()

    def _release_pins(self) -> None:
        """Drop the index pins of objects whose last handle closed since the last flush."""
        holders = self.index.holders
        dead: Dead = []
        with holders.lock:
            if not self._unpinning:
                return
            token = holders.me()
            dead = self.index.unpin_many(self._unpinning, token)  # one write: an epoch's closes
            self._unpinning.clear()
        self.metrics.cache_evictions.inc(len(dead))
        self._free(dead)

    def _verify_whole(self, obj: ObjectVersion, file: ObjectFile) -> bool:
        """Verify every block of a pinned ``obj`` this process has not verified in ``file``:
        runs of adjacent such blocks are read with one ``pread`` each (up to
        ``VERIFY_RUN`` bytes). A block that fails is discarded (counted); False then."""
        bs = obj.block_size
        bkeys = [obj.block_key(i) for i in range(obj.nblocks)]
        records = self.index.get_many(bkeys)
        todo: list[int] = []
        for index, rec in enumerate(records):
            if rec is None or rec.size != obj.block_len(index):
                return False  # cannot happen while pinned, but for a checksum failure elsewhere
            if not self._is_verified(file, bkeys[index], rec.generation):
                todo.append(index)
        ok = True
        start = 0
        while start < len(todo):
            end = start + 1  # a run: adjacent blocks, VERIFY_RUN bytes at most
            while (
                end < len(todo)
                and todo[end] == todo[end - 1] + 1
                and (todo[end] - todo[start] + 1) * bs <= VERIFY_RUN
            ):
                end += 1
            first, last = todo[start], todo[end - 1]
            length = last * bs + obj.block_len(last) - first * bs
            try:
                data = memoryview(os.pread(file.fd, length, first * bs))
            except OSError:
                data = memoryview(b"")
            for index in todo[start:end]:
                rec = records[index]
                assert rec is not None
                part = data[(index - first) * bs : (index - first) * bs + rec.size]
                if len(part) == rec.size and verify(part, rec.sums):
                    self._remember_verified(file.ino, bkeys[index], rec.generation)
                else:
                    self.discard(obj, index, rec.generation)
                    ok = False
            start = end
        return ok

    def evict_objects(self, oids: list[bytes]) -> tuple[int, list[bytes]]:
        """Drop every cached block of these objects (and their files) but of those pinned
        (open with passthrough somewhere): how many blocks went, and the oids skipped."""
        dead, evicted, skipped = self.index.evict_objects(oids)
        self.metrics.cache_evictions.inc(evicted)
        self._free(dead)
        return evicted, skipped

    def set_quota(self, quota: Quota) -> int:
        """Store a quota; blocks evicted at once because the team was already over it."""
        dead, evicted = self.index.set_quota(quota)
        self.metrics.cache_evictions.inc(evicted)
        self._free(dead)
        return evicted

    # -- lifecycle -------------------------------------------------------------------------

    def confirm(self, backend: str, key: str, etag: str, when: float) -> None:
        """A backend showed version ``etag`` of ``key`` at ``when`` (wall clock): written to
        the index at the next flush, if the cache holds that version."""
        self._confirmed[(backend, key)] = (etag, when)

    def flush(self) -> None:
        self._release_pins()
        pending, self._pending = self._pending, {}
        self.index.touch(pending)
        confirmed, self._confirmed = self._confirmed, {}
        self.index.confirm(confirmed)
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
            self.clock.close()
            os.close(self._users)

    def reconcile(self) -> tuple[int, int]:
        """Make index and files agree (see module doc). Returns (records dropped, files removed).
        Only safe while no other process uses the cache: :meth:`_join` checks that."""
        strays: list[str] = []
        found: list[ObjectFileEntry] = []
        for item in self.store.scan():
            if isinstance(item, str):
                strays.append(item)
            else:
                found.append(item)
        dropped, keep = self.index.reconcile({f.oid: f.size for f in found})
        self.index.holders.sweep()  # lock files of pin holders that died
        removed = 0
        for path in strays + [f.path for f in found if f.oid not in keep]:
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

    def _new_index(self) -> CacheIndex:
        cfg = self.cfg
        return CacheIndex(self.root, cfg.max_size, cfg.evict_high_water, cfg.evict_low_water)

    def _start_empty(self, damage: lmdb.Error) -> CacheIndex:
        """The index cannot be read: remove it and the object files (only copies) and start
        empty, if no other process uses the cache (it may be reading those files)."""
        index_dir = os.path.join(self.root, "index")
        if hasattr(self, "index"):
            self.index.close()
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._users)
            raise CacheDamagedError(
                f"cache index {index_dir} is damaged ({damage}) and other processes use the "
                "cache: stop them and start again, and the cache starts empty"
            ) from None
        try:
            for name in ("index", "objects"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
            log.error(
                "cache index %s is damaged (%s): removed it and the cached objects, starting "
                "with an empty cache (teams and quotas set with warpdrive-ctl must be set again)",
                index_dir,
                damage,
            )
            self.metrics.index_resets.inc()
            self.store = ObjectStore(self.root)
            return self._new_index()
        finally:
            fcntl.flock(self._users, fcntl.LOCK_SH)

    def _join(self) -> bool:
        """Register as a user of the cache; reconcile first if no one else is using it."""
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._users, fcntl.LOCK_SH)
            return False
        try:
            self._remove_old_layouts()
            self.reconcile()
        finally:
            fcntl.flock(self._users, fcntl.LOCK_SH)  # may wait if another joins meanwhile
        return True

    def _remove_old_layouts(self) -> None:
        """Remove caches of older layouts no process uses (they are only copies); the
        governance records move over."""
        for name in OLD_LAYOUTS:
            old = os.path.join(self.cfg.path, name)
            if not os.path.isdir(old):
                continue
            try:
                lock = os.open(os.path.join(old, "users.lock"), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                lock = -1
            try:
                if lock >= 0:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("cache %s (older layout) is in use: left in place", old)
                os.close(lock)
                continue
            if not os.path.exists(os.path.join(self.root, "governance.sqlite")):
                for name in ("governance.sqlite", "governance.sqlite-wal", "governance.sqlite-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(os.path.join(old, name), os.path.join(self.root, name))
            shutil.rmtree(old, ignore_errors=True)
            if lock >= 0:
                os.close(lock)
            log.info("removed cache %s of an older layout (%s now)", old, LAYOUT_VERSION)

    def _free(self, dead: Dead) -> None:
        """Give back the disk space of blocks the index no longer names: a whole file when
        its object left the index, else each block's range (see the store for the locking)."""
        if not dead:
            return
        self.clock.advance()  # before any range is freed: readers in flight will look again
        index, store = self.index, self.store
        gone: set[bytes] = set()
        for bkey, offset, length in dead:
            oid = bkey[:OID_LEN]
            try:
                if oid in gone:
                    continue
                record = index.object(oid)
                if record is None:
                    gone.add(oid)
                    store.remove(oid, partial(self._object_gone, oid))
                    continue
                if record.size <= record.block_size:
                    # One block, back in the index (fetched again meanwhile): its range is
                    # being written again with the same bytes. Never punched, so that a file
                    # handed out unpinned (open_backing) never reads a hole.
                    continue
                store.punch(oid, offset, length, partial(self._block_gone, bkey))
            except OSError as exc:
                log.warning("cannot free evicted blocks: %s", exc.strerror)

    def _object_gone(self, oid: bytes) -> bool:
        return self.index.object(oid) is None

    def _block_gone(self, bkey: bytes) -> bool:
        return not self.index.contains(bkey)

    def _flush_loop(self, interval: float) -> None:
        rounds = 0
        while not self._stop.wait(interval):
            rounds += 1
            try:
                self.flush()
                if rounds % QUOTA_CHECK_ROUNDS == 0:
                    self.check_quotas()
                    self.check_pins()
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

    def check_pins(self) -> None:
        """Log (at most once a minute) while the cache is over ``max_size`` because pinned
        objects could not be evicted."""
        used = self.index.usage().bytes
        if used <= self.cfg.max_size:
            return
        pinned = self.index.pinned()
        if pinned:
            self._warn_once(
                "pinned",
                f"cache {self.root} holds {format_size(used)}, over its max_size of "
                f"{format_size(self.cfg.max_size)}: {len(pinned)} objects "
                f"({format_size(sum(pinned.values()))}) are pinned by open passthrough files "
                "and cannot be evicted until they are closed",
            )

    def _collect(self) -> Iterator[Metric]:
        usage = self.index.usage()
        yield GaugeMetricFamily(
            "warpdrive_cache_size_bytes", "Bytes of blocks in the cache", value=usage.bytes
        )
        yield GaugeMetricFamily("warpdrive_cache_blocks", "Blocks in the cache", value=usage.blocks)
        pinned = self.index.pinned()
        yield GaugeMetricFamily(
            "warpdrive_cache_pinned_objects",
            "Cached objects pinned (open with FUSE passthrough in some process): never evicted",
            value=len(pinned),
        )
        yield GaugeMetricFamily(
            "warpdrive_cache_pinned_bytes",
            "Bytes of the pinned objects (the cache exceeds max_size only when these do)",
            value=sum(pinned.values()),
        )
        yield GaugeMetricFamily(
            "warpdrive_cache_utilization_ratio",
            "Cache size as a fraction of max_size",
            value=usage.bytes / self.cfg.max_size,
        )
        try:
            disk = os.statvfs(self.root)
        except OSError:
            pass  # the cache's file system is gone (unmounted under us): nothing to report
        else:
            yield GaugeMetricFamily(
                "warpdrive_cache_disk_bytes",
                "Size of the file system holding the cache",
                value=disk.f_blocks * disk.f_frsize,
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
