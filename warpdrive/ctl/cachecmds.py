"""``stats``, ``evict`` and ``status``: the shared cache as it is now, also while mounted."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from typing import Any

from warpdrive.admin import Admin
from warpdrive.cache import ObjectRecord
from warpdrive.errors import NotFoundError, WarpDriveError
from warpdrive.fuse.health import probe_backend, with_deadline
from warpdrive.fuse.mountinfo import MountEntry, find_mount, read_health_file
from warpdrive.metrics_server import parse_addr
from warpdrive.read.reader import WarpDrive


def stats(admin: Admin) -> dict[str, Any]:
    """Entries, bytes, utilization and the counters every process added to the index."""
    usage = admin.usage()
    counters = admin.index.counters()
    hits, misses = counters.get("hits", 0), counters.get("misses", 0)
    from_cache = counters.get("bytes_served_cache", 0)
    from_backend = counters.get("bytes_served_backend", 0)
    objects = sum(1 for _ in admin.index.iter_objects())
    pinned = admin.index.pinned()
    return {
        "cache_path": admin.config.cache.path,
        "objects": objects,
        "blocks": usage.blocks,
        "bytes": usage.bytes,
        "max_size": admin.config.cache.max_size,
        "utilization": usage.bytes / admin.config.cache.max_size,
        "hits": hits,
        "misses": misses,
        "evictions": counters.get("evictions", 0),
        "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
        "byte_hit_ratio": from_cache / (from_cache + from_backend)
        if from_cache + from_backend
        else 0.0,
        "bytes_served_cache": from_cache,
        "bytes_served_backend": from_backend,
        "bytes_fetched": counters.get("bytes_fetched", 0),
        "checksum_errors": counters.get("checksum_errors", 0),
        "readahead_hits": counters.get("readahead_hits", 0),
        "readahead_wasted": counters.get("readahead_wasted", 0),
        "hint_hits": counters.get("hint_hits", 0),
        "loader_skipped": counters.get("loader_skipped", 0),
        "offline_served": counters.get("offline_served", 0),
        "pinned_objects": len(pinned),
        "pinned_bytes": sum(pinned.values()),
        "pin_blocked": counters.get("pin_blocked", 0),
        "bytes_by_backend": {
            name: u.bytes for name, u in sorted(admin.index.backend_usage().items())
        },
    }


@dataclass(frozen=True, slots=True)
class EvictPlan:
    path: str  # normalised
    found: list[ObjectRecord]


def evict_plan(wd: WarpDrive, admin: Admin, path: str, recursive: bool) -> EvictPlan:
    """What evicting ``path`` drops: the cached object at ``path``, or those in the directory at
    ``path`` (below it, with ``recursive``). Works from the index, so it also finds objects
    that no longer exist in the backend. NotFoundError when nothing is cached there and the
    path exists nowhere (a typo is not "0 blocks evicted"); only then is a backend asked."""
    backend, key, norm = wd.locate(path)
    if backend is None:
        names = [
            b.name for b in wd.config.backends if b.mount_path.startswith(norm.rstrip("/") + "/")
        ]
        found = [r for name in names for r in admin.index.iter_names(name, "") if recursive]
        return EvictPlan(norm, found)
    prefix = f"{key}/" if key else ""
    found = [
        r
        for r in admin.index.iter_names(backend, key)
        if r.key == key
        or (r.key.startswith(prefix) and (recursive or "/" not in r.key[len(prefix) :]))
    ]
    if not found and key:
        try:
            wd.stat(norm)
        except NotFoundError:
            raise NotFoundError(f"{path}: no such object or directory, nothing cached") from None
        except WarpDriveError:
            pass  # the backend cannot say (credentials, outage): nothing cached is the answer
    return EvictPlan(norm, found)


def evict(admin: Admin, plan: EvictPlan) -> dict[str, Any]:
    """Drop the cached blocks of what ``plan`` found; the row ``evict`` prints. Objects open
    with FUSE passthrough somewhere are pinned: skipped (one line each on stderr), never
    evicted under the kernel's reads; the row counts only what went."""
    cached = {r.oid: sum(rec.size for _, rec in admin.index.iter_blocks(r.oid)) for r in plan.found}
    blocks, skipped = admin.evict_unpinned([r.oid for r in plan.found])
    kept = set(skipped)
    gone = [r for r in plan.found if r.oid not in kept]
    for r in plan.found:
        if r.oid in kept:
            print(
                f"warpdrive-ctl evict: {admin.path_of(r.backend, r.key)}: skipped, pinned "
                "(open with passthrough); evict it again once closed",
                file=sys.stderr,
            )
    nbytes = sum(cached[r.oid] for r in gone)
    return {"path": plan.path, "objects": len(gone), "blocks": blocks, "bytes": nbytes}


