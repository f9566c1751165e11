"""YAML → typed, frozen :class:`Config`.

Every error is one line naming the key path and the bad value, e.g.
``backends[1].auth.method: unknown method 'magic' (expected one of: managed_identity, …)``.
The only environment the loader reads is ``WARPDRIVE_CONFIG`` (where the file is) and the
variables the file references as ``${VAR}``; no other module reads configuration from the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from warpdrive.config._reader import (
    Section,
    as_bool,
    as_duration,
    as_fraction,
    as_int,
    as_size,
    as_str,
)
from warpdrive.config.backends import AUTH_METHODS, BACKEND_TYPES, HEALTH_FILE, parse_backends
from warpdrive.config.model import (
    KIB,
    MIB,
    AuthConfig,
    AzureBlobOptions,
    BackendConfig,
    BackendOptions,
    CacheConfig,
    Config,
    ControlPlaneConfig,
    FetchConfig,
    GcsOptions,
    GovernanceConfig,
    LocalOptions,
    MetricsConfig,
    S3Options,
    TelemetryConfig,
)
from warpdrive.errors import ConfigError

__all__ = [
    "AUTH_METHODS",
    "BACKEND_TYPES",
    "DEFAULT_CONFIG_PATH",
    "HEALTH_FILE",
    "AuthConfig",
    "AzureBlobOptions",
    "BackendConfig",
    "BackendOptions",
    "CacheConfig",
    "Config",
    "ConfigError",
    "ControlPlaneConfig",
    "FetchConfig",
    "GcsOptions",
    "GovernanceConfig",
    "LocalOptions",
    "MetricsConfig",
    "S3Options",
    "TelemetryConfig",
    "default_config_path",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = "/etc/warpdrive/config.yaml"
CONFIG_ENV_VAR = "WARPDRIVE_CONFIG"
MIN_BLOCK_SIZE = 64 * KIB
MAX_BLOCK_SIZE = 256 * MIB
MIN_BLOCKS_IN_CACHE = 4
_TOP_KEYS = (
    "mount_point",
    "allow_other",
    "fuse_debug",
    "passthrough",
    "metrics",
    "cache",
    "fetch",
    "backends",
    "telemetry",
    "control_plane",
    "governance",
)


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    """``$WARPDRIVE_CONFIG``, else ``/etc/warpdrive/config.yaml``."""
    env = os.environ if env is None else env
    return env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read and check the YAML file at ``path`` (default: :func:`default_config_path`)."""
    env = dict(os.environ) if env is None else env
    path = Path(path) if path is not None else Path(default_config_path(env))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    return parse_config(text, env=env, source=str(path))


def parse_config(
    data: str | Mapping[str, object], env: Mapping[str, str] | None = None, source: str = "<string>"
) -> Config:
    """Check ``data`` (YAML text or an already parsed mapping) and build the :class:`Config`."""
    env = dict(os.environ) if env is None else env
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError("", f"{source}: invalid YAML{where}: {problem}") from None
    top = Section(data, "", env)
    mount_point = top.get("mount_point", as_str, "/wd")
    if not mount_point.startswith("/"):
        raise ConfigError("mount_point", f"must be an absolute path, got {mount_point!r}")
    config = Config(
        mount_point=mount_point.rstrip("/") or "/",
        allow_other=top.get("allow_other", as_bool, False),
        fuse_debug=top.get("fuse_debug", as_bool, False),
        passthrough=top.get("passthrough", as_bool, True),
        metrics=_metrics(top.section("metrics")),
        cache=_cache(top.section("cache")),
        fetch=_fetch(top.section("fetch")),
        backends=parse_backends(top),
        telemetry=_telemetry(top.section("telemetry")),
        control_plane=_control_plane(top.section("control_plane")),
        governance=_governance(top.section("governance")),
        source=source,
    )
    top.finish(_TOP_KEYS)
    return config


def _metrics(sec: Section) -> MetricsConfig:
    addr = sec.get("addr", as_str, MetricsConfig.addr)
    _, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(sec.key_path("addr"), f"expected 'host:port' or ':port', got {addr!r}")
    metrics = MetricsConfig(enabled=sec.get("enabled", as_bool, True), addr=addr)
    sec.finish(("enabled", "addr"))
    return metrics


