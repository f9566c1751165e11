"""LMDB environments: one per cache directory per process, fork-safe, deadlock-free.

LMDB allows one Environment per file per process, so instances share it (counted).

fork() (DataLoader workers) needs care: the child may not use the parent's handles, and it cannot
open the files again while they are registered as open. So every transaction runs under
``_fork_lock``, which fork() takes first: no transaction is ever open at the moment of a fork, and
the child can then close the inherited handles safely (closing touches only its own copies) and
open its own.

The same lock serialises this process's transactions, so no thread ever waits for LMDB's writer
lock while holding the GIL that the writer needs. Sub-databases are opened once, inside our own
write transaction, for the same reason (``open_db`` alone would wait for the writer lock holding
the GIL).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lmdb

MAP_SIZE = 1 << 36  # address space, not disk: LMDB's file grows only as it is used
DB_NAMES = (
    b"blocks",
    b"lru",
    b"objects",
    b"names",
    b"usage",
    b"counters",
    b"meta",
    b"teams",
    b"quotas",
    b"pins",
)

_envs: dict[str, tuple[lmdb.Environment, int]] = {}
_dbs: dict[str, dict[bytes, Any]] = {}  # sub-database handles of each open environment
_envs_lock = threading.Lock()
_fork_lock = threading.RLock()


def acquire(path: str) -> tuple[lmdb.Environment, dict[bytes, Any]]:
    """The environment at ``path`` (created if needed) and its sub-databases, counted."""
    real = os.path.realpath(path)
    with _envs_lock:
        env, users = _envs.get(real, (None, 0))
        if env is None:
            env = lmdb.open(
                real,
                map_size=MAP_SIZE,
                max_dbs=len(DB_NAMES) + 2,
                max_readers=4096,
                sync=False,
                metasync=False,
                readahead=False,
                meminit=False,
                mode=0o600,  # the index names every cached object: private, like the blocks
            )
            try:
                with txn(env, write=True) as t:
                    _dbs[real] = {name: env.open_db(name, txn=t) for name in DB_NAMES}
            except lmdb.Error:
                env.close()  # a damaged file: let the caller open the path again afresh
                raise
        _envs[real] = (env, users + 1)
        return env, _dbs[real]


def release(path: str) -> None:
    real = os.path.realpath(path)
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


@contextmanager
def txn(env: lmdb.Environment, write: bool = False, db: Any = None) -> Iterator[lmdb.Transaction]:
    """A transaction, under this process's transaction lock (see the module doc)."""
    with _fork_lock, env.begin(write=write, db=db) as t:
        yield t


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
