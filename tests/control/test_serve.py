"""`warpdrive-ctl serve` as a process: its one line once it listens (and none when it cannot),
and the dashboard in headless Chromium: a degraded node names its failing backend, the hit-rate
chart has a 0 % line and a time axis."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control.conftest import headless_chromium

pytestmark = pytest.mark.integration
TOKEN = "serve-test-token-0123456789"
CTL = "import sys; from warpdrive.cli import ctl_main; sys.exit(ctl_main())"


def serve_cmd(addr: str, db: Path) -> list[str]:
    return [sys.executable, "-c", CTL, "serve", "--addr", addr, "--database", f"sqlite:///{db}"]


def first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The process's first line on stdout, or "" if none came within ``timeout``."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`warpdrive-ctl serve` on a port of its choosing (``:0``), read from its line."""
    proc = subprocess.Popen(
        serve_cmd("127.0.0.1:0", tmp_path / "control.db"),
        env={**os.environ, "WARPDRIVE_API_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = first_line(proc, timeout=60)
        match = re.fullmatch(r"serving on http://127\.0\.0\.1:(\d+) \(database (\S+)\)\n", line)
        assert match, (line, proc.poll())
        assert match[2] == f"sqlite:///{tmp_path / 'control.db'}"
        yield int(match[1]), proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def api(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def test_serve_prints_one_line_once_it_listens(
    served: tuple[int, subprocess.Popen[str]],
) -> None:
    port, proc = served
    # No retry: the line came only once the socket listened, so the first try is answered.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
        assert json.loads(reply.read())["status"] == "ok"
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert out == ""  # nothing after the one line


def test_serve_on_a_taken_port_fails_and_prints_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            serve_cmd(f"127.0.0.1:{port}", tmp_path / "control.db"),
            env={**os.environ, "WARPDRIVE_API_TOKEN": TOKEN},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert f"warpdrive-ctl serve: cannot listen on 127.0.0.1:{port}" in done.stderr


def heartbeat(port: int, node: str, hits: int, misses: int, **fields: Any) -> None:
    body = {"node": node, "cache_bytes": 1 << 20, "max_size": 1 << 30, "hits": hits,
            "misses": misses, "healthy": True, **fields}  # fmt: skip
    api(port, "nodes/heartbeat", body)


def test_the_dashboard_names_failing_backends_and_draws_hit_rate_over_time(
    served: tuple[int, subprocess.Popen[str]],
) -> None:
    port, _ = served
    # gpu-1: one of two backends fails its check (the node still serves: "healthy" is true),
    # four heartbeats a second apart, its hit rate rising. gpu-2: its own checks fail.
    backends = {"datasets-cac": True, "datasets-wus3": False}
    for i, (hits, misses) in enumerate([(0, 0), (10, 90), (60, 140), (160, 140)]):
        if i:
            time.sleep(1.1)
        heartbeat(port, "gpu-1", hits, misses, backends=backends)
    heartbeat(port, "gpu-2", 0, 0, healthy=False, backends={"datasets-cac": True})
    assert [p["hit_rate"] for p in api(port, "nodes/hit-rate")] == [0.1, 0.5, 1.0]

    browser = headless_chromium()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        deadline = time.monotonic() + 30
        while not (updated := browser.find_element("id", "updated").text):
            assert time.monotonic() < deadline, "the dashboard never finished a refresh"
            time.sleep(0.2)
        assert updated.startswith("updated"), updated  # set once everything is drawn
        svg = browser.find_element("id", "hitrate").get_attribute("innerHTML") or ""
        nodes = browser.find_element("id", "nodes").text
    finally:
        browser.quit()
    assert "gpu-1 degraded (backend datasets-wus3)" in nodes
    assert "gpu-2 degraded (mount or cache)" in nodes
    y_labels = re.findall(r'class="tick-y"[^>]*>([^<]*)<', svg)
    assert y_labels == ["100%", "50%", "0%"]
    zero = re.search(r'<line class="zero"[^>]* y1="([\d.]+)"', svg)
    assert zero, svg
    times = re.findall(r'class="tick-x"[^>]*>([^<]*)<', svg)
    assert len(times) >= 2 and all(re.fullmatch(r"\d\d:\d\d:\d\d( [AP]M)?", t) for t in times), (
        times
    )
    assert "local time" in svg
    points = re.search(r'<polyline[^>]* points="([^"]+)"', svg)
    assert points, svg
    ys = [float(p.split(",")[1]) for p in points[1].split()]
    # The line rises (SVG rows grow downwards) and 100 % sits on the top label's row.
    assert len(ys) == 3 and ys[0] > ys[1] > ys[2] and ys[0] < float(zero[1])
