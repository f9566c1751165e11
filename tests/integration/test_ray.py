"""Ray Data reads ``warpdrive://`` through the fsspec file system: parquet and binary files,
byte-exact against the source. Ray runs from its own venv (scripts/install-deps.sh makes
``.venv-ray`` over this Python's packages), in a subprocess: a local Ray cluster of 2 CPUs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY_PYTHON = ROOT / ".venv-ray/bin/python"

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = """
import json, sys
import ray
from warpdrive.fsspec_fs import WarpDriveFileSystem

config, out = sys.argv[1:3]
fs = WarpDriveFileSystem(config)
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
table = ray.data.read_parquet("warpdrive://src/parts", filesystem=fs)
files = ray.data.read_binary_files("src/blobs", filesystem=fs, include_paths=True)
with open(out, "w") as f:
    json.dump({
        "x": sorted(int(r["x"]) for r in table.take_all()),
        "blobs": {r["path"]: r["bytes"].hex() for r in files.take_all()},
    }, f)
ray.shutdown()
"""


def test_ray_data_reads_parquet_and_binary_files(tmp_path: Path) -> None:
    if not RAY_PYTHON.exists():
        pytest.fail("Ray is not installed: run scripts/install-deps.sh (it makes .venv-ray)")
    src = tmp_path / "src"
    (src / "parts").mkdir(parents=True)
    (src / "blobs").mkdir()
    for i in range(3):
        frame = pd.DataFrame(
            {"x": range(i * 100, i * 100 + 100), "s": [f"v{j}" for j in range(100)]}
        )
        frame.to_parquet(src / "parts" / f"p{i}.parquet")
    blobs = {f"b{i}.bin": os.urandom(1000 * i + 7) for i in range(4)}
    for name, data in blobs.items():
        (src / "blobs" / name).write_bytes(data)
    config = tmp_path / "wd.yaml"
    config.write_text(
        f"cache: {{path: {tmp_path / 'cache'}}}\nmetrics: {{enabled: false}}\n"
        f"backends: [{{name: src, type: local, config: {{root: {src}}}}}]\n"
    )
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [str(RAY_PYTHON), "-c", SCRIPT, str(config), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["x"] == list(range(300))
    got = {Path(p).name: bytes.fromhex(h) for p, h in result["blobs"].items()}
    assert got == blobs
