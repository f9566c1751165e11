"""The cache index in LMDB, shared by every process that uses one cache directory.

Sub-databases (schema v1):

``blocks``   block key (oid + index) → nonce u64, size u32, last access ms u64, chunk checksums
``lru``      last access ms (8 bytes, big-endian) + block key → ``b""``, oldest first
``objects``  oid → JSON {backend, key, etag, size, mtime, block_size, cached_at}
``names``    backend NUL key → oid of the newest version cached
``usage``    ``b"\\0all"`` or a backend name → bytes u64, blocks u64
``counters`` name → u64 (hits, misses, evictions, … summed over every process)

Rules: a block is indexed only after its file is complete and renamed into place, so the index
never names a partial block. Inserting a block and evicting down to the low watermark happen in
one write transaction, so the indexed total never stays above the high watermark; the files of
evicted blocks are unlinked after commit. Inserting a block of a new version of a name drops
every block of the old version. LMDB serialises writers across processes; readers never block.
Commits skip fsync (``sync=False``): a crash of the process loses nothing, a crash of the machine
may lose the last commits, which reconciliation at the next start turns into orphan files.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lmdb

from warpdrive.cache.keys import OID_LEN, ObjectVersion

SCHEMA = b"1"
MAP_SIZE = 1 << 36  # address space, not disk: LMDB's file grows only as it is used
_REC = struct.Struct("<QIQ")  # nonce, size, atime_ms
_PAIR = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
_ALL = b"\0all"  # usage of the whole cache (backend names cannot contain NUL)
# LMDB allows one Environment per file per process: instances share it, counted.
#
# fork() (DataLoader workers) needs care: the child may not use the parent's handles, and it
# cannot open the files again while they are registered as open. So every transaction runs under
# _fork_lock, which fork() takes first: no transaction is ever open at the moment of a fork, and
# the child can then close the inherited handles safely (closing touches only its own copies)
# and open its own.
_DB_NAMES = (b"blocks", b"lru", b"objects", b"names", b"usage", b"counters", b"meta")
_envs: dict[str, tuple[lmdb.Environment, int]] = {}
_dbs: dict[str, dict[bytes, Any]] = {}  # sub-database handles of each open environment
_envs_lock = threading.Lock()
_fork_lock = threading.RLock()


def _acquire_env(path: str) -> lmdb.Environment:
    real = os.path.realpath(path)
    with _envs_lock:
        env, users = _envs.get(real, (None, 0))
        if env is None:
            env = lmdb.open(
                real,
                map_size=MAP_SIZE,
                max_dbs=8,
                max_readers=4096,
                sync=False,
                metasync=False,
                readahead=False,
                meminit=False,
            )
            # Opened once, inside our own write transaction: open_db() alone would wait for
            # LMDB's writer lock while holding the GIL, which another thread's writer needs.
            with _txn(env, write=True) as txn:
                _dbs[real] = {name: env.open_db(name, txn=txn) for name in _DB_NAMES}
        _envs[real] = (env, users + 1)
        return env


def _release_env(real: str) -> None:
    with _envs_lock:
        if real not in _envs:
            return
        env, users = _envs[real]
        if users > 1:
            _envs[real] = (env, users - 1)
        else:
            del _envs[real]
            _dbs.pop(real, None)
            with _fork_lock:
                env.close()


def _before_fork() -> None:
    _envs_lock.acquire()
    _fork_lock.acquire()


def _after_fork_in_parent() -> None:
    _fork_lock.release()
    _envs_lock.release()


def _after_fork_in_child() -> None:
    global _envs, _envs_lock, _fork_lock, _dbs
    inherited, _envs, _dbs = _envs, {}, {}
    _envs_lock, _fork_lock = threading.Lock(), threading.RLock()
    for env, _ in inherited.values():
        env.close()  # no transaction was open at fork time (see above)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


@contextmanager
def _txn(env: lmdb.Environment, write: bool = False, db: Any = None) -> Iterator[lmdb.Transaction]:
    with _fork_lock, env.begin(write=write, db=db) as txn:
        yield txn


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class BlockRecord:
    nonce: int
    size: int
    atime_ms: int
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


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    blocks: int


def _rec(value: bytes | memoryview) -> BlockRecord:
    nonce, size, atime = _REC.unpack_from(value)
    return BlockRecord(nonce, size, atime, bytes(value[_REC.size :]))


def _lru_key(atime_ms: int, bkey: bytes) -> bytes:
    return atime_ms.to_bytes(8, "big") + bkey


def _name_key(backend: str, key: str) -> bytes:
    return backend.encode() + b"\0" + key.encode("utf-8", "surrogatepass")


class CacheIndex:
    """One process's handle on the shared index. Thread-safe; open once per process."""

    def __init__(self, root: str, max_size: int, high_water: float, low_water: float) -> None:
        path = os.path.join(root, "index")
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.env = _acquire_env(path)
        self._path = os.path.realpath(path)
        self.high_bytes = int(max_size * high_water)
        self.low_bytes = int(max_size * low_water)
        self.max_size = max_size
        db = _dbs[self._path]
        self.blocks = db[b"blocks"]
        self.lru = db[b"lru"]
        self.objects = db[b"objects"]
        self.names = db[b"names"]
        self.usage_db = db[b"usage"]
        self.counters_db = db[b"counters"]
        meta = db[b"meta"]
        with _txn(self.env, write=True) as txn:
            schema = txn.get(b"schema", db=meta)
            if schema is None:
                txn.put(b"schema", SCHEMA, db=meta)
            elif schema != SCHEMA:
                raise RuntimeError(
                    f"cache index {path!r} has schema {schema!r}, expected {SCHEMA!r}"
                )

    # -- reads (never block) ---------------------------------------------------------------

    def get(self, bkey: bytes) -> BlockRecord | None:
        with _txn(self.env, db=self.blocks) as txn:
            value = txn.get(bkey)
        return None if value is None else _rec(value)

    def contains(self, bkey: bytes) -> bool:
        with _txn(self.env, db=self.blocks) as txn:
            return txn.get(bkey) is not None

    def usage(self, backend: str | None = None) -> Usage:
        key = _ALL if backend is None else backend.encode()
        with _txn(self.env, db=self.usage_db) as txn:
            value = txn.get(key)
        return Usage(*_PAIR.unpack(value)) if value else Usage(0, 0)

    def backend_usage(self) -> dict[str, Usage]:
        with _txn(self.env, db=self.usage_db) as txn:
            return {
                bytes(k).decode(): Usage(*_PAIR.unpack(v)) for k, v in txn.cursor() if k != _ALL
            }

    def counters(self) -> dict[str, int]:
        with _txn(self.env, db=self.counters_db) as txn:
            return {bytes(k).decode(): _U64.unpack(v)[0] for k, v in txn.cursor()}

    def object(self, oid: bytes) -> ObjectRecord | None:
        with _txn(self.env, db=self.objects) as txn:
            value = txn.get(oid)
        return None if value is None else _obj(oid, value)

    def iter_objects(self) -> Iterator[ObjectRecord]:
        for oid, value in self._scan(self.objects, b""):
            yield _obj(oid, value)

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

    # -- writes ----------------------------------------------------------------------------

    def insert(
        self, obj: ObjectVersion, index: int, nonce: int, size: int, sums: bytes
    ) -> tuple[list[tuple[bytes, int]], int]:
        """Index a complete block file; evict to the low watermark if past the high one.

        Returns the (block key, nonce) of files to unlink (evicted, replaced, or of an old
        version of the object) and how many blocks were evicted."""
        bkey, atime = obj.block_key(index), now_ms()
        dead: list[tuple[bytes, int]] = []
        with _txn(self.env, write=True) as txn:
            if txn.get(obj.oid, db=self.objects) is None:
                self._add_object(txn, obj, dead)
            old = txn.get(bkey, db=self.blocks)
            if old is not None:
                self._delete_block(txn, bkey, _rec(old), obj.backend, dead)
            txn.put(bkey, _REC.pack(nonce, size, atime) + sums, db=self.blocks)
            txn.put(_lru_key(atime, bkey), b"", db=self.lru)
            total = self._add_usage(txn, obj.backend, size, 1)
            evicted = 0
            if total > self.high_bytes:
                evicted = self._evict(txn, total - self.low_bytes, dead, keep=bkey)
        return dead, evicted

    def remove(self, bkey: bytes, nonce: int | None = None) -> list[tuple[bytes, int]]:
        """Drop one block (for instance one whose file failed its checksum)."""
        dead: list[tuple[bytes, int]] = []
        with _txn(self.env, write=True) as txn:
            value = txn.get(bkey, db=self.blocks)
            if value is not None:
                rec = _rec(value)
                if nonce is None or rec.nonce == nonce:
                    self._delete_block(txn, bkey, rec, self._backend_of(txn, bkey), dead)
                    self._drop_object_if_empty(txn, bkey[:OID_LEN])
        return dead

    def evict(self, nbytes: int) -> tuple[list[tuple[bytes, int]], int]:
        """Evict least recently used blocks worth at least ``nbytes`` (for a full disk)."""
        dead: list[tuple[bytes, int]] = []
        with _txn(self.env, write=True) as txn:
            evicted = self._evict(txn, nbytes, dead, keep=None)
        return dead, evicted

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
                txn.put(bkey, _REC.pack(rec.nonce, rec.size, atime) + rec.sums, db=self.blocks)

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        deltas = {k: v for k, v in deltas.items() if v}
        if not deltas:
            return
        with _txn(self.env, write=True, db=self.counters_db) as txn:
            for name, delta in deltas.items():
                key = name.encode()
                value = txn.get(key)
                txn.put(key, _U64.pack((_U64.unpack(value)[0] if value else 0) + delta))

    def reconcile(
        self, files: Mapping[bytes, Mapping[int, int]]
    ) -> tuple[int, set[tuple[bytes, int]]]:
        """Make the index agree with the block files on disk (``bkey → {nonce: size}``).

        Drops records whose file is missing or of another size, drops LRU entries and objects
        left without blocks, and recounts usage. Returns how many records were dropped and the
        (bkey, nonce) of every file the index still names."""
        dropped, keep = 0, set()
        per_backend: dict[bytes, list[int]] = {}
        with _txn(self.env, write=True) as txn:
            backends: dict[bytes, bytes] = {}
            cursor = txn.cursor(db=self.blocks)
            found = cursor.first()
            while found:
                bkey, rec = bytes(cursor.key()), _rec(cursor.value())
                if files.get(bkey, {}).get(rec.nonce) != rec.size:
                    txn.delete(_lru_key(rec.atime_ms, bkey), db=self.lru)
                    found = _delete(cursor)
                    dropped += 1
                    continue
                keep.add((bkey, rec.nonce))
                oid = bkey[:OID_LEN]
                if oid not in backends:
                    backends[oid] = self._backend_of(txn, bkey).encode()
                totals = per_backend.setdefault(backends[oid], [0, 0])
                totals[0] += rec.size
                totals[1] += 1
                found = cursor.next()
            self._prune(txn)
            txn.drop(self.usage_db, delete=False)
            all_bytes = sum(t[0] for t in per_backend.values())
            all_blocks = sum(t[1] for t in per_backend.values())
            txn.put(_ALL, _PAIR.pack(all_bytes, all_blocks), db=self.usage_db)
            for name, (nbytes, nblocks) in per_backend.items():
                txn.put(name, _PAIR.pack(nbytes, nblocks), db=self.usage_db)
        return dropped, keep

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        _release_env(self._path)

    # -- helpers (caller holds the write transaction) --------------------------------------

    def _add_object(
        self, txn: lmdb.Transaction, obj: ObjectVersion, dead: list[tuple[bytes, int]]
    ) -> None:
        name = _name_key(obj.backend, obj.key)
        previous = txn.get(name, db=self.names)
        if previous is not None and previous != obj.oid:
            self._drop_object_blocks(txn, bytes(previous), obj.backend, dead)
            txn.delete(previous, db=self.objects)
        record = {
            "backend": obj.backend,
            "key": obj.key,
            "etag": obj.etag,
            "size": obj.size,
            "mtime": obj.mtime,
            "block_size": obj.block_size,
            "cached_at": time.time(),
        }
        txn.put(obj.oid, json.dumps(record).encode(), db=self.objects)
        txn.put(name, obj.oid, db=self.names)

    def _drop_object_blocks(
        self, txn: lmdb.Transaction, oid: bytes, backend: str, dead: list[tuple[bytes, int]]
    ) -> None:
        cursor = txn.cursor(db=self.blocks)
        found = cursor.set_range(oid)
        while found and bytes(cursor.key()).startswith(oid):
            bkey, rec = bytes(cursor.key()), _rec(cursor.value())
            txn.delete(_lru_key(rec.atime_ms, bkey), db=self.lru)
            self._add_usage(txn, backend, -rec.size, -1)
            dead.append((bkey, rec.nonce))
            found = _delete(cursor)

    def _delete_block(
        self,
        txn: lmdb.Transaction,
        bkey: bytes,
        rec: BlockRecord,
        backend: str,
        dead: list[tuple[bytes, int]],
    ) -> None:
        txn.delete(bkey, db=self.blocks)
        txn.delete(_lru_key(rec.atime_ms, bkey), db=self.lru)
        self._add_usage(txn, backend, -rec.size, -1)
        dead.append((bkey, rec.nonce))

    def _evict(
        self, txn: lmdb.Transaction, nbytes: int, dead: list[tuple[bytes, int]], keep: bytes | None
    ) -> int:
        freed = count = 0
        touched: set[bytes] = set()
        cursor = txn.cursor(db=self.lru)
        found = cursor.first()
        while found and freed < nbytes:
            bkey = bytes(cursor.key())[8:]
            value = txn.get(bkey, db=self.blocks)
            if value is None or bkey == keep:
                found = _delete(cursor) if value is None else cursor.next()
                continue
            rec = _rec(value)
            txn.delete(bkey, db=self.blocks)
            found = _delete(cursor)
            self._add_usage(txn, self._backend_of(txn, bkey), -rec.size, -1)
            dead.append((bkey, rec.nonce))
            touched.add(bkey[:OID_LEN])
            freed += rec.size
            count += 1
        for oid in touched:
            self._drop_object_if_empty(txn, oid)
        if count:
            key = b"evictions"
            value = txn.get(key, db=self.counters_db)
            txn.put(
                key, _U64.pack((_U64.unpack(value)[0] if value else 0) + count), db=self.counters_db
            )
        return count

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

    def _backend_of(self, txn: lmdb.Transaction, bkey: bytes) -> str:
        value = txn.get(bkey[:OID_LEN], db=self.objects)
        return str(json.loads(bytes(value))["backend"]) if value is not None else ""

    def _add_usage(self, txn: lmdb.Transaction, backend: str, nbytes: int, nblocks: int) -> int:
        total = 0
        for key in (_ALL, backend.encode()) if backend else (_ALL,):
            value = txn.get(key, db=self.usage_db)
            b, n = _PAIR.unpack(value) if value else (0, 0)
            b, n = max(0, b + nbytes), max(0, n + nblocks)
            txn.put(key, _PAIR.pack(b, n), db=self.usage_db)
            if key == _ALL:
                total = b
        return total


def _delete(cursor: lmdb.Cursor) -> bool:
    """Delete the current record; True while the cursor still points at one (LMDB reports
    success with an unpositioned cursor after deleting the last record)."""
    return bool(cursor.delete() and cursor.key())


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
    )
