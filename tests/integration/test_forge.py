"""forge end to end: the generator writing to directories and straight to Azurite, 50-step
runs through the cache in-process (cold, then warm) and through a real FUSE mount, the
console script with the original's flags."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import webdataset
from PIL import Image

from forge.gen import generate
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import AZURITE_KEY, Server, free_port

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(
    r"^step=(\d+) images_per_sec=\d+\.\d data_ms=\d+\.\d\d compute_ms=\d+\.\d\d loss=(\d+\.\d{4})$"
)
SHARDS, IMAGES, SIZE = 4, 24, 48
_containers = itertools.count()


def forge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "forge", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_generator_writes_valid_webdataset_split_even_odd(azurite: Server, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    forge("gen-shards", "--out", str(a), "--out", str(b), "--shards", "5",
          "--images-per-shard", "6", "--image-size", "32", "--seed", "7")  # fmt: skip
    assert sorted(digests(a)) == [f"shard-{i:06d}.tar" for i in (0, 2, 4)]
    assert sorted(digests(b)) == [f"shard-{i:06d}.tar" for i in (1, 3)]
    paths = sorted([*map(str, a.iterdir()), *map(str, b.iterdir())], key=os.path.basename)
    samples = list(webdataset.WebDataset(paths, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:08d}" for i in range(30)]
    for sample in samples:
        assert set(sample) >= {"jpg", "cls"}
        assert 0 <= int(sample["cls"]) < 10
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            assert img.format == "JPEG" and img.size == (32, 32)
    # The same flags give the same bytes; a backend destination gets them too.
    generate([str(tmp_path / "again")], 5, 6, 32, 10, 7, log=lambda _: None)
    assert digests(tmp_path / "again") == {**digests(a), **digests(b)}
    from azure.storage.blob import BlobServiceClient

    container = f"gen{next(_containers)}-{os.getpid()}"
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string()
    generate([f"az://{container}/train"], 5, 6, 32, 10, 7, log=lambda _: None)
    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    uploaded = {
        blob.name.removeprefix("train/"): hashlib.sha256(
            client.get_blob_client(container, blob.name).download_blob().readall()
        ).hexdigest()
        for blob in client.get_container_client(container).list_blobs()
    }
    assert uploaded == digests(tmp_path / "again")


@pytest.fixture
def regions(azurite: Server, tmp_path: Path) -> Path:
    """The generated set in two Azurite containers (even/odd), and a WarpDrive config for them
    (metrics on a free port, for the mount)."""
    n = next(_containers)
    names = {"datasets-cac": f"cac{n}-{os.getpid()}", "datasets-wus3": f"wus{n}-{os.getpid()}"}
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string()
    generate([f"az://{c}/train" for c in names.values()], SHARDS, IMAGES, SIZE, log=lambda _: None)
    backends = "".join(
        f"  - name: {name}\n    type: azureblob\n"
        f"    config: {{account: devstoreaccount1, container: {container}, "
        f"endpoint: '{azurite.blob_endpoint()}'}}\n"
        "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
        for name, container in names.items()
    )
    config = tmp_path / "warpdrive.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{addr: '127.0.0.1:{free_port()}'}}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 256MB, block_size: 256KB}}\n"
        f"backends:\n{backends}"
    )
    return config


def train(config: Path, *extra: str) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    out = config.parent / f"run{next(_containers)}.json"
    done = forge(
        "train", "--steps", "50", "--batch-size", "16", "--num-workers", "2", "--log-every",
        "10", "--seed", "3", "--json-out", str(out), *extra,
        env={"WD_TEST_AZURE_KEY": AZURITE_KEY},
    )  # fmt: skip
    lines = done.stdout.splitlines()
    steps = [LOG_LINE.match(line) for line in lines if line.startswith("step=")]
    assert all(steps), lines
    assert lines[-2 if "metrics" in lines[-1] else -1].startswith("summary wall_ms=")
    return [(int(m.group(1)), m.group(2)) for m in steps if m], json.loads(out.read_text())


def test_fifty_steps_through_the_cache_cold_then_warm_and_through_the_mount(
    regions: Path,
) -> None:
    roots = ["--train-root-a", "warpdrive://datasets-cac/train",
             "--train-root-b", "warpdrive://datasets-wus3/train"]  # fmt: skip
    cached = ["--reader", "warpdrive", "--warpdrive-config", str(regions)]
    cold_log, cold = train(regions, *roots, *cached)
    assert [step for step, _ in cold_log] == [10, 20, 30, 40, 50]
    assert set(cold) == {"config", "roots", "summary", "log", "metrics", "layout"}
    assert cold["roots"] == {roots[1]: SHARDS // 2, roots[3]: SHARDS // 2}
    summary = cold["summary"]
    assert summary["steps"] == 50 and summary["images"] == 800
    for key in ("wall_ms", "images_per_sec", "data_ms_per_step", "compute_ms_per_step"):
        assert summary[key] > 0
    assert summary["final_loss"] < summary["first_loss"] - 0.3  # the labels are learnable
    metrics = cold["metrics"]
    assert metrics["source"] == "cache-index" and metrics["misses"] > 0
    assert set(metrics["bytes_fetched_by_backend"]) == {"datasets-cac", "datasets-wus3"}
    warm_log, warm = train(regions, *roots, *cached)
    assert warm_log == cold_log  # same seed: same batches, same model, same losses
    assert warm["metrics"]["misses"] == 0 and warm["metrics"]["bytes_fetched"] == 0
    assert warm["metrics"]["hit_rate"] == 1.0

    point = regions.parent / "wd"
    port = int(re.search(r"127\.0\.0\.1:(\d+)", regions.read_text()).group(1))  # type: ignore[union-attr]
    mount = start_mount(regions, point, port)
    try:
        posix_roots = ["-train-root-a", str(point / "datasets-cac/train"),
                       "-train-root-b", str(point / "datasets-wus3/train")]  # fmt: skip
        url = f"http://127.0.0.1:{port}/metrics"
        mount_log, through_mount = train(regions, *posix_roots, "--metrics-url", url)
    finally:
        mount.cleanup()
    assert mount_log == cold_log  # plain files under the mount: the same samples, in order
    m = through_mount["metrics"]
    # warm: the kernel reads the cache files itself (passthrough) where the kernel can
    assert m["source"] == "metrics-url" and m["fuse_reads"] + m["passthrough_opens"] > 0
    assert m["misses"] == 0 and m["bytes_fetched"] == 0  # warm from the in-process runs


def test_original_invocation_and_decode(regions: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    generate([str(local / "a"), str(local / "b")], 2, 8, 32, log=lambda _: None)
    run_file = tmp_path / "demo.yaml"
    run_file.write_text(
        f"train_root_a: {local / 'a'}\ntrain_root_b: {local / 'b'}\nsteps: 4\n"
        "batch_size: 4\nnum_workers: 1\nseed: 42\nlog_every: 2\n"
    )
    done = forge("-config", str(run_file), "-steps", "6", "-log-every", "3", "--decode")
    assert [line.split()[0] for line in done.stdout.splitlines() if line.startswith("step=")] == [
        "step=3",
        "step=6",
    ]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "forge",
            "-config",
            str(run_file),
            "-train-root-a",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        bad.returncode != 0 and f"training root {tmp_path / 'none'}: not a directory" in bad.stderr
    )
