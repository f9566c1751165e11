"""The control plane's HTTP API (FastAPI; the OpenAPI spec is at ``/openapi.json``) and its
dashboard (``/``). Routes keep the original's names under ``/api/v1``.

Writes need ``Authorization: Bearer <token>``; reads are open unless ``private_reads``.
"""

from __future__ import annotations

import hmac
import time
from importlib import resources
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, model_validator

from warpdrive.control import db
from warpdrive.control.db import Store

DAY = 86400.0
# Every count and byte figure the API takes: within the databases' BIGINT with room for sums,
# and exact as a JSON number in the dashboard's JavaScript.
COUNT_MAX = 2**53 - 1
Count = Annotated[int, Field(ge=0, le=COUNT_MAX)]
Seconds = Annotated[float, Field(ge=0, le=COUNT_MAX)]  # Unix time


class Heartbeat(BaseModel):
    node: str = Field(min_length=1, max_length=255, description="the node's host name")
    mount_point: str = Field("", max_length=1024, description="where the node mounts")
    cache_bytes: Count = Field(description="bytes in the node's cache")
    max_size: Count = Field(description="the cache's max_size in bytes")
    hits: Count = Field(description="block reads served from the cache, since the cache began")
    misses: Count = Field(description="block reads fetched from a backend, since the cache began")
    healthy: bool = Field(description="every backend answered the node's last check")
    backends: dict[str, bool] = Field(default_factory=dict, description="backend name → healthy")
    teams: dict[str, Count] = Field(
        default_factory=dict, description="team → bytes cached for it on the node"
    )


class QuotaRow(BaseModel):
    team: str = Field(min_length=1, max_length=255)
    backend: str = Field("*", max_length=255, description='a backend name, or "*" for all')
    soft: Count = Field(description="bytes; over it the quota's status is WARNING")
    hard: Count = Field(description="bytes; agents evict the team's blocks above it")

    @model_validator(mode="after")
    def soft_below_hard(self) -> QuotaRow:
        if self.soft > self.hard:
            raise ValueError(f"soft ({self.soft}) is above hard ({self.hard})")
        return self


class QuotaStatus(QuotaRow):
    usage_bytes: int = Field(description="the team's cached bytes on its fullest node")
    status: Literal["OK", "WARNING", "EXCEEDED"]


class HeartbeatReply(BaseModel):
    node: str
    quotas: list[QuotaRow] = Field(description="the quotas the node should enforce")


class AccessRecord(BaseModel):
    backend: str = Field(min_length=1, max_length=255)
    key: str = Field(min_length=1, max_length=2048)
    user: str = Field(min_length=1, max_length=255)
    team: str | None = Field(None, max_length=255)
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="UTC day, YYYY-MM-DD")
    bytes: Count = Field(description="bytes the user read of the object that day (cumulative)")
    cache_bytes: Count = Field(description="of which served from the cache")
    opens: Count = Field(description="files opened")
    last_ts: Seconds = Field(description="last read, Unix seconds")


class Ingest(BaseModel):
    node: str = Field(min_length=1, max_length=255)
    records: list[AccessRecord] = Field(max_length=10_000)


class IngestReply(BaseModel):
    accepted: int


class CrawlObject(BaseModel):
    key: str = Field(min_length=1, max_length=2048)
    size: Count
    mtime: Seconds = Field(description="last modified, Unix seconds")


class Crawl(BaseModel):
    backend: str = Field(min_length=1, max_length=255)
    objects: list[CrawlObject] = Field(max_length=200_000)
    finished_at: Seconds | None = Field(None, description="when the listing ended (now if absent)")

    @model_validator(mode="after")
    def one_row_per_key(self) -> Crawl:
        seen: set[str] = set()
        for o in self.objects:
            if o.key in seen:
                raise ValueError(f"objects: key {o.key!r} is listed twice")
            seen.add(o.key)
        if sum(o.size for o in self.objects) > COUNT_MAX:
            raise ValueError(f"objects: the sizes add up to more than {COUNT_MAX} bytes")
        return self


