"""Who the cache's bytes belong to: usage per cache, backend and team; teams; quotas.

Keys (all inside the index's LMDB environment, so every process sees the same numbers):

``usage``   ``\\0all`` → bytes, blocks of the whole cache; ``<backend>`` → of one backend;
            ``\\0t\\0<team>`` → of one team; ``\\0tb\\0<team>\\0<backend>`` → of a team on a backend
``teams``   ``n\\0<team>`` → team id (u32); ``i\\0<id>`` → team name; ``u\\0<user>`` → team name
            (set with ``warpdrive-ctl team add``); ``\\0next`` → the next free id
``quotas``  ``<team>\\0<backend or empty>`` → soft, hard (bytes)

Team ids keep block records small; id 0 means "no team". Every function here runs inside the
caller's write or read transaction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import lmdb

PAIR = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
ALL = b"\0all"
NO_TEAM = 0


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    blocks: int


@dataclass(frozen=True, slots=True)
class Quota:
    team: str
    backend: str  # "" for every backend
    soft: int
    hard: int


def quota_status(quota: Quota, usage: Usage) -> str:
    """OK, WARNING (over the soft limit) or EXCEEDED (over the hard one)."""
    if usage.bytes > quota.hard:
        return "EXCEEDED"
    if usage.bytes > quota.soft:
        return "WARNING"
    return "OK"


def team_key(team: str) -> bytes:
    return b"\0t\0" + team.encode()


def team_backend_key(team: str, backend: str) -> bytes:
    return b"\0tb\0" + team.encode() + b"\0" + backend.encode()


def quota_key(team: str, backend: str) -> bytes:
    return team.encode() + b"\0" + backend.encode()


class Accounts:
    """The usage, teams and quotas sub-databases of one index."""

    def __init__(self, usage: Any, teams: Any, quotas: Any) -> None:
        self.usage_db = usage
        self.teams_db = teams
        self.quotas_db = quotas

    # -- usage -----------------------------------------------------------------------------

    def get(self, txn: lmdb.Transaction, key: bytes) -> Usage:
        value = txn.get(key, db=self.usage_db)
        return Usage(*PAIR.unpack(value)) if value else Usage(0, 0)

    def add(
        self, txn: lmdb.Transaction, backend: str, team: str | None, nbytes: int, nblocks: int
    ) -> int:
        """Count ``nbytes``/``nblocks`` (negative to remove) everywhere they belong; returns
        the whole cache's new total bytes."""
        keys = [ALL]
        if backend:
            keys.append(backend.encode())
        if team:
            keys.append(team_key(team))
            if backend:
                keys.append(team_backend_key(team, backend))
        total = 0
        for key in keys:
            b, n = self.get(txn, key).bytes + nbytes, self.get(txn, key).blocks + nblocks
            txn.put(key, PAIR.pack(max(0, b), max(0, n)), db=self.usage_db)
            if key == ALL:
                total = max(0, b)
        return total

    def all(self, txn: lmdb.Transaction) -> dict[bytes, Usage]:
        return {bytes(k): Usage(*PAIR.unpack(v)) for k, v in txn.cursor(db=self.usage_db)}

    # -- teams -----------------------------------------------------------------------------

    def team_id(self, txn: lmdb.Transaction, team: str | None, create: bool) -> int:
        if not team:
            return NO_TEAM
        value = txn.get(b"n\0" + team.encode(), db=self.teams_db)
        if value is not None:
            return int(_U32.unpack(value)[0])
        if not create:
            return NO_TEAM
        nxt = txn.get(b"\0next", db=self.teams_db)
        ident = _U32.unpack(nxt)[0] if nxt else 1
        txn.put(b"\0next", _U32.pack(ident + 1), db=self.teams_db)
        txn.put(b"n\0" + team.encode(), _U32.pack(ident), db=self.teams_db)
        txn.put(b"i\0" + _U32.pack(ident), team.encode(), db=self.teams_db)
        return int(ident)

    def team_name(self, txn: lmdb.Transaction, ident: int) -> str | None:
        if ident == NO_TEAM:
            return None
        value = txn.get(b"i\0" + _U32.pack(ident), db=self.teams_db)
        return bytes(value).decode() if value is not None else None

    def user_team(self, txn: lmdb.Transaction, user: str) -> str | None:
        value = txn.get(b"u\0" + user.encode(), db=self.teams_db)
        return bytes(value).decode() if value is not None else None

    def set_user_team(self, txn: lmdb.Transaction, user: str, team: str | None) -> None:
        key = b"u\0" + user.encode()
        if team:
            txn.put(key, team.encode(), db=self.teams_db)
        else:
            txn.delete(key, db=self.teams_db)

    def user_teams(self, txn: lmdb.Transaction) -> dict[str, str]:
        cursor = txn.cursor(db=self.teams_db)
        out: dict[str, str] = {}
        found = cursor.set_range(b"u\0")
        while found and bytes(cursor.key()).startswith(b"u\0"):
            out[bytes(cursor.key())[2:].decode()] = bytes(cursor.value()).decode()
            found = cursor.next()
        return out

    # -- quotas ----------------------------------------------------------------------------

    def quota(self, txn: lmdb.Transaction, team: str, backend: str) -> Quota | None:
        value = txn.get(quota_key(team, backend), db=self.quotas_db)
        if value is None:
            return None
        soft, hard = PAIR.unpack(value)
        return Quota(team, backend, soft, hard)

    def set_quota(self, txn: lmdb.Transaction, quota: Quota) -> None:
        txn.put(
            quota_key(quota.team, quota.backend),
            PAIR.pack(quota.soft, quota.hard),
            db=self.quotas_db,
        )

    def remove_quota(self, txn: lmdb.Transaction, team: str, backend: str) -> bool:
        return bool(txn.delete(quota_key(team, backend), db=self.quotas_db))

    def quotas(self, txn: lmdb.Transaction) -> list[Quota]:
        out = []
        for key, value in txn.cursor(db=self.quotas_db):
            team, _, backend = bytes(key).decode().partition("\0")
            soft, hard = PAIR.unpack(value)
            out.append(Quota(team, backend, soft, hard))
        return out

    def quota_usage(self, txn: lmdb.Transaction, quota: Quota) -> Usage:
        key = team_backend_key(quota.team, quota.backend) if quota.backend else team_key(quota.team)
        return self.get(txn, key)
