"""The FUSE mount, for real: a warpdrive-mount process over local files, Azurite and moto S3,
driven with ls, stat, cat, dd and os.pread from threads and processes."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import Store, run_threads
from warpdrive.fuse.mount import find_mount, probe_mount
from warpdrive.fuse.mountinfo import read_health_file
from warpdrive.testing.mounts import Mount, start_mount
from warpdrive.testing.servers import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
]
KB = 1024
BS = 256 * KB
T = TypeVar("T")


def write_config(store: Store, tmp_path: Path, **cache: str) -> tuple[Path, Path, int]:
    point = tmp_path / "wd"
    port = free_port()
    settings = {"path": str(store.cache_dir), "max_size": "256MB", "block_size": "256KB", **cache}
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {point}\n"
        f"metrics: {{addr: '127.0.0.1:{port}'}}\n"
        "cache:\n"
        + "".join(f"  {k}: {v}\n" for k, v in settings.items())
        + "fetch: {initial_backoff: 20ms, max_backoff: 200ms, request_timeout: 5s, max_attempts: 3}\n"
        + f"backends:\n{store.backend_yaml}"
    )
    return config, point, port


@pytest.fixture
def shards(store: Store) -> dict[str, bytes]:
    rnd = random.Random(1)
    data = {f"train/shard-{i:06d}.tar": rnd.randbytes(3 * BS + i * 1000) for i in range(5)}
    data["train/empty.bin"] = b"" if store.empty_objects else b"x"
    for key, payload in data.items():
        store.put(key, payload)
    return data


@pytest.fixture
def mounted(store: Store, shards: dict[str, bytes], tmp_path: Path) -> Iterator[Mount]:
    config, point, port = write_config(store, tmp_path, stale_ttl="1s", list_ttl="1s")
    mount = start_mount(config, point, port)
    yield mount
    mount.cleanup()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_shell_tools_see_exact_bytes(
    mounted: Mount, store: Store, shards: dict[str, bytes]
) -> None:
    root = mounted.path(store.name)
    listing = subprocess.run(
        ["ls", str(root / "train")], capture_output=True, text=True, check=True
    )
    assert listing.stdout.split() == sorted(Path(k).name for k in shards)
    assert subprocess.run(
        ["ls", str(mounted.point)], capture_output=True, text=True
    ).stdout.split() == [store.name]
    for key, data in shards.items():
        path = root / key
        size = subprocess.run(
            ["stat", "-c", "%s %F", str(path)], capture_output=True, text=True, check=True
        )
        assert size.stdout.split()[0] == str(len(data))
        cat = subprocess.run(["cat", str(path)], capture_output=True, check=True)
        assert sha(cat.stdout) == sha(data)
        dd = subprocess.run(
            ["dd", f"if={path}", "bs=1M", "status=none"], capture_output=True, check=True
        )
        assert sha(dd.stdout) == sha(data)
    assert (root / "train").is_dir()
    with pytest.raises(FileNotFoundError):
        (root / "train" / "missing.tar").stat()


def test_the_mount_is_read_only(mounted: Mount, store: Store) -> None:
    train = mounted.path(store.name, "train")
    for attempt in (
        lambda: (train / "new.bin").write_bytes(b"x"),
        lambda: os.open(train / "shard-000000.tar", os.O_RDWR),
        lambda: (train / "shard-000000.tar").unlink(),
        lambda: (train / "sub").mkdir(),
        lambda: os.rename(train / "shard-000000.tar", train / "x"),
    ):
        with pytest.raises(OSError, match="Read-only file system") as info:
            attempt()
        assert info.value.errno == errno.EROFS


def test_random_preads_from_threads_and_processes(
    mounted: Mount, store: Store, shards: dict[str, bytes]
) -> None:
    keys = [k for k in shards if shards[k]]
    errors: list[str] = []

    def worker(seed: int) -> None:
        r = random.Random(seed)
        fds = {k: os.open(mounted.path(store.name, k), os.O_RDONLY) for k in keys}
        try:
            for _ in range(60):
                key = r.choice(keys)
                data = shards[key]
                off = r.randrange(len(data))
                n = r.randrange(1, 300 * KB)
                if os.pread(fds[key], n, off) != data[off : off + n]:
                    errors.append(f"{key}@{off}+{n}")
        finally:
            for fd in fds.values():
                os.close(fd)

    run_threads(worker, 8)
    assert errors == []
    # One open file, eight threads: the mount serves concurrent reads of one handle.
    key = keys[0]
    shared = os.open(mounted.path(store.name, key), os.O_RDONLY)
    os.posix_fadvise(shared, 0, 0, os.POSIX_FADV_DONTNEED)

    def same_fd(seed: int) -> None:
        r = random.Random(seed)
        data = shards[key]
        for _ in range(40):
            off = r.randrange(len(data))
            n = r.randrange(1, 200 * KB)
            if os.pread(shared, n, off) != data[off : off + n]:
                errors.append(f"shared fd {off}+{n}")

    run_threads(same_fd, 8)
    os.close(shared)
    assert errors == []
    ctx = mp.get_context("spawn")
    args = [
        (str(mounted.path(store.name)), {k: sha(v) for k, v in shards.items()}, s) for s in range(4)
    ]
    with ctx.Pool(4) as pool:
        assert all(pool.starmap(_check_in_process, args))


def _check_in_process(root: str, digests: dict[str, str], seed: int) -> bool:
    r = random.Random(seed)
    keys = list(digests)
    r.shuffle(keys)
    for key in keys:
        with open(os.path.join(root, key), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digests[key]:
                return False
    return True


def test_metrics_move_for_a_cold_then_a_warm_read(
    mounted: Mount, store: Store, shards: dict[str, bytes]
) -> None:
    path = mounted.path(store.name, "train", "shard-000003.tar")
    misses0 = mounted.metric("warpdrive_cache_miss_total")
    fetched0 = mounted.metric("warpdrive_backend_bytes_read_total")
    assert path.read_bytes() == shards["train/shard-000003.tar"]
    mounted.wait_released()  # a handle's counts are complete once its RELEASE is answered
    misses1 = mounted.metric("warpdrive_cache_miss_total")
    fetched1 = mounted.metric("warpdrive_backend_bytes_read_total")
    assert misses1 > misses0, (
        misses0,
        misses1,
        fetched0,
        fetched1,
        mounted.metric("warpdrive_cache_hit_total"),
        mounted.proc.pid,
        mounted.metrics_port,
        mounted.log.read_text()[-3000:],
    )
    assert fetched1 - fetched0 >= len(shards["train/shard-000003.tar"])
    assert mounted.metric("warpdrive_fuse_operations_total", operation="read") > 0
    assert mounted.metric("warpdrive_fuse_operation_duration_seconds_count", operation="read") > 0
    # Warm: drop the kernel's copy so the read reaches the mount, which must hit its cache.
    # (A file read by the kernel itself, in passthrough, counts its hits at its RELEASE, which
    # the kernel sends after close() returns: awaited before each count.)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    mounted.wait_released()
    hits1 = mounted.metric("warpdrive_cache_hit_total")
    assert path.read_bytes() == shards["train/shard-000003.tar"]
    mounted.wait_released()
    assert mounted.metric("warpdrive_cache_hit_total") > hits1
    assert mounted.metric("warpdrive_backend_bytes_read_total") == fetched1
    assert mounted.metric("warpdrive_cache_size_bytes") > 0


def test_directory_lookups_and_missing_names_are_not_backend_errors(
    mounted: Mount, store: Store
) -> None:
    """`ls` of directories stats them first (the store answers "a directory"), a missing name
    is "no such object": answers of a healthy store, so /metrics counts the requests and no
    errors (the error-ratio alert and the dashboard stay quiet)."""
    store.put("other/a/x.bin", b"x")
    store.put("other/b/y.bin", b"y")
    store.put("other/z.bin", b"z")
    root = mounted.path(store.name)
    listing = subprocess.run(
        ["ls", "-R", str(root / "other")], capture_output=True, text=True, check=True
    )
    assert {"a", "b", "z.bin", "x.bin", "y.bin"} <= set(listing.stdout.split())
    with pytest.raises(FileNotFoundError):
        (root / "other" / "missing.bin").stat()
    with pytest.raises(FileNotFoundError):
        os.listdir(root / "nowhere")
    assert mounted.metric("warpdrive_backend_request_duration_seconds_count", operation="stat") >= 3
    assert mounted.metric("warpdrive_backend_errors_total") == 0


def test_a_changed_object_is_seen_once_the_ttl_passes(mounted: Mount, store: Store) -> None:
    path = mounted.path(store.name, "train", "shard-000001.tar")
    before = path.read_bytes()
    new = os.urandom(2 * BS + 77)
    store.put("train/shard-000001.tar", new)
    time.sleep(1.5)  # stale_ttl and list_ttl are 1s
    # Past stale_ttl the known version is still the first answer while a background listing
    # revalidates it (docs/read-path.md): within one revalidation the new one is seen, and no
    # read in between mixes the two.
    deadline = time.monotonic() + 10
    while True:
        data = path.read_bytes()
        assert data in (before, new)
        if data == new or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert data == new and path.stat().st_size == len(new)
    assert before != new


def test_sigterm_unmounts_and_kill_9_restart_serves_warm_blocks(
    store: Store, shards: dict[str, bytes], tmp_path: Path
) -> None:
    config, point, port = write_config(store, tmp_path)
    mount = start_mount(config, point, port)
    try:
        for key, data in shards.items():
            assert mount.path(store.name, key).read_bytes() == data
        mount.stop(signal.SIGKILL)  # leaves a dead mount behind
        with pytest.raises(OSError, match="not connected"):
            os.listdir(point)
        mount = start_mount(config, point, port)  # cleans the stale mount, then mounts
        assert "stale mount" in mount.log.read_text()
        for key, data in shards.items():
            assert mount.path(store.name, key).read_bytes() == data
        assert mount.metric("warpdrive_backend_bytes_read_total") == 0
        assert (
            mount.metric("warpdrive_backend_request_duration_seconds_count", operation="read") == 0
        )
        mount.stop(signal.SIGTERM)
        assert mount.proc.returncode == 0
        assert find_mount(str(point)) is None
    finally:
        mount.cleanup()


def test_a_killed_mount_passes_a_stat_but_not_a_read_of_its_health_file(
    tmp_path: Path, local_store: Store
) -> None:
    """After kill -9 the kernel still answers a stat of the mount point, and of a file it served,
    from the attributes it cached (``mountpoint`` passes); an open and a read reach the process
    or fail. So the health checks (/healthz and /readyz, warpdrive-ctl status, the chart's
    probe, the Slurm prolog) read the mount's health file, which the mount serves itself: on a
    dead mount that fails at once (ENOTCONN), not after a timeout."""
    local_store.put("a.bin", b"abc")
    config, point, port = write_config(local_store, tmp_path)
    mount = start_mount(config, point, port)
    try:
        assert read_health_file(str(point)) == ("ok", mount.proc.pid)
        assert os.listdir(point) == [local_store.name]  # looked up by name, never listed
        assert (point / local_store.name / "a.bin").read_bytes() == b"abc"

        # Each /readyz (and /healthz) opens and reads it through the kernel.
        def counts() -> list[float]:
            return [mount.metric("warpdrive_fuse_operations_total", operation=op)
                    for op in ("open", "read")]  # fmt: skip

        before = counts()
        for _ in range(3):
            assert mount.health("/readyz")[0] == 200
        after = counts()
        assert all(a >= b + 3 for a, b in zip(after, before, strict=True)), (before, after)

        mount.stop(signal.SIGKILL)
        started = time.monotonic()
        assert os.stat(point / local_store.name / "a.bin").st_size == 3  # cached attributes
        assert subprocess.run(["mountpoint", "-q", str(point)]).returncode == 0
        assert read_health_file(str(point)) == ("stale", None)
        assert time.monotonic() - started < 2.0
    finally:
        mount.cleanup()


def test_cross_file_prefetch_fetches_the_next_files_before_they_are_opened(
    mounted: Mount, store: Store, shards: dict[str, bytes]
) -> None:
    root = mounted.path(store.name, "train")
    for i in range(2):
        (root / f"shard-{i:06d}.tar").read_bytes()
    deadline = time.monotonic() + 10
    expected = sum(len(shards[f"train/shard-{i:06d}.tar"]) for i in range(5))
    while time.monotonic() < deadline:
        if mounted.metric("warpdrive_backend_bytes_read_total") >= expected:
            break
        time.sleep(0.1)
    assert mounted.metric("warpdrive_backend_bytes_read_total") >= expected
    fetched = mounted.metric("warpdrive_backend_bytes_read_total")
    hits = mounted.metric("warpdrive_readahead_hit_total")
    passthrough = mounted.metric("warpdrive_fuse_passthrough_opens_total")
    for i in range(2, 5):
        assert (root / f"shard-{i:06d}.tar").read_bytes() == shards[f"train/shard-{i:06d}.tar"]
    # Cached before they were opened: nothing more fetched, and their reads found prefetched
    # blocks (or, cached whole, the kernel read their cache files itself: passthrough).
    assert mounted.metric("warpdrive_backend_bytes_read_total") == fetched
    hits_now = mounted.metric("warpdrive_readahead_hit_total")
    passthrough_now = mounted.metric("warpdrive_fuse_passthrough_opens_total")
    assert hits_now > hits or passthrough_now >= passthrough + 3


def wait_for(what: Callable[[], T], done: Callable[[T], bool], timeout: float = 30) -> T:
    """Poll ``what()`` until ``done`` holds for its value (an event awaited, not a fixed sleep);
    that value. Fails with the last value when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s; last: {value}"
        time.sleep(0.1)


