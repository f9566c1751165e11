"""The local two-region demo end to end, at a tiny size: every phase's output, the warm run
served entirely from the cache, and nothing left mounted or running afterwards — also when it
is interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
]
ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "DEMO_SHARDS": "4",
    "DEMO_IMAGES_PER_SHARD": "20",
    "DEMO_IMAGE_SIZE": "64",
    "TRAIN_STEPS": "20",
    "TRAIN_BATCH": "8",
    "TRAIN_WORKERS": "2",
    "TRAIN_LOG_EVERY": "5",
}


def demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **TINY,
        "DEMO_WORKDIR": str(tmp_path / "work"),
        "DEMO_OUT_DIR": str(tmp_path / "out"),
        "DEMO_LOG_DIR": str(tmp_path / "logs"),
        **extra,
    }


def assert_nothing_left(output: str, work: Path) -> None:
    pids = [int(p) for p in re.findall(r"PID (\d+)", output)]
    assert len(pids) >= 4, output  # Azurite, two WAN proxies, the mount
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert str(work) not in Path("/proc/mounts").read_text()


def test_demo_runs_every_phase(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "local_demo.py")],
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    phases = ["Phase 1", "Phase 2", "Phase 3", "Phase 4", "observability", "Capabilities"]
    assert [out.index(p) for p in phases] == sorted(out.index(p) for p in phases)
    assert (
        "datasets-cac/" in out and "datasets-wus3/" in out and "(2 shards: shard-000000.tar" in out
    )
    assert re.search(r"^step=20 images_per_sec=\S+ data_ms=\S+ compute_ms=\S+ loss=\S+$", out, re.M)
    for row in ("Wall time", "Throughput (images)", "Avg data load / step", "Cache hit rate",
                "Cache hits", "Cache misses", "Backend data fetched"):  # fmt: skip
        assert row in out
    for part in ("FUSE read latency", "█", "hits / misses", "readahead", "Backends",
                 "Credential refreshes", "$ warpdrive-ctl stats", "$ warpdrive-ctl usage",
                 "$ warpdrive-ctl stale", "shard-000003.tar"):  # fmt: skip
        assert part in out, part
    # The parts of the original's output under the histogram, in the cache section and after
    # the governance commands, from this run's own figures.
    mean = re.search(r"^    Mean: ([\d,]+) μs across ([\d,]+) reads$", out, re.M)
    assert mean and int(mean[1].replace(",", "")) > 0 and int(mean[2].replace(",", "")) > 0, out
    used = re.search(
        r"^    cache used     .* \(([\d.]+)% of the .+ cache disk; ([\d.]+)% of max_size\)$",
        out,
        re.M,
    )
    assert used and float(used[1]) > 0 and float(used[2]) > 0, out  # shares, never a 0.0%
    other = out[out.index("Other available commands:") : out.index("Capabilities")]
    for name in ("warm", "quota", "move", "status", "serve"):
        assert f"warpdrive-ctl {name} " in other, other
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    cold, warm = results["cold"]["metrics"], results["warm"]["metrics"]
    assert cold["misses"] > 0 and cold["bytes_fetched"] > 0
    assert warm["hit_rate"] == 1.0 and warm["misses"] == 0 and warm["bytes_fetched"] == 0
    assert (tmp_path / "out" / "results.md").read_text().count("|") > 30
    with Image.open(tmp_path / "out" / "images_per_sec.png") as chart:
        assert chart.format == "PNG" and chart.size == (1600, 900)
    for phase in ("cold", "warm"):
        log = (tmp_path / "logs" / f"{phase}.log").read_text()
        assert log.count("step=") == 4 and "summary wall_ms=" in log
    assert_nothing_left(out + done.stderr, tmp_path / "work")


def test_demo_cleans_up_when_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "local_demo.py")],
        env=demo_env(tmp_path, TRAIN_STEPS="100000", TRAIN_LOG_EVERY="50"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step=") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of cold training
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted; cleaning up" in output
    assert_nothing_left(output, tmp_path / "work")
