"""The typed, frozen configuration. One line per field says what it means and why its default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True  # /metrics, /healthz, /readyz (the mount serves them; readers don't)
    # Listen address, "host:port" or ":port" (every interface). This machine only by default:
    # the endpoints have no authentication; a Prometheus elsewhere needs "0.0.0.0:9090" (the
    # Helm chart sets it) or this node's address on the network it scrapes from.
    addr: str = "127.0.0.1:9090"


@dataclass(frozen=True)
class CacheConfig:
    path: str = "/var/cache/warpdrive"  # directory on local NVMe; created 0700 if missing
    max_size: int = 50 * GIB  # eviction keeps the indexed blocks under this many bytes
    block_size: int = 4 * MIB  # unit of caching and fetching; a power of two
    readahead_blocks: int = 8  # blocks fetched ahead of a sequential reader (0 turns it off)
    # A directory opened in name order prefetches its next files (the original's cross-file
    # readahead). Off on cluster nodes: a node reads only its share of each directory.
    scan_prefetch: bool = True
    # Bytes of small objects a directory read-through (any order) fetches ahead and nobody
    # opened yet, all directories together; at most a quarter of max_size, so that what is
    # fetched ahead is not evicted before it is read.
    scan_budget: int = GIB
    max_parallel_fetch: int = 32  # backend requests in flight at once, per process
    stale_ttl: float = 60.0  # seconds object metadata (size, etag) is trusted before a re-stat
    list_ttl: float = 60.0  # seconds a directory listing is reused
    # Seconds since the backend last confirmed a version that it may still be answered without
    # the backend (from the index, stale-while-revalidate, or in an outage); 0: only within
    # stale_ttl. A day: a region down overnight does not stop training on what is cached.
    offline_max_age: float = 86400.0
    evict_high_water: float = 0.90  # fraction of max_size that starts an eviction…
    evict_low_water: float = 0.80  # …which removes least recently used blocks down to this


@dataclass(frozen=True)
class FetchConfig:
    max_attempts: int = 5  # tries per backend request, the first included
    initial_backoff: float = 0.2  # seconds before the first retry; doubles each time, jittered
    max_backoff: float = 10.0  # cap on one backoff (a server's Retry-After is capped too)
    request_timeout: float = 60.0  # seconds one backend request may take before it is retried
    coalesce_size: int = 4 * MIB  # adjacent missing blocks share one ranged GET up to this size


@dataclass(frozen=True)
class AuthConfig:
    """How a backend gets credentials. Secrets are named by env var or file, never written here
    (the ``access_key_id``/``secret_access_key`` pair exists for the original's configs, where
    it is normally a ``${VAR}`` reference)."""

    method: str
    tenant_id: str | None = None
    client_id: str | None = None
    client_id_env: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    token_file: str | None = None
    connection_string_env: str | None = None
    connection_string_file: str | None = None
    account_key_env: str | None = None
    account_key_file: str | None = None
    sas_token_env: str | None = None
    sas_token_file: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    profile: str | None = None
    key_file: str | None = None
    # (key path, message) of a ${VAR} in ``auth:`` that was not set when the config was read:
    # an error only when the backend is first used, so commands that need no backend (such
    # as ``warpdrive-ctl stats``) run without its credentials.
    unresolved: tuple[str, str] | None = None


@dataclass(frozen=True)
class AzureBlobOptions:
    account: str  # storage account name
    container: str
    prefix: str = ""  # key prefix inside the container that the mount path shows
    endpoint: str | None = None  # blob endpoint URL, for Azurite or sovereign clouds
    list_page_size: int = 5000


@dataclass(frozen=True)
class S3Options:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None  # S3-compatible stores and moto
    region: str | None = None
    list_page_size: int = 1000


@dataclass(frozen=True)
class GcsOptions:
    bucket: str
    prefix: str = ""
    project: str | None = None
    endpoint_url: str | None = None  # GCS emulators
    list_page_size: int = 1000


@dataclass(frozen=True)
class LocalOptions:
    root: str  # directory whose tree the mount path shows
    list_page_size: int = 1000


BackendOptions = AzureBlobOptions | S3Options | GcsOptions | LocalOptions


@dataclass(frozen=True)
class BackendConfig:
    name: str  # unique; a metric label and part of every cached block's identity
    type: str  # azureblob | s3 | gcs | local
    mount_path: str  # where it appears under the mount, "/datasets-cac"
    options: BackendOptions
    auth: AuthConfig
    # Key prefixes whose objects never change ("" = all of them): their metadata, once known,
    # is never asked for again (Mountpoint's --metadata-ttl indefinite, gcsfuse's ttl: -1).
    immutable: tuple[str, ...] = ()


@dataclass(frozen=True)
class TelemetryConfig:
    """Access records for the control plane (kept from the original's format)."""

    enabled: bool = False
    sink: str = "nop"  # stdout | file | http | nop
    file_path: str | None = None
    control_plane_addr: str | None = None  # where job reports and records go ("http://…")
    control_plane_token_env: str | None = None  # env var holding the bearer token for it
    sample_metadata_ops: float = 0.1
    batch_size: int = 100
    flush_interval: float = 5.0


@dataclass(frozen=True)
class ControlPlaneConfig:
    rest_addr: str = ":8090"
    storage_crawl_interval: float = 86400.0


@dataclass(frozen=True)
class GovernanceConfig:
    """Who reads what, and who may cache how much."""

    teams: Mapping[str, str] = field(default_factory=dict)  # user → team (ctl `team add` adds)
    access_flush_interval: float = 30.0  # seconds between the mount's writes of access records
    crawl_interval: float = 0.0  # seconds between the mount's storage crawls; 0: only on demand


@dataclass(frozen=True)
class Config:
    mount_point: str = "/wd"
    allow_other: bool = False  # other users may read the mount (needs user_allow_other)
    fuse_debug: bool = False  # log every FUSE request (DEBUG, logger warpdrive.fuse.requests)
    # open fully cached objects with kernel FUSE passthrough (Linux >= 6.9, needs CAP_SYS_ADMIN)
    passthrough: bool = True
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    backends: tuple[BackendConfig, ...] = ()
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    control_plane: ControlPlaneConfig = field(default_factory=ControlPlaneConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    source: str = "<defaults>"  # where it was loaded from, for messages

    def backend(self, name: str) -> BackendConfig:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)
