"""Prometheus metrics of the read path, in one place: their names are the contract with
``deploy/`` dashboards and alerts.

The registry is passed in (a fresh one by default), never global, so two readers in one process
and the tests do not share counters. Labels are bounded: backend names come from the config,
operations and error types from fixed lists; never a path, key or inode.

Meanings (honest where the original's were not):

* ``warpdrive_cache_hit_total`` / ``_miss_total``: blocks a read found in the cache / had to
  fetch (one per block touched by a read).
* ``warpdrive_backend_bytes_read_total{backend}``: bytes fetched from the backend (the original
  counted bytes served here); bytes handed to readers are ``warpdrive_bytes_served_total{source}``.
* ``warpdrive_cache_size_bytes`` / ``_utilization_ratio``: read from the shared cache index when
  scraped, so they include blocks other processes cached; ``warpdrive_cache_disk_bytes`` is the
  size of the file system holding the cache, also read when scraped.
* ``warpdrive_readahead_hit_total`` / ``_wasted_total``: prefetched blocks (readahead or hints)
  that a read then used / that were dropped unread (handle closed, tracking full, evicted).
* ``warpdrive_offline_served_total{backend}``: answers the namespace gave from the cache index
  while the backend could not be reached (an open's version, a directory lookup, a listing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

BACKEND_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30)
FUSE_DURATION_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1)
BACKEND_OPERATIONS = ("stat", "list", "read", "delete")
# Failures only: answers (no such object, a directory, another version) are not errors
# (warpdrive/backends/retry.py, ANSWERS).
ERROR_TYPES = (
    "timeout",
    "connection",
    "throttled",
    "server",
    "permission",
    "container_not_found",
    "other",
)


class Metrics:
    """Every metric of the read path, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.cache_hits = Counter(
            "warpdrive_cache_hit", "Blocks reads found in the cache", registry=reg
        )
        self.cache_misses = Counter(
            "warpdrive_cache_miss", "Blocks reads had to fetch from a backend", registry=reg
        )
        self.cache_evictions = Counter(
            "warpdrive_cache_evictions", "Blocks this process evicted from the cache", registry=reg
        )
        self.checksum_errors = Counter(
            "warpdrive_cache_checksum_errors",
            "Cached blocks whose checksum or size did not match; refetched, never served",
            registry=reg,
        )
        self.index_resets = Counter(
            "warpdrive_cache_index_resets",
            "Times this process found the cache index damaged and started with an empty cache",
            registry=reg,
        )
        self.cache_write_errors = Counter(
            "warpdrive_cache_write_errors",
            "Fetched blocks that could not be stored (served from memory instead)",
            ["reason"],
            registry=reg,
        )
        self.bytes_served = Counter(
            "warpdrive_bytes_served",
            "Bytes returned to readers, by where they came from",
            ["source"],
            registry=reg,
        )
        self.backend_duration = Histogram(
            "warpdrive_backend_request_duration_seconds",
            "Backend request duration, one observation per attempt",
            ["backend", "operation"],
            buckets=BACKEND_DURATION_BUCKETS,
            registry=reg,
        )
        self.backend_errors = Counter(
            "warpdrive_backend_errors",
            "Failed backend attempts (answers such as no such object are not failures)",
            ["backend", "error_type"],
            registry=reg,
        )
        self.backend_retries = Counter(
            "warpdrive_backend_retries",
            "Backend requests retried after a transient error",
            ["backend", "operation"],
            registry=reg,
        )
        self.backend_bytes = Counter(
            "warpdrive_backend_bytes_read",
            "Bytes fetched from each backend",
            ["backend"],
            registry=reg,
        )
        self.readahead_hits = Counter(
            "warpdrive_readahead_hit", "Prefetched blocks that a read then used", registry=reg
        )
        self.readahead_wasted = Counter(
            "warpdrive_readahead_wasted",
            "Prefetched blocks dropped without being read",
            registry=reg,
        )
        self.hint_hits = Counter(
            "warpdrive_prefetch_hint_hit",
            "Blocks a loader's prefetch hint named that a read then used",
            registry=reg,
        )
        self.loader_skipped = Counter(
            "warpdrive_loader_skipped",
            "Shards or samples a dataset loader skipped because its error handler said so",
            ["reason"],
            registry=reg,
        )
        self.prefetch_scheduled = Counter(
            "warpdrive_prefetch_blocks", "Blocks scheduled for prefetch", ["source"], registry=reg
        )
        self.auth_refresh = Counter(
            "warpdrive_auth_refresh",
            "Credential fetches and refreshes",
            ["provider", "status"],
            registry=reg,
        )
        self.offline_served = Counter(
            "warpdrive_offline_served",
            "Answers (object versions, directory lookups, listings) taken from the cache index "
            "because the backend could not be reached",
            ["backend"],
            registry=reg,
        )
        self.fuse_operations = Counter(
            "warpdrive_fuse_operations",
            "FUSE requests answered, by operation",
            ["operation"],
            registry=reg,
        )
        self.fuse_duration = Histogram(
            "warpdrive_fuse_operation_duration_seconds",
            "FUSE request duration, by operation",
            ["operation"],
            buckets=FUSE_DURATION_BUCKETS,
            registry=reg,
        )
        self.fuse_errors = Counter(
            "warpdrive_fuse_errors",
            "FUSE requests answered with an error, by operation and errno",
            ["operation", "errno"],
            registry=reg,
        )
        self.fuse_passthrough_opens = Counter(
            "warpdrive_fuse_passthrough_opens",
            "Opens answered with kernel FUSE passthrough (the kernel reads the cache file itself)",
            registry=reg,
        )
        self.served_from_cache = self.bytes_served.labels("cache")
        self.served_from_backend = self.bytes_served.labels("backend")

    def totals(self) -> dict[str, float]:
        """This process's running totals that the cache index sums over all processes
        (``bytes_fetched:BACKEND`` for each backend that fetched something)."""
        return {
            "hits": _total(self.cache_hits),
            "misses": _total(self.cache_misses),
            "checksum_errors": _total(self.checksum_errors),
            "bytes_fetched": _total(self.backend_bytes),
            "bytes_served_cache": _total(self.bytes_served, source="cache"),
            "bytes_served_backend": _total(self.bytes_served, source="backend"),
            "readahead_hits": _total(self.readahead_hits),
            "readahead_wasted": _total(self.readahead_wasted),
            "hint_hits": _total(self.hint_hits),
            "loader_skipped": _total(self.loader_skipped),
            "offline_served": _total(self.offline_served),
            **{
                f"bytes_fetched:{sample.labels['backend']}": sample.value
                for family in self.backend_bytes.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            },
        }

    def add_collector(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Register state read at scrape time (cache size, queue depth)."""
        self.registry.register(_FunctionCollector(collect))

    def backend(self, name: str) -> BackendMetrics:
        return BackendMetrics(self, name)


class BackendMetrics:
    """Pre-labelled children for one backend, so the request path does no label lookups."""

    def __init__(self, metrics: Metrics, backend: str) -> None:
        self.name = backend
        self.duration = {
            op: metrics.backend_duration.labels(backend, op) for op in BACKEND_OPERATIONS
        }
        self.errors = {kind: metrics.backend_errors.labels(backend, kind) for kind in ERROR_TYPES}
        self.retries = {
            op: metrics.backend_retries.labels(backend, op) for op in BACKEND_OPERATIONS
        }
        self.bytes_read = metrics.backend_bytes.labels(backend)
        self._auth = metrics.auth_refresh

    def auth_refresh(self, provider: str, ok: bool) -> None:
        self._auth.labels(provider, "success" if ok else "failure").inc()


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()

    def describe(self) -> list[Metric]:
        return []


def _total(counter: Counter, **labels: str) -> float:
    """Sum of a counter's ``_total`` samples (matching ``labels``), via the public collect()."""
    return sum(
        sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
        and all(sample.labels.get(k) == v for k, v in labels.items())
    )
