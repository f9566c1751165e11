"""``job-start`` (Slurm prolog) and ``job-report`` (Slurm epilog): a job's cache activity.

The cache counters in the index are summed over every process on the node; a job's activity is
their change between its start (a snapshot ``job-start`` stores) and its end. Reports are kept in
the node's governance store and posted to the control plane (``telemetry.control_plane_addr``)
when one is configured; reports the control plane did not take are sent again next time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.request
from typing import Any

from warpdrive.admin import Admin
from warpdrive.governance.store import GovernanceStore

log = logging.getLogger(__name__)
FIELDS = ("hits", "misses", "bytes_fetched", "bytes_served_cache", "bytes_served_backend")


def start(admin: Admin, store: GovernanceStore, job_id: str) -> dict[str, Any]:
    admin.flush()
    now = admin.index.counters()
    counters = {k: now.get(k, 0) for k in FIELDS}
    at = time.time()
    store.job_started(job_id, counters, at)
    return {"job_id": job_id, "started_at": at, **counters}


def report(
    admin: Admin, store: GovernanceStore, job_id: str, user: str, status: int
) -> tuple[dict[str, Any], bool]:
    """The job's report and whether the control plane took it."""
    admin.flush()
    now = admin.index.counters()
    begun = store.job_start(job_id)
    base = begun[1] if begun else {}
    delta = {k: now.get(k, 0) - base.get(k, 0) for k in FIELDS}
    served = delta["bytes_served_cache"] + delta["bytes_served_backend"]
    reads = delta["hits"] + delta["misses"]
    record: dict[str, Any] = {
        "job_id": job_id,
        "user": user,
        "status": status,
        "node": socket.gethostname(),
        "started_at": begun[0] if begun else None,
        "finished_at": time.time(),
        "hits": delta["hits"],
        "misses": delta["misses"],
        "hit_ratio": delta["hits"] / reads if reads else 0.0,
        "bytes_fetched": delta["bytes_fetched"],
        "bytes_served": served,
        "bytes_served_cache": delta["bytes_served_cache"],
        "since_job_start": begun is not None,
    }
    store.save_job(record, sent=False)
    sent = send_pending(admin, store)
    return record, job_id in sent


def send_pending(admin: Admin, store: GovernanceStore) -> set[str]:
    """Post every unsent report to the control plane; the job ids it took."""
    addr = admin.config.telemetry.control_plane_addr
    if not addr:
        return set()
    token_env = admin.config.telemetry.control_plane_token_env
    token = os.environ.get(token_env) if token_env else None
    sent = set()
    for pending in store.unsent_jobs():
        request = urllib.request.Request(
            addr.rstrip("/") + "/api/v1/jobs",
            data=json.dumps(pending).encode(),
            method="POST",
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {token}"} if token else {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                if 200 <= reply.status < 300:
                    store.mark_sent(pending["job_id"])
                    sent.add(pending["job_id"])
        except OSError as exc:
            log.warning("control plane at %s did not take job reports: %s", addr, exc)
            break
    return sent
