"""The mount's side of the control plane: every ``telemetry.flush_interval`` it sends a
heartbeat (cache size, hit counters, health, bytes per team), the access records that changed
since the last acknowledged send, unsent job reports and new crawls of the backends; the
quotas the heartbeat's reply carries are applied to the node's cache.

Nothing is lost while the control plane is down: access records stay in the node's governance
store (aggregated per object, user and day, so the backlog is bounded by what was read, not by
how long the outage lasts) and the watermark only advances once the control plane took them;
job reports stay marked unsent. Reads never wait on any of this: it runs in its own thread and
every failure is logged once per outage, without the token.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from warpdrive.admin import Admin
from warpdrive.cache.accounts import Quota
from warpdrive.governance.store import GovernanceStore
from warpdrive.periodic import Periodic

log = logging.getLogger(__name__)
BATCH = 5000  # access records per request
CRAWL_LIMIT = 200_000  # objects of one backend per crawl report (the API's bound)


class Reporter(Periodic):
    def __init__(
        self,
        admin: Admin,
        flush: Callable[[], None] | None = None,
        health: Callable[[], tuple[bool, dict[str, str]]] | None = None,
        node: str | None = None,
    ) -> None:
        telemetry = admin.config.telemetry
        assert telemetry.control_plane_addr
        super().__init__("reporter", max(0.2, telemetry.flush_interval), final_tick=True)
        self.admin = admin
        self.flush = flush  # the node's reader: its pending counters, written before a round
        self.base = telemetry.control_plane_addr.rstrip("/") + "/api/v1"
        self.token = os.environ.get(telemetry.control_plane_token_env or "", "")
        self.health = health
        self.node = node or socket.gethostname()
        self.sent_records = 0
        self._down_since: float | None = None
        self.start()

    def tick(self) -> None:
        # A connection per round: it sees what other processes (warpdrive-ctl) committed since.
        store = GovernanceStore(self.admin.cache_root)
        try:
            self.report_once(store)
        finally:
            store.close()

    def report_once(self, store: GovernanceStore) -> bool:
        """One round; False when the control plane could not be reached."""
        try:
            if self.flush is not None:
                self.flush()
            self._heartbeat()
            self._access(store)
            self._jobs(store)
            self._crawls(store)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("control plane %s unreachable (%s): buffering", self.base, _why(exc))
            return False
        if self._down_since is not None:
            log.info("control plane back after %.0f s", time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def _post(self, path: str, body: dict[str, Any], method: str = "POST") -> Any:
        request = urllib.request.Request(
            f"{self.base}/{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read() or b"null")

    def _heartbeat(self) -> None:
        counters = self.admin.index.counters()
        usage = self.admin.usage()
        healthy, checks = self.health() if self.health is not None else (True, {})
        reply = self._post(
            "nodes/heartbeat",
            {
                "node": self.node,
                "mount_point": self.admin.config.mount_point,
                "cache_bytes": usage.bytes,
                "max_size": self.admin.config.cache.max_size,
                "hits": int(counters.get("hits", 0)),
                "misses": int(counters.get("misses", 0)),
                "healthy": healthy,
                "backends": {
                    k.removeprefix("backend:"): v == "ok"
                    for k, v in checks.items()
                    if k.startswith("backend:")
                },
                "teams": {t: u.bytes for t, u in self.admin.index.team_usage().items() if t},
            },
        )
        self._apply_quotas(reply.get("quotas", []))

    def _apply_quotas(self, central: list[dict[str, Any]]) -> None:
        """Make the node's quotas those of the control plane."""
        wanted = {
            (q["team"], "" if q["backend"] == "*" else q["backend"]): (q["soft"], q["hard"])
            for q in central
        }
        current = {(q.team, q.backend): (q.soft, q.hard) for q, _ in self.admin.index.quotas()}
        for (team, backend), (soft, hard) in wanted.items():
            if current.get((team, backend)) != (soft, hard):
                self.admin.set_quota(Quota(team, backend, soft, hard))
                log.info("quota for team %s set centrally: soft %d, hard %d", team, soft, hard)

    def _access(self, store: GovernanceStore) -> None:
        watermark = float(store.meta_get("control_plane_watermark") or 0)
        rows = store.db.execute(
            """SELECT backend, key, user, team, day, bytes, cache_bytes, opens, last_ts
               FROM access WHERE last_ts > ? ORDER BY last_ts""",
            (watermark,),
        ).fetchall()
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            records = [
                dict(zip(("backend", "key", "user", "team", "day", "bytes", "cache_bytes",
                          "opens", "last_ts"), r, strict=True))
                for r in batch
            ]  # fmt: skip
            self._post("ingest", {"node": self.node, "records": records})
            store.meta_set("control_plane_watermark", str(batch[-1][-1]))
            self.sent_records += len(batch)

    def _crawls(self, store: GovernanceStore) -> None:
        """Each backend's newest crawl (``warpdrive-ctl crawl`` or the mount's own), once."""
        for backend, finished_at, _, _ in store.crawls():
            key = f"control_plane_crawl:{backend}"
            if float(store.meta_get(key) or 0) >= finished_at:
                continue
            objects = [
                {"key": k, "size": size, "mtime": mtime}
                for _, k, size, mtime in store.crawled(backend)
            ][:CRAWL_LIMIT]
            self._post(
                "crawl", {"backend": backend, "objects": objects, "finished_at": finished_at}
            )
            store.meta_set(key, str(finished_at))

    def _jobs(self, store: GovernanceStore) -> None:
        for job in store.unsent_jobs():
            self._post("jobs", {**_job_body(job), "node": self.node})
            store.mark_sent(job["job_id"])


def _job_body(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("job_id", "user", "status", "started_at", "finished_at", "hits", "misses",
            "bytes_fetched", "bytes_served")  # fmt: skip
    return {k: job.get(k, 0 if k not in ("started_at",) else None) for k in keys}


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or exc
    return str(reason)