class CrawlReply(BaseModel):
    backend: str
    objects: int
    bytes: int


class TeamRow(BaseModel):
    user: str = Field(min_length=1, max_length=255)
    team: str = Field(min_length=1, max_length=255)


class Job(BaseModel):
    job_id: str = Field(min_length=1, max_length=255)
    node: str = Field("", max_length=255)
    user: str = Field(max_length=255)
    status: int = Field(ge=-(2**31), le=2**31 - 1, description="the job's exit status")
    started_at: Seconds | None = None
    finished_at: Seconds
    hits: Count
    misses: Count
    bytes_fetched: Count
    bytes_served: Count = 0


class UsageRow(BaseModel):
    group: str
    bytes_read: int
    files_accessed: int
    hit_ratio: float
    last_access: float | None


class StaleRow(BaseModel):
    backend: str
    key: str
    size: int
    modified_at: float
    last_access: float | None


class GrowthPoint(BaseModel):
    backend: str
    at: float = Field(description="the last crawl of the period, Unix seconds")
    objects: int
    bytes: int


class NodeRow(BaseModel):
    node: str
    mount_point: str
    cache_bytes: int
    max_size: int
    utilization: float
    hits: int
    misses: int
    hit_rate: float | None
    healthy: bool
    backends: dict[str, bool]
    last_seen: float
    seconds_since_seen: float


class HitRatePoint(BaseModel):
    at: float
    hit_rate: float | None = Field(
        description="of block reads between this sample and the previous one"
    )


class UserReport(BaseModel):
    user: str
    team: str | None
    bytes_read: int
    files_accessed: int
    hit_ratio: float
    last_access: float | None
    by_backend: dict[str, int]


class BackendRow(BaseModel):
    backend: str
    objects: int | None
    bytes: int | None
    crawled_at: float | None
    bytes_read: int


