"""What ``/healthz`` checks: the mount answers, the cache index opens, a backend answers.

Each probe runs in its own thread with a deadline (a hung FUSE mount or backend must not hang
the health endpoint) and results are reused for a couple of seconds, so frequent probes by
Kubernetes or Prometheus do not turn into backend traffic.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from functools import partial

from warpdrive.backends import Backend, RetryingBackend
from warpdrive.reader import WarpDrive

PROBE_NAME = ".warpdrive-healthz"  # never exists: its lookup always reaches the mount


def with_deadline(fn: Callable[[], str], seconds: float) -> str:
    """``fn()``'s verdict, or a timeout message if it does not finish in time."""
    result: list[str] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:
            result.append(f"error: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="warpdrive-health-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else f"no answer within {seconds:g}s"


class Health:
    def __init__(self, mount_point: str, wd: WarpDrive, timeout: float = 3.0, reuse: float = 2.0):
        self.mount_point = mount_point
        self.wd = wd
        self.timeout = timeout
        self.reuse = reuse
        self._last: tuple[float, bool, dict[str, str]] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self.reuse:
                return self._last[1], self._last[2]
            checks = {"mount": with_deadline(self._mount, self.timeout)}
            checks["cache"] = with_deadline(self._cache, self.timeout)
            for name, backend in self.wd.backends.items():
                checks[f"backend:{name}"] = with_deadline(
                    partial(probe_backend, backend), self.timeout
                )
            backends_ok = any(v == "ok" for k, v in checks.items() if k.startswith("backend:"))
            ok = checks["mount"] == "ok" and checks["cache"] == "ok" and backends_ok
            self._last = (time.monotonic(), ok, checks)
            return ok, checks

    def _mount(self) -> str:
        try:
            os.stat(os.path.join(self.mount_point, PROBE_NAME))
        except FileNotFoundError:
            return "ok"  # the mount answered the lookup
        except OSError as exc:
            return f"error: {exc.strerror}"
        return "error: unexpected entry answered the probe"

    def _cache(self) -> str:
        self.wd.usage()
        return "ok"


def probe_backend(backend: Backend) -> str:
    """One listing request, without retries: is the store reachable with our credentials?"""
    if isinstance(backend, RetryingBackend):
        backend.client.list_page("", None)
    else:
        next(iter(backend.list_pages("")), None)
    return "ok"
