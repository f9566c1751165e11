"""fio verifies what the mount serves: objects written by fio itself with a crc32c header in every
4 KiB block (the header holds the block's offset too), read back through the read-only mount at
random offsets and sizes by four jobs at once, with O_DIRECT and buffered, over a cache smaller
than the data. fio's ``verify_only`` replays a workload that writes, so it cannot run on a
read-only file set; a read workload with ``verify`` set checks every block it reads instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Store
from tests.reliability import report
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
    pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (apt: fio)"),
]
JOBS = 4
SIZE = "8M"  # per job: 32 MiB in all, twice the cache's max_size
# What writing and reading share: file names (obj.<job>.0), sizes, the verify method.
COMMON = ["--name=obj", f"--numjobs={JOBS}", f"--size={SIZE}", "--verify=crc32c",
          "--verify_state_save=0", "--output-format=json"]  # fmt: skip
READ = ["--rw=randread", "--bsrange=4k-256k", "--verify_interval=4k", "--readonly",
        "--randrepeat=0", "--verify_fatal=1"]  # fmt: skip


def _fio(directory: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """(exit code, the jobs of fio's JSON report, stderr)."""
    done = subprocess.run(["fio", f"--directory={directory}", *COMMON, *args],
                          capture_output=True, text=True, timeout=120, cwd=directory.parent)  # fmt: skip
    start = done.stdout.find("{")
    jobs = json.loads(done.stdout[start:])["jobs"] if start >= 0 else []
    return done.returncode, jobs, done.stderr + done.stdout[:start]


def test_fio_verifies_random_reads_through_the_mount_direct_and_buffered(
    local_store: Store, tmp_path: Path
) -> None:
    source = tmp_path / "source"  # the local store's root: fio writes the objects there
    (source / "fio").mkdir(parents=True)
    code, _, err = _fio(source / "fio", "--rw=write", "--bs=4k", "--do_verify=0")
    assert code == 0, err
    port = free_port()
    point = tmp_path / "wd"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {point}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 16MB, block_size: 256KB}}\n"
        f"backends:\n{local_store.backend_yaml}"
    )
    mount = start_mount(config, point, port)
    verified = 0
    try:
        for direct in ("1", "0"):
            code, jobs, err = _fio(point / local_store.name / "fio", *READ, f"--direct={direct}")
            assert code == 0 and len(jobs) == JOBS, (direct, err[-2000:])
            for job in jobs:
                assert job["error"] == 0, job
                assert job["read"]["io_bytes"] == 8 * 1024 * 1024, job["read"]
            verified += sum(job["read"]["io_bytes"] for job in jobs)
        assert mount.metric("warpdrive_fuse_errors_total", operation="read") == 0
        assert mount.metric("warpdrive_cache_checksum_errors_total") == 0
    finally:
        mount.cleanup()
    report.add(fio_bytes_verified=verified, fio_runs=2)


def test_fio_verify_catches_a_wrong_block(tmp_path: Path) -> None:
    """The control: the same reads over a copy with a block moved (right bytes, wrong offset)
    fail, so a pass above means the bytes were checked."""
    code, _, err = _fio(tmp_path, "--rw=write", "--bs=4k", "--do_verify=0")
    assert code == 0, err
    victim = tmp_path / "obj.2.0"
    data = bytearray(victim.read_bytes())
    data[4096 * 7 : 4096 * 8] = data[4096 * 9 : 4096 * 10]
    victim.write_bytes(bytes(data))
    code, _, err = _fio(tmp_path, *READ, "--direct=0", "--rw=read")
    assert code != 0 and "obj.2.0" in err, err[-2000:]
