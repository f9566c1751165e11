"""The cache index in LMDB, shared by every process that uses one cache directory.

Sub-databases (schema 2):

``blocks``   block key (oid + index) → generation u64, size u32, last access ms u64, team id u32,
             chunk checksums (the generation is new for every write of a block: a reader that
             sees the same generation before and after reading saw the same bytes)
``lru``      last access ms (8 bytes, big-endian) + block key → ``b""``, oldest first
``objects``  oid → JSON {backend, key, etag, size, mtime, block_size, cached_at, confirmed_at}
             (``confirmed_at``: when a backend last showed this version, in a stat, a listing
             or the fetch that cached it; a record without one was confirmed at ``cached_at``)
``names``    backend NUL key → oid of the newest version cached
``counters`` name → u64 (hits, misses, evictions, … summed over every process)
``pins``     oid + holder token (8 bytes) → object size u64: the object is pinned by a live
             holder (a process that handed the kernel its cache file, FUSE passthrough; see
             :mod:`warpdrive.cache.pins`). No eviction — watermarks, quotas, a full disk,
             ``warpdrive-ctl evict``, a new version of the name — drops a block of an object a
             live holder pins; pins of dead holders are ignored and deleted where met
``usage``, ``teams``, ``quotas``: see :mod:`warpdrive.cache.accounts`

Rules: a block is indexed only after its bytes are in its object file, so the index never names
a partial block. Inserting a block and evicting happen in one write transaction: a team over its
hard quota first loses its own least recently used blocks, then the cache as a whole is brought
down to the low watermark once past the high one, so neither limit stays exceeded. The ranges of
evicted blocks are freed after commit (see :mod:`warpdrive.cache.store`). Inserting a block of a
new version of a name drops every block of the old version. LMDB serialises writers across
processes; readers never block. Commits skip fsync (``sync=False``): a crash of the process loses
nothing; a crash of the machine may lose the last commits (those blocks are fetched again), or
keep commits whose bytes the disk lost: every process verifies a block before it trusts it, so
those are found and fetched again.

Pins bend the size bound: eviction passes over pinned objects' blocks and frees others, so
the cache passes ``max_size`` only when the pinned bytes come within a block of it; it then
holds the pinned bytes and the block being inserted, nothing else (each eviction cut short by
pins is counted, ``pin_blocked`` in ``counters``). Only the checksum path
(:meth:`CacheIndex.remove`) and a lost file (``evict_objects(force=True)``) drop a pinned
object's blocks: their bytes are wrong or gone already. (``pins`` came without a schema
change, as it only adds: a WarpDrive older than it, sharing the cache, would not honour pins.)
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lmdb

from warpdrive.cache import lmdbenv
from warpdrive.cache.accounts import (
    ALL,
    PAIR,
    Accounts,
    Quota,
    Usage,
    team_backend_key,
    team_key,
)
from warpdrive.cache.keys import OID_LEN, ObjectVersion, split_block_key
from warpdrive.cache.lmdbenv import txn as _txn
from warpdrive.cache.pins import Holders
from warpdrive.perms import private_dir

SCHEMA = b"2"
QUOTA_TARGET = 0.95  # a team over its hard limit is brought down to this fraction of it
_REC = struct.Struct("<QIQI")  # generation, size, atime_ms, team id
_U64 = struct.Struct("<Q")
Dead = list[tuple[bytes, int, int]]  # (block key, offset, length) of ranges to free after commit

__all__ = ["BlockRecord", "CacheIndex", "ObjectRecord", "Quota", "Usage", "now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class BlockRecord:
    generation: int
    size: int
    atime_ms: int
    team_id: int
    sums: bytes


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    oid: bytes
    backend: str
    key: str
    etag: str
    size: int
    mtime: float
    block_size: int
    cached_at: float
    confirmed_at: float  # when a backend last showed this version (wall-clock seconds)


def _rec(value: bytes | memoryview) -> BlockRecord:
    generation, size, atime, team = _REC.unpack_from(value)
    return BlockRecord(generation, size, atime, team, bytes(value[_REC.size :]))


def _pack(rec: BlockRecord, atime_ms: int | None = None) -> bytes:
    atime = rec.atime_ms if atime_ms is None else atime_ms
    return _REC.pack(rec.generation, rec.size, atime, rec.team_id) + rec.sums


def _lru_key(atime_ms: int, bkey: bytes) -> bytes:
    return atime_ms.to_bytes(8, "big") + bkey


def _name_key(backend: str, key: str) -> bytes:
    return backend.encode() + b"\0" + key.encode("utf-8", "surrogatepass")


class CacheIndex:
    """One process's handle on the shared index. Thread-safe; open once per process."""

    def __init__(self, root: str, max_size: int, high_water: float, low_water: float) -> None:
        path = os.path.join(root, "index")
        private_dir(path)
        self.env, db = lmdbenv.acquire(path)
        self._path = path
        self.high_bytes = int(max_size * high_water)
        self.low_bytes = int(max_size * low_water)
        self.max_size = max_size
        self.blocks = db[b"blocks"]
        self.lru = db[b"lru"]
        self.objects = db[b"objects"]
        self.names = db[b"names"]
        self.counters_db = db[b"counters"]
        self.accounts = Accounts(db[b"usage"], db[b"teams"], db[b"quotas"])
        self.pins = db[b"pins"]
        self.holders = Holders(root)
        with _txn(self.env, write=True) as txn:
            schema = txn.get(b"schema", db=db[b"meta"])
            if schema is None:
                txn.put(b"schema", SCHEMA, db=db[b"meta"])
            elif schema != SCHEMA:
                lmdbenv.release(path)
                raise RuntimeError(
                    f"cache index {path!r} has schema {bytes(schema).decode()}, this WarpDrive "
                    f"needs {SCHEMA.decode()}: remove the cache directory to start afresh"
                )

    # -- reads (never block) ---------------------------------------------------------------

    def get(self, bkey: bytes) -> BlockRecord | None:
        with _txn(self.env, db=self.blocks) as txn:
            value = txn.get(bkey)
        return None if value is None else _rec(value)

    def get_many(self, bkeys: list[bytes]) -> list[BlockRecord | None]:
        """The records of several blocks, as of one moment."""
        with _txn(self.env, db=self.blocks) as txn:
            values = [txn.get(bkey) for bkey in bkeys]
        return [None if value is None else _rec(value) for value in values]

    def generations(self, bkeys: list[bytes]) -> list[int | None]:
        """Each block's generation (None: not cached), as of one moment."""
        with _txn(self.env, db=self.blocks) as txn:
            values = [txn.get(bkey) for bkey in bkeys]
        return [None if value is None else _U64.unpack_from(value)[0] for value in values]

    def contains(self, bkey: bytes) -> bool:
        with _txn(self.env, db=self.blocks) as txn:
            return txn.get(bkey) is not None

    def contains_many(self, bkeys: list[bytes]) -> list[bool]:
        """Whether each block is cached, as of one moment (one read transaction)."""
        with _txn(self.env, db=self.blocks) as txn:
            return [txn.get(bkey) is not None for bkey in bkeys]

    def usage(self, backend: str | None = None) -> Usage:
        key = ALL if backend is None else backend.encode()
        with _txn(self.env) as txn:
            return self.accounts.get(txn, key)

    def backend_usage(self) -> dict[str, Usage]:
        with _txn(self.env) as txn:
            rows = self.accounts.all(txn)
        return {k.decode(): v for k, v in rows.items() if not k.startswith(b"\0")}

    def team_usage(self, backend: str | None = None) -> dict[str, Usage]:
        """Cached bytes per team (on one backend, if given)."""
        with _txn(self.env) as txn:
            rows = self.accounts.all(txn)
        out = {}
        for key, usage in rows.items():
            if backend is None and key.startswith(b"\0t\0"):
                out[key[3:].decode()] = usage
            elif backend is not None and key.startswith(b"\0tb\0"):
                team, _, name = key[4:].decode().partition("\0")
                if name == backend:
                    out[team] = usage
        return out

    def counters(self) -> dict[str, int]:
        with _txn(self.env, db=self.counters_db) as txn:
            return {bytes(k).decode(): _U64.unpack(v)[0] for k, v in txn.cursor()}

    def object(self, oid: bytes) -> ObjectRecord | None:
        with _txn(self.env, db=self.objects) as txn:
            value = txn.get(oid)
        return None if value is None else _obj(oid, value)

    def newest(self, backend: str, key: str) -> ObjectRecord | None:
        """The newest version of ``key`` this cache holds blocks of (what some process saw)."""
        with _txn(self.env) as txn:
            oid = txn.get(_name_key(backend, key), db=self.names)
            value = None if oid is None else txn.get(bytes(oid), db=self.objects)
        return None if value is None or oid is None else _obj(bytes(oid), value)

    def iter_objects(self) -> Iterator[ObjectRecord]:
        for oid, value in self._scan(self.objects, b""):
            yield _obj(oid, value)

    def iter_names(self, backend: str, key_prefix: str = "") -> Iterator[ObjectRecord]:
        """Cached objects of ``backend`` whose key starts with ``key_prefix``, in key order."""
        prefix = _name_key(backend, key_prefix)
        for _, oid in self._scan(self.names, prefix):
            record = self.object(oid)
            if record is not None:
                yield record

    def cached_under(self, backend: str, prefix: str) -> bool:
        """Whether some cached object's key starts with ``prefix`` (``"dir/"``)."""
        name = _name_key(backend, prefix)
        with _txn(self.env, db=self.names) as txn:
            cursor = txn.cursor()
            return bool(cursor.set_range(name)) and bytes(cursor.key()).startswith(name)

    def children(
        self, backend: str, prefix: str, batch: int = 1024
    ) -> tuple[list[str], list[ObjectRecord]]:
        """One level of what the cache holds under ``prefix`` (``""`` or ending in ``/``), in
        key order: the names of the directories below it that hold cached objects, and the
        cached objects right in it. Skips over each directory's keys, reading none of them;
        ``batch`` names per transaction, so that no transaction stays open long."""
        base = _name_key(backend, prefix)
        dirs: list[str] = []
        objects: list[ObjectRecord] = []
        start, more = base, True
        while more:
            more = False
            with _txn(self.env) as txn:
                cursor = txn.cursor(db=self.names)
                found = cursor.set_range(start)
                for _ in range(batch):
                    name = bytes(cursor.key()) if found else b""
                    if not name.startswith(base):
                        break
                    rest = name[len(base) :]
                    slash = rest.find(b"/")
                    if slash >= 0:  # a directory: on past its keys ("0" follows "/")
                        dirs.append(rest[:slash].decode("utf-8", "surrogatepass"))
                        found = cursor.set_range(base + rest[:slash] + b"0")
                        continue
                    oid = bytes(cursor.value())
                    value = txn.get(oid, db=self.objects)
                    if value is not None:
                        objects.append(_obj(oid, value))
                    found = cursor.next()
                else:
                    more = found and bytes(cursor.key()).startswith(base)
                    if more:
                        start = bytes(cursor.key())
        return dirs, objects

    def iter_blocks(self, oid: bytes | None = None) -> Iterator[tuple[bytes, BlockRecord]]:
        """Every block record (of one object, when ``oid`` is given), in key order."""
        for key, value in self._scan(self.blocks, oid or b""):
            yield key, _rec(value)

    def _scan(self, db: Any, prefix: bytes, batch: int = 1024) -> Iterator[tuple[bytes, bytes]]:
        """Records whose key starts with ``prefix``, read ``batch`` at a time so that no
        transaction stays open while the caller works."""
        start = prefix
        while True:
            rows: list[tuple[bytes, bytes]] = []
            with _txn(self.env, db=db) as txn:
                cursor = txn.cursor()
                found = cursor.set_range(start) if start else cursor.first()
                while found and len(rows) < batch:
                    key = bytes(cursor.key())
                    if not key.startswith(prefix):
                        break
                    rows.append((key, bytes(cursor.value())))
                    found = cursor.next()
            yield from rows
            if len(rows) < batch:
                return
            start = rows[-1][0] + b"\0"

    # -- teams and quotas ------------------------------------------------------------------

    def team_name(self, team_id: int) -> str | None:
        with _txn(self.env) as txn:
            return self.accounts.team_name(txn, team_id)

    def user_team(self, user: str) -> str | None:
        with _txn(self.env) as txn:
            return self.accounts.user_team(txn, user)

    def user_teams(self) -> dict[str, str]:
        with _txn(self.env) as txn:
            return self.accounts.user_teams(txn)

    def set_user_team(self, user: str, team: str | None) -> None:
        with _txn(self.env, write=True) as txn:
            self.accounts.set_user_team(txn, user, team)

    def quotas(self) -> list[tuple[Quota, Usage]]:
        with _txn(self.env) as txn:
            return [(q, self.accounts.quota_usage(txn, q)) for q in self.accounts.quotas(txn)]

    def set_quota(self, quota: Quota) -> tuple[Dead, int]:
        """Store a quota; a team already over the new hard limit is evicted down at once."""
        dead: Dead = []
        with _txn(self.env, write=True) as txn:
            self.accounts.set_quota(txn, quota)
            evicted = self._enforce_quotas(txn, quota.team, quota.backend or None, dead, None)
        return dead, evicted

    def remove_quota(self, team: str, backend: str) -> bool:
        with _txn(self.env, write=True) as txn:
            return self.accounts.remove_quota(txn, team, backend)

    # -- writes ----------------------------------------------------------------------------

    def insert(
        self,
        obj: ObjectVersion,
        index: int,
        generation: int,
        size: int,
        sums: bytes,
        team: str | None = None,
    ) -> tuple[Dead, int]:
        """Index a block whose bytes are written, fetched on behalf of ``team``; then enforce
        the team's quotas and the cache's watermarks (see the module doc).

        Returns the ranges to free (blocks evicted, or of an old version of the object) and how
        many blocks were evicted. A block indexed already keeps its record (same bytes)."""
        bkey, atime = obj.block_key(index), now_ms()
        dead: Dead = []
        with _txn(self.env, write=True) as txn:
            if txn.get(obj.oid, db=self.objects) is None:
                self._add_object(txn, obj, dead)
            if txn.get(bkey, db=self.blocks) is not None:
                return dead, 0
            team_id = self.accounts.team_id(txn, team, create=True)
            txn.put(bkey, _REC.pack(generation, size, atime, team_id) + sums, db=self.blocks)
            txn.put(_lru_key(atime, bkey), b"", db=self.lru)
            total = self.accounts.add(txn, obj.backend, team, size, 1)
            evicted = 0
            if team:
                evicted += self._enforce_quotas(txn, team, obj.backend, dead, keep=bkey)
                total = self.accounts.get(txn, ALL).bytes
            if total > self.high_bytes:
                evicted += self._evict(txn, total - self.low_bytes, dead, keep=bkey)
        return dead, evicted

    def remove(self, bkey: bytes, generation: int | None = None) -> Dead:
        """Drop one block (for instance one that failed its checksum), if it is still of
        ``generation``."""
        dead: Dead = []
        with _txn(self.env, write=True) as txn:
            value = txn.get(bkey, db=self.blocks)
            if value is not None:
                rec = _rec(value)
                if generation is None or rec.generation == generation:
                    self._delete_block(txn, bkey, rec, self._owner(txn, bkey[:OID_LEN]), dead)
                    self._drop_object_if_empty(txn, bkey[:OID_LEN])
        return dead

    def evict(self, nbytes: int) -> tuple[Dead, int]:
        """Evict least recently used blocks worth at least ``nbytes`` (for a full disk)."""
        dead: Dead = []
        with _txn(self.env, write=True) as txn:
            evicted = self._evict(txn, nbytes, dead, keep=None)
        return dead, evicted

    def evict_objects(
        self, oids: list[bytes], force: bool = False
    ) -> tuple[Dead, int, list[bytes]]:
        """Drop every cached block of these objects (``warpdrive-ctl evict``, ``stale --evict``)
        but of those a live holder pins (unless ``force``: their file is gone anyway). Returns
        the ranges to free, how many blocks went, and the oids skipped as pinned."""
        dead: Dead = []
        skipped: list[bytes] = []
        with _txn(self.env, write=True) as txn:
            for oid in oids:
                value = txn.get(oid, db=self.objects)
                if value is None:
                    continue
                if not force and self._pinned(txn, oid, {}):
                    skipped.append(oid)
                    continue
                self._drop_object_blocks(txn, oid, dead)
                self._drop_object_if_empty(txn, oid)
            self._count_evictions(txn, len(dead))
        return dead, len(dead), skipped

    # -- pins (see the module doc and warpdrive.cache.pins) ----------------------------------

    def pin(self, obj: ObjectVersion, holder: bytes) -> bool:
        """Pin ``obj`` for ``holder`` if every block of it is cached (at its full length); else
        False, having written nothing. Once this returns True no eviction drops its blocks
        until :meth:`unpin`, and the blocks' records stay as they were read here."""
        with _txn(self.env, write=True) as txn:
            for index in range(obj.nblocks):
                value = txn.get(obj.block_key(index), db=self.blocks)
                if value is None or _REC.unpack_from(value)[1] != obj.block_len(index):
                    return False
            txn.put(obj.oid + holder, _U64.pack(obj.size), db=self.pins)
        return True

    def unpin(self, oid: bytes, holder: bytes) -> Dead:
        """Drop ``holder``'s pin of ``oid``. A version no longer the newest of its name (a new
        etag was cached while it was pinned) whom no live holder pins now goes, as it would
        have when the new version came. Returns the ranges to free."""
        return self.unpin_many([oid], holder)

    def unpin_many(self, oids: Iterable[bytes], holder: bytes) -> Dead:
        """:meth:`unpin` each of ``oids``, in one write."""
        dead: Dead = []
        alive: dict[bytes, bool] = {}  # holder → alive, asked once per write
        with _txn(self.env, write=True) as txn:
            for oid in oids:
                txn.delete(oid + holder, db=self.pins)
                value = txn.get(oid, db=self.objects)
                if value is None or self._pinned(txn, oid, alive):
                    continue
                record = _obj(oid, value)
                if txn.get(_name_key(record.backend, record.key), db=self.names) != oid:
                    gone: Dead = []
                    self._drop_object_blocks(txn, oid, gone)
                    self._drop_object_if_empty(txn, oid)
                    self._count_evictions(txn, len(gone))
                    dead += gone
        return dead

    def pinned(self) -> dict[bytes, int]:
        """The objects live holders pin, oid → size (dead holders' pins are left to eviction
        and reconcile to delete)."""
        out: dict[bytes, int] = {}
        alive: dict[bytes, bool] = {}
        for key, value in self._scan(self.pins, b""):
            token = key[OID_LEN:]
            if token not in alive:
                alive[token] = self.holders.alive(token)
            if alive[token]:
                out[key[:OID_LEN]] = _U64.unpack(value)[0]
        return out

    def touch(self, accesses: Mapping[bytes, int]) -> None:
        """Record last-access times (ms), batched; moves only by whole seconds."""
        if not accesses:
            return
        with _txn(self.env, write=True) as txn:
            for bkey, atime in accesses.items():
                value = txn.get(bkey, db=self.blocks)
                if value is None:
                    continue
                rec = _rec(value)
                if atime < rec.atime_ms + 1000:
                    continue
                txn.delete(_lru_key(rec.atime_ms, bkey), db=self.lru)
                txn.put(_lru_key(atime, bkey), b"", db=self.lru)
                txn.put(bkey, _pack(rec, atime), db=self.blocks)

    def confirm(self, seen: Mapping[tuple[str, str], tuple[str, float]], batch: int = 1024) -> int:
        """Record that a backend showed these versions, ``(backend, key) → (etag, when)``
        (wall-clock seconds): each cached one's ``confirmed_at`` moves forward. Most names a
        listing shows are not cached: they are looked up in read transactions (``batch`` at a
        time), and only records that change are written. How many changed."""
        items = list(seen.items())
        changes: list[tuple[bytes, str, float]] = []
        for first in range(0, len(items), batch):
            with _txn(self.env) as txn:
                for (backend, key), (etag, when) in items[first : first + batch]:
                    oid = txn.get(_name_key(backend, key), db=self.names)
                    value = None if oid is None else txn.get(oid, db=self.objects)
                    if oid is not None and value is not None and _newer(value, etag, when):
                        changes.append((bytes(oid), etag, when))
        changed = 0
        for first in range(0, len(changes), batch):
            with _txn(self.env, write=True, db=self.objects) as txn:
                for oid, etag, when in changes[first : first + batch]:
                    value = txn.get(oid)
                    if value is None or not _newer(value, etag, when):
                        continue  # evicted, or confirmed later by another process, meanwhile
                    record = json.loads(bytes(value))
                    record["confirmed_at"] = when
                    txn.put(oid, json.dumps(record).encode())
                    changed += 1
        return changed

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        deltas = {k: v for k, v in deltas.items() if v}
        if not deltas:
            return
        with _txn(self.env, write=True, db=self.counters_db) as txn:
            for name, delta in deltas.items():
                key = name.encode()
                value = txn.get(key)
                txn.put(key, _U64.pack((_U64.unpack(value)[0] if value else 0) + delta))

    def reconcile(self, files: Mapping[bytes, int]) -> tuple[int, set[bytes]]:
        """Make the index agree with the object files on disk (``oid → file size``).

        Drops records whose object has no file, or a file too short to hold them, drops LRU
        entries and objects left without blocks, and recounts usage. Returns how many records
        were dropped and the oids of every file the index still names."""
        dropped, keep = 0, set()
        totals: dict[bytes, list[int]] = {}
        with _txn(self.env, write=True) as txn:
            backends: dict[bytes, tuple[str, int]] = {}
            teams: dict[int, str | None] = {}
            cursor = txn.cursor(db=self.blocks)
            found = cursor.first()
            while found:
                bkey, rec = bytes(cursor.key()), _rec(cursor.value())
                oid, index = split_block_key(bkey)
                if oid not in backends:
                    backends[oid] = self._owner(txn, oid)
                end = index * backends[oid][1] + rec.size
                if files.get(oid, -1) < end:
                    txn.delete(_lru_key(rec.atime_ms, bkey), db=self.lru)
                    found = _delete(cursor)
                    dropped += 1
                    continue
                keep.add(oid)
                if rec.team_id not in teams:
                    teams[rec.team_id] = self.accounts.team_name(txn, rec.team_id)
                backend, team = backends[oid][0], teams[rec.team_id]
                keys = [ALL, backend.encode()]
                if team:
                    keys += [team_key(team), team_backend_key(team, backend)]
                for key in keys:
                    total = totals.setdefault(key, [0, 0])
                    total[0] += rec.size
                    total[1] += 1
                found = cursor.next()
            self._prune(txn)
            self._prune_pins(txn)
            txn.drop(self.accounts.usage_db, delete=False)
            for key, (nbytes, nblocks) in totals.items():
                txn.put(key, PAIR.pack(nbytes, nblocks), db=self.accounts.usage_db)
        return dropped, keep

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        lmdbenv.release(self._path)

    # -- helpers (caller holds the write transaction) --------------------------------------

    def _add_object(self, txn: lmdb.Transaction, obj: ObjectVersion, dead: Dead) -> None:
        name, now = _name_key(obj.backend, obj.key), time.time()
        previous = txn.get(name, db=self.names)
        # A pinned old version stays (the kernel reads its file) until its last unpin.
        if (
            previous is not None
            and previous != obj.oid
            and not self._pinned(txn, bytes(previous), {})
        ):
            self._drop_object_blocks(txn, bytes(previous), dead)
            txn.delete(previous, db=self.objects)
        record = {
            "backend": obj.backend,
            "key": obj.key,
            "etag": obj.etag,
            "size": obj.size,
            "mtime": obj.mtime,
            "block_size": obj.block_size,
            "cached_at": now,
            "confirmed_at": now,  # the fetch that caches it checks the version (If-Match)
        }
        txn.put(obj.oid, json.dumps(record).encode(), db=self.objects)
        txn.put(name, obj.oid, db=self.names)

    def _drop_object_blocks(self, txn: lmdb.Transaction, oid: bytes, dead: Dead) -> None:
        backend, block_size = self._owner(txn, oid)
        cursor = txn.cursor(db=self.blocks)
        found = cursor.set_range(oid)
        while found and bytes(cursor.key()).startswith(oid):
            bkey, rec = bytes(cursor.key()), _rec(cursor.value())
            txn.delete(_lru_key(rec.atime_ms, bkey), db=self.lru)
            team = self.accounts.team_name(txn, rec.team_id)
            self.accounts.add(txn, backend, team, -rec.size, -1)
            dead.append(_range(bkey, block_size, rec.size))
            found = _delete(cursor)

    def _delete_block(
        self,
        txn: lmdb.Transaction,
        bkey: bytes,
        rec: BlockRecord,
        owner: tuple[str, int],
        dead: Dead,
    ) -> None:
        txn.delete(bkey, db=self.blocks)
        txn.delete(_lru_key(rec.atime_ms, bkey), db=self.lru)
        team = self.accounts.team_name(txn, rec.team_id)
        self.accounts.add(txn, owner[0], team, -rec.size, -1)
        dead.append(_range(bkey, owner[1], rec.size))

    def _enforce_quotas(
        self, txn: lmdb.Transaction, team: str, backend: str | None, dead: Dead, keep: bytes | None
    ) -> int:
        """Evict ``team``'s own least recently used blocks while it is over a hard limit (its
        limit on ``backend``, then its limit on every backend)."""
        evicted = 0
        for scope in (backend, ""):
            if scope is None:
                continue
            quota = self.accounts.quota(txn, team, scope)
            if quota is None:
                continue
            used = self.accounts.quota_usage(txn, quota).bytes
            if used > quota.hard:
                target = used - int(quota.hard * QUOTA_TARGET)
                team_id = self.accounts.team_id(txn, team, create=False)
                evicted += self._evict(
                    txn, target, dead, keep, team_id=team_id, backend=scope or None
                )
        return evicted

    def _evict(
        self,
        txn: lmdb.Transaction,
        nbytes: int,
        dead: Dead,
        keep: bytes | None,
        team_id: int | None = None,
        backend: str | None = None,
    ) -> int:
        """Evict least recently used blocks (of one team, on one backend, when given) until
        ``nbytes`` are freed."""
        freed = count = pinned_bytes = 0
        touched: set[bytes] = set()
        pinned: dict[bytes, bool] = {}  # oid → pinned by a live holder (asked once per oid)
        alive: dict[bytes, bool] = {}
        cursor = txn.cursor(db=self.lru)
        found = cursor.first()
        while found and freed < nbytes:
            bkey = bytes(cursor.key())[8:]
            value = txn.get(bkey, db=self.blocks)
            if value is None:
                found = _delete(cursor)
                continue
            rec = _rec(value)
            if bkey == keep or (team_id is not None and rec.team_id != team_id):
                found = cursor.next()
                continue
            owner, block_size = self._owner(txn, bkey[:OID_LEN])
            if backend is not None and owner != backend:
                found = cursor.next()
                continue
            oid = bkey[:OID_LEN]
            if oid not in pinned:
                pinned[oid] = self._pinned(txn, oid, alive)
            if pinned[oid]:
                pinned_bytes += rec.size
                found = cursor.next()
                continue
            txn.delete(bkey, db=self.blocks)
            found = _delete(cursor)
            team = self.accounts.team_name(txn, rec.team_id)
            self.accounts.add(txn, owner, team, -rec.size, -1)
            dead.append(_range(bkey, block_size, rec.size))
            touched.add(bkey[:OID_LEN])
            freed += rec.size
            count += 1
        for oid in touched:
            self._drop_object_if_empty(txn, oid)
        self._count_evictions(txn, count)
        if freed < nbytes and pinned_bytes:
            self._count(txn, b"pin_blocked", 1)
        return count

    def _pinned(self, txn: lmdb.Transaction, oid: bytes, alive: dict[bytes, bool]) -> bool:
        """Whether a live holder pins ``oid`` (``alive``: holders asked about already, by
        token); pins of dead holders met on the way are deleted (write transactions only)."""
        cursor = txn.cursor(db=self.pins)
        found = cursor.set_range(oid)
        while found and bytes(cursor.key()).startswith(oid):
            token = bytes(cursor.key())[OID_LEN:]
            if token not in alive:
                alive[token] = self.holders.alive(token)
            if alive[token]:
                return True
            found = _delete(cursor)  # a dead holder's: stale
            self.holders.forget(token)
        return False

    def _count_evictions(self, txn: lmdb.Transaction, count: int) -> None:
        self._count(txn, b"evictions", count)

    def _count(self, txn: lmdb.Transaction, name: bytes, delta: int) -> None:
        if delta:
            value = txn.get(name, db=self.counters_db)
            total = (_U64.unpack(value)[0] if value else 0) + delta
            txn.put(name, _U64.pack(total), db=self.counters_db)

    def _drop_object_if_empty(self, txn: lmdb.Transaction, oid: bytes) -> None:
        cursor = txn.cursor(db=self.blocks)
        if cursor.set_range(oid) and bytes(cursor.key()).startswith(oid):
            return
        value = txn.get(oid, db=self.objects)
        if value is None:
            return
        record = _obj(oid, value)
        name = _name_key(record.backend, record.key)
        if txn.get(name, db=self.names) == oid:
            txn.delete(name, db=self.names)
        txn.delete(oid, db=self.objects)

    def _prune(self, txn: lmdb.Transaction) -> None:
        """Drop LRU entries, objects and names that point at nothing."""
        cursor = txn.cursor(db=self.lru)
        found = cursor.first()
        while found:
            if txn.get(bytes(cursor.key())[8:], db=self.blocks) is None:
                found = _delete(cursor)
            else:
                found = cursor.next()
        oids = [bytes(k) for k, _ in txn.cursor(db=self.objects)]
        for oid in oids:
            self._drop_object_if_empty(txn, oid)
        names = txn.cursor(db=self.names)
        found = names.first()
        while found:
            if txn.get(names.value(), db=self.objects) is None:
                found = _delete(names)
            else:
                found = names.next()

    def _prune_pins(self, txn: lmdb.Transaction) -> None:
        """Drop pins of dead holders or of objects no longer cached."""
        alive: dict[bytes, bool] = {}
        cursor = txn.cursor(db=self.pins)
        found = cursor.first()
        while found:
            key = bytes(cursor.key())
            token = key[OID_LEN:]
            if token not in alive:
                alive[token] = self.holders.alive(token)
            if alive[token] and txn.get(key[:OID_LEN], db=self.objects) is not None:
                found = cursor.next()
            else:
                found = _delete(cursor)

    def _owner(self, txn: lmdb.Transaction, oid: bytes) -> tuple[str, int]:
        """(backend, block size) of a cached object."""
        value = txn.get(oid, db=self.objects)
        if value is None:
            return "", 0
        record = json.loads(bytes(value))
        return str(record["backend"]), int(record["block_size"])


def _range(bkey: bytes, block_size: int, size: int) -> tuple[bytes, int, int]:
    """(block key, offset, length) of a block in its object file."""
    return bkey, split_block_key(bkey)[1] * block_size, size


def _delete(cursor: lmdb.Cursor) -> bool:
    """Delete the current record; True while the cursor still points at one (LMDB reports
    success with an unpositioned cursor after deleting the last record)."""
    return bool(cursor.delete() and cursor.key())


def _newer(value: bytes | memoryview, etag: str, when: float) -> bool:
    """Whether an object record is of version ``etag`` and was confirmed before ``when``."""
    d = json.loads(bytes(value))
    return bool(d["etag"] == etag and d.get("confirmed_at", d["cached_at"]) < when)


def _obj(oid: bytes, value: bytes | memoryview) -> ObjectRecord:
    d = json.loads(bytes(value))
    return ObjectRecord(
        oid,
        d["backend"],
        d["key"],
        d["etag"],
        d["size"],
        d["mtime"],
        d["block_size"],
        d["cached_at"],
        d.get("confirmed_at", d["cached_at"]),
    )
