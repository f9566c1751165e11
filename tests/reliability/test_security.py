"""Security properties: private cache files, allow_other only when configured, object keys
that cannot escape the cache or the mount tree, and no credential in logs, metric labels or
error messages."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Store
from tests.reliability import report
from warpdrive import WarpDrive, WarpDriveError, parse_config
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import AZURITE_KEY, Server, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
]


def test_cache_files_are_private(local_store: Store) -> None:
    local_store.put("d/x.bin", os.urandom(700_000))
    with local_store.reader() as wd:
        assert len(wd.read("/src/d/x.bin")) == 700_000
    modes = {}
    for root, dirs, files in os.walk(local_store.cache_dir):
        for name in dirs:
            modes[os.path.join(root, name)] = stat.S_IMODE(
                os.stat(os.path.join(root, name)).st_mode
            )
        for name in files:
            modes[os.path.join(root, name)] = stat.S_IMODE(
                os.stat(os.path.join(root, name)).st_mode
            )
    assert modes, "nothing cached"
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o700 if os.path.isdir(p) else 0o600)}
    assert wrong == {}


def _options(point: Path) -> list[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(point):
            return fields[3].split(",")
    raise AssertionError(f"{point} not mounted")


@pytest.mark.parametrize("allow_other", [None, True])
def test_allow_other_only_when_configured(
    local_store: Store, tmp_path: Path, allow_other: bool | None
) -> None:
    local_store.put("f", b"x")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        + (f"allow_other: {str(allow_other).lower()}\n" if allow_other is not None else "")
        + f"cache: {{path: {tmp_path / 'cache'}}}\nbackends:\n{local_store.backend_yaml}"
    )
    mount = start_mount(config, tmp_path / "wd", port)
    try:
        assert ("allow_other" in _options(tmp_path / "wd")) is bool(allow_other)
    finally:
        mount.cleanup()


def test_keys_cannot_escape_the_cache_or_the_tree(s3_store: Store, tmp_path: Path) -> None:
    payloads = {
        "ok/x.bin": b"plain",
        "ok/../escape.bin": b"dotdot",
        "ok//double.bin": b"double",
        "ok/./dot.bin": b"dot",
        "ok/..": b"bare dotdot",
        "ok/nul\u0000x": b"nul",
    }
    for key, data in payloads.items():
        try:
            s3_store.put(key, data)
        except Exception:  # a key the store itself refuses cannot reach us
            payloads[key] = b""
    wd = s3_store.reader()
    seen = {}
    for info in wd.listdir("/s3/ok"):
        assert info.name not in ("", ".", "..") and "/" not in info.name and "\0" not in info.name
        if not info.is_dir:
            seen[info.name] = wd.read(info.path)
    assert seen.get("x.bin") == b"plain"
    for name, data in seen.items():
        assert data in payloads.values(), name  # whatever is shown reads as one real object
    for bad in ("/s3/ok/../escape.bin", "/s3/../../etc/passwd", "/s3/ok/\0x"):
        with pytest.raises(WarpDriveError):
            wd.read(bad)
    cache = os.path.realpath(s3_store.cache_dir)
    for root, _, files in os.walk(s3_store.cache_dir):
        for name in files:
            assert os.path.realpath(os.path.join(root, name)).startswith(cache + os.sep)
    wd.close()
    report.add(bad_paths_tried=len(payloads) + 3)


def test_no_credential_in_logs_metrics_or_errors(azurite: Server, tmp_path: Path) -> None:
    """Two backends: one with the right key, one with a wrong one (also a secret). Errors are
    provoked on both; neither key (nor the connection string) appears anywhere we print."""
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(azurite.connection_string()).create_container(
        f"sec-{os.getpid()}"
    ).upload_blob("d/x.bin", os.urandom(300_000))
    wrong = "V3JvbmdTZWNyZXRLZXlGb3JUZXN0aW5nT25seT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PQ=="
    env = {**os.environ, "WD_SEC_KEY": AZURITE_KEY, "WD_SEC_WRONG": wrong}
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {tmp_path / 'cache'}}}\n"
        "fetch: {max_attempts: 2, initial_backoff: 10ms, request_timeout: 5s}\nbackends:\n"
        + "".join(
            f"  - name: {name}\n    type: azureblob\n"
            f"    config: {{account: devstoreaccount1, container: sec-{os.getpid()}, endpoint: '{azurite.blob_endpoint()}'}}\n"
            f"    auth: {{method: account_key, account_key_env: {var}}}\n"
            for name, var in (("good", "WD_SEC_KEY"), ("bad", "WD_SEC_WRONG"))
        )
    )
    printed: list[str] = []
    os.environ.update({"WD_SEC_KEY": AZURITE_KEY, "WD_SEC_WRONG": wrong})
    with WarpDrive(parse_config(config.read_text())) as wd:
        assert len(wd.read("/good/d/x.bin")) == 300_000
        for path in ("/bad/d/x.bin", "/good/d/missing.bin", "/bad"):
            try:
                wd.read(path) if path != "/bad" else wd.listdir(path)
            except (WarpDriveError, OSError) as exc:
                printed.append(f"{exc!s} {exc!r}")
        printed.append(repr(wd.config))
    mount = start_mount(config, tmp_path / "wd", port, "--degraded-ok")
    try:
        for path in ("good/d/x.bin", "bad/d/x.bin", "good/d/nope.bin"):
            try:
                (tmp_path / "wd" / path).read_bytes()
            except OSError as exc:
                printed.append(str(exc))
        printed.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
        printed.append(str(mount.health()))
        entry = "import sys; from warpdrive.cli import ctl_main; sys.exit(ctl_main())"
        for args in (["status"], ["stats"], ["warm", "/bad", "--recursive"]):
            done = subprocess.run([sys.executable, "-c", entry, *args, "--config", str(config)],
                                  capture_output=True, text=True, env=env)  # fmt: skip
            printed.append(done.stdout + done.stderr)
    finally:
        mount.cleanup()
    printed.append(mount.log.read_text())
    everything = "\n".join(printed)
    assert "bad" in everything and len(everything) > 1000  # we did look at real output
    for secret in (AZURITE_KEY, wrong, AZURITE_KEY[:24], wrong[:24]):
        assert secret not in everything
    report.add(secret_checks=len(printed))
