"""This machine's mounts (``/proc/self/mountinfo``) and whether a FUSE mount's process answers.

Used by the mount at start-up (a stale mount to clear, a live one to refuse), by its health
checks (is the mount at the mount point still the one this process made, and does it serve?)
and by ``warpdrive-ctl status``.

Why the health checks open and read a file: for a while after the process serving a FUSE mount
died (``kill -9``), the kernel still answers a ``stat`` of the mount point, or of a file it
served, from the attributes it cached (``cache.list_ttl``, ``cache.stale_ttl``), so
``mountpoint`` and ``os.path.ismount`` pass a dead mount. It answers no ``open`` from a cache:
that request always goes to the process (or fails with ENOTCONN at once when it is gone). The
file read is the mount's own health file (:data:`~warpdrive.config.HEALTH_FILE`): it needs no
backend and no cached object, so the check says only whether the process serves, and it is
opened ``direct_io``, so the read reaches the process too, never the page cache. Start-up
keeps :func:`probe_mount` (a lookup), which asks any FUSE file system, ours or not, whether its
process is still there.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from warpdrive.config import HEALTH_FILE

PROBE_NAME = ".warpdrive-healthz"  # never exists: its lookup always reaches the mount


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    device: str  # "major:minor": a FUSE mount's is anonymous and unique while it is mounted
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
    """The topmost mount at ``mount_point`` (the one a path lookup there reaches), or None.
    The table names resolved paths: the parent's symlinks are resolved (the mount point itself
    is not touched, a hung mount there must not hang this)."""
    path = os.path.abspath(mount_point)
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    found = [m for m in mounts() if m.mount_point == real]
    return found[-1] if found else None


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


def read_health_file(mount_point: str) -> tuple[str, int | None]:
    """``("ok", pid)`` when the mount's health file opens and reads (``ok PID``: the process
    serving the mount); else (why not, None): ``stale`` when the process is gone (ENOTCONN).
    See the module's docstring for why a stat is not enough."""
    try:
        fd = os.open(os.path.join(mount_point, HEALTH_FILE), os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 64)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return f"error: no {HEALTH_FILE} (not a WarpDrive mount, or an older one)", None
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return "stale", None
        return f"error: reading {HEALTH_FILE}: {exc.strerror}", None
    word, _, pid = data.decode("ascii", "replace").partition(" ")
    if word != "ok" or not pid.strip().isdigit():
        return f"error: {HEALTH_FILE} reads {data[:32]!r}", None
    return "ok", int(pid)


def probe_read(mount_point: str) -> str:
    """``ok`` when the mount's health file opens and reads, else why not (``stale``, …)."""
    return read_health_file(mount_point)[0]
