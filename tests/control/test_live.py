"""The control plane with real parts: `warpdrive-ctl serve` (uvicorn, SQLite), a real FUSE mount
reporting to it, `warpdrive-ctl job-report`, the dashboard in headless Chromium; then the
control plane stopped while the mount keeps serving, and the buffered records arriving once it
is back. A quota set centrally reaches the node's cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.control.conftest import headless_chromium
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import free_port, wait_for_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
]
TOKEN = "live-test-token-0123456789"
CTL = "import sys; from warpdrive.cli import ctl_main; sys.exit(ctl_main())"


def start_control_plane(port: int, db: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CTL, "serve", "--addr", f"127.0.0.1:{port}", "--database", f"sqlite:///{db}"],
        env={**os.environ, "WARPDRIVE_API_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for_port(port, proc, "warpdrive-ctl serve")
    return proc


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=10) as reply:
        return json.loads(reply.read())


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, AssertionError, KeyError, IndexError, StopIteration):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        time.sleep(0.3)


def team_read(port: int, team: str) -> int:
    return next(u["bytes_read"] for u in get(port, "usage?group_by=team") if u["group"] == team)


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CTL, *args, "--config", str(config)],
                          capture_output=True, text=True, env={**os.environ, "WD_CP_TOKEN": TOKEN})  # fmt: skip


def read_and_report(tmp_path: Path, config: Path, shards: range, job: str) -> None:
    """Read some shards through the mount (exact sizes), then report the job."""
    for i in shards:
        data = (tmp_path / "wd" / "src" / "train" / f"shard-{i}.tar").read_bytes()
        assert len(data) == 300_000 + i
    done = ctl(config, "job-report", "--job-id", job, "--user", "root", "--status", "0")
    assert done.returncode == 0, done.stderr


def test_a_mount_reports_the_dashboard_shows_and_outages_buffer(tmp_path: Path) -> None:
    source = tmp_path / "src" / "train"
    source.mkdir(parents=True)
    for i in range(4):
        (source / f"shard-{i}.tar").write_bytes(os.urandom(300_000 + i))
    cp_port, metrics_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{addr: '127.0.0.1:{metrics_port}'}}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 64KB}}\n"
        "governance: {teams: {root: vision}, access_flush_interval: 1s}\n"
        f"telemetry: {{control_plane_addr: 'http://127.0.0.1:{cp_port}', control_plane_token_env: WD_CP_TOKEN, flush_interval: 1}}\n"
        f"backends:\n  - {{name: src, type: local, config: {{root: {tmp_path / 'src'}}}}}\n"
    )
    os.environ["WD_CP_TOKEN"] = (
        TOKEN  # the mount reads the token from the variable the config names
    )
    server = start_control_plane(cp_port, tmp_path / "control.db")
    mount = start_mount(config, tmp_path / "wd", metrics_port)
    try:
        assert ctl(config, "job-start", "--job-id", "job-42").returncode == 0
        read_and_report(tmp_path, config, range(2), "job-42")
        node = eventually(lambda: get(cp_port, "nodes")[0])
        assert (
            node["mount_point"] == str(tmp_path / "wd")
            and node["healthy"]
            and node["cache_bytes"] > 0
        )
        assert eventually(lambda: team_read(cp_port, "vision") >= 600_001)
        assert eventually(lambda: [j for j in get(cp_port, "jobs") if j["job_id"] == "job-42"])
        assert ctl(config, "crawl").returncode == 0  # the node's crawl reaches stale and growth
        stale = eventually(lambda: get(cp_port, "stale?days=0"))
        assert {s["key"] for s in stale} == {f"train/shard-{i}.tar" for i in range(4)}
        assert get(cp_port, "growth")[0]["objects"] == 4

        # A quota set centrally reaches the node's cache with the next heartbeat.
        body = json.dumps({"team": "vision", "soft": 10_000_000, "hard": 20_000_000}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{cp_port}/api/v1/quota", data=body, method="PUT",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        urllib.request.urlopen(request, timeout=10).read()
        eventually(lambda: "vision" in ctl(config, "quota", "list").stdout)

        _dashboard_shows(cp_port, [node["node"], "job-42", "vision"])

        # The control plane goes away: the mount keeps serving, and what it records waits.
        server.terminate()
        server.wait(timeout=30)
        read_and_report(tmp_path, config, range(2, 4), "job-43")
        time.sleep(2.5)  # a few report rounds fail meanwhile
        assert mount.proc.poll() is None and mount.health()[0] == 200
        server = start_control_plane(cp_port, tmp_path / "control.db")
        eventually(lambda: team_read(cp_port, "vision") >= 1_200_006)
        assert eventually(lambda: [j for j in get(cp_port, "jobs") if j["job_id"] == "job-43"])
        assert "unreachable" in mount.log.read_text() and TOKEN not in mount.log.read_text()
    finally:
        mount.cleanup()
        server.terminate()
        server.wait(timeout=30)


def _dashboard_shows(port: int, texts: list[str]) -> None:
    browser = headless_chromium()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        page = eventually(
            lambda: all(t in browser.page_source for t in texts) and browser.page_source, timeout=30
        )
        assert "error:" not in browser.find_element("id", "updated").text
        assert "healthy" in page
    finally:
        browser.quit()
