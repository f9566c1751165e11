"""Bad input, generated (hypothesis): config files, tar shards, paths and warpdrive-ctl argument
lists. Each gets a clear one-line error of its own type, or is accepted — never a crash, never
a path outside its place."""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import report
from tests.shardgen import make_shard
from warpdrive import ConfigError, InvalidPathError, NotFoundError, WarpDrive, parse_config
from warpdrive_torch.tario import ShardError, iter_members

# Examples per test: 300 in CI (`make test` draws them from hypothesis's fixed seed: the "ci"
# profile in tests/conftest.py); `make reliability` sets WD_FUZZ_EXAMPLES=2500, 11,250 inputs.
EXAMPLES = int(os.environ.get("WD_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.timeout(max(300, EXAMPLES // 2))
RAN: Counter[str] = Counter()  # inputs tried, by kind: config, tar, path, ctl

KEYS = ["mount_point", "allow_other", "metrics", "cache", "fetch", "backends", "governance",
        "telemetry", "path", "max_size", "block_size", "name", "type", "config", "auth", "method",
        "account", "container", "bucket", "root", "teams", "readahead_blocks", "evict_low_water"]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
    st.sampled_from(["", "4MB", "1GB", "-1", "0", "azureblob", "s3", "local", "/tmp/x", "10s", "${NOPE}"]),
    st.text(max_size=20),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_configs_load_or_fail_with_one_line_naming_the_key(data: dict[str, object]) -> None:
    RAN["config"] += 1
    try:
        parse_config(yaml.safe_dump(data), env={})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_config_text_is_refused_cleanly(text: str) -> None:
    RAN["config"] += 1
    try:
        parse_config(text, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc)


GOOD_TAR, _ = make_shard(0, 4)


@SETTINGS
@given(st.data())
def test_damaged_tars_raise_shard_errors_only(data: st.DataObject) -> None:
    RAN["tar"] += 1
    blob = bytearray(GOOD_TAR)
    for _ in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        at = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if action == "flip" and blob:
            blob[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del blob[at:]
        elif action == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=600))
        else:
            blob[at : at + 512] = bytes(min(512, len(blob) - at))
    for skip in (False, True):
        try:
            for member in iter_members(io.BytesIO(bytes(blob)), "fuzz.tar", skip_data=skip):
                assert member.size >= 0 and member.offset >= 0
        except ShardError as exc:
            assert str(exc).startswith("fuzz.tar") and "\n" not in str(exc)


@pytest.fixture(scope="module")
def wd(tmp_path_factory: pytest.TempPathFactory) -> WarpDrive:
    root = tmp_path_factory.mktemp("fuzzsrc")
    (root / "a").mkdir()
    (root / "a" / "file.bin").write_bytes(b"x" * 100)
    cache = tmp_path_factory.mktemp("fuzzcache")
    return WarpDrive(parse_config(
        f"mount_point: /wd\ncache: {{path: {cache}, max_size: 16MB, block_size: 64KB}}\n"
        f"backends:\n  - {{name: src, type: local, config: {{root: {root}}}}}\n"
    ))  # fmt: skip


path_parts = st.one_of(
    st.sampled_from(
        ["..", ".", "", "src", "a", "file.bin", "wd", "\0", "é", "ñ/..", "x" * 300, "//"]
    ),
    st.text(max_size=12),
)


@SETTINGS
@given(
    parts=st.lists(path_parts, max_size=8),
    prefix=st.sampled_from(["", "/", "warpdrive://", "/wd/"]),
)
def test_paths_resolve_inside_their_backend_or_are_refused(
    wd: WarpDrive, parts: list[str], prefix: str
) -> None:
    RAN["path"] += 1
    path = prefix + "/".join(parts)
    try:
        backend, key, norm = wd.locate(path)
    except (InvalidPathError, NotFoundError) as exc:
        assert "\n" not in str(exc)
        return
    assert norm.startswith("/") and "//" not in norm and "\0" not in norm
    assert ".." not in norm.split("/") and ".." not in key.split("/")
    if backend is not None:
        try:
            wd.read(path, 0, 10)
        except (NotFoundError, InvalidPathError, IsADirectoryError, OSError) as exc:
            assert "\n" not in str(exc)


CTL_TOKENS = ["warm", "stats", "evict", "status", "usage", "stale", "crawl", "quota", "team", "move",
              "job-start", "job-report", "set", "list", "rm", "add", "--recursive", "--json",
              "--format", "csv", "--days", "-1", "--min-size", "1ZB", "--max-size", "--workers", "0",
              "--team", "--soft", "--hard", "--job-id", "--user", "--status", "--src", "--dst",
              "/src/a", "src:a", "--group-by", "nobody", "--backend", "nope", "--now", "yesterday"]  # fmt: skip


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(st.one_of(st.sampled_from(CTL_TOKENS), st.text(max_size=10)), max_size=7))
def test_ctl_arguments_give_an_exit_code_and_one_line(
    argv: list[str], tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from warpdrive.ctl.main import main

    RAN["ctl"] += 1
    config = _ctl_config(tmp_path_factory)
    try:
        code = main([*argv, "--config", str(config)])
    except SystemExit as exc:  # argparse: usage errors exit 2, --help 0
        code = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code)
    assert "Traceback" not in out.err + out.out
    if code == 2 and out.err and not out.err.startswith("usage:"):
        assert len(out.err.strip().splitlines()) == 1, out.err


_CTL_CONFIG: list[Path] = []


def _ctl_config(factory: pytest.TempPathFactory) -> Path:
    if not _CTL_CONFIG:
        root = factory.mktemp("ctlsrc")
        (root / "a").mkdir()
        (root / "a" / "f").write_bytes(random.Random(1).randbytes(1000))
        path = factory.mktemp("ctlcfg") / "config.yaml"
        path.write_text(
            f"mount_point: {factory.mktemp('ctlwd')}\n"
            f"cache: {{path: {factory.mktemp('ctlcache')}, max_size: 16MB, block_size: 64KB}}\n"
            f"backends:\n  - {{name: src, type: local, config: {{root: {root}}}}}\n"
        )
        _CTL_CONFIG.append(path)
    return _CTL_CONFIG[0]


def test_every_kind_of_input_was_fuzzed() -> None:
    """Runs last: each of the four kinds got inputs (with the others deselected, nothing to say)."""
    if not RAN:
        pytest.skip("no fuzz test ran in this session")
    assert set(RAN) == {"config", "tar", "path", "ctl"}, RAN
    assert min(RAN.values()) >= min(EXAMPLES // 2, 50), RAN
    report.add(fuzz_inputs=sum(RAN.values()), **{f"fuzz_inputs_{k}": v for k, v in RAN.items()})
    assert tarfile  # the damaged tars above started as valid ones from the standard library