def _cache(sec: Section) -> CacheConfig:
    d = CacheConfig()
    path = sec.get("path", as_str, sec.get("dir", as_str, d.path))
    block_size = sec.get("block_size", as_size, d.block_size)
    if block_size & (block_size - 1) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ConfigError(
            sec.key_path("block_size"),
            f"{sec.raw('block_size')!r} = {block_size} bytes: must be a power of two "
            f"between 64KB and 256MB (e.g. '1MB', '4MB', '16MB')",
        )
    max_size = sec.get("max_size", as_size, d.max_size)
    if max_size < MIN_BLOCKS_IN_CACHE * block_size:
        raise ConfigError(
            sec.key_path("max_size"),
            f"{sec.raw('max_size')!r} = {max_size} bytes is smaller than {MIN_BLOCKS_IN_CACHE} "
            f"blocks of block_size ({MIN_BLOCKS_IN_CACHE * block_size} bytes)",
        )
    high = sec.get("evict_high_water", as_fraction, d.evict_high_water)
    low = sec.get("evict_low_water", as_fraction, d.evict_low_water)
    if low >= high:
        raise ConfigError(
            sec.key_path("evict_low_water"),
            f"{low} must be below evict_high_water ({high})",
        )
    cache = CacheConfig(
        path=path,
        max_size=max_size,
        block_size=block_size,
        readahead_blocks=sec.get("readahead_blocks", as_int(0, 1024), d.readahead_blocks),
        scan_prefetch=sec.get("scan_prefetch", as_bool, d.scan_prefetch),
        scan_budget=sec.get("scan_budget", as_size, d.scan_budget),
        max_parallel_fetch=sec.get("max_parallel_fetch", as_int(1, 1024), d.max_parallel_fetch),
        stale_ttl=sec.get("stale_ttl", as_duration, d.stale_ttl),
        list_ttl=sec.get("list_ttl", as_duration, d.list_ttl),
        offline_max_age=sec.get("offline_max_age", as_duration, d.offline_max_age),
        evict_high_water=high,
        evict_low_water=low,
    )
    sec.finish([*CacheConfig.__dataclass_fields__, "dir"])
    return cache


def _fetch(sec: Section) -> FetchConfig:
    d = FetchConfig()
    fetch = FetchConfig(
        max_attempts=sec.get("max_attempts", as_int(1, 100), d.max_attempts),
        initial_backoff=sec.get("initial_backoff", as_duration, d.initial_backoff),
        max_backoff=sec.get("max_backoff", as_duration, d.max_backoff),
        request_timeout=sec.get("request_timeout", as_duration, d.request_timeout),
        coalesce_size=sec.get("coalesce_size", as_size, d.coalesce_size),
    )
    if fetch.request_timeout <= 0:
        raise ConfigError(sec.key_path("request_timeout"), "must be greater than 0")
    sec.finish(FetchConfig.__dataclass_fields__)
    return fetch


def _telemetry(sec: Section) -> TelemetryConfig:
    d = TelemetryConfig()
    telemetry = TelemetryConfig(
        enabled=sec.get("enabled", as_bool, d.enabled),
        sink=sec.get("sink", as_str, d.sink),
        file_path=sec.get("file_path", as_str, None),
        control_plane_addr=sec.get("control_plane_addr", as_str, None),
        control_plane_token_env=sec.get("control_plane_token_env", as_str, None),
        sample_metadata_ops=sec.get("sample_metadata_ops", as_fraction, d.sample_metadata_ops),
        batch_size=sec.get("batch_size", as_int(1, 1_000_000), d.batch_size),
        flush_interval=sec.get("flush_interval", as_duration, d.flush_interval),
    )
    sec.finish(TelemetryConfig.__dataclass_fields__)
    return telemetry


def _control_plane(sec: Section) -> ControlPlaneConfig:
    d = ControlPlaneConfig()
    control = ControlPlaneConfig(
        rest_addr=sec.get("rest_addr", as_str, d.rest_addr),
        storage_crawl_interval=sec.get(
            "storage_crawl_interval", as_duration, d.storage_crawl_interval
        ),
    )
    sec.finish(ControlPlaneConfig.__dataclass_fields__)
    return control


def _governance(sec: Section) -> GovernanceConfig:
    d = GovernanceConfig()
    raw = sec.raw("teams")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(sec.key_path("teams"), "expected a mapping of user: team")
    teams = {}
    for user, team in (raw or {}).items():
        if not isinstance(team, str) or not team:
            raise ConfigError(sec.key_path(f"teams.{user}"), f"expected a team name, got {team!r}")
        teams[str(user)] = team  # a user without a passwd entry is named by uid: `1001: vision`
    flush = sec.get("access_flush_interval", as_duration, d.access_flush_interval)
    if flush <= 0:
        raise ConfigError(sec.key_path("access_flush_interval"), f"must be positive, got {flush}")
    governance = GovernanceConfig(
        teams=teams,
        access_flush_interval=flush,
        crawl_interval=sec.get("crawl_interval", as_duration, d.crawl_interval),
    )
    sec.finish(GovernanceConfig.__dataclass_fields__)
    return governance
