"""What a run cost WarpDrive: counter deltas from two snapshots, taken either from a mount's
``/metrics`` (``--metrics-url``) or from the shared cache index (``--reader warpdrive``,
summed over every process that read, DataLoader workers included)."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from warpdrive import WarpDrive
from warpdrive.admin import cache_counters

Snapshot = dict[str, float]


def parse_prometheus(text: str) -> Snapshot:
    """The counters forge reports, from Prometheus text: ``hits``, ``misses``, ``fuse_reads``,
    ``passthrough_opens`` (files the kernel read from the cache itself) and
    ``bytes_fetched:BACKEND``."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "warpdrive_cache_hit_total":
                key = "hits"
            elif name == "warpdrive_cache_miss_total":
                key = "misses"
            elif name == "warpdrive_fuse_operations_total" and labels.get("operation") == "read":
                key = "fuse_reads"
            elif name == "warpdrive_fuse_passthrough_opens_total":
                key = "passthrough_opens"
            elif name == "warpdrive_backend_bytes_read_total" and "backend" in labels:
                key = f"bytes_fetched:{labels['backend']}"
            else:
                continue
            out[key] = out.get(key, 0.0) + sample.value
    return out


def scrape(url: str) -> Snapshot:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return parse_prometheus(reply.read().decode())


def from_index(wd: WarpDrive) -> Snapshot:
    wd.flush()
    counters = cache_counters(wd.config)
    return {
        k: float(v)
        for k, v in counters.items()
        if k in ("hits", "misses") or k.startswith("bytes_fetched:")
    }


def delta(before: Snapshot, after: Snapshot, source: str) -> dict[str, Any]:
    """The run's share: hits, misses, hit rate, bytes fetched (total and per backend), and FUSE
    reads and passthrough opens when the snapshots came from a mount."""
    diff = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    hits, misses = int(diff.get("hits", 0)), int(diff.get("misses", 0))
    by_backend = {
        k.split(":", 1)[1]: int(v)
        for k, v in sorted(diff.items())
        if k.startswith("bytes_fetched:")
    }
    return {
        "source": source,
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "bytes_fetched": sum(by_backend.values()),
        "bytes_fetched_by_backend": by_backend,
        "fuse_reads": int(diff["fuse_reads"]) if "fuse_reads" in diff else None,
        "passthrough_opens": (
            int(diff["passthrough_opens"]) if "passthrough_opens" in diff else None
        ),
    }
