"""This machine's mounts (``/proc/self/mountinfo``) and whether a FUSE mount's process answers.

Used by the mount at start-up (a stale mount to clear, a live one to refuse), by its health
checks (is the mount at the mount point still the one this process made?) and by
``warpdrive-ctl status``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

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