def test_healthz_is_liveness_and_readyz_needs_every_backend(
    tmp_path: Path, local_store: Store
) -> None:
    """/healthz: 200 while this process serves its mount, backends down or not (the agent must
    not be restarted through an outage: cached reads go on); their state is in the body.
    /readyz: 200 only while the cache and *every* backend answer."""
    from azure.storage.blob import BlobServiceClient

    from tests.conftest import _azure_store
    from warpdrive.testing.servers import start_azurite

    port = free_port()
    azurite = start_azurite(port=port)
    try:
        store = _azure_store(tmp_path, azurite)
        store.put("x.bin", b"cached before the outage")
        local_store.put("y.bin", b"local")
        config, point, metrics_port = write_config(store, tmp_path)
        config.write_text(config.read_text() + local_store.backend_yaml)
        mount = start_mount(config, point, metrics_port)
        try:
            assert (point / "az" / "x.bin").read_bytes() == b"cached before the outage"
            checks = {"mount": "ok", "cache": "ok", "backend:az": "ok", "backend:src": "ok"}
            status, body = mount.health("/readyz")
            assert (status, body["status"], body["ready"]) == (200, "ok", True), body
            assert body["checks"] == checks
            assert (body["mount_point"], body["pid"]) == (str(point), mount.proc.pid)
            status, body = mount.health("/healthz")
            assert (status, body["live"], body["checks"]) == (200, True, checks), body

            azurite.stop()
            # Liveness never waits for the backends, and stays 200 while their answers turn.
            status, body = wait_for(
                mount.health,
                lambda r: r[0] != 200 or r[1]["checks"]["backend:az"] != "ok",  # type: ignore[index]
            )
            assert status == 200 and body["status"] == "degraded", body
            assert (body["live"], body["ready"]) == (True, False)
            assert body["checks"]["mount"] == body["checks"]["backend:src"] == "ok"  # type: ignore[index]
            status, body = mount.health("/readyz")
            assert (status, body["status"], body["ready"]) == (503, "degraded", False), body
            assert body["checks"]["backend:az"] != "ok"  # type: ignore[index]
            assert body["checks"]["backend:src"] == "ok"  # type: ignore[index]
            # Cached reads go on through the outage; the uncached one fails (EIO), the mount stays.
            assert (point / "az" / "x.bin").read_bytes() == b"cached before the outage"
            assert (point / "src" / "y.bin").read_bytes() == b"local"
            assert mount.health()[0] == 200

            azurite = start_azurite(port=port)  # same endpoint, empty again
            BlobServiceClient.from_connection_string(azurite.connection_string()).create_container(
                store.backend_yaml.split("container: ")[1].split(",")[0]
            )
            status, body = wait_for(lambda: mount.health("/readyz"), lambda r: r[0] == 200)
            assert body["status"] == "ok" and body["checks"] == checks
            assert mount.proc.poll() is None
        finally:
            mount.cleanup()
    finally:
        azurite.stop()