def _health_url(addr: str) -> str:
    host, port = parse_addr(addr)
    if host in ("", "0.0.0.0"):  # every interface: this machine's is loopback
        host = "127.0.0.1"
    return f"http://{host}:{port}/healthz"


def _ask_health(url: str, timeout: float) -> tuple[int, dict[str, Any]] | str:
    """(HTTP status, JSON body) of ``/healthz``, or why there is none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return f"not answering ({getattr(exc, 'reason', exc)})"
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"HTTP {status} from something that is not a WarpDrive mount"
    return status, body


def metrics_verdict(
    answer: tuple[int, dict[str, Any]] | str, mount_point: str, entry: MountEntry | None
) -> str:
    """``ok`` when ``/healthz`` answered 200 for *this* mount: the mount point asked about, and
    the device of the mount there now (a FUSE mount's device is unique while it is mounted, so
    another process's answer, or a dead one's successor, cannot pass for it)."""
    if isinstance(answer, str):
        return answer
    status, body = answer
    pid, theirs = body.get("pid"), body.get("mount_point")
    if theirs != os.path.abspath(mount_point):
        return f"answered by the mount at {theirs} (pid {pid}), not this one"
    if entry is None or body.get("device") != entry.device:
        here = f"device {entry.device}" if entry is not None else "nothing"
        return (
            f"answered by pid {pid}, which does not serve the mount here "
            f"(its device {body.get('device')}; mounted here: {here})"
        )
    if status != 200:
        checks = body.get("checks")
        return f"HTTP {status}: mount {checks.get('mount') if isinstance(checks, dict) else '?'}"
    return "ok"


def _mount_answers(mount_point: str, timeout: float) -> tuple[str, int | None]:
    """(``ok`` or why not, the pid serving the mount): its health file opened and read, within
    ``timeout`` (a hung mount must not hang status; a stat would pass a dead one)."""
    pids: list[int] = []

    def probe() -> str:
        verdict, pid = read_health_file(mount_point)
        if pid is not None:
            pids.append(pid)
        return verdict

    verdict = with_deadline(probe, timeout)
    return verdict, pids[0] if verdict == "ok" and pids else None


def status(admin: Admin, timeout: float = 5.0) -> tuple[bool, dict[str, Any]]:
    """Is the node healthy: mount answering (its health file reads), its own metrics endpoint
    up, cache usable, backends reachable (with latency)? Returns (healthy, report)."""
    config = admin.config
    mount_point = config.mount_point
    entry = find_mount(mount_point)
    mount_pid = None
    if entry is None:
        mount = "not mounted"
    elif not entry.fstype.startswith("fuse.warpdrive"):
        mount = f"another file system is mounted there ({entry.fstype})"
    else:
        mount, mount_pid = _mount_answers(mount_point, timeout)
    metrics = "disabled"
    if config.metrics.enabled:
        answer = _ask_health(_health_url(config.metrics.addr), timeout)
        metrics = metrics_verdict(answer, mount_point, entry)
    usage = admin.usage()
    backends: dict[str, Any] = {}
    for name, backend in admin.backends.items():
        started = time.monotonic()
        verdict = with_deadline(partial(probe_backend, backend), timeout)
        latency = time.monotonic() - started
        backends[name] = {"status": verdict, "latency_ms": round(latency * 1000, 1)}
    healthy = (
        mount == "ok"
        and metrics in ("ok", "disabled")
        and all(b["status"] == "ok" for b in backends.values())
    )
    report = {
        "healthy": healthy,
        "mount_point": mount_point,
        "mount": mount,
        "mount_pid": mount_pid,
        "metrics": metrics,
        "cache_path": config.cache.path,
        "cache_bytes": usage.bytes,
        "cache_utilization": usage.bytes / config.cache.max_size,
        "cache_writable": os.access(admin.cache_root, os.W_OK),
        "backends": backends,
    }
    return healthy, report
