"""The control plane's storage: SQLite by default (one file, zero setup), PostgreSQL when the
database URL says so — the same tables through SQLAlchemy Core, created and upgraded by
numbered migrations recorded in ``schema_version``.

Access records arrive from each node as cumulative totals per (backend, key, user, day), so a
node resending after an outage replaces rather than adds: ingestion is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

meta = sa.MetaData()

nodes = sa.Table(
    "nodes", meta,
    sa.Column("node", sa.String(255), primary_key=True),
    sa.Column("cache_bytes", sa.BigInteger, nullable=False),
    sa.Column("max_size", sa.BigInteger, nullable=False),
    sa.Column("hits", sa.BigInteger, nullable=False),
    sa.Column("misses", sa.BigInteger, nullable=False),
    sa.Column("healthy", sa.Boolean, nullable=False),
    sa.Column("backends", sa.JSON, nullable=False),
    sa.Column("mount_point", sa.String(1024), nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)  # fmt: skip
node_history = sa.Table(
    "node_history", meta,
    sa.Column("node", sa.String(255), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("cache_bytes", sa.BigInteger, nullable=False),
    sa.Column("hits", sa.BigInteger, nullable=False),
    sa.Column("misses", sa.BigInteger, nullable=False),
)  # fmt: skip
access = sa.Table(
    "access", meta,
    sa.Column("node", sa.String(255), primary_key=True),
    sa.Column("backend", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(2048), primary_key=True),
    sa.Column("user", sa.String(255), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("team", sa.String(255)),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("cache_bytes", sa.BigInteger, nullable=False),
    sa.Column("opens", sa.BigInteger, nullable=False),
    sa.Column("last_ts", sa.Float, nullable=False),
)  # fmt: skip
objects = sa.Table(
    "objects", meta,
    sa.Column("backend", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(2048), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime", sa.Float, nullable=False),
)  # fmt: skip
crawls = sa.Table(
    "crawls", meta,
    sa.Column("backend", sa.String(255), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("objects", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
)  # fmt: skip
quotas = sa.Table(
    "quotas", meta,
    sa.Column("team", sa.String(255), primary_key=True),
    sa.Column("backend", sa.String(255), primary_key=True),  # "*": every backend
    sa.Column("soft", sa.BigInteger, nullable=False),
    sa.Column("hard", sa.BigInteger, nullable=False),
)  # fmt: skip
teams = sa.Table(
    "teams", meta,
    sa.Column("user", sa.String(255), primary_key=True),
    sa.Column("team", sa.String(255), nullable=False),
)  # fmt: skip
jobs = sa.Table(
    "jobs", meta,
    sa.Column("job_id", sa.String(255), primary_key=True),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float, nullable=False),
    sa.Column("hits", sa.BigInteger, nullable=False),
    sa.Column("misses", sa.BigInteger, nullable=False),
    sa.Column("bytes_fetched", sa.BigInteger, nullable=False),
    sa.Column("bytes_served", sa.BigInteger, nullable=False),
)  # fmt: skip
team_bytes = sa.Table(  # per node and team, from heartbeats: what quota statuses compare with
    "team_bytes", meta,
    sa.Column("node", sa.String(255), primary_key=True),
    sa.Column("team", sa.String(255), primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
)  # fmt: skip
schema_version = sa.Table(
    "schema_version", meta, sa.Column("version", sa.Integer, primary_key=True)
)

# Migration n brings the schema from version n-1 to n. Add new ones at the end; never edit one
# that has shipped.
MIGRATIONS: list[Sequence[sa.Table]] = [
    [nodes, node_history, access, objects, crawls, quotas, teams, jobs, team_bytes],
]


def engine_for(url: str) -> Engine:
    """An engine for ``url``: ``sqlite:///path`` or ``postgresql://user:pw@host/db``."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi: Any, _: Any) -> None:
            dbapi.execute("PRAGMA journal_mode=WAL")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> int:
    """Apply the migrations not yet applied; the schema's version after."""
    with engine.begin() as conn:
        schema_version.create(conn, checkfirst=True)
        current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
        for number, tables in enumerate(MIGRATIONS, start=1):
            if number <= current:
                continue
            for table in tables:
                table.create(conn, checkfirst=True)
            conn.execute(schema_version.insert().values(version=number))
            current = number
    return current


class Store:
    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        self.version = migrate(self.engine)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _upsert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, replacing those with the same primary key (both dialects)."""
        if not rows:
            return
        keys = [c.name for c in table.primary_key.columns]
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)  # type: ignore[assignment]
        others = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=others), rows)

    # -- writes ----------------------------------------------------------------------------

    def heartbeat(self, beat: Mapping[str, Any], team_usage: Mapping[str, int]) -> None:
        """A node's state, its history sample, and the bytes it caches per team (replaced)."""
        now = time.time()
        row = {**beat, "last_seen": now}
        with self.tx() as conn:
            self._upsert(conn, nodes, [row])
            conn.execute(team_bytes.delete().where(team_bytes.c.node == beat["node"]))
            if team_usage:
                conn.execute(
                    team_bytes.insert(),
                    [{"node": beat["node"], "team": t, "bytes": b} for t, b in team_usage.items()],
                )
            conn.execute(node_history.insert().values(
                node=beat["node"], at=now, cache_bytes=beat["cache_bytes"],
                hits=beat["hits"], misses=beat["misses"],
            ))  # fmt: skip

    def ingest(self, node: str, records: Sequence[Mapping[str, Any]]) -> int:
        rows = [{**r, "node": node} for r in records]
        with self.tx() as conn:
            self._upsert(conn, access, rows)
        return len(rows)

    def crawl(self, backend: str, items: Sequence[Mapping[str, Any]], at: float) -> tuple[int, int]:
        total = sum(int(i["size"]) for i in items)
        with self.tx() as conn:
            conn.execute(objects.delete().where(objects.c.backend == backend))
            if items:
                conn.execute(objects.insert(), [{**i, "backend": backend} for i in items])
            conn.execute(
                crawls.insert().values(backend=backend, at=at, objects=len(items), bytes=total)
            )
        return len(items), total

    def set_quota(self, team: str, backend: str, soft: int, hard: int) -> None:
        with self.tx() as conn:
            self._upsert(
                conn, quotas, [{"team": team, "backend": backend, "soft": soft, "hard": hard}]
            )

    def set_team(self, user: str, team: str) -> None:
        with self.tx() as conn:
            self._upsert(conn, teams, [{"user": user, "team": team}])

    def add_job(self, job: Mapping[str, Any]) -> None:
        with self.tx() as conn:
            self._upsert(conn, jobs, [dict(job)])

    # -- reads -----------------------------------------------------------------------------

    def rows(self, query: sa.sql.Select[Any]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
