"""``warpdrive-mount``: mount the configured backends read-only at ``mount_point``.

Start-up checks everything it can before mounting and stops with one line naming what is wrong:
the config, the cache path, each backend (one listing request; ``--degraded-ok`` starts anyway),
the mount point (a stale mount left by a crash is unmounted, with a message; a live one is
refused) and the metrics port (bound before mounting: one in use is refused, so another
process's ``/healthz`` can never answer for this mount). Without ``--foreground`` it starts
itself in the background and returns once *that* process reports, through a pipe, that it has
mounted and answers there (``ok PID``) — or with the reason it gives (``error REASON``), or the
last line of its log if it died without one. SIGTERM and SIGINT unmount cleanly.

Once the kernel has the answer to FUSE_INIT, the mount's ``read_ahead_kb``
(``/sys/class/bdi/<dev>/read_ahead_kb``) is raised to the block size (at least 1024), so the
kernel sends 1 MiB read requests (its default 128 KiB makes eight times as many) and reads
further ahead; the session (``session.py``) negotiates up to 256 pages (1 MiB) per request.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from warpdrive.cliargs import FILE, add_version_and_completion, complete
from warpdrive.config import Config, load_config
from warpdrive.errors import WarpDriveError, printable
from warpdrive.fuse.health import Health, probe_backend, with_deadline, with_deadlines
from warpdrive.fuse.mountinfo import MountEntry, find_mount, mounts, probe_mount
from warpdrive.governance.access import AccessRecorder
from warpdrive.governance.crawl import PeriodicCrawl
from warpdrive.metrics_server import MetricsServer
from warpdrive.perms import private_dir

if TYPE_CHECKING:
    from warpdrive.fuse.session import Session

__all__ = ["MountEntry", "MountError", "find_mount", "main", "mounts", "probe_mount", "serve"]
log = logging.getLogger("warpdrive.mount")
MIN_READ_AHEAD_KB = 1024
# The FUSE threads share the GIL with background threads (listing parsers, prefetch, fetchers):
# each system call one makes lets another run, and at Python's default switch interval
# (5 ms) getting the GIL back can cost more than a small file's whole read. 0.5 ms bounds it.
SWITCH_INTERVAL = 0.0005


class MountError(Exception):
    """Start-up cannot go on; the message is the one line the user sees."""


class ReadyPipe:
    """The write end of the pipe a background start waits on (``--ready-fd``): one line,
    ``ok PID`` once this process has mounted and answers there, or ``error REASON``; closed
    after it (and by the process's exit, which the waiting side reads as a crash)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, (printable(line) + "\n").encode())
        except OSError:
            pass  # the starting side gave up waiting: the log still says it
        finally:
            os.close(fd)


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
    from warpdrive.read.reader import WarpDrive

    assert isinstance(wd, WarpDrive)
    verdicts = with_deadlines(
        {name: partial(probe_backend, backend) for name, backend in wd.backends.items()}, timeout
    )
    failed = [f"{name}: {verdict}" for name, verdict in verdicts.items() if verdict != "ok"]
    if failed and not degraded_ok:
        raise MountError(
            "backend unreachable: " + "; ".join(failed) + " (--degraded-ok mounts anyway)"
        )
    for line in failed:
        log.warning("starting degraded, backend %s", line)


def bind_metrics(
    config: Config, registry: CollectorRegistry, health: Health
) -> MetricsServer | None:
    """The metrics server, its port bound (not yet serving); None when disabled."""
    if not config.metrics.enabled:
        return None
    try:
        return MetricsServer(config.metrics.addr, registry, health)
    except OSError as exc:
        raise MountError(
            f"metrics.addr {config.metrics.addr}: {exc.strerror or exc} (another process serves"
            " that port: give each mount its own metrics.addr, or set metrics.enabled: false)"
        ) from None


def serve(config: Config, degraded_ok: bool = False, ready: ReadyPipe | None = None) -> int:
    """Mount, serve until unmounted or signalled, clean up. The foreground process."""
    from warpdrive.admin import Admin
    from warpdrive.fs import WarpDriveFS
    from warpdrive.fuse.devfuse import FuseMountError
    from warpdrive.fuse.ops import Operations
    from warpdrive.fuse.session import Session
    from warpdrive.read.reader import WarpDrive

    ready = ready or ReadyPipe(None)
    sys.setswitchinterval(SWITCH_INTERVAL)
    mount_point = config.mount_point
    # The read path reports closed handles; the node's access records observe them.
    wd = WarpDrive(config, observers=[AccessRecorder])
    admin = Admin(config)  # the reporter's (quotas from the control plane): opened if used
    # Closed in reverse order of opening, whatever stops the start or the serving.
    with contextlib.ExitStack() as opened:
        opened.callback(wd.close)
        opened.callback(admin.close)
        try:
            wd.usage()  # opens the cache: path, permissions, index
        except (OSError, RuntimeError) as exc:
            raise MountError(f"cache path {config.cache.path} is not usable: {exc}") from None
        check_backends(config, wd, min(config.fetch.request_timeout, 10.0), degraded_ok)
        prepare_mount_point(mount_point)
        health = Health(mount_point, wd)
        server = bind_metrics(config, wd.metrics.registry, health)
        if server is not None:
            opened.callback(server.close)
        if config.governance.crawl_interval > 0:
            opened.callback(
                PeriodicCrawl(wd.backends, admin.cache_root, config.governance.crawl_interval).close
            )
        fs = WarpDriveFS(wd)
        opened.callback(fs.close)
        threads = max(16, 2 * config.cache.max_parallel_fetch)
        ops = Operations(
            fs,
            wd.metrics,
            attr_timeout=config.cache.stale_ttl,
            dir_timeout=config.cache.list_ttl,
            threads=threads,
            passthrough=config.passthrough,
            debug=config.fuse_debug,
        )
        if config.fuse_debug:  # shown whatever --log-level says
            logging.getLogger("warpdrive.fuse.requests").setLevel(logging.DEBUG)
        session = Session(ops, mount_point, config.allow_other, threads)
        try:
            session.mount()
        except (OSError, FuseMountError) as exc:
            hint = ""
            if config.allow_other and os.getuid() != 0:
                hint = (
                    " (allow_other needs 'user_allow_other' in /etc/fuse.conf for non-root users)"
                )
            raise MountError(f"cannot mount at {mount_point}: {exc}{hint}") from None
        entry = find_mount(mount_point)
        opened.callback(_unmount, session, entry)
        if entry is None:
            raise MountError(f"{mount_point} is not in the mount table after mounting")
        health.mounted(entry.device)
        log.info(
            "mounted %s (%s) at %s (device %s)",
            ", ".join(f"{b.name}→{b.mount_path}" for b in config.backends) or "no backends",
            config.source,
            mount_point,
            entry.device,
        )
        if server is not None:
            server.start()
        if config.telemetry.control_plane_addr:
            from warpdrive.control.reporter import Reporter

            opened.callback(Reporter(admin, wd.flush, health.ready_checks).close)
        read_ahead_kb = max(MIN_READ_AHEAD_KB, config.cache.block_size // 1024)
        _run(session, health, read_ahead_kb, ready)
    return 0


def _unmount(session: Session, entry: MountEntry | None) -> None:
    """Unmount if the mount at the mount point is still ours (not gone, nothing stacked on
    it), and end the session."""
    now = find_mount(session.mount_point)
    ours = entry is not None and now is not None and now.device == entry.device
    if ours:
        log.info("unmounting %s", session.mount_point)
    session.close(unmount=ours)


def _run(session: Session, health: Health, read_ahead_kb: int, ready: ReadyPipe) -> None:
    """Serve until a signal or the unmount: the threads answer INIT and everything after;
    this (main) thread checks the mount, reports, and waits."""
    mount_point = health.mount_point

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        session.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        session.start()
        # The threads run, so the kernel can get our answer to FUSE_INIT: the health file
        # read at the mount point, on the device this process mounted, proves we serve it.
        verdict = health.check_mount()
        if verdict != "ok":
            ready.send(f"error mounted at {mount_point}, but it does not answer: {verdict}")
            log.error("mounted at %s, but it does not answer: %s; stopping", mount_point, verdict)
            return
        # The kernel fixed the mount's readahead when it got our answer to FUSE_INIT.
        value = tune_read_ahead(mount_point, read_ahead_kb)
        log.info("read_ahead_kb of %s is %s; serving", mount_point, value)
        ready.send(f"ok {os.getpid()}")
        session.wait()
        if not session.serving:
            log.info("%s was unmounted", mount_point)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def require_fuse(device: str = "/dev/fuse") -> None:
    """``/dev/fuse`` opens for reading and writing; else MountError saying what is missing
    (checked before starting in the background, so the message reaches the terminal)."""
    if not os.path.exists(device):
        raise MountError(
            f"{device} is missing: load the fuse module (modprobe fuse), or in a container"
            f" pass the device (docker run --device {device})"
        )
    if not os.access(device, os.R_OK | os.W_OK):
        raise MountError(f"{device} is not readable and writable by this user")


def open_log(log_file: str) -> int:
    """The background mount's log, opened to append: private whatever the umask, since it names
    the objects read. Its directory is made 0700 if missing (by default it is the cache
    directory, which the mount would make 0700 itself), the file 0600; a log that others can
    read (earlier releases made it 0644) is made 0600 again when it is ours."""
    try:
        private_dir(os.path.dirname(os.path.abspath(log_file)))
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise MountError(f"cannot open the log {log_file}: {exc.strerror or exc}") from None
    with contextlib.suppress(PermissionError):  # another user's file: theirs to say who reads
        os.fchmod(fd, 0o600)
    return fd


def start_background(argv: list[str], mount_point: str, log_file: str, wait: float = 60.0) -> int:
    """Start ``--foreground`` in a new session; return once that process says, through a pipe,
    that it mounted and answers (0), or why it could not (its exit status, else 1)."""
    out = open_log(log_file)
    read_end, write_end = os.pipe()
    try:
        logged_from = os.lseek(out, 0, os.SEEK_END)  # this start's lines come after
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warpdrive.fuse.mount",
                *argv,
                "--foreground",
                "--ready-fd",
                str(write_end),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    finally:
        os.close(out)
        os.close(write_end)  # the child's copy is the only one left: its exit means EOF
    try:
        answer = _read_line(read_end, wait)
    finally:
        os.close(read_end)
    if answer is None:
        print(
            f"warpdrive-mount: pid {child.pid} has not reported a mount after {wait:g}s "
            f"(still starting?); see {log_file}",
            file=sys.stderr,
        )
        return 1
    if answer == f"ok {child.pid}":
        print(f"warpdrive-mount: mounted at {mount_point} (pid {child.pid}, log {log_file})")
        return 0
    try:
        status = child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        status = 1
    if answer.startswith("error "):
        reason = answer.removeprefix("error ")
    else:  # died without a word (a crash: its log's last line says why), or a garbled one
        reason = f"pid {child.pid} said {answer!r}" if answer else _last_line(log_file, logged_from)
    print(f"warpdrive-mount: {reason} (see {log_file})", file=sys.stderr)
    return status or 1


def _read_line(fd: int, wait: float) -> str | None:
    """One line from ``fd`` ('' at EOF without one), or None if none came within ``wait`` s."""
    data = b""
    deadline = time.monotonic() + wait
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")


def _last_line(log_file: str, start: int) -> str:
    """The last non-empty line logged from byte ``start`` on (a crash's exception), or a note
    that there is none."""
    try:
        with open(log_file, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return printable(lines[-1]) if lines else "exited without a word"


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
    # The background start's pipe: "ok PID" or "error REASON" is written there (internal).
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("azure").setLevel(logging.WARNING)  # per-request lines otherwise
    ready = ReadyPipe(args.ready_fd if args.foreground else None)
    if ready.fd is not None:
        os.set_inheritable(ready.fd, False)  # ours alone: a helper we start must not hold it
    try:
        config = load_config(args.config)
        require_fuse()
        if not args.foreground:
            log_file = args.log_file or os.path.join(config.cache.path, "warpdrive-mount.log")
            child_argv = [a for a in argv if a not in ("-f", "--foreground")]
            return start_background(child_argv, config.mount_point, log_file)
        return serve(config, degraded_ok=args.degraded_ok, ready=ready)
    except (MountError, WarpDriveError) as exc:
        print(f"warpdrive-mount: {exc}", file=sys.stderr)
        ready.send(f"error {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
