"""``warpdrive-mount``: mount the configured backends read-only at ``mount_point``.

Start-up checks everything it can before mounting and stops with one line naming what is wrong:
the config, the cache path, each backend (one listing request; ``--degraded-ok`` starts anyway),
and the mount point (a stale mount left by a crash is unmounted, with a message; a live one is
refused). Without ``--foreground`` it starts itself in the background and returns once the mount
is up. SIGTERM and SIGINT unmount cleanly.

Once the kernel has the answer to FUSE_INIT, the mount's ``read_ahead_kb``
(``/sys/class/bdi/<dev>/read_ahead_kb``) is raised to the block size (at least 1024), so the
kernel sends 1 MiB read requests (its default 128 KiB makes eight times as many) and reads
further ahead; libfuse negotiates up to 256 pages (1 MiB) per request on its own.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial

from warpdrive.cliargs import FILE, add_version_and_completion, complete
from warpdrive.config import Config, load_config
from warpdrive.errors import WarpDriveError
from warpdrive.fuse.health import PROBE_NAME, Health, probe_backend, with_deadline
from warpdrive.governance.crawl import PeriodicCrawl
from warpdrive.metrics_server import MetricsServer

log = logging.getLogger("warpdrive.mount")
MIN_READ_AHEAD_KB = 1024


class MountError(Exception):
    """Start-up cannot go on; the message is the one line the user sees."""


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    device: str  # "major:minor"
    fstype: str


def mounts() -> list[MountEntry]:
    """This machine's mounts, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")  # \040 is a space
            out.append(MountEntry(point, fields[2], fields[sep + 1]))
    return out


def find_mount(mount_point: str) -> MountEntry | None:
    real = os.path.abspath(mount_point)
    found = [m for m in mounts() if m.mount_point == real]
    return found[-1] if found else None


def prepare_mount_point(mount_point: str) -> None:
    """Create the mount point; unmount a stale FUSE mount there; refuse a live mount."""
    entry = find_mount(mount_point)
    if entry is not None and entry.fstype.startswith("fuse"):
        verdict = with_deadline(partial(probe_mount, mount_point), 3.0)
        if verdict == "stale":
            log.warning("stale mount at %s (its process is gone): unmounting it", mount_point)
            subprocess.run(
                ["fusermount3", "-u", "-z", mount_point], check=False, capture_output=True
            )
        elif verdict == "ok":
            raise MountError(f"{mount_point} is already mounted by a running file system")
        else:
            raise MountError(f"{mount_point} is a FUSE mount that does not answer ({verdict})")
    elif entry is not None:
        raise MountError(f"{mount_point} is already a mount point ({entry.fstype})")
    try:
        os.makedirs(mount_point, exist_ok=True)
    except OSError as exc:
        raise MountError(f"cannot create mount point {mount_point}: {exc.strerror}") from None


def probe_mount(mount_point: str) -> str:
    """Whether a FUSE mount's process answers: the lookup of a name that never exists must
    reach it (attributes of the mount point itself may come from the kernel's cache)."""
    try:
        os.stat(os.path.join(mount_point, f"{PROBE_NAME}-{os.getpid()}"))
    except FileNotFoundError:
        return "ok"
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return "stale"
        return f"error: {exc.strerror}"
    return "ok"


def tune_read_ahead(mount_point: str, kb: int) -> int | None:
    """Raise the mount's read_ahead_kb; the value in force afterwards (None if unknown)."""
    entry = find_mount(mount_point)
    if entry is None:
        return None
    path = f"/sys/class/bdi/{entry.device}/read_ahead_kb"
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(str(kb))
    except OSError as exc:
        log.warning("cannot raise %s to %d: %s", path, kb, exc.strerror)
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def check_backends(config: Config, wd: object, timeout: float, degraded_ok: bool) -> None:
    from warpdrive.reader import WarpDrive

    assert isinstance(wd, WarpDrive)
    failed = []
    for name, backend in wd.backends.items():
        verdict = with_deadline(partial(probe_backend, backend), timeout)
        if verdict != "ok":
            failed.append(f"{name}: {verdict}")
    if failed and not degraded_ok:
        raise MountError(
            "backend unreachable: " + "; ".join(failed) + " (--degraded-ok mounts anyway)"
        )
    for line in failed:
        log.warning("starting degraded, backend %s", line)


