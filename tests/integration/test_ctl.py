"""warpdrive-ctl for real: the command run as a process beside a live warpdrive-mount over
Azurite (and moto S3 for ``move``), with readers of several uids going through the mount."""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.conftest import Store
from warpdrive import WarpDrive, load_config
from warpdrive.fs import ROOT_INODE, WarpDriveFS
from warpdrive.teams import username
from warpdrive.testing.mounts import Mount, start_mount
from warpdrive.testing.servers import Server, free_port, start_wan_proxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
]
KB = 1024
BS = 256 * KB
# Two readers with no passwd entry: the mount names them by uid.
UID_A, UID_B = 54321, 54322

# The JSON fields docs/ctl.md documents for each command.
FIELDS = {
    "warm": {
        "objects",
        "bytes_fetched",
        "bytes_already_cached",
        "seconds",
        "mb_per_s",
        "skipped_for_budget",
        "failed",
        "interrupted",
    },
    "warm --dry-run": {"objects", "bytes_to_fetch", "bytes_cached", "skipped_for_budget"},
    "stats": {
        "cache_path",
        "objects",
        "blocks",
        "bytes",
        "max_size",
        "utilization",
        "hits",
        "misses",
        "evictions",
        "hit_ratio",
        "byte_hit_ratio",
        "bytes_served_cache",
        "bytes_served_backend",
        "bytes_fetched",
        "pinned_objects",
        "pinned_bytes",
        "pin_blocked",
        "bytes_by_backend",
    },
    "status": {
        "healthy",
        "mount_point",
        "mount",
        "mount_pid",
        "metrics",
        "cache_path",
        "cache_bytes",
        "cache_utilization",
        "cache_writable",
        "backends",
    },
    "evict": {"path", "objects", "blocks", "bytes"},
    "usage": {"group", "bytes_read", "files_accessed", "hit_ratio", "cached_bytes", "last_access"},
    "stale": {"path", "size", "last_access", "modified_at", "cached_bytes", "source", "backend"},
    "crawl": {"backend", "objects", "bytes"},
    "quota list": {"team", "backend", "soft", "hard", "usage_bytes", "status"},
    "team list": {"user", "team", "source"},
    "move": {"src", "dst", "size", "sha256", "deleted"},
    "job-start": {"job_id", "started_at", "hits", "misses", "bytes_fetched"},
    "job-report": {
        "job_id",
        "user",
        "status",
        "node",
        "started_at",
        "finished_at",
        "hits",
        "misses",
        "hit_ratio",
        "bytes_fetched",
        "bytes_served",
        "sent_to_control_plane",
    },
}


