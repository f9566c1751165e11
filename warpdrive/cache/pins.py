"""Who pins cached objects: pin holders (one per process and cache), alive while they hold a lock.

A process that hands the kernel an object's cache file (FUSE passthrough) pins the object: its
blocks must not be evicted while the kernel may read them, whichever process evicts. Pins live
in the index (``pins``: oid + holder token → object size, see :mod:`warpdrive.cache.index`), so
every process's eviction sees them; this module says which holders are still alive.

A holder is a random 8-byte token per process and cache directory, with a lock file
``<root>/pins/<token hex>`` on which the process holds a POSIX record lock (``F_SETLK``) for as
long as it lives. POSIX record locks are per process: the kernel drops them when the process
dies, however it dies (``kill -9`` included), a ``fork()`` child does not inherit them, and
another process sees them (``F_GETLK``) whatever its pid namespace, with no pid to be reused.
So a pin whose holder's lock is gone is stale: eviction ignores it and deletes it where it
meets it, and the process that reconciles a cache it is alone on removes every stale one
(:meth:`Holders.sweep`). Caveat of POSIX locks: closing *any* descriptor of the lock file in
the holder's process drops its lock, so only this module opens it, once, and never closes it
(an ``F_GETLK`` asked by the holder itself would not see its own lock: :meth:`Holders.alive`
answers for this process's own token without asking).

Per process, pins of one object are counted here (every handle of every ``BlockCache`` in the
process): only the first pin and the last unpin of an object write to the index.

Lock: ``_lock`` (process-wide) guards ``_mine`` and the counts; the caller holds it (through
:meth:`Holders.lock`) across a first pin's or a last unpin's index write, so the two never
interleave for one object.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import struct
import threading

from warpdrive.perms import private_dir

TOKEN_LEN = 8
_FLOCK = struct.Struct("hhxxxxqqixxxx")  # struct flock (64-bit Linux)

_lock = threading.RLock()
# lock-file directory → (pid, token, lock fd, pin counts per oid) of this process
_mine: dict[str, tuple[int, bytes, int, dict[bytes, int]]] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    _mine.clear()  # the parent's locks are not ours (POSIX locks are not inherited)


os.register_at_fork(after_in_child=_after_fork_in_child)


class Holders:
    """The pin holders of one cache (``<root>/pins``). Thread-safe; cheap to make."""

    def __init__(self, root: str) -> None:
        # One name per directory, however it is spelt: two names would make two tokens in one
        # process, and a process never sees its own POSIX locks (see ``alive``).
        self.dir = os.path.realpath(os.path.join(root, "pins"))

    @property
    def lock(self) -> threading.RLock:
        """Held across a first pin's or a last unpin's index write (see the module doc)."""
        return _lock

    def me(self) -> bytes:
        """This process's token, its lock file made and locked at the first call."""
        with _lock:
            mine = _mine.get(self.dir)
            if mine is not None and mine[0] == os.getpid():
                return mine[1]
            private_dir(self.dir)
            token = secrets.token_bytes(TOKEN_LEN)
            fd = os.open(self._path(token), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else locks it
            _mine[self.dir] = (os.getpid(), token, fd, {})
            return token

    def alive(self, token: bytes) -> bool:
        """Whether the holder ``token`` still lives (holds its lock)."""
        pid = os.getpid()
        if any(m[1] == token and m[0] == pid for m in _mine.values()):
            return True  # ours: F_GETLK would not show our own lock
        try:
            fd = os.open(self._path(token), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            query = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
            kind = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
        except OSError:
            return True  # cannot tell: keep the pin (eviction skips it; reconcile looks again)
        finally:
            os.close(fd)
        return bool(kind != fcntl.F_UNLCK)

    def forget(self, token: bytes) -> None:
        """Remove a dead holder's lock file (its pins are gone from the index)."""
        if not self.alive(token):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(token))

    def sweep(self) -> int:
        """Remove the lock files of dead holders; how many."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return 0
        removed = 0
        for name in names:
            try:
                token = bytes.fromhex(name)
            except ValueError:
                continue
            if len(token) == TOKEN_LEN and not self.alive(token):
                self.forget(token)
                removed += 1
        return removed

    # -- this process's counts (the caller holds ``lock``) ---------------------------------

    def count(self, oid: bytes) -> int:
        mine = _mine.get(self.dir)
        if mine is None or mine[0] != os.getpid():
            return 0
        return mine[3].get(oid, 0)

    def add(self, oid: bytes, delta: int) -> int:
        """Change this process's pin count of ``oid``; the new count."""
        counts = _mine[self.dir][3]
        n = counts.get(oid, 0) + delta
        if n > 0:
            counts[oid] = n
        else:
            counts.pop(oid, None)
        return n

    def _path(self, token: bytes) -> str:
        return os.path.join(self.dir, token.hex())
