"""Kernel FUSE passthrough for opens: backing ids, and each inode's io mode as the kernel sees it.

An open answered ``FOPEN_PASSTHROUGH`` with a backing id (``FUSE_DEV_IOC_BACKING_OPEN`` on a
descriptor of the object's cache file) makes the kernel read that file itself: no READ reaches
this process. The kernel holds each inode in one io mode at a time (``fs/fuse/iomode.c``), and
an open that breaks it fails with EIO in the application (measured on 6.18): while a file of
the inode is open in passthrough, every other open of it must be passthrough on the *same*
backing file (even a direct-io one); while one is open in cached (page cache) mode, none may be
passthrough. So:

* the backing id is kept per inode and shared by all its passthrough opens; it is closed
  (``FUSE_DEV_IOC_BACKING_CLOSE``) when the last of them is released;
* a new open of an inode in passthrough uses that backing file whatever the core offered (none,
  or another one: a new version of the object reaches readers once every handle of the old one
  is closed, as a version is never mixed within one handle);
* and the core's release of those handles (which unpins the object whose cache file is read)
  waits until the inode's last passthrough open is released;
* a backing file offered while the inode is open in cached mode is not used.

A passthrough open is answered without ``FOPEN_KEEP_CACHE`` (the FUSE inode's page cache plays
no part, the backing file's does): with it, the kernel failed the open with EIO (measured).

Our counts are updated when we answer OPEN and RELEASE; the kernel ends a file's mode before it
sends RELEASE, so what we count is always a superset of what the kernel holds, and a decision
consistent with our counts is consistent with the kernel's. The kernel sends RELEASE in the
background after ``close()`` returns, so an open that comes right after a user-space-mode close
of the same file may still find it counted here: that open is served in user space (exact
bytes, no passthrough); the next one is not.

Locks: ``_lock`` guards ``_inodes`` and ``_fhs``; the two ioctls run under it (short, and they
must not interleave with another open's decision for the same inode).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading

from prometheus_client import Counter

from warpdrive.fuse.protocol import (
    BACKING_MAP,
    DEV_IOC_BACKING_CLOSE,
    DEV_IOC_BACKING_OPEN,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    FOPEN_PASSTHROUGH,
)

log = logging.getLogger(__name__)


class _Inode:
    __slots__ = ("backing_id", "cached", "held", "passthrough")

    def __init__(self) -> None:
        self.cached = 0  # our open handles in cached (user-space) mode
        self.passthrough = 0  # our open handles in passthrough, all on backing_id
        self.backing_id = 0
        self.held: list[int] = []  # released passthrough handles whose core release waits


class Backings:
    def __init__(self, opens: Counter) -> None:
        self.opens = opens  # warpdrive_fuse_passthrough_opens_total
        self._lock = threading.Lock()
        self._inodes: dict[int, _Inode] = {}
        self._fhs: dict[int, tuple[int, bool]] = {}  # fh -> (inode, in passthrough)
        self._refused = False  # BACKING_OPEN said EPERM: no CAP_SYS_ADMIN, don't ask again
        self._warned = False

    def open(
        self, devfd: int, ino: int, fh: int, flags: int, backing_fd: int | None
    ) -> tuple[int, int]:
        """(open_flags, backing_id) for the OPEN reply of ``fh`` on ``ino``; takes
        ``backing_fd`` (closed here whatever happens)."""
        try:
            if flags & FOPEN_DIRECT_IO:  # the health file: never passthrough
                return flags, 0
            with self._lock:
                node = self._inodes.setdefault(ino, _Inode())
                if node.passthrough:
                    use = True
                elif backing_fd is not None and not node.cached:
                    use = self._backing_open_locked(devfd, backing_fd, node)
                else:
                    use = False
                if use:
                    node.passthrough += 1
                else:
                    node.cached += 1
                self._fhs[fh] = (ino, use)
                backing_id = node.backing_id
        finally:
            if backing_fd is not None:
                os.close(backing_fd)
        if not use:
            return flags, 0
        self.opens.inc()
        return (flags & ~FOPEN_KEEP_CACHE) | FOPEN_PASSTHROUGH, backing_id

    def _backing_open_locked(self, devfd: int, backing_fd: int, node: _Inode) -> bool:
        if self._refused:
            return False
        arg = bytearray(BACKING_MAP.pack(backing_fd, 0, 0))
        try:
            node.backing_id = fcntl.ioctl(devfd, DEV_IOC_BACKING_OPEN, arg, True)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                self._refused = True
            if not self._warned:
                self._warned = True
                log.warning(
                    "passthrough open refused by the kernel (%s): serving reads in user space",
                    exc.strerror,
                )
            return False
        return True

    def release(self, devfd: int, fh: int) -> list[tuple[int, bool]]:
        """``fh`` was released (or its OPEN reply never reached the kernel): the handles the
        core may release now (``fh``, none while its inode stays in passthrough, or all the
        inode's held ones with the last), each with whether the kernel read it (passthrough)."""
        with self._lock:
            entry = self._fhs.pop(fh, None)
            if entry is None:
                return [(fh, False)]
            ino, passthrough = entry
            node = self._inodes[ino]
            ready = [(fh, passthrough)]
            if passthrough:
                node.passthrough -= 1
                if node.passthrough:
                    node.held.append(fh)
                    ready = []
                else:
                    arg = struct.pack("<I", node.backing_id)
                    with contextlib.suppress(OSError):  # gone with the connection
                        fcntl.ioctl(devfd, DEV_IOC_BACKING_CLOSE, arg)
                    ready += [(held, True) for held in node.held]
                    node.backing_id, node.held = 0, []
            else:
                node.cached -= 1
            if not node.passthrough and not node.cached:
                del self._inodes[ino]
            return ready