def test_a_metrics_port_in_use_stops_the_start(tmp_path: Path, local_store: Store) -> None:
    """A second mount given a metrics.addr another mount serves must not start (its /healthz
    would be the other's): exit 2, the reason in one line, nothing mounted."""
    local_store.put("a.bin", b"abc")
    config, point, port = write_config(local_store, tmp_path)
    first = start_mount(config, point, port)
    other = tmp_path / "other"
    other.mkdir()
    other_config = other / "config.yaml"
    other_config.write_text(
        config.read_text()
        .replace(f"mount_point: {point}", f"mount_point: {other / 'wd'}")
        .replace(str(local_store.cache_dir), str(other / "cache"))
    )
    run = None
    try:
        for argv in ([], ["--foreground"]):
            run = run_mount(other_config, *argv)
            assert run.returncode == 2, (run.stdout, run.stderr)
            assert "mounted at" not in run.stdout
            assert f"metrics.addr 127.0.0.1:{port}: Address already in use" in run.stderr
            assert run.stderr.strip().count("\n") == 0, run.stderr
            assert find_mount(str(other / "wd")) is None
        assert first.health()[1]["pid"] == first.proc.pid  # the port is still the first's
    finally:
        first.cleanup()
        if run is not None and "(pid " in run.stdout:  # the old behaviour: it did mount
            stop_pid(pid_of(run))
            unmounted(other / "wd")


