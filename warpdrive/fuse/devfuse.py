"""Mounting and unmounting a FUSE file system by hand: ``/dev/fuse``, mount(2), fusermount3.

Root (CAP_SYS_ADMIN) mounts with mount(2) itself, as libfuse does: source ``warpdrive``, type
``fuse.warpdrive`` (so ``/proc/self/mountinfo`` shows what the pyfuse3 mount showed,
``fsname=warpdrive,subtype=warpdrive``), flags ``ro,nosuid,nodev,noatime`` and the data
``fd=N,rootmode=40000,user_id=UID,group_id=GID,default_permissions[,allow_other]``. Anyone else
gets EPERM there and goes through the setuid ``fusermount3``, which opens ``/dev/fuse``,
mounts, and hands the descriptor back over a socket named by ``_FUSE_COMMFD`` (SCM_RIGHTS).
That path is exercised here as root (fusermount3 accepts root too); a real non-root user was
not available to test it.

Unmounting as root: ``umount2(MNT_FORCE)`` first, which aborts the FUSE connection (what
closing libfuse's session did: every thread reading ``/dev/fuse`` gets ENODEV, processes that
still hold files there get ENOTCONN) and unmounts when nothing is busy; then ``MNT_DETACH``
for a busy mount point. Others run ``fusermount3 -u -z`` (lazy: the connection ends when its
last open file closes, or when this process exits and its descriptors close).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import subprocess

from warpdrive.fuse.protocol import DEV_IOC_CLONE

DEVICE = "/dev/fuse"
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOATIME = 1, 2, 4, 1024
MNT_FORCE, MNT_DETACH = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


class FuseMountError(Exception):
    """mount(2) or fusermount3 refused; the message says why."""


def _options(allow_other: bool) -> list[str]:
    return ["default_permissions", *(["allow_other"] if allow_other else [])]


def mount(mount_point: str, allow_other: bool) -> tuple[int, bool]:
    """Mount at ``mount_point``: (the session's /dev/fuse descriptor, whether fusermount3
    made the mount, which then also unmounts it)."""
    fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    st = os.stat(mount_point)
    data = ",".join(
        [
            f"fd={fd}",
            f"rootmode={stat_mode(st.st_mode)}",
            f"user_id={os.getuid()}",
            f"group_id={os.getgid()}",
            *_options(allow_other),
        ]
    )
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOATIME
    rc = _libc.mount(
        b"warpdrive", os.fsencode(mount_point), b"fuse.warpdrive", flags, data.encode()
    )
    if rc == 0:
        return fd, False
    err = ctypes.get_errno()
    os.close(fd)
    if err != errno.EPERM:
        raise FuseMountError(f"mount: {os.strerror(err)}")
    return mount_fusermount(mount_point, allow_other), True


def stat_mode(mode: int) -> str:
    """rootmode: the file type bits of the mount point, in octal (40000 for a directory)."""
    return format(mode & 0o170000, "o")


def mount_fusermount(mount_point: str, allow_other: bool) -> int:
    """Mount through ``fusermount3``; the descriptor it passes back."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        options = ",".join(
            ["fsname=warpdrive", "subtype=warpdrive", "ro", "noatime", *_options(allow_other)]
        )
        done = subprocess.run(
            ["fusermount3", "-o", options, "--", mount_point],
            env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
            pass_fds=(theirs.fileno(),),
            capture_output=True,
            text=True,
            check=False,
        )
        theirs.close()
        if done.returncode != 0:
            raise FuseMountError(done.stderr.strip() or f"fusermount3 exited {done.returncode}")
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        if not fds:
            raise FuseMountError("fusermount3 mounted but passed no descriptor")
        os.set_inheritable(fds[0], False)
        return fds[0]
    except FileNotFoundError:
        raise FuseMountError("fusermount3 is missing (apt install fuse3)") from None
    finally:
        theirs.close()
        ours.close()


def clone(session_fd: int) -> int:
    """A second descriptor on the session's connection: requests are read from either, so
    each thread reads its own (no lock, no thundering herd on one queue)."""
    fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, DEV_IOC_CLONE, struct.pack("<I", session_fd))
    except OSError:
        os.close(fd)
        raise
    return fd


def unmount(mount_point: str, fusermount: bool) -> None:
    """Unmount and end the connection (see the module doc); errors are left to the caller's
    log, never raised: the mount may be gone already."""
    if fusermount:
        subprocess.run(["fusermount3", "-u", "-z", mount_point], check=False, capture_output=True)
        return
    target = os.fsencode(mount_point)
    if _libc.umount2(target, MNT_FORCE) == 0:
        return
    if ctypes.get_errno() == errno.EBUSY:
        _libc.umount2(target, MNT_DETACH)