def ctl(
    config: Path,
    *args: str,
    expect: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``warpdrive-ctl ARGS --config CONFIG`` (in ``env``); check its exit status."""
    done = subprocess.run(
        [sys.executable, "-m", "warpdrive.ctl.main", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
    return done


def ctl_json(
    config: Path, command: str, *args: str, expect: int = 0, env: dict[str, str] | None = None
) -> Any:
    """``ctl`` with ``--json``: the parsed output, checked for the documented fields."""
    out = json.loads(ctl(config, *command.split(), *args, "--json", expect=expect, env=env).stdout)
    key = f"{command} --dry-run" if "--dry-run" in args else command
    if key in FIELDS:
        for record in out if isinstance(out, list) else [out]:
            assert FIELDS[key] <= record.keys(), (command, record)
    return out


def write_config(
    tmp_path: Path,
    backends_yaml: str,
    cache: dict[str, str] | None = None,
    extra: str = "",
    point: Path | None = None,
) -> tuple[Path, Path, int]:
    point = point or tmp_path / "wd"
    port = free_port()
    settings = {
        "path": str(tmp_path / "cache"),
        "max_size": "256MB",
        "block_size": "256KB",
        **(cache or {}),
    }
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {point}\n"
        "allow_other: true\n"
        f"metrics: {{addr: '127.0.0.1:{port}'}}\n"
        "cache:\n"
        + "".join(f"  {k}: {v}\n" for k, v in settings.items())
        + "fetch: {initial_backoff: 20ms, max_backoff: 200ms, request_timeout: 5s, max_attempts: 3}\n"
        + extra
        + f"backends:\n{backends_yaml}"
    )
    return config, point, port


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_all(store: Store, prefix: str, count: int, size: int, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    data = {f"{prefix}/shard-{i:03d}.tar": rnd.randbytes(size + i * 1000) for i in range(count)}
    for key, payload in data.items():
        store.put(key, payload)
    return data


def read_through_mount(path: Path) -> bytes:
    """The file's bytes from the mount itself, not from the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_as(uid: int, paths: list[Path]) -> dict[Path, str]:
    """SHA-256 of each file as read by ``uid`` (sha256sum run as that user)."""
    done = subprocess.run(
        ["sha256sum", *map(str, paths)],
        capture_output=True,
        text=True,
        user=uid,
        group=uid,
        check=True,
        timeout=120,
    )
    return {
        Path(line.split("  ", 1)[1]): line.split("  ", 1)[0] for line in done.stdout.splitlines()
    }


def wait_until(what: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``what`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            assert value, f"not true within {timeout}s: {what}"
            return value
        time.sleep(0.2)


def backend_requests(mount: Mount) -> float:
    return mount.metric("warpdrive_backend_request_duration_seconds_count")


def quiet(mount: Mount) -> float:
    """Wait until the mount's backend requests stop moving (background fetches done)."""
    last = backend_requests(mount)
    while True:
        time.sleep(1.0)
        now = backend_requests(mount)
        if now == last:
            return now
        last = now


@pytest.fixture
def mounted_az(tmp_path: Path, azure_store: Store) -> Iterator[tuple[Mount, Path, Store]]:
    """A mount over an Azurite container: 4 shards in train/ for readers, 4 in val/ to warm."""
    config, point, port = write_config(
        tmp_path,
        azure_store.backend_yaml,
        extra="governance: {access_flush_interval: 0.2s}\n",
    )
    mount = start_mount(config, point, port)
    yield mount, config, azure_store
    mount.cleanup()


def test_commands_run_beside_four_readers_and_warm_leaves_nothing_to_fetch(
    mounted_az: tuple[Mount, Path, Store],
) -> None:
    mount, config, store = mounted_az
    train = put_all(store, "train", 4, 3 * BS, seed=1)
    val = put_all(store, "val", 4, 2 * BS + 7, seed=2)
    base = mount.path(store.name)
    errors: list[str] = []
    passes = [0] * 4
    stop = threading.Event()

    def reader(i: int) -> None:
        keys = sorted(train)
        while not stop.is_set():
            for key in keys[i:] + keys[:i]:
                try:
                    if read_through_mount(base / key) != train[key]:
                        errors.append(f"reader {i}: wrong bytes in {key}")
                except OSError as exc:
                    errors.append(f"reader {i}: {key}: {exc}")
            passes[i] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        stats = ctl_json(config, "stats")
        assert stats["cache_path"] == str(config.parent / "cache")

        status = ctl_json(config, "status")
        assert status["healthy"] is True, status
        assert status["mount"] == "ok" and status["metrics"] == "ok"
        assert status["backends"][store.name]["status"] == "ok"

        val_bytes = sum(map(len, val.values()))
        plan = ctl_json(config, "warm", str(base / "val"), "--dry-run")
        assert plan["objects"] == 4 and plan["bytes_to_fetch"] == val_bytes
        # Paths under the mount, mount-relative and warpdrive:// name the same objects.
        first = ctl_json(config, "warm", str(base / "val"))
        assert first["objects"] == 4 and first["failed"] == {}
        assert first["bytes_fetched"] == val_bytes
        again = ctl_json(config, "warm", f"warpdrive://{store.name}/val", "--workers", "4")
        assert again["bytes_fetched"] == 0 and again["bytes_already_cached"] == val_bytes

        # Evicting the files being read: the readers refetch, their bytes stay exact.
        evicted = ctl_json(config, "evict", f"/{store.name}/train", "--recursive")
        assert evicted[0]["path"] == f"/{store.name}/train"

        ctl(config, "team", "add", username(os.getuid()), "ml")
        teams = ctl_json(config, "team list")
        assert {"user": username(os.getuid()), "team": "ml", "source": "warpdrive-ctl"} in teams
        quotas = ctl_json(config, "quota set", "--team", "ml", "--soft", "100MB", "--hard", "200MB")
        assert quotas == ctl_json(config, "quota list")
        crawled = ctl_json(config, "crawl")
        assert crawled == [
            {"backend": store.name, "objects": 8, "bytes": sum(map(len, {**train, **val}.values()))}
        ]
        assert ctl_json(config, "stale", "--days", "1") == []
        job = ctl_json(config, "job-start", "--job-id", "42")
        assert job["job_id"] == "42"
        report = ctl_json(config, "job-report", "--job-id", "42", "--user", "u", "--status", "0")
        assert report["sent_to_control_plane"] is False
        copied = ctl_json(
            config,
            "move",
            "--src",
            f"{store.name}:val/shard-000.tar",
            "--dst",
            f"{store.name}:copies/",
        )
        assert copied[0]["sha256"] == sha(val["val/shard-000.tar"])
        assert ctl_json(config, "quota rm", "--team", "ml") == []
        assert username(os.getuid()) not in {
            r["user"] for r in ctl_json(config, "team rm", username(os.getuid()))
        }
        wait_until(lambda: min(passes) >= 2, timeout=60)
        usage = ctl_json(config, "usage", "--group-by", "backend")
        assert usage[0]["group"] == store.name and usage[0]["bytes_read"] > 0
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []

    # After warm, reading val/ through the mount asks the backend for nothing (once the
    # directory is listed, which also tells the mount every object's size and version).
    assert sorted(os.listdir(base / "val")) == sorted(k.split("/")[1] for k in val)
    before = quiet(mount)
    misses = mount.metric("warpdrive_cache_misses_total")
    for key, payload in val.items():
        assert read_through_mount(base / key) == payload
    assert backend_requests(mount) == before
    assert mount.metric("warpdrive_cache_misses_total") == misses

    mount.stop()
    down = ctl_json(config, "status", expect=1)
    assert down["healthy"] is False and down["mount"] == "not mounted"


def test_status_takes_health_only_from_the_process_serving_this_mount(
    tmp_path: Path, local_store: Store
) -> None:
    """`status` asks metrics.addr's /healthz and checks that the answer is this mount's: the
    mount point asked about, and the device mounted there now. An answer from another mount, or
    from a process whose mount is hidden, is not "metrics ok"."""
    local_store.put("a.bin", b"abc")
    config, point, port = write_config(tmp_path, local_store.backend_yaml)
    mount = start_mount(config, point, port)
    tmpfs = False
    try:
        ok = ctl_json(config, "status")
        assert ok["healthy"] is True and ok["metrics"] == "ok", ok
        assert ok["mount_pid"] == mount.proc.pid

        # Another config whose mount is not there, pointing at the same port.
        elsewhere = tmp_path / "elsewhere.yaml"
        elsewhere.write_text(
            config.read_text().replace(f"mount_point: {point}", f"mount_point: {tmp_path / 'b'}")
        )
        other = ctl_json(elsewhere, "status", expect=1)
        assert other["mount"] == "not mounted"
        assert (
            other["metrics"]
            == f"answered by the mount at {point} (pid {mount.proc.pid}), not this one"
        )
        assert other["mount_pid"] is None

        # A file system stacked on the mount point hides ours: the process still answers, but
        # it does not serve what is mounted there now — /healthz says so (503), and so does status.
        subprocess.run(["mount", "-t", "tmpfs", "wd-cover", str(point)], check=True)
        tmpfs = True
        hidden = ctl_json(config, "status", expect=1)
        assert hidden["mount"] == "another file system is mounted there (tmpfs)"
        assert hidden["metrics"].startswith(
            f"answered by pid {mount.proc.pid}, which does not serve the mount here"
        ), hidden
        code, body = mount.health()
        assert (code, body["status"], body["live"]) == (503, "down", False), body
        assert "is not this process's" in body["checks"]["mount"]  # type: ignore[index]

        subprocess.run(["umount", str(point)], check=True)
        tmpfs = False
        assert mount.health()[0] == 200
        assert ctl_json(config, "status")["metrics"] == "ok"
    finally:
        if tmpfs:
            subprocess.run(["umount", str(point)], check=False)
        mount.cleanup()


def test_status_reads_the_mount_and_says_stale_once_its_process_is_killed(
    tmp_path: Path, local_store: Store
) -> None:
    """`status` opens and reads the mount's health file, which names the pid serving it: known
    here with metrics disabled (no /healthz to ask). After kill -9 a stat of the mount point
    still passes on the kernel's cached attributes; status says `stale` from that open's
    ENOTCONN, at once, not `no answer` after its timeout."""
    local_store.put("a.bin", b"abc")
    config, point, port = write_config(tmp_path, local_store.backend_yaml)
    text = config.read_text()
    config.write_text(text.replace(f"{{addr: '127.0.0.1:{port}'}}", "{enabled: false}"))
    mount = start_mount(config, point, port)
    try:
        ok = ctl_json(config, "status")
        assert (ok["healthy"], ok["mount"], ok["metrics"]) == (True, "ok", "disabled"), ok
        assert ok["mount_pid"] == mount.proc.pid
        mount.stop(signal.SIGKILL)
        assert os.stat(point).st_ino == 1  # the mount's root, from the kernel's cache
        down = ctl_json(config, "status", expect=1)
        assert (down["healthy"], down["mount"], down["mount_pid"]) == (False, "stale", None), down
    finally:
        mount.cleanup()


def test_two_users_are_counted_apart_and_quotas_hold_across_a_restart(
    tmp_path: Path, azure_store: Store
) -> None:
    a, b = username(UID_A), username(UID_B)
    # Other users cannot enter pytest's (private) temporary directory: mount elsewhere.
    point = Path(tempfile.mkdtemp(prefix="wd-ctl-"))
    point.chmod(0o755)
    config, point, port = write_config(
        tmp_path,
        azure_store.backend_yaml,
        cache={"max_size": "6MB"},
        extra=f"governance: {{access_flush_interval: 0.2s, teams: {{'{a}': vision, '{b}': nlp}}}}\n",
        point=point,
    )
    vision = put_all(azure_store, "a", 12, 2 * BS, seed=3)
    nlp = put_all(azure_store, "b", 2, 2 * BS, seed=4)
    vision_bytes, nlp_bytes = sum(map(len, vision.values())), sum(map(len, nlp.values()))
    ctl(config, "quota", "set", "--team", "vision", "--soft", "1MiB", "--hard", "2MiB")

    def check(mount: Mount) -> None:
        base = mount.path(azure_store.name)
        got = read_as(UID_B, [base / k for k in nlp])
        assert got == {base / k: sha(v) for k, v in nlp.items()}
        got = read_as(UID_A, [base / k for k in vision])  # three times the hard limit
        assert got == {base / k: sha(v) for k, v in vision.items()}
        quotas = {q["team"]: q for q in ctl_json(config, "quota list")}
        assert quotas["vision"]["hard"] == 2 << 20 and quotas["vision"]["soft"] == 1 << 20
        assert 0 < quotas["vision"]["usage_bytes"] <= 2 << 20
        assert quotas["vision"]["status"] == "WARNING"  # over soft, held under hard
        teams = {r["group"]: r for r in ctl_json(config, "usage", "--group-by", "team")}
        # vision evicted its own blocks, never nlp's
        assert teams["nlp"]["cached_bytes"] == nlp_bytes
        assert teams["vision"]["cached_bytes"] == quotas["vision"]["usage_bytes"]
        assert mount.metric("warpdrive_quota_status", team="vision") == 1

    mount = start_mount(config, point, port)
    try:
        check(mount)

        def by_user() -> dict[str, dict[str, Any]]:
            rows = ctl_json(config, "usage", "--group-by", "user")
            got = {r["group"]: r for r in rows}
            return got if got.get(a, {}).get("files_accessed") == 12 and b in got else {}

        users = wait_until(by_user)
        assert users[a]["bytes_read"] == vision_bytes and users[b]["bytes_read"] == nlp_bytes
        assert users[b]["files_accessed"] == 2
        teams = {r["group"]: r for r in ctl_json(config, "usage", "--group-by", "team")}
        assert teams["vision"]["bytes_read"] == vision_bytes
        assert teams["nlp"]["bytes_read"] == nlp_bytes
        prefixes = {r["group"]: r for r in ctl_json(config, "usage", "--group-by", "prefix")}
        assert prefixes[f"{azure_store.name}:a"]["bytes_read"] == vision_bytes
        assert prefixes[f"{azure_store.name}:b"]["cached_bytes"] == nlp_bytes
        text = ctl(config, "usage", "--group-by", "user", "--format", "csv").stdout
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {r["group"]: int(r["bytes_read"]) for r in rows} == {a: vision_bytes, b: nlp_bytes}
        mount.stop()
        mount = start_mount(config, point, port)  # the quota is kept in the cache index
        check(mount)
    finally:
        mount.cleanup()
        point.rmdir()


def test_stale_lists_exactly_what_was_not_read_since_the_cutoff(
    tmp_path: Path, azure_store: Store
) -> None:
    config, point, port = write_config(
        tmp_path,
        azure_store.backend_yaml,
        extra="governance: {access_flush_interval: 0.2s, crawl_interval: 1s}\n",
    )
    hot = put_all(azure_store, "hot", 3, BS, seed=5)
    cold = put_all(azure_store, "cold", 3, BS, seed=6)
    cold["cold/big.bin"] = os.urandom(3 * BS)
    azure_store.put("cold/big.bin", cold["cold/big.bin"])
    ctl(config, "warm", f"/{azure_store.name}/cold/big.bin")  # cached, then not read
    time.sleep(1.5)  # object times have one-second resolution
    cutoff = time.time()
    mount = start_mount(config, point, port)
    try:
        for key, payload in hot.items():
            assert read_through_mount(mount.path(azure_store.name, key)) == payload
        wait_until(
            lambda: ctl_json(config, "usage", "--group-by", "backend")[0]["files_accessed"] == 3
        )
        # --now is the injectable clock: judge as if 1 day after the cutoff, with --days 1.
        now = datetime.fromtimestamp(cutoff + 86400, timezone.utc).isoformat()

        def stale() -> list[dict[str, Any]]:
            rows = ctl_json(config, "stale", "--days", "1", "--now", now)
            return rows if len(rows) == len(cold) else []

        rows = wait_until(stale)  # once the mount's own crawl (every second here) has run
        assert next(r["key"] for r in rows) == "cold/big.bin"  # largest first
        assert {r["key"] for r in rows} == set(cold)
        assert all(r["source"] == "crawl" for r in rows)
        assert {r["key"]: r["size"] for r in rows} == {k: len(v) for k, v in cold.items()}
        big = next(r for r in rows if r["key"] == "cold/big.bin")
        assert big["cached_bytes"] == len(cold["cold/big.bin"])
        # a cutoff before the objects were written: nothing is stale
        earlier = datetime.fromtimestamp(cutoff - 60 + 86400, timezone.utc).isoformat()
        assert ctl_json(config, "stale", "--days", "1", "--now", earlier) == []
        sized = ctl_json(config, "stale", "--days", "1", "--now", now, "--min-size", "512KiB")
        assert [r["key"] for r in sized] == ["cold/big.bin"]
        # --evict drops the cached blocks of what it lists, nothing else
        ctl(config, "stale", "--days", "1", "--now", now, "--evict")
        stats = ctl_json(config, "stats")
        assert stats["bytes"] == sum(map(len, hot.values()))
        for key, payload in {**hot, **cold}.items():
            assert read_through_mount(mount.path(azure_store.name, key)) == payload
    finally:
        mount.cleanup()


def test_move_copies_between_azurite_and_s3_with_identical_bytes(
    tmp_path: Path, azure_store: Store, s3_store: Store
) -> None:
    import boto3

    config, _, _ = write_config(tmp_path, azure_store.backend_yaml + s3_store.backend_yaml)
    data = put_all(azure_store, "data", 3, 3 * BS, seed=7)
    data["data/sub/empty.bin"] = b""
    azure_store.put("data/sub/empty.bin", b"")
    az, s3 = azure_store.name, s3_store.name

    moved = ctl_json(config, "move", "--src", f"{az}:data", "--dst", f"{s3}:copy", "--recursive")
    assert {m["src"] for m in moved} == {f"{az}:{k}" for k in data}
    assert all(m["deleted"] is False for m in moved)
    assert {m["dst"]: m["sha256"] for m in moved} == {
        f"{s3}:copy/{k[5:]}": sha(v) for k, v in data.items()
    }
    bucket = s3_store.backend_yaml.split("bucket: ")[1].split(",")[0]
    client = boto3.client(
        "s3",
        endpoint_url=s3_store.backend_yaml.split("endpoint_url: '")[1].split("'")[0],
        region_name="us-east-1",
        aws_access_key_id=os.environ["WD_TEST_S3_KEY"],
        aws_secret_access_key=os.environ["WD_TEST_S3_SECRET"],
    )
    for key, payload in data.items():
        got = client.get_object(Bucket=bucket, Key=f"pre/copy/{key[5:]}")["Body"].read()
        assert got == payload, key

    # Back again with --delete: the sources go only after their copies are verified.
    back = ctl_json(config, "move", "--src", f"{s3}:copy", "--dst", f"{az}:back", "-r", "--delete")
    assert all(m["deleted"] for m in back) and len(back) == len(data)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="pre/copy/")
    assert listed.get("KeyCount", 0) == 0
    wd_read = ctl_json(config, "warm", f"/{az}/back", "--recursive")
    assert wd_read["objects"] == len(data) and wd_read["failed"] == {}
    from warpdrive import WarpDrive, load_config

    with WarpDrive(load_config(config)) as wd:
        for key, payload in data.items():
            assert wd.read(f"/{az}/back/{key[5:]}") == payload

    # One object into a "directory" keeps its name; a missing source is a one-line error.
    one = ctl_json(config, "move", "--src", f"{az}:data/shard-000.tar", "--dst", f"{s3}:single/")
    assert one[0]["dst"] == f"{s3}:single/shard-000.tar"
    missing = ctl(config, "move", "--src", f"{az}:nope", "--dst", f"{s3}:x", expect=2)
    assert missing.stderr.count("\n") == 1 and "nope" in missing.stderr
    same = ctl(
        config,
        "move",
        "--src",
        f"{az}:data/shard-001.tar",
        "--dst",
        f"{az}:data/shard-001.tar",
        "--delete",
        expect=1,
    )
    assert "same object" in same.stderr
    assert azure_store_has(config, az, "data/shard-001.tar")


def azure_store_has(config: Path, backend: str, key: str) -> bool:
    from warpdrive import WarpDrive, load_config
    from warpdrive.errors import NotFoundError

    with WarpDrive(load_config(config)) as wd:
        try:
            wd.stat(f"/{backend}/{key}")
        except NotFoundError:
            return False
        return True


def test_warm_budget_backend_form_failures_and_resume(
    tmp_path: Path,
    azure_store: Store,
    azurite: Server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Through an emulated WAN link, so a warm takes long enough to interrupt.
    proxy = start_wan_proxy(azurite.port, rtt="40ms", bandwidth="20mbit")
    try:
        backend = azure_store.backend_yaml.replace(
            f"127.0.0.1:{azurite.port}", f"127.0.0.1:{proxy.port}"
        )
        config, _, _ = write_config(tmp_path, backend)
        data = put_all(azure_store, "ds/train", 6, 8 * BS, seed=8)
        total = sum(map(len, data.values()))

        # --max-size: stop before the budget would be exceeded (whole objects)
        budget = ctl_json(
            config,
            "warm",
            "--backend",
            azure_store.name,
            "--prefix",
            "ds",
            "--max-size",
            f"{2 * 8 * BS + 2000}B",
        )
        assert budget["objects"] == 2 and budget["skipped_for_budget"] == 4
        assert budget["bytes_fetched"] <= 2 * 8 * BS + 2000

        # Ctrl-C, then warm again: the second fetches only what the first had not.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warpdrive.ctl.main",
                "warm",
                f"/{azure_store.name}/ds",
                "-r",
                "--workers",
                "2",
                "--json",
                "--config",
                str(config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("warm: 0/4 files")  # planned, fetching
        time.sleep(1.0)  # of about 3 s at 20 Mbit/s
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        cut = json.loads(out)
        assert (
            cut["interrupted"] is True
            and 0 < cut["bytes_fetched"] < total - budget["bytes_fetched"]
        )
        rest = ctl_json(config, "warm", f"/{azure_store.name}/ds", "-r")
        # Fetches in flight at Ctrl-C still land in the cache: the rest is at most the remainder.
        left = total - budget["bytes_fetched"] - cut["bytes_fetched"]
        assert 0 < rest["bytes_fetched"] <= left
        assert ctl_json(config, "warm", f"/{azure_store.name}/ds", "-r")["bytes_fetched"] == 0
        stats = ctl_json(config, "stats")
        assert stats["bytes"] == total and stats["bytes_fetched"] == total  # none fetched twice
    finally:
        proxy.stop()

    # An object that fails: exit 1, each failed object named on stderr (a fault injected
    # into the real backend client; warm runs in-process here to reach it).
    from warpdrive.backends.base import ObjectClient
    from warpdrive.backends.wrappers import FaultInjectingClient
    from warpdrive.ctl import main as ctl_main
    from warpdrive.errors import TransientBackendError, WarpDriveError
    from warpdrive.read.reader import WarpDrive

    (tmp_path / "direct").mkdir()
    config, _, _ = write_config(tmp_path / "direct", azure_store.backend_yaml)
    more = put_all(azure_store, "bad", 3, BS, seed=9)
    broken = "bad/shard-001.tar"

    def fault(op: str, key: str) -> WarpDriveError | None:
        return TransientBackendError(f"injected fault on {key}") if key == broken else None

    class Broken(WarpDrive):
        def __init__(self, cfg: Any) -> None:
            def wrap(client: ObjectClient) -> ObjectClient:
                return FaultInjectingClient(client, fault)

            super().__init__(cfg, wrap_client=wrap)

    monkeypatch.setattr(ctl_main, "WarpDrive", Broken)
    rc = ctl_main.main(["warm", f"/{azure_store.name}/bad", "--json", "--config", str(config)])
    out, err = capsys.readouterr()
    assert rc == 1
    summary = json.loads(out)
    assert list(summary["failed"]) == [f"/{azure_store.name}/{broken}"]
    assert f"/{azure_store.name}/{broken}" in err
    assert summary["bytes_fetched"] == sum(len(v) for k, v in more.items() if k != broken)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, local_store: Store) -> None:
    config, _, _ = write_config(tmp_path, local_store.backend_yaml)
    no_cache = ctl(config, "stats", expect=2)
    assert no_cache.stderr.startswith("warpdrive-ctl stats: no cache at")
    assert no_cache.stderr.count("\n") == 1
    assert not (tmp_path / "cache").exists()  # asking did not create one
    local_store.put("x/a.bin", b"abc")
    bad_size = ctl(config, "warm", "/src/x", "--max-size", "12XB", expect=2)
    assert "12XB" in bad_size.stderr and bad_size.stderr.count("\n") == 1
    unknown = ctl(config, "warm", "/src/nope", expect=2)
    assert "/src/nope" in unknown.stderr and unknown.stderr.count("\n") == 1
    bad_quota = ctl(
        config, "quota", "set", "--team", "t", "--soft", "2GB", "--hard", "1GB", expect=2
    )
    assert "--soft" in bad_quota.stderr
    missing = ctl(tmp_path / "nope.yaml", "stats", expect=2)
    assert "nope.yaml" in missing.stderr
    # the installed console script is this CLI
    helped = subprocess.run(["warpdrive-ctl", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "Exit status" in helped.stdout
    nothing = subprocess.run(["warpdrive-ctl"], capture_output=True, text=True)
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1


def one_line(done: subprocess.CompletedProcess[str], *named: str) -> None:
    """stderr is one line naming each of ``named``."""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(n in done.stderr for n in named), (named, done.stderr)


def test_bad_arguments_are_one_line_with_the_documented_exit_code(
    tmp_path: Path, local_store: Store
) -> None:
    config, _, _ = write_config(tmp_path, local_store.backend_yaml)
    local_store.put("x/a.bin", b"a" * 1000)
    local_store.put("x/b.bin", b"b" * 2000)
    ctl(config, "warm", "/src/x/a.bin")
    # No worker would fetch (warm waited for ever); days before now are no age.
    for workers in ("0", "-3"):
        done = ctl(config, "warm", "/src/x", "--workers", workers, expect=2, timeout=30)
        one_line(done, "--workers", f"got {workers}")
    one_line(ctl(config, "stale", "--days", "-3", expect=2), "--days", "'-3'")
    # evict: a path that is nowhere is an error, before anything is evicted; one that exists
    # but has nothing cached evicts nothing, successfully.
    missing = ctl(config, "evict", "/src/x/a.bin", "/src/x/nope.bin", expect=2)
    one_line(missing, "/src/x/nope.bin", "no such object or directory")
    assert ctl_json(config, "stats")["bytes"] == 1000  # a.bin was not evicted either
    rows = ctl_json(config, "evict", "/src/x/b.bin")
    assert rows == [{"path": "/src/x/b.bin", "objects": 0, "blocks": 0, "bytes": 0}]
    assert ctl_json(config, "evict", "/src/x", "-r")[0]["bytes"] == 1000
    # --config and --json (--format) before the command name, as after it.
    ctl(config, "warm", "/src/x/a.bin")
    after = ctl_json(config, "stats")
    for before in (["--json"], ["--format", "json"], ["-c", str(config), "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "warpdrive.ctl.main", *before, "stats", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == after
    # CSV: plain cells; the per-backend bytes one column each, never a Python dict.
    text = ctl(config, "--format", "csv", "stats").stdout
    assert "{" not in text and "'" not in text
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["bytes_by_backend.src"] == "1000" and row["bytes"] == "1000"


def test_serve_on_an_address_in_use_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    import socket

    db = tmp_path / "control.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            ["warpdrive-ctl", "serve", "--addr", f"127.0.0.1:{port}", "--database", f"sqlite:///{db}"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "WARPDRIVE_API_TOKEN": "t" * 20},
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    one_line(done, f"127.0.0.1:{port}", "in use")
    assert not db.exists()


def test_commands_that_need_no_backend_run_without_its_credentials(
    tmp_path: Path, azure_store: Store, azurite: Server
) -> None:
    """Only the commands that talk to a backend need its credentials: a connection string named
    by a variable (``connection_string_env``) or by a path built from one (``${VAR}``)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "cs").write_text(azurite.connection_string())
    auth = "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
    assert auth in azure_store.backend_yaml
    yaml = azure_store.backend_yaml.replace(
        auth,
        "    auth: {method: connection_string, connection_string_file: '${WD_T_SECRETS}/cs'}\n",
    ) + azure_store.backend_yaml.replace("name: az", "name: az2").replace(
        auth, "    auth: {method: connection_string, connection_string_env: WD_T_AZ2_CS}\n"
    )
    config, _, _ = write_config(tmp_path, yaml)
    data = put_all(azure_store, "d", 2, BS, seed=11)
    full = {**os.environ, "WD_T_SECRETS": str(secrets), "WD_T_AZ2_CS": azurite.connection_string()}
    total = sum(map(len, data.values()))
    for backend in ("az", "az2"):  # two backends over one container: cached apart
        assert ctl_json(config, "warm", f"/{backend}/d", env=full)["bytes_fetched"] == total
    bare = {k: v for k, v in full.items() if k not in ("WD_T_SECRETS", "WD_T_AZ2_CS")}
    stats = ctl_json(config, "stats", env=bare)
    assert stats["bytes_by_backend"] == {"az": total, "az2": total}
    for command in ("usage", "quota list", "team list"):
        ctl_json(config, command, env=bare)
    ctl_json(config, "stale", "--days", "0", env=bare)
    ctl_json(config, "job-start", "--job-id", "1", env=bare)
    assert ctl_json(config, "evict", "/az/d/shard-000.tar", env=bare)[0]["objects"] == 1
    assert ctl_json(config, "evict", "/az2/d", "-r", env=bare)[0]["objects"] == 2
    # What needs a backend says which credential is missing, in one line.
    one_line(ctl(config, "warm", "/az/d", env=bare, expect=2), "WD_T_SECRETS", "is not set")
    one_line(ctl(config, "warm", "/az2/d", env=bare, expect=2), "WD_T_AZ2_CS", "is not set")
    status = ctl_json(config, "status", env=bare, expect=1)
    assert "WD_T_SECRETS" in status["backends"]["az"]["status"]


class _ControlPlane(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str | None, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.path, self.headers.get("Authorization"), body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_job_report_counts_the_jobs_reads_and_reaches_the_control_plane(
    mounted_az: tuple[Mount, Path, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    mount, config, store = mounted_az
    port = free_port()
    text = config.read_text().replace(
        "backends:",
        f"telemetry: {{control_plane_addr: 'http://127.0.0.1:{port}', control_plane_token_env: WD_TEST_CP_TOKEN}}\nbackends:",
    )
    config.write_text(text)
    monkeypatch.setenv("WD_TEST_CP_TOKEN", "s3cret")
    data = put_all(store, "job", 2, 2 * BS, seed=10)
    total = sum(map(len, data.values()))

    ctl_json(config, "job-start", "--job-id", "7")
    for key, payload in data.items():
        assert read_through_mount(mount.path(store.name, key)) == payload
    wait_until(lambda: ctl_json(config, "stats")["bytes_fetched"] >= total)  # the mount flushed
    # No control plane yet: the report is kept and sent with the next one.
    offline = ctl_json(config, "job-report", "--job-id", "7", "--user", "alice", "--status", "0")
    assert offline["sent_to_control_plane"] is False
    assert offline["bytes_fetched"] == total and offline["bytes_served"] == total
    assert offline["misses"] > 0 and offline["since_job_start"] is True

    _ControlPlane.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _ControlPlane)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        start = ctl_json(config, "job-start", "--job-id", "8")
        served = ctl_json(config, "stats")["bytes_served_cache"]
        for key, payload in data.items():
            assert read_through_mount(mount.path(store.name, key)) == payload
        wait_until(lambda: ctl_json(config, "stats")["bytes_served_cache"] >= served + total)
        online = ctl_json(config, "job-report", "--job-id", "8", "--user", "bob", "--status", "1")
        assert online["sent_to_control_plane"] is True
        assert online["bytes_fetched"] == 0 and online["hits"] > 0 and online["misses"] == 0
        assert online["started_at"] == start["started_at"] and online["bytes_served"] == total
    finally:
        server.shutdown()
        server.server_close()
    got = {body["job_id"]: (path, auth, body) for path, auth, body in _ControlPlane.received}
    assert set(got) == {"7", "8"}
    assert all(p == "/api/v1/jobs" and a == "Bearer s3cret" for p, a, _ in got.values())
    assert got["8"][2]["user"] == "bob" and got["8"][2]["status"] == 1


def test_warm_one_nodes_share_of_a_dataset(tmp_path: Path, local_store: Store) -> None:
    config, _, _ = write_config(tmp_path, local_store.backend_yaml)
    data = put_all(local_store, "train", 10, 2000, seed=3)
    urls = [
        f"warpdrive://{local_store.name}/train/shard-{{000..009..2}}.tar",
        f"/{local_store.name}/train/shard-00[13579].tar",
    ]
    shares = []
    for node in range(3):
        plan = ctl_json(config, "warm", "--num-nodes", "3", "--node-rank", str(node),
                        "--seed", "7", "--dry-run", *urls)  # fmt: skip
        shares.append((plan["objects"], plan["bytes_to_fetch"]))
    # The three shares are 4 + 3 + 3 shards: the whole dataset, each shard once.
    assert sorted(n for n, _ in shares) == [3, 3, 4]
    assert sum(b for _, b in shares) == sum(map(len, data.values()))
    one = ctl_json(config, "warm", "--num-nodes", "3", "--node-rank", "1", "--seed", "7", *urls)
    assert (one["objects"], one["bytes_fetched"]) == shares[1]
    again = ctl_json(config, "warm", "--num-nodes", "3", "--node-rank", "1", "--seed", "7", *urls)
    assert again["bytes_fetched"] == 0 and again["bytes_already_cached"] == shares[1][1]
    # Another seed is another division.
    other = [
        ctl_json(
            config,
            "warm",
            "--num-nodes",
            "3",
            "--node-rank",
            "1",
            "--seed",
            str(s),
            "--dry-run",
            *urls,
        )["bytes_cached"]
        for s in range(1, 6)
    ]
    assert any(cached != shares[1][1] for cached in other)
    for args, message in [
        (["--node-rank", "1", *urls], "--node-rank and --num-nodes go together"),
        (["--num-nodes", "3", "--node-rank", "3", *urls], "--node-rank 3 --num-nodes 3"),
        (["--num-nodes", "2", "--node-rank", "0", "--backend", local_store.name], "shard URLs"),
        (["--num-nodes", "2", "--node-rank", "0", f"/{local_store.name}/nothing-*.tar"],
         "no shard matches"),
    ]:  # fmt: skip
        done = ctl(config, "warm", *args, expect=2)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_evict_skips_an_object_open_with_passthrough_and_says_so(
    tmp_path: Path, local_store: Store
) -> None:
    config, _, _ = write_config(tmp_path, local_store.backend_yaml)
    data = os.urandom(600_000)
    local_store.put("p/a.bin", data)
    ctl(config, "warm", "/src/p/a.bin")
    with WarpDrive(load_config(str(config)), observers=[]) as wd:  # the mount, in this process
        fs = WarpDriveFS(wd)
        ino = fs.lookup(fs.lookup(fs.lookup(ROOT_INODE, "src").ino, "p").ino, "a.bin").ino
        opened = fs.open(ino, os.O_RDONLY, backing=True)
        assert opened.backing_fd is not None
        stats = ctl_json(config, "stats")
        assert (stats["pinned_objects"], stats["pinned_bytes"]) == (1, len(data))
        done = ctl(config, "evict", "/src/p/a.bin", "--json")
        one_line(done, "/src/p/a.bin", "pinned")
        assert json.loads(done.stdout) == [
            {"path": "/src/p/a.bin", "objects": 0, "blocks": 0, "bytes": 0}
        ]
        assert os.pread(opened.backing_fd, len(data) + 1, 0) == data
        os.close(opened.backing_fd)
        fs.release(opened.fh)
    rows = ctl_json(config, "evict", "/src/p/a.bin")  # closed: evicted as before
    assert rows == [{"path": "/src/p/a.bin", "objects": 1, "blocks": 3, "bytes": len(data)}]