def test_startup_errors_are_one_line(tmp_path: Path, local_store: Store) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache: {block_size: 3MB}\n")
    run = subprocess.run(
        [sys.executable, "-m", "warpdrive.fuse.mount", "-c", str(bad), "-f"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "cache.block_size: '3MB'" in run.stderr

    dead = free_port()
    unreachable = tmp_path / "down.yaml"
    unreachable.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{enabled: false}}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 1MB}}\n"
        "fetch: {request_timeout: 1s}\nbackends:\n"
        "  - name: far\n    type: azureblob\n"
        f"    config: {{account: devstoreaccount1, container: c, endpoint: 'http://127.0.0.1:{dead}/devstoreaccount1'}}\n"
        "    auth: {method: anonymous}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "warpdrive.fuse.mount", "-c", str(unreachable), "-f"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "backend unreachable: far:" in run.stderr
    assert "--degraded-ok" in run.stderr
    mount = start_mount(unreachable, tmp_path / "wd", 0, "--degraded-ok")
    try:
        assert os.listdir(tmp_path / "wd") == ["far"]
        with pytest.raises(OSError, match="Input/output error") as info:
            (tmp_path / "wd" / "far" / "x.bin").read_bytes()
        assert info.value.errno == errno.EIO  # the backend is down: EIO, and the mount stays up
        assert os.listdir(tmp_path / "wd") == ["far"]
        assert "starting degraded" in mount.log.read_text()
    finally:
        mount.cleanup()


