"""Config loading: the documented format, the original's format, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warpdrive.config import load_config, parse_config
from warpdrive.errors import ConfigError
from warpdrive.units import format_size, parse_duration, parse_size

ARCHITECTURE_EXAMPLE = """
mount_point: /wd
allow_other: true
metrics: {addr: ":9090"}
cache:
  path: /mnt/nvme/warpdrive-cache
  max_size: 50GB
  block_size: 4MB
  readahead_blocks: 8
  max_parallel_fetch: 32
backends:
  - name: datasets-cac
    type: azureblob
    mount_path: /datasets-cac
    config: {account: myacct, container: coco2017-wds}
    auth: {method: managed_identity}
"""

# What infra/04-gen-warpdrive-config.sh of the original wrote (rclone-style keys, strings).
ORIGINAL_FORGE_CONFIG = """
mount_point: /wd
allow_other: true
cache:
  path: /mnt/nvme/warpdrive-cache
  max_size: 50GB
  block_size: 4MB
  readahead_blocks: 8
  max_parallel_fetch: 32
  evict_high_water: 0.90
  evict_low_water: 0.80
backends:
  - name: datasets-cac
    type: azureblob
    mount_path: /datasets-cac
    config:
      account: ${STORAGE_ACCOUNT_A}
      root: coco2017-wds
      chunk_size: "4194304"
      list_chunk: "5000"
      env_auth: "true"
      use_msi: "true"
    auth:
      method: managed_identity
  - name: training-data
    type: local
    mount_path: /training
    config:
      root: /tmp/warpdrive-source
metrics:
  enabled: true
  addr: ":9090"
telemetry:
  enabled: false
  sink: nop
control_plane:
  rest_addr: ":8090"
  storage_crawl_interval: 24h
