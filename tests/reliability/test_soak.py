"""A bounded concurrency soak: 8 processes reading at random while warm, evict and
stale --evict run against the same cache held near 95% of max_size. No error, every byte
exact, the size bound held throughout."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Store
from tests.reliability import report
from warpdrive import WarpDrive, parse_config

pytestmark = pytest.mark.integration
SECONDS = float(os.environ.get("WD_SOAK_SECONDS", "15"))
READERS = 8
BLOCK = 256 * 1024
MAX_SIZE = 24 * 1024 * 1024


def _reader(config_text: str, source: str, name: str, keys: list[str], seed: int, until: float,
            out: mp.Queue) -> None:  # fmt: skip
    rnd = random.Random(seed)
    ops = errors = mismatches = 0
    wd = WarpDrive(parse_config(config_text))
    while time.monotonic() < until:
        key = rnd.choice(keys)
        size = os.path.getsize(os.path.join(source, key))
        offset = rnd.randrange(size)
        length = rnd.randrange(1, min(3 * BLOCK, size - offset) + 1)
        try:
            got = wd.read(f"/{name}/{key}", offset, length)
        except Exception:  # any error at all fails the soak
            errors += 1
            continue
        with open(os.path.join(source, key), "rb") as f:
            mismatches += got != os.pread(f.fileno(), length, offset)
        ops += 1
    wd.close()
    out.put((ops, errors, mismatches))


def _ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    entry = "import sys; from warpdrive.cli import ctl_main; sys.exit(ctl_main())"
    return subprocess.run([sys.executable, "-c", entry, *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_random_readers_with_warm_evict_and_stale_at_95_percent(
    local_store: Store, tmp_path: Path
) -> None:
    rnd = random.Random(3)
    keys = [f"d{i % 4}/obj-{i:03d}.bin" for i in range(40)]
    for key in keys:
        local_store.put(key, rnd.randbytes(rnd.randrange(200_000, 1_400_000)))
    source = str(tmp_path / "source")  # the local store's root
    text = (
        f"cache: {{path: {tmp_path / 'cache'}, max_size: {MAX_SIZE}, block_size: 256KB, "
        "evict_high_water: 0.97, evict_low_water: 0.95, max_parallel_fetch: 8}\n"
        f"backends:\n{local_store.backend_yaml}"
    )
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert (
        _ctl(config, "warm", f"/{local_store.name}", "--recursive").returncode == 0
    )  # fills to ~95%
    until = time.monotonic() + SECONDS
    out: mp.Queue = mp.get_context("fork").Queue()
    readers = [
        mp.get_context("fork").Process(
            target=_reader, args=(text, source, local_store.name, keys, i, until, out)
        )
        for i in range(READERS)
    ]
    for proc in readers:
        proc.start()
    admin_ops, peak = 0, 0
    bound = MAX_SIZE + 8 * BLOCK  # max_size plus one fetch window in flight
    with WarpDrive(parse_config(text)) as watcher:
        while time.monotonic() < until:
            command = rnd.choice([
                ("warm", f"/{local_store.name}/d{rnd.randrange(4)}", "--recursive"),
                ("evict", f"/{local_store.name}/{rnd.choice(keys)}"),
                ("stale", "--days", "0", "--evict"),
            ])  # fmt: skip
            done = _ctl(config, *command)
            assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])
            admin_ops += 1
            peak = max(peak, watcher.usage().bytes)
            assert watcher.usage().bytes <= bound
    results = [out.get(timeout=60) for _ in readers]
    for proc in readers:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    ops = sum(r[0] for r in results)
    assert sum(r[1] for r in results) == 0 and sum(r[2] for r in results) == 0
    assert ops > 100 and admin_ops >= 3
    assert peak >= 0.8 * MAX_SIZE  # the cache really was near full while it ran
    report.add(soak_seconds=SECONDS, soak_reads=ops, soak_admin_commands=admin_ops)