def test_a_huge_directory_lists_completely(tmp_path: Path, local_store: Store) -> None:
    root = tmp_path / "source" / "huge"
    root.mkdir(parents=True)
    count = 100_000
    for i in range(count):
        (root / f"f{i:06d}").touch()
    config, point, port = write_config(local_store, tmp_path)
    mount = start_mount(config, point, port)
    try:
        names = os.listdir(point / local_store.name / "huge")
        assert len(names) == count
        assert sorted(names)[:2] == ["f000000", "f000001"]
        # Several kernel replies, and the backend listed page by page (1000 a page).
        assert mount.metric("warpdrive_fuse_operations_total", operation="readdir") > 1
        pages = mount.metric("warpdrive_backend_request_duration_seconds_count", operation="list")
        assert pages >= count // 1000
    finally:
        mount.cleanup()


def run_mount(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``warpdrive-mount -c CONFIG EXTRA`` (in the background unless told), to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "warpdrive.fuse.mount", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def pid_of(run: subprocess.CompletedProcess[str]) -> int:
    return int(run.stdout.split("(pid ")[1].split(",")[0])


def gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaps has too)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stop_pid(pid: int, sig: int = signal.SIGTERM) -> None:
    """Stop a background mount we started, by pid, and wait until it has ended."""
    if not gone(pid):
        os.kill(pid, sig)
    wait_for(lambda: gone(pid), bool)


