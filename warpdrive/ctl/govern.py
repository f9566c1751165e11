"""``usage``, ``stale``, ``crawl``, ``quota`` and ``team``: who reads what, what nobody reads,
and who may cache how much."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from warpdrive.admin import Admin
from warpdrive.cache import Quota
from warpdrive.cache.accounts import quota_status
from warpdrive.errors import ConfigError
from warpdrive.governance.crawl import crawl
from warpdrive.governance.store import GovernanceStore

GROUPS = ("user", "team", "backend", "prefix")


def cached_bytes_by(admin: Admin, group: str, backend: str | None) -> dict[str, int]:
    """Bytes in the cache per group (users are not tracked in the cache: empty)."""
    if group == "team":
        return {t: u.bytes for t, u in admin.index.team_usage(backend).items()}
    if group == "backend":
        return {
            name: u.bytes
            for name, u in admin.index.backend_usage().items()
            if backend is None or name == backend
        }
    if group == "prefix":
        out: dict[str, int] = defaultdict(int)
        for record in admin.index.iter_objects():
            if backend is None or record.backend == backend:
                top = record.key.split("/", 1)[0] if "/" in record.key else ""
                out[f"{record.backend}:{top}"] += sum(
                    rec.size for _, rec in admin.index.iter_blocks(record.oid)
                )
        return dict(out)
    return {}


def usage(
    admin: Admin, store: GovernanceStore, group: str, backend: str | None
) -> list[dict[str, Any]]:
    rows = {r["group"]: r for r in store.usage(group, backend)}
    cached = cached_bytes_by(admin, group, backend)
    for name in cached.keys() - rows.keys():
        rows[name] = {
            "group": name,
            "bytes_read": 0,
            "files_accessed": 0,
            "hit_ratio": 0.0,
            "last_access": None,
        }
    for name, row in rows.items():
        row["cached_bytes"] = cached.get(name) if group != "user" else None
    return sorted(rows.values(), key=lambda r: (-r["bytes_read"], -(r["cached_bytes"] or 0)))


def stale(
    admin: Admin,
    store: GovernanceStore,
    days: float,
    min_size: int,
    backend: str | None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Objects (crawled in the backends, or cached) not read for ``days``, largest first.

    Last read: the newest of the mount's access records and the cache's last block access;
    never-read objects count from their modification (or caching) time."""
    now = time.time() if now is None else now
    cutoff = now - days * 86400
    accessed = store.last_access()
    cached: dict[tuple[str, str], dict[str, Any]] = {}
    for record in admin.index.iter_objects():
        if backend is None or record.backend == backend:
            blocks = [rec for _, rec in admin.index.iter_blocks(record.oid)]
            cached[(record.backend, record.key)] = {
                "oid": record.oid,
                "size": record.size,
                "mtime": record.mtime or record.cached_at,
                "cached_bytes": sum(b.size for b in blocks),
                "cache_access": max((b.atime_ms / 1000 for b in blocks), default=0.0),
            }
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for name, key, size, mtime in store.crawled(backend):
        objects[(name, key)] = {"size": size, "mtime": mtime, "source": "crawl"}
    for ident, info in cached.items():
        objects.setdefault(ident, {"size": info["size"], "mtime": info["mtime"], "source": "cache"})
    rows = []
    for (name, key), info in objects.items():
        in_cache = cached.get((name, key), {})
        read = max(accessed.get((name, key), 0.0), in_cache.get("cache_access", 0.0))
        if max(read, info["mtime"]) >= cutoff or info["size"] < min_size:
            continue
        rows.append(
            {
                "backend": name,
                "key": key,
                "path": admin.path_of(name, key),
                "size": info["size"],
                "last_access": read or None,
                "modified_at": info["mtime"],
                "cached_bytes": in_cache.get("cached_bytes", 0),
                "source": info["source"],
                "oid": in_cache.get("oid"),
            }
        )
    return sorted(rows, key=lambda r: -r["size"])


def run_crawl(admin: Admin, store: GovernanceStore, backend: str | None) -> list[dict[str, Any]]:
    if backend is not None and backend not in admin.backends:
        raise ConfigError("--backend", f"no backend named {backend!r}")
    found = crawl(admin.backends, store, [backend] if backend else None)
    return [{"backend": b, "objects": n, "bytes": size} for b, (n, size) in found.items()]


def quota_rows(admin: Admin) -> list[dict[str, Any]]:
    return [
        {
            "team": q.team,
            "backend": q.backend or "*",
            "soft": q.soft,
            "hard": q.hard,
            "usage_bytes": u.bytes,
            "status": quota_status(q, u),
        }
        for q, u in admin.index.quotas()
    ]


def set_quota(admin: Admin, team: str, backend: str | None, soft: int, hard: int) -> int:
    if backend is not None and backend not in admin.backends:
        raise ConfigError("--backend", f"no backend named {backend!r}")
    if soft > hard:
        raise ConfigError("--soft", f"soft limit ({soft}) is above the hard limit ({hard})")
    return admin.set_quota(Quota(team, backend or "", soft, hard))


def team_rows(admin: Admin) -> list[dict[str, Any]]:
    rows = {
        u: {"user": u, "team": t, "source": "config"}
        for u, t in admin.config.governance.teams.items()
    }
    for user, team in admin.index.user_teams().items():
        rows[user] = {"user": user, "team": team, "source": "warpdrive-ctl"}
    return sorted(rows.values(), key=lambda r: (r["team"], r["user"]))