"""


def test_architecture_example_parses_to_typed_values() -> None:
    cfg = parse_config(ARCHITECTURE_EXAMPLE, env={})
    assert cfg.mount_point == "/wd"
    assert cfg.allow_other is True
    assert cfg.cache.max_size == 50 * 1024**3
    assert cfg.cache.block_size == 4 * 1024**2
    (b,) = cfg.backends
    assert (b.name, b.type, b.mount_path, b.auth.method) == (
        "datasets-cac",
        "azureblob",
        "/datasets-cac",
        "managed_identity",
    )
    assert (b.options.account, b.options.container) == ("myacct", "coco2017-wds")  # type: ignore[union-attr]


def test_original_forge_config_loads_unchanged() -> None:
    cfg = parse_config(ORIGINAL_FORGE_CONFIG, env={"STORAGE_ACCOUNT_A": "wdacct123"})
    az = cfg.backend("datasets-cac")
    assert az.options.account == "wdacct123"  # type: ignore[union-attr]
    assert az.options.container == "coco2017-wds"  # type: ignore[union-attr]
    assert az.options.list_page_size == 5000  # type: ignore[union-attr]
    assert cfg.backend("training-data").options.root == "/tmp/warpdrive-source"  # type: ignore[union-attr]
    assert cfg.control_plane.storage_crawl_interval == 86400
    assert cfg.cache.evict_low_water == 0.8


def test_defaults_when_sections_are_absent() -> None:
    cfg = parse_config("backends: []", env={})
    assert cfg.cache.block_size == 4 << 20
    assert cfg.cache.readahead_blocks == 8
    assert cfg.cache.max_parallel_fetch == 32
    assert cfg.cache.stale_ttl == 60
    assert (cfg.cache.evict_high_water, cfg.cache.evict_low_water) == (0.9, 0.8)
    assert cfg.allow_other is False
    assert cfg.passthrough is True  # used where the kernel offers it
    assert cfg.metrics.addr == "127.0.0.1:9090"  # no authentication: this machine only
    assert parse_config("passthrough: false\nbackends: []", env={}).passthrough is False


def test_governance_teams_accept_uids_and_durations() -> None:
    cfg = parse_config(
        "governance: {teams: {alice: vision, 1001: nlp}, access_flush_interval: 10s, "
        "crawl_interval: 1d}\ntelemetry: {control_plane_token_env: CP_TOKEN}",
        env={},
    )
    assert dict(cfg.governance.teams) == {"alice": "vision", "1001": "nlp"}
    assert (cfg.governance.access_flush_interval, cfg.governance.crawl_interval) == (10, 86400)
    assert cfg.telemetry.control_plane_token_env == "CP_TOKEN"


def test_env_expansion_with_default_and_literal_dollar() -> None:
    cfg = parse_config(
        "mount_point: ${MP:-/data}\ncache: {path: '/c/$$x/${USERNAME}'}", env={"USERNAME": "ada"}
    )
    assert cfg.mount_point == "/data"
    assert cfg.cache.path == "/c/$x/ada"


def test_an_unset_variable_in_auth_is_an_error_only_when_the_backend_is_used(
    tmp_path: Path,
) -> None:
    """Credentials are resolved when a backend is first used: an unset ``${VAR}`` in ``auth:``
    does not stop commands and readers that need no backend (the index, another backend)."""
    from warpdrive import WarpDrive

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(b"local")
    text = (
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 16MB, block_size: 1MB}}\n"
        "backends:\n"
        "  - {name: s3, type: s3, config: {bucket: b, endpoint_url: 'http://127.0.0.1:9'},\n"
        "     auth: {method: static, access_key_id: '${WD_T_AK}', secret_access_key: '${WD_T_SK}'}}\n"
        f"  - {{name: disk, type: local, config: {{root: {tmp_path / 'src'}}}}}\n"
    )
    cfg = parse_config(text, env={})
    assert cfg.backends[0].auth.unresolved == (
        "backends[0].auth.access_key_id",
        "environment variable 'WD_T_AK' is not set (write ${WD_T_AK:-default} for a fallback)",
    )
    assert cfg.backends[1].auth.unresolved is None
    with WarpDrive(cfg) as wd:
        assert wd.usage().bytes == 0  # the cache index needs no backend
        assert wd.read("/disk/a.bin") == b"local"  # nor does another backend
        with pytest.raises(ConfigError, match=r"^backends\[0\]\.auth\.access_key_id: .*'WD_T_AK'"):
            wd.stat("/s3/x.bin")
    resolved = parse_config(text, env={"WD_T_AK": "AKIA1", "WD_T_SK": "s3cr3t"})
    assert resolved.backends[0].auth.access_key_id == "AKIA1"
    assert resolved.backends[0].auth.unresolved is None
    # The method decides which keys there are: it is needed at once.
    with pytest.raises(ConfigError, match=r"backends\[0\]\.auth\.method: environment variable"):
        parse_config(text.replace("method: static", "method: '${WD_T_M}'"), env={})


def test_auth_defaults_follow_original_rclone_keys() -> None:
    msi = parse_config(
        "backends: [{name: a, type: azureblob, config: {account: x, container: y, use_msi: 'true'}}]",
        env={},
    )
    plain = parse_config(
        "backends: [{name: a, type: azureblob, config: {account: x, container: y}}]", env={}
    )
    assert msi.backends[0].auth.method == "managed_identity"
    assert plain.backends[0].auth.method == "default"


def test_load_config_reads_file_and_names_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mount_point: /x\n")
    assert load_config(path, env={}).mount_point == "/x"
    assert load_config(None, env={"WARPDRIVE_CONFIG": str(path)}).source == str(path)
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml", env={})


AZ = "{name: a, type: azureblob, config: {account: x, container: y}"
BAD_CONFIGS = [
    (
        f"backends: [{AZ}, auth: {{method: managed_identity}}}}, {{name: b, type: azureblob, mount_path: /b, config: {{account: x, container: y}}, auth: {{method: magic}}}}]",
        "backends[1].auth.method: unknown method 'magic' (expected one of: managed_identity, workload_identity,",
    ),
    ("cache: {block_size: 3MB}", "cache.block_size: '3MB' = 3145728 bytes: must be a power of two"),
    (
        "cache: {block_size: 16KB}",
        "cache.block_size: '16KB' = 16384 bytes: must be a power of two between 64KB",
    ),
    ("cache: {max_size: 8MB}", "cache.max_size: '8MB' = 8388608 bytes is smaller than 4 blocks"),
    ("cache: {max_sise: 8GB}", "cache.max_sise: unknown key 'max_sise' (did you mean 'max_size'?)"),
    ("cache: {max_size: lots}", "cache.max_size: invalid size 'lots'"),
    ("cache: {stale_ttl: 5 parsecs}", "cache.stale_ttl: invalid duration '5 parsecs'"),
    (
        "cache: {evict_high_water: 1.5}",
        "cache.evict_high_water: expected a number in (0, 1], got 1.5",
    ),
    (
        "cache: {evict_low_water: 0.95}",
        "cache.evict_low_water: 0.95 must be below evict_high_water (0.9)",
    ),
    (
        "cache: {readahead_blocks: -1}",
        "cache.readahead_blocks: -1 is out of range (expected 0..1024)",
    ),
    (
        "cache: {max_parallel_fetch: many}",
        "cache.max_parallel_fetch: expected an integer, got the string 'many'",
    ),
    ("cache: [1, 2]", "cache: expected a mapping, got a list"),
    ("mountpoint: /wd", "mountpoint: unknown key 'mountpoint' (did you mean 'mount_point'?)"),
    ("mount_point: wd", "mount_point: must be an absolute path, got 'wd'"),
    ("allow_other: maybe", "allow_other: expected true or false, got the string 'maybe'"),
    ("passthrough: 2", "passthrough: expected true or false, got int 2"),
    (
        "metrics: {addr: localhost}",
        "metrics.addr: expected 'host:port' or ':port', got 'localhost'",
    ),
    ("backends: {name: a}", "backends: expected a list of backends"),
    (
        "backends: [{name: a, type: local, mount_path: /.warpdrive-health, config: {root: /x}}]",
        "backends[0].mount_path: '/.warpdrive-health': /.warpdrive-health is the mount's own health",
    ),
    ("backends: [{type: local, config: {root: /x}}]", "backends[0].name: required: a name"),
    (
        "backends: [{name: 'a b', type: local, config: {root: /x}}]",
        "backends[0].name: invalid name 'a b'",
    ),
    (
        "backends: [{name: a, type: s4, config: {root: /x}}]",
        "backends[0].type: unknown backend type 's4' (did you mean 's3'?)",
    ),
    (
        "backends: [{name: a, type: local, config: {}}]",
        "backends[0].config.root: required: the directory to serve",
    ),
    (
        "backends: [{name: a, type: local, config: {root: rel/dir}}]",
        "backends[0].config.root: must be an absolute path",
    ),
    (
        "backends: [{name: a, type: local, config: {root: /x, roots: /y}}]",
        "backends[0].config.roots: unknown key 'roots' (did you mean 'root'?)",
    ),
    (
        "backends: [{name: a, type: azureblob, config: {container: y}}]",
        "backends[0].config.account: required: the storage account name",
    ),
    (
        "backends: [{name: a, type: azureblob, config: {account: x}}]",
        "backends[0].config.container: required: the blob container name",
    ),
    (
        "backends: [{name: a, type: s3, config: {}}]",
        "backends[0].config.bucket: required: the bucket name",
    ),
    (
        "backends: [{name: a, type: local, mount_path: data, config: {root: /x}}]",
        "backends[0].mount_path: must be an absolute path such as '/datasets', got 'data'",
    ),
    (
        "backends: [{name: a, type: local, mount_path: /, config: {root: /x}}]",
        "backends[0].mount_path: must not be '/'",
    ),
    (
        "backends: [{name: a, type: local, mount_path: /x/../y, config: {root: /x}}]",
        "backends[0].mount_path: invalid component '..'",
    ),
    (
        "backends: [{name: a, type: local, mount_path: /d, config: {root: /x}}, {name: b, type: local, mount_path: /d/, config: {root: /y}}]",
        "backends[1].mount_path: duplicate mount path '/d' (also backends[0], 'a')",
    ),
    (
        "backends: [{name: a, type: local, mount_path: /d, config: {root: /x}}, {name: b, type: local, mount_path: /d/e, config: {root: /y}}]",
        "backends[1].mount_path: mount path '/d/e' overlaps '/d' of backends[0] ('a')",
    ),
    (
        "backends: [{name: a, type: local, config: {root: /x}}, {name: a, type: local, mount_path: /b, config: {root: /y}}]",
        "backends[1].name: duplicate backend name 'a' (also backends[0])",
    ),
    (
        f"backends: [{AZ}, auth: {{method: account_key}}}}]",
        "backends[0].auth.account_key_env: required for method 'account_key' (or account_key_file)",
    ),
    (
        f"backends: [{AZ}, auth: {{method: account_key, account_key: abc}}}}]",
        "backends[0].auth.account_key: unknown key 'account_key' (did you mean 'account_key_env'?)",
    ),
    (
        f"backends: [{AZ}, auth: {{method: sas, client_id: abc, sas_token_env: T}}}}]",
        "backends[0].auth.client_id: not used by method 'sas' (it takes: sas_token_env, sas_token_file)",
    ),
    (
        f"backends: [{AZ}, auth: {{method: service_principal, tenant_id: t}}}}]",
        "backends[0].auth.client_id: required for method 'service_principal' (or client_id_env)",
    ),
    (f"backends: [{AZ}, auth: {{}}}}]", "backends[0].auth.method: required"),
    (
        "backends: [{name: a, type: s3, config: {bucket: b}, auth: {method: managed_identity}}]",
        "backends[0].auth.method: unknown method 'managed_identity' (expected one of: default, profile, static",
    ),
    (
        "backends: [{name: a, type: local, config: {root: '${NOT_SET_ANYWHERE}'}}]",
        "backends[0].config.root: environment variable 'NOT_SET_ANYWHERE' is not set",
    ),
    ("fetch: {request_timeout: 0}", "fetch.request_timeout: must be greater than 0"),
    ("fetch: {max_attempts: 0}", "fetch.max_attempts: 0 is out of range (expected 1..100)"),
    ("mount_point: [", "invalid YAML at line 1"),
    ("governance: {teams: [a, b]}", "governance.teams: expected a mapping of user: team"),
    ("governance: {teams: {alice: ''}}", "governance.teams.alice: expected a team name, got ''"),
    (
        "governance: {access_flush_interval: 0}",
        "governance.access_flush_interval: must be positive",
    ),
    ("governance: {crawl_every: 1d}", "governance.crawl_every: unknown key"),
    ("- a\n- b", "config: expected a mapping, got a list"),
    # A key with a newline in it (hypothesis found it) stays on the error's one line, escaped.
    ('metrics: {"ad\\ndr": x}', "metrics.ad\\ndr: unknown key 'ad\\ndr'"),
]


@pytest.mark.parametrize(
    ("text", "message"), BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS]
)
def test_bad_config_is_refused_with_one_line_naming_key_and_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    text_out = str(info.value)
    assert message in text_out
    assert "\n" not in text_out


def test_secrets_are_not_in_repr() -> None:
    cfg = parse_config(
        "backends: [{name: a, type: s3, config: {bucket: b}, auth: {method: static, "
        "access_key_id: AKIAEXAMPLEKEY, secret_access_key: s3cr3t-value}}]",
        env={},
    )
    assert "s3cr3t-value" not in repr(cfg)
    assert "AKIAEXAMPLEKEY" not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4MB", 4 << 20),
        ("50GB", 50 << 30),
        ("2TB", 2 << 40),
        ("1.5GB", int(1.5 * (1 << 30))),
        ("64KiB", 64 << 10),
        ("512", 512),
        ("1 MB", 1 << 20),
        (4096, 4096),
        ("3k", 3072),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "4XB", "-1", "1.2.3GB", "four", True, None])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60s", 60),
        ("7d", 604800),
        ("250ms", 0.25),
        ("1h30m", 5400),
        ("2w", 1209600),
        (30, 30),
        ("1.5", 1.5),
    ],
)
def test_parse_duration(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "s", "10 parsecs", "5x", "1h 30", "-5s", False])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_formats_round_trip_approximately(n: int) -> None:
    text = format_size(n)
    assert abs(parse_size(text) - n) <= max(1, n * 0.05)


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_arbitrary_yaml_text_never_crashes_the_loader(text: str) -> None:
    try:
        parse_config(text, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_immutable_prefixes_and_scan_prefetch() -> None:
    def backend(extra: str) -> str:
        return f"backends:\n  - {{name: ds, type: local, config: {{root: /tmp}}{extra}}}\n"

    assert parse_config(backend(""), env={}).backends[0].immutable == ()
    assert parse_config(backend(", immutable: true"), env={}).backends[0].immutable == ("",)
    listed = parse_config(backend(", immutable: [train/, /val/]"), env={})
    assert listed.backends[0].immutable == ("train/", "val/")
    with pytest.raises(ConfigError, match=r"backends\[0\]\.immutable: 'yes': expected true"):
        parse_config(backend(", immutable: 'yes'"), env={})
    with pytest.raises(ConfigError, match=r"backends\[0\]\.immutable: \[\]"):
        parse_config(backend(", immutable: []"), env={})
    assert parse_config("backends: []", env={}).cache.scan_prefetch is True
    off = parse_config("cache: {scan_prefetch: false}\nbackends: []", env={})
    assert off.cache.scan_prefetch is False
