"""The FUSE session: one mount's connection to the kernel, served by a pool of threads.

No libfuse: the session opens ``/dev/fuse`` and mounts (``devfuse.py``), then each of
``threads`` worker threads reads requests from its own descriptor on the connection (the
session's, or a clone of it: ``FUSE_DEV_IOC_CLONE``) into its own preallocated buffer, answers
them (``ops.py``) with one ``writev`` (header and reply; read data is written from the buffer
the core returned, never copied) and reads the next. The kernel hands each request to one
waiting reader, so requests run in parallel up to the pool's size: a request that blocks on a
backend holds one thread, not the mount. The first request is INIT, whose answer fixes the
protocol (and passthrough); the kernel sends nothing else before it.

Lifecycle: :meth:`Session.mount` → :meth:`start` (threads) → :meth:`wait` (until :meth:`stop`,
which a signal handler may call, or until every thread has ended: a read answered ENODEV,
the connection is gone — unmounted from outside) → :meth:`close` (idempotent: unmounts, which
as root also aborts the connection so blocked threads end, joins the threads for a while,
closes the descriptors whose threads ended). A thread still blocked after that (a lazy
``fusermount3 -u -z`` unmount with files still open) is a daemon: the process's exit closes its
descriptor and ends the connection.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

from warpdrive.fuse import devfuse
from warpdrive.fuse.ops import BUFFER_SIZE, Operations

log = logging.getLogger(__name__)
JOIN_TIMEOUT = 10.0  # seconds close() waits for threads to finish their requests


class Session:
    def __init__(
        self, ops: Operations, mount_point: str, allow_other: bool = False, threads: int = 16
    ) -> None:
        self.ops = ops
        self.mount_point = mount_point
        self.allow_other = allow_other
        self.threads = max(1, threads)
        self.fd: int | None = None
        self._fusermount = False
        self._workers: list[tuple[threading.Thread, int]] = []
        self._running = 0
        self._running_lock = threading.Lock()
        self._stopping = False
        self._done = threading.Event()  # stop() called, or every thread ended
        self._closed = False

    def mount(self, fusermount: bool = False) -> None:
        """Mount at ``mount_point`` (``devfuse.FuseMountError`` when refused); ``fusermount``:
        through fusermount3 even as root (what other users get; for tests)."""
        if fusermount:
            self.fd = devfuse.mount_fusermount(self.mount_point, self.allow_other)
            self._fusermount = True
        else:
            self.fd, self._fusermount = devfuse.mount(self.mount_point, self.allow_other)

    def start(self) -> None:
        """Start the worker threads: the first answers INIT, on the session's descriptor."""
        assert self.fd is not None, "mount() first"
        fds = [self.fd]
        try:
            fds += [devfuse.clone(self.fd) for _ in range(self.threads - 1)]
        except OSError as exc:  # a kernel without clone (< 4.2): one thread serves
            log.warning("cannot clone /dev/fuse (%s): serving with %d threads", exc, len(fds))
        self._running = len(fds)
        for i, fd in enumerate(fds):
            thread = threading.Thread(
                target=self._serve, args=(fd,), name=f"warpdrive-fuse-{i}", daemon=True
            )
            self._workers.append((thread, fd))
            thread.start()

    def stop(self) -> None:
        """Ask :meth:`wait` to return (safe in a signal handler: it only sets flags)."""
        self._stopping = True
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` or until every thread has ended; False on timeout."""
        return self._done.wait(timeout)

    @property
    def serving(self) -> bool:
        """Some thread still reads requests."""
        return self._running > 0

    def close(self, unmount: bool = True) -> None:
        """Unmount (unless told the mount is no longer ours), end the threads, close the
        descriptors (see module doc); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        if self.fd is not None and unmount:
            devfuse.unmount(self.mount_point, self._fusermount)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread, _ in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        ended = [fd for thread, fd in self._workers if not thread.is_alive()]
        if len(ended) == len(self._workers):
            for fd in ended:
                os.close(fd)
            if not self._workers and self.fd is not None:
                os.close(self.fd)
        else:
            log.warning("%d FUSE threads still wait on the kernel", len(self._workers) - len(ended))
        self.fd = None

    def _serve(self, fd: int) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        handle = self.ops.handle
        readv = os.readv
        try:
            while not self._stopping:
                try:
                    n = readv(fd, [buf])
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                        continue  # a request interrupted before we read it
                    if exc.errno != errno.ENODEV:  # ENODEV: unmounted, the connection ended
                        log.error("reading /dev/fuse: %s", exc)
                    break
                if self._stopping:  # left unanswered: the connection's end answers it
                    break
                handle(fd, view, n)
        except BaseException:
            log.exception("FUSE thread failed")
        finally:
            with self._running_lock:
                self._running -= 1
                if self._running == 0:
                    self._done.set()