def serve(config: Config, degraded_ok: bool = False) -> int:
    """Mount, serve until unmounted or signalled, clean up. The foreground process."""
    import pyfuse3
    import trio

    from warpdrive.fs import WarpDriveFS
    from warpdrive.fuse.ops import Operations
    from warpdrive.reader import WarpDrive

    mount_point = config.mount_point
    wd = WarpDrive(config)
    try:
        wd.usage()  # opens the cache: path, permissions, index
    except (OSError, RuntimeError) as exc:
        raise MountError(f"cache path {config.cache.path} is not usable: {exc}") from None
    check_backends(config, wd, min(config.fetch.request_timeout, 10.0), degraded_ok)
    prepare_mount_point(mount_point)
    crawler = (
        PeriodicCrawl(wd, config.governance.crawl_interval)
        if config.governance.crawl_interval > 0
        else None
    )
    fs = WarpDriveFS(wd)
    ops = Operations(
        fs,
        wd.metrics,
        attr_timeout=config.cache.stale_ttl,
        dir_timeout=config.cache.list_ttl,
        threads=max(16, 2 * config.cache.max_parallel_fetch),
    )
    options = {"fsname=warpdrive", "subtype=warpdrive", "ro", "noatime", "default_permissions"}
    if config.allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, mount_point, options)
    except RuntimeError as exc:
        hint = ""
        if config.allow_other and os.getuid() != 0:
            hint = " (allow_other needs 'user_allow_other' in /etc/fuse.conf for non-root users)"
        raise MountError(f"cannot mount at {mount_point}: {exc}{hint}") from None
    log.info(
        "mounted %s (%s) at %s",
        ", ".join(f"{b.name}→{b.mount_path}" for b in config.backends) or "no backends",
        config.source,
        mount_point,
    )
    server = None
    health = Health(mount_point, wd)
    if config.metrics.enabled:
        try:
            server = MetricsServer(config.metrics.addr, wd.metrics.registry, health).start()
        except OSError as exc:
            log.warning("metrics server on %s not started: %s", config.metrics.addr, exc.strerror)
    reporter = None
    if config.telemetry.control_plane_addr:
        from warpdrive.control.reporter import Reporter

        reporter = Reporter(wd, health)
    read_ahead_kb = max(MIN_READ_AHEAD_KB, config.cache.block_size // 1024)
    try:
        trio.run(_main_loop, mount_point, read_ahead_kb)
    finally:
        log.info("unmounting %s", mount_point)
        pyfuse3.close(unmount=True)
        if server is not None:
            server.close()
        if crawler is not None:
            crawler.close()
        if reporter is not None:
            reporter.close()
        fs.close()
        wd.close()
    return 0


async def _main_loop(mount_point: str, read_ahead_kb: int) -> None:
    import pyfuse3
    import trio

    async def tune() -> None:
        # The kernel fixes the mount's readahead when it gets our answer to FUSE_INIT, which
        # happens once the loop runs; any request answered proves it is done.
        await trio.to_thread.run_sync(os.stat, mount_point)
        value = await trio.to_thread.run_sync(tune_read_ahead, mount_point, read_ahead_kb)
        log.info("read_ahead_kb of %s is %s", mount_point, value)

    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        nursery.start_soon(tune)
        await pyfuse3.main(min_tasks=4, max_tasks=128)
        nursery.cancel_scope.cancel()


def require_fuse() -> None:
    """pyfuse3 and trio (the ``fuse`` extra) import; else MountError saying how to get them
    (checked before starting in the background, so the message reaches the terminal)."""
    for module in ("pyfuse3", "trio"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MountError(
                f"the fuse extra is missing ({exc}): pip install 'warpdrive[fuse]'"
            ) from None


def start_background(argv: list[str], config: Config, log_file: str, wait: float = 60.0) -> int:
    """Start ``--foreground`` in a new session and return once it has mounted (or failed)."""
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    with open(log_file, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "warpdrive.fuse.mount", *argv, "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"warpdrive-mount: failed to start; see {log_file}:", file=sys.stderr)
            with open(log_file, encoding="utf-8", errors="replace") as f:
                print("".join(f.readlines()[-5:]), end="", file=sys.stderr)
            return child.returncode or 1
        entry = find_mount(config.mount_point)
        if entry is not None and entry.fstype == "fuse.warpdrive":
            where = f"{config.mount_point} (pid {child.pid}, log {log_file})"
            print(f"warpdrive-mount: mounted at {where}")
            return 0
        time.sleep(0.1)
    print(f"warpdrive-mount: not mounted after {wait:g}s; see {log_file}", file=sys.stderr)
    return 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="warpdrive-mount", description="Mount WarpDrive's backends read-only (FUSE)."
    )
    add_version_and_completion(p)
    config = p.add_argument(
        "--config",
        "-c",
        help="config file (default: $WARPDRIVE_CONFIG or /etc/warpdrive/config.yaml)",
    )
    complete(config, FILE)
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    log_file = p.add_argument(
        "--log-file", help="log here in the background (default: <cache.path>/warpdrive-mount.log)"
    )
    complete(log_file, FILE)
    p.add_argument(
        "--degraded-ok", action="store_true", help="mount even if a backend is unreachable"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("azure").setLevel(logging.WARNING)  # per-request lines otherwise
    try:
        config = load_config(args.config)
        require_fuse()
        if not args.foreground:
            log_file = args.log_file or os.path.join(config.cache.path, "warpdrive-mount.log")
            return start_background(
                [a for a in argv if a not in ("-f", "--foreground")], config, log_file
            )
        return serve(config, degraded_ok=args.degraded_ok)
    except (MountError, WarpDriveError) as exc:
        print(f"warpdrive-mount: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