def unmounted(point: Path) -> None:
    """Wait until nothing is mounted at ``point``; a stale mount left there is cleared."""
    entry = wait_for(
        lambda: find_mount(str(point)), lambda e: e is None or probe_mount(str(point)) == "stale"
    )
    if entry is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False)
    assert find_mount(str(point)) is None


def test_background_start_reports_only_a_mount_its_own_process_serves(
    tmp_path: Path, local_store: Store
) -> None:
    local_store.put("a.bin", b"abc")
    config, point, port = write_config(local_store, tmp_path)
    started: list[int] = []
    try:
        first = run_mount(config)
        assert first.returncode == 0, first.stderr
        started.append(pid_of(first))
        assert f"mounted at {point} (pid {started[0]}," in first.stdout
        assert (point / local_store.name / "a.bin").read_bytes() == b"abc"

        # The same config again: its process finds the mount point taken and says so; the
        # start must not pass the first one's mount off as its own.
        second = run_mount(config)
        if "(pid " in second.stdout:
            started.append(pid_of(second))
        assert second.returncode == 2, (second.stdout, second.stderr)
        assert "mounted at" not in second.stdout
        assert f"{point} is already mounted by a running file system" in second.stderr
        assert second.stderr.strip().count("\n") == 0, second.stderr
        assert (point / local_store.name / "a.bin").read_bytes() == b"abc"

        # kill -9 leaves a stale mount behind; a start that then fails (the backend's root is
        # gone) must say why, not report the dead mount.
        stop_pid(started[0], signal.SIGKILL)
        assert probe_mount(str(point)) == "stale"  # ENOTCONN (or ECONNABORTED)
        source = tmp_path / "source"
        source.rename(tmp_path / "away")
        third = run_mount(config)
        if "(pid " in third.stdout:
            started.append(pid_of(third))
        assert third.returncode == 2, (third.stdout, third.stderr)
        assert "mounted at" not in third.stdout
        assert "backend unreachable: src:" in third.stderr
        assert third.stderr.strip().count("\n") == 0, third.stderr

        # Over the same stale mount, a start that works reports its own process, which serves.
        (tmp_path / "away").rename(source)
        fourth = run_mount(config)
        assert fourth.returncode == 0, fourth.stderr
        started.append(pid_of(fourth))
        assert not gone(started[-1])
        assert (point / local_store.name / "a.bin").read_bytes() == b"abc"
        reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
        assert json.loads(reply.read())["pid"] == started[-1]
    finally:
        for pid in started:
            stop_pid(pid)
        unmounted(point)


def test_background_start_gives_the_childs_reason_in_one_line(
    tmp_path: Path, local_store: Store
) -> None:
    """A start that fails before mounting (here: the mount point cannot be made) prints the
    reason its process gave, in one line, and exits with its status."""
    config, point, _ = write_config(local_store, tmp_path)
    point.parent.joinpath("blocker").write_text("a file")
    config.write_text(config.read_text().replace(str(point), str(point.parent / "blocker" / "wd")))
    run = run_mount(config)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "mounted at" not in run.stdout
    assert "cannot create mount point" in run.stderr
    assert run.stderr.strip().count("\n") == 0, run.stderr