def create_app(store: Store, token: str, private_reads: bool = False) -> FastAPI:
    app = FastAPI(
        title="WarpDrive control plane",
        version="1.0.0",
        description="Nodes, usage, stale data, growth, jobs and quotas of every WarpDrive cache.",
    )

    def check(authorization: str | None) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    def writer(authorization: Annotated[str | None, Header()] = None) -> None:
        check(authorization)

    def reader(authorization: Annotated[str | None, Header()] = None) -> None:
        if private_reads:
            check(authorization)

    write = [Depends(writer)]
    read = [Depends(reader)]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "schema_version": store.version}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return resources.files("warpdrive.control").joinpath("dashboard.html").read_text()

    # -- agents ----------------------------------------------------------------------------

    @app.post("/api/v1/nodes/heartbeat", dependencies=write)
    def heartbeat(beat: Heartbeat) -> HeartbeatReply:
        store.heartbeat(beat.model_dump(exclude={"teams"}), beat.teams)
        return HeartbeatReply(
            node=beat.node, quotas=[QuotaRow(**r) for r in store.rows(sa.select(db.quotas))]
        )

    @app.post("/api/v1/ingest", dependencies=write)
    def ingest(batch: Ingest) -> IngestReply:
        return IngestReply(
            accepted=store.ingest(batch.node, [r.model_dump() for r in batch.records])
        )

    @app.post("/api/v1/jobs", dependencies=write)
    def add_job(job: Job) -> Job:
        store.add_job(job.model_dump())
        return job

    @app.post("/api/v1/crawl", dependencies=write)
    def crawl(body: Crawl) -> CrawlReply:
        count, total = store.crawl(
            body.backend, [o.model_dump() for o in body.objects], body.finished_at or time.time()
        )
        return CrawlReply(backend=body.backend, objects=count, bytes=total)

    @app.post("/api/v1/team", dependencies=write)
    def team(row: TeamRow) -> TeamRow:
        store.set_team(row.user, row.team)
        return row

    @app.put("/api/v1/quota", dependencies=write)
    def put_quota(row: QuotaRow) -> QuotaStatus:
        store.set_quota(row.team, row.backend, row.soft, row.hard)
        return next(q for q in quota_statuses() if q.team == row.team and q.backend == row.backend)

    # -- reads -----------------------------------------------------------------------------

    def quota_statuses() -> list[QuotaStatus]:
        usage: dict[str, int] = {}
        for r in store.rows(sa.select(db.team_bytes)):
            usage[r["team"]] = max(usage.get(r["team"], 0), int(r["bytes"]))
        out = []
        for q in store.rows(sa.select(db.quotas).order_by(db.quotas.c.team, db.quotas.c.backend)):
            used = usage.get(q["team"], 0)
            status: Literal["OK", "WARNING", "EXCEEDED"] = (
                "EXCEEDED" if used > q["hard"] else "WARNING" if used > q["soft"] else "OK"
            )
            out.append(QuotaStatus(**q, usage_bytes=used, status=status))
        return out

    @app.get("/api/v1/quota", dependencies=read)
    def get_quota() -> list[QuotaStatus]:
        return quota_statuses()

    @app.get("/api/v1/usage", dependencies=read)
    def usage(
        group_by: Literal["team", "user", "backend"] = "team",
        backend: Annotated[str | None, Query(max_length=255)] = None,
    ) -> list[UsageRow]:
        a = db.access
        column = {
            "team": sa.func.coalesce(a.c.team, db.teams.c.team, "-"),
            "user": a.c.user,
            "backend": a.c.backend,
        }[group_by]
        query = (
            sa.select(
                column.label("grp"),
                sa.func.sum(a.c.bytes).label("b"),
                sa.func.count(sa.distinct(a.c.backend + ":" + a.c.key)).label("f"),
                sa.func.sum(a.c.cache_bytes).label("cb"),
                sa.func.max(a.c.last_ts).label("last"),
            )
            .select_from(a.outerjoin(db.teams, db.teams.c.user == a.c.user))
            .group_by(column)
            .order_by(sa.func.sum(a.c.bytes).desc())
        )
        if backend:
            query = query.where(a.c.backend == backend)
        return [
            UsageRow(
                group=r["grp"],
                bytes_read=int(r["b"] or 0),
                files_accessed=int(r["f"]),
                hit_ratio=(int(r["cb"] or 0) / int(r["b"])) if r["b"] else 0.0,
                last_access=r["last"],
            )
            for r in store.rows(query)
        ]

    @app.get("/api/v1/stale", dependencies=read)
    def stale(
        days: Annotated[float, Query(ge=0, le=36500)] = 90,
        min_size: Annotated[int, Query(ge=0, le=COUNT_MAX)] = 0,
        backend: Annotated[str | None, Query(max_length=255)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[StaleRow]:
        a, o = db.access, db.objects
        last = (
            sa.select(a.c.backend, a.c.key, sa.func.max(a.c.last_ts).label("last"))
            .group_by(a.c.backend, a.c.key)
            .subquery()
        )
        cutoff = time.time() - days * DAY
        used = sa.func.coalesce(last.c.last, o.c.mtime)
        query = (
            sa.select(o.c.backend, o.c.key, o.c.size, o.c.mtime, last.c.last)
            .select_from(
                o.outerjoin(last, sa.and_(last.c.backend == o.c.backend, last.c.key == o.c.key))
            )
            .where(used < cutoff, o.c.size >= min_size)
            .order_by(o.c.size.desc())
            .limit(limit)
        )
        if backend:
            query = query.where(o.c.backend == backend)
        return [
            StaleRow(
                backend=r["backend"],
                key=r["key"],
                size=r["size"],
                modified_at=r["mtime"],
                last_access=r["last"],
            )
            for r in store.rows(query)
        ]

    @app.get("/api/v1/growth", dependencies=read)
    def growth(
        backend: Annotated[str | None, Query(max_length=255)] = None,
        period: Literal["day", "week", "month"] = "day",
    ) -> list[GrowthPoint]:
        query = sa.select(db.crawls).order_by(db.crawls.c.at)
        if backend:
            query = query.where(db.crawls.c.backend == backend)
        seconds = {"day": DAY, "week": 7 * DAY, "month": 30 * DAY}[period]
        last: dict[tuple[str, int], dict[str, Any]] = {}
        for r in store.rows(query):
            last[(r["backend"], int(r["at"] // seconds))] = r  # the period's last crawl
        return [
            GrowthPoint(backend=r["backend"], at=r["at"], objects=r["objects"], bytes=r["bytes"])
            for r in last.values()
        ]

    @app.get("/api/v1/user/{user_id}", dependencies=read)
    def user(user_id: str) -> UserReport:
        a = db.access
        rows = store.rows(sa.select(a).where(a.c.user == user_id))
        if not rows:
            raise HTTPException(404, f"no reads recorded for user {user_id!r}")
        central = store.rows(sa.select(db.teams.c.team).where(db.teams.c.user == user_id))
        total = sum(r["bytes"] for r in rows)
        by_backend: dict[str, int] = {}
        for r in rows:
            by_backend[r["backend"]] = by_backend.get(r["backend"], 0) + r["bytes"]
        return UserReport(
            user=user_id,
            team=central[0]["team"]
            if central
            else next((r["team"] for r in rows if r["team"]), None),
            bytes_read=total,
            files_accessed=len({(r["backend"], r["key"]) for r in rows}),
            hit_ratio=sum(r["cache_bytes"] for r in rows) / total if total else 0.0,
            last_access=max(r["last_ts"] for r in rows),
            by_backend=by_backend,
        )

    @app.get("/api/v1/backends", dependencies=read)
    def backends() -> list[BackendRow]:
        latest: dict[str, dict[str, Any]] = {}
        for r in store.rows(sa.select(db.crawls).order_by(db.crawls.c.at)):
            latest[r["backend"]] = r
        read_bytes = {
            r["backend"]: int(r["b"] or 0)
            for r in store.rows(
                sa.select(db.access.c.backend, sa.func.sum(db.access.c.bytes).label("b")).group_by(
                    db.access.c.backend
                )
            )
        }
        names = sorted(set(latest) | set(read_bytes))
        return [
            BackendRow(
                backend=n,
                objects=latest.get(n, {}).get("objects"),
                bytes=latest.get(n, {}).get("bytes"),
                crawled_at=latest.get(n, {}).get("at"),
                bytes_read=read_bytes.get(n, 0),
            )
            for n in names
        ]

    @app.get("/api/v1/nodes", dependencies=read)
    def list_nodes() -> list[NodeRow]:
        now = time.time()
        out = []
        for r in store.rows(sa.select(db.nodes).order_by(db.nodes.c.node)):
            reads = r["hits"] + r["misses"]
            out.append(
                NodeRow(
                    **r,
                    utilization=r["cache_bytes"] / r["max_size"] if r["max_size"] else 0.0,
                    hit_rate=r["hits"] / reads if reads else None,
                    seconds_since_seen=max(0.0, now - r["last_seen"]),
                )
            )
        return out

    @app.get("/api/v1/nodes/hit-rate", dependencies=read)
    def hit_rate(
        hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24,
        node: Annotated[str | None, Query(max_length=255)] = None,
    ) -> list[HitRatePoint]:
        h = db.node_history
        query = sa.select(h).where(h.c.at >= time.time() - hours * 3600).order_by(h.c.node, h.c.at)
        if node:
            query = query.where(h.c.node == node)
        points: list[HitRatePoint] = []
        previous: dict[str, dict[str, Any]] = {}
        for r in store.rows(query):
            before = previous.get(r["node"])
            if before is not None:
                d_hits, d_miss = r["hits"] - before["hits"], r["misses"] - before["misses"]
                total = d_hits + d_miss
                points.append(
                    HitRatePoint(at=r["at"], hit_rate=d_hits / total if total > 0 else None)
                )
            previous[r["node"]] = r
        return sorted(points, key=lambda p: p.at)

    @app.get("/api/v1/jobs", dependencies=read)
    def list_jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[Job]:
        rows = store.rows(sa.select(db.jobs).order_by(db.jobs.c.finished_at.desc()).limit(limit))
        return [Job(**r) for r in rows]

    return app
