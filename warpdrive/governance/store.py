"""The node's governance records in SQLite: who read what, what the backends hold, job reports.

One file per cache, ``<cache.path>/v2/governance.sqlite`` (0600), in WAL mode so the mount writes
while ``warpdrive-ctl`` reads. Access records arrive aggregated per (backend, key, user, day) —
never one row per read. Every connection belongs to one thread; open a store per thread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS access (
    backend TEXT NOT NULL, key TEXT NOT NULL, user TEXT NOT NULL, team TEXT,
    day TEXT NOT NULL, bytes INTEGER NOT NULL, cache_bytes INTEGER NOT NULL,
    opens INTEGER NOT NULL, last_ts REAL NOT NULL,
    PRIMARY KEY (backend, key, user, day)
);
CREATE INDEX IF NOT EXISTS access_last ON access (backend, key, last_ts);
CREATE TABLE IF NOT EXISTS crawl (
    backend TEXT NOT NULL, key TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    etag TEXT, crawled_at REAL NOT NULL,
    PRIMARY KEY (backend, key)
);
CREATE TABLE IF NOT EXISTS crawls (
    backend TEXT PRIMARY KEY, finished_at REAL NOT NULL, objects INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS job_starts (
    job_id TEXT PRIMARY KEY, at REAL NOT NULL, counters TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, user TEXT NOT NULL, status INTEGER NOT NULL,
    started_at REAL, finished_at REAL NOT NULL, report TEXT NOT NULL, sent INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class AccessKey:
    backend: str
    key: str
    user: str
    team: str | None
    day: str  # YYYY-MM-DD, UTC


@dataclass
class AccessTotals:
    bytes: int = 0
    cache_bytes: int = 0
    opens: int = 0
    last_ts: float = 0.0


def day_of(ts: float) -> str:
    return _day(int(ts // 86400))


@functools.lru_cache(maxsize=4)  # every close asks; the answer changes once a day
def _day(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days * 86400))


class GovernanceStore:
    def __init__(self, cache_root: str) -> None:
        path = os.path.join(cache_root, "governance.sqlite")
        # Created 0600 by us, and only if missing: closing any other descriptor of the file
        # would drop the POSIX locks this process's other connections hold on it, and another
        # process could then take the WAL for unused and delete it under them.
        if not os.path.exists(path):
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def meta_get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _many(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(sql, rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- access records --------------------------------------------------------------------

    def add_access(self, records: Mapping[AccessKey, AccessTotals]) -> None:
        """Add aggregated access records (summing into existing rows)."""
        self._many(
            """INSERT INTO access
                 (backend, key, user, team, day, bytes, cache_bytes, opens, last_ts)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (backend, key, user, day) DO UPDATE SET
                 bytes = bytes + excluded.bytes, cache_bytes = cache_bytes + excluded.cache_bytes,
                 opens = opens + excluded.opens, last_ts = MAX(last_ts, excluded.last_ts),
                 team = COALESCE(excluded.team, team)""",
            (
                (
                    k.backend,
                    k.key,
                    k.user,
                    k.team,
                    k.day,
                    t.bytes,
                    t.cache_bytes,
                    t.opens,
                    t.last_ts,
                )
                for k, t in records.items()
            ),
        )

    def usage(self, group: str, backend: str | None) -> list[dict[str, Any]]:
        """Bytes read, files accessed and hit ratio per ``group`` (user, team, backend, prefix)."""
        column = {
            "user": "user",
            "team": "COALESCE(team, '-')",
            "backend": "backend",
            "prefix": "backend || ':' || (CASE WHEN instr(key, '/') > 0 "
            "THEN substr(key, 1, instr(key, '/') - 1) ELSE '' END)",
        }[group]
        where, args = ("WHERE backend = ?", [backend]) if backend else ("", [])
        rows = self.db.execute(
            f"""SELECT {column} AS grp, SUM(bytes), COUNT(DISTINCT backend || char(0) || key),
                       SUM(cache_bytes), MAX(last_ts)
                FROM access {where} GROUP BY grp ORDER BY SUM(bytes) DESC""",
            args,
        ).fetchall()
        return [
            {
                "group": g,
                "bytes_read": int(b or 0),
                "files_accessed": int(f),
                "hit_ratio": (cb or 0) / b if b else 0.0,
                "last_access": last,
            }
            for g, b, f, cb, last in rows
        ]

    def last_access(self) -> dict[tuple[str, str], float]:
        """When each (backend, key) was last read through the mount."""
        rows = self.db.execute("SELECT backend, key, MAX(last_ts) FROM access GROUP BY 1, 2")
        return {(b, k): float(t) for b, k, t in rows}

    # -- storage crawl ---------------------------------------------------------------------

    def replace_crawl(
        self, backend: str, objects: Iterator[tuple[str, int, float, str | None]]
    ) -> tuple[int, int]:
        """Store a full listing of ``backend`` (key, size, mtime, etag), replacing the last one."""
        now = time.time()
        count = total = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM crawl WHERE backend = ?", (backend,))
            for key, size, mtime, etag in objects:
                self.db.execute(
                    "INSERT OR REPLACE INTO crawl VALUES (?, ?, ?, ?, ?, ?)",
                    (backend, key, size, mtime, etag, now),
                )
                count += 1
                total += size
            self.db.execute(
                "INSERT OR REPLACE INTO crawls VALUES (?, ?, ?, ?)", (backend, now, count, total)
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return count, total

    def crawled(self, backend: str | None = None) -> Iterator[tuple[str, str, int, float]]:
        """(backend, key, size, mtime) of every crawled object."""
        where, args = ("WHERE backend = ?", (backend,)) if backend else ("", ())
        yield from self.db.execute(
            f"SELECT backend, key, size, mtime FROM crawl {where}",
            args,
        )

    def crawls(self) -> list[tuple[str, float, int, int]]:
        return list(self.db.execute("SELECT backend, finished_at, objects, bytes FROM crawls"))

    # -- jobs ------------------------------------------------------------------------------

    def job_started(self, job_id: str, counters: Mapping[str, int], at: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO job_starts VALUES (?, ?, ?)", (job_id, at, json.dumps(counters))
        )

    def job_start(self, job_id: str) -> tuple[float, dict[str, int]] | None:
        row = self.db.execute(
            "SELECT at, counters FROM job_starts WHERE job_id = ?", (job_id,)
        ).fetchone()
        return (float(row[0]), json.loads(row[1])) if row else None

    def save_job(self, report: Mapping[str, Any], sent: bool) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                report["job_id"],
                report["user"],
                report["status"],
                report.get("started_at"),
                report["finished_at"],
                json.dumps(report),
                int(sent),
            ),
        )

    def unsent_jobs(self) -> list[dict[str, Any]]:
        return [json.loads(r) for (r,) in self.db.execute("SELECT report FROM jobs WHERE sent = 0")]

    def mark_sent(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET sent = 1 WHERE job_id = ?", (job_id,))
