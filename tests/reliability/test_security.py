"""Security properties: private cache files and log whatever the umask, /metrics and /healthz on
this machine only by default, allow_other only when configured, object keys that cannot escape
the cache or the mount tree, and no credential in logs, metric labels or error messages."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Store
from tests.reliability import report
from warpdrive import WarpDrive, WarpDriveError, parse_config
from warpdrive.fuse.mountinfo import find_mount
from warpdrive.testing.mounts import (
    OTHER_ADDRESS,
    http_status_in,
    listening_in,
    own_network,
    start_mount,
)
from warpdrive.testing.servers import AZURITE_KEY, Server, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
]


def _not_private(root: Path) -> dict[str, str]:
    """Everything under ``root``, and ``root``, that is not a 0700 directory or a 0600 file."""
    paths = [str(root)]
    for top, dirs, files in os.walk(root):
        paths += [os.path.join(top, name) for name in dirs + files]
    assert len(paths) > 1, "nothing cached"
    modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in paths}
    return {p: oct(m) for p, m in modes.items() if m != (0o700 if os.path.isdir(p) else 0o600)}


def test_cache_files_are_private(local_store: Store) -> None:
    local_store.put("d/x.bin", os.urandom(700_000))
    with local_store.reader() as wd:
        assert len(wd.read("/src/d/x.bin")) == 700_000
    assert _not_private(local_store.cache_dir) == {}


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_a_background_start_keeps_the_cache_and_its_log_private(
    local_store: Store, tmp_path: Path, umask: int
) -> None:
    """``warpdrive-mount`` in the background makes the log's directory (by default the cache
    directory) before its process makes the cache: both, and everything below, must be private
    whatever the umask (the log and the index name every object read); the parents it makes on
    the way must not be writable by others. A log left readable by an earlier release is made
    private at the next start."""
    local_store.put("d/x.bin", os.urandom(300_000))
    cache = tmp_path / "nvme" / "wd-cache"  # neither exists yet
    point, port = tmp_path / "wd", free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {point}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {cache}, max_size: 64MB, block_size: 256KB}}\n"
        f"backends:\n{local_store.backend_yaml}"
    )

    def start() -> int:
        done = subprocess.run([sys.executable, "-m", "warpdrive.fuse.mount", "-c", str(config)],
                              capture_output=True, text=True, timeout=120, umask=umask)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split("(pid ")[1].split(",")[0])

    def stop(pid: int) -> None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while find_mount(str(point)) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if find_mount(str(point)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False)

    pid = start()
    try:
        assert (point / "src" / "d" / "x.bin").read_bytes()[:4]  # cache dirs below are made
    finally:
        stop(pid)
    log = cache / "warpdrive-mount.log"
    assert "mounted" in log.read_text()  # the log names what it serves
    assert _not_private(cache) == {}
    assert stat.S_IMODE((tmp_path / "nvme").stat().st_mode) & 0o022 == 0, "parent writable"
    log.chmod(0o644)  # as earlier releases left it
    stop(start())
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_metrics_and_health_listen_on_this_machine_only_by_default(
    local_store: Store, tmp_path: Path
) -> None:
    """/metrics, /healthz and /readyz have no authentication: with no metrics.addr configured
    they answer on 127.0.0.1 and not on the machine's other addresses. The mount runs in a
    network namespace of its own (its default port 9090 is free there, whatever else runs on
    this machine), which has one other address besides loopback."""
    for tool in ("unshare", "nsenter", "ip", "ss", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    local_store.put("f", b"x")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\ncache: {{path: {tmp_path / 'cache'}}}\n"
        f"backends:\n{local_store.backend_yaml}"
    )
    mount = start_mount(config, tmp_path / "wd", 9090, prefix=own_network())
    try:
        pid = mount.proc.pid
        assert http_status_in(pid, "http://127.0.0.1:9090/healthz") == 200
        for path in ("/metrics", "/healthz", "/readyz"):
            assert http_status_in(pid, f"http://{OTHER_ADDRESS}:9090{path}") is None, path
        assert listening_in(pid) == ["127.0.0.1:9090"]
    finally:
        mount.cleanup()


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
