"""What ``/healthz`` (liveness) and ``/readyz`` (readiness) answer for this process's mount.

* **live**: this process serves its mount: the mount at ``mount_point`` is the one it made (the
  device recorded when it mounted; another mount stacked there, or ours gone, is not) and its
  health file opens and reads there (``mountinfo.read_health_file``: a stat could be answered
  from the kernel's cached attributes, an open and a read reach this process or fail). Nothing
  else: a backend outage must not get the agent restarted — cached reads go on through it — so
  backends never decide liveness.
* **ready**: live, the cache index opens, and *every* backend answers one listing request.

Both endpoints answer the same JSON (:meth:`Health.report`): ``status`` (``ok`` all checks
pass, ``degraded`` live but a check fails, ``down`` not live), ``live``, ``ready``, who answers
(``mount_point``, ``pid``, ``device``: ``warpdrive-ctl status`` compares them with the mount it
asks about) and ``checks`` (``mount``, ``cache``, ``backend:NAME``: ``ok`` or why not).

Each probe runs in its own thread with a deadline (a hung FUSE mount or backend must not hang
the endpoint). The cache and backend checks run concurrently as one round whose answers are
reused for ``reuse`` seconds, so frequent probes do not turn into backend traffic;
``/healthz`` never waits for a round (it shows the last one's answers and starts the next in the
background when they are older than ``reuse``), ``/readyz`` waits for a fresh one.

Concurrency: ``_refreshing`` (a Lock) lets one round run at a time, in whichever thread took
it; a round publishes its answers as one tuple ``_checked`` (monotonic time, checks), replaced
whole and read without a lock. ``device`` is set once, by :meth:`mounted`, before the HTTP
server starts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from functools import partial

from warpdrive.backends import Backend, RetryingBackend
from warpdrive.fuse.mountinfo import find_mount, probe_read
from warpdrive.read.reader import WarpDrive

NOT_CHECKED = "not checked yet"


def with_deadlines(probes: dict[str, Callable[[], str]], seconds: float) -> dict[str, str]:
    """Each probe's verdict, the probes run concurrently; a timeout message for each that does
    not finish within ``seconds`` (its thread is left to end on its own)."""
    results: dict[str, str] = {}

    def run(name: str, fn: Callable[[], str]) -> None:
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = f"error: {type(exc).__name__}: {exc}"

    threads = [
        threading.Thread(target=run, args=item, name="warpdrive-health-probe", daemon=True)
        for item in probes.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {name: results.get(name, f"no answer within {seconds:g}s") for name in probes}


def with_deadline(fn: Callable[[], str], seconds: float) -> str:
    """``fn()``'s verdict, or a timeout message if it does not finish in time."""
    return with_deadlines({"": fn}, seconds)[""]


class Health:
    def __init__(self, mount_point: str, wd: WarpDrive, timeout: float = 3.0, reuse: float = 2.0):
        self.mount_point = os.path.abspath(mount_point)
        self.wd = wd
        self.timeout = timeout
        self.reuse = reuse
        self.pid = os.getpid()
        self.device: str | None = None  # of our mount, once made
        self._checked: tuple[float, dict[str, str]] | None = None
        self._refreshing = threading.Lock()

    def mounted(self, device: str) -> None:
        """Record the device of the mount this process just made (from /proc/self/mountinfo),
        and start the first round of checks, so the first probe finds answers."""
        self.device = device
        self._refresh_if_old(wait=False)

    # -- the endpoints -----------------------------------------------------------------------

    def live(self) -> tuple[bool, dict[str, object]]:
        """``/healthz``: (this process serves its mount, the report); never waits for backends."""
        self._refresh_if_old(wait=False)
        return self.report()

    def ready(self) -> tuple[bool, dict[str, object]]:
        """``/readyz``: (live and the cache and every backend answer, the report)."""
        self._refresh_if_old(wait=True)
        _, body = self.report()
        return bool(body["ready"]), body

    def ready_checks(self) -> tuple[bool, dict[str, str]]:
        """Readiness and its checks, for the control plane's heartbeat."""
        ok, body = self.ready()
        checks = body["checks"]
        assert isinstance(checks, dict)
        return ok, checks

    def report(self) -> tuple[bool, dict[str, object]]:
        """(live, the JSON body), with the last round's cache and backend answers."""
        mount = self.check_mount()
        checked = self._checked
        rest = checked[1] if checked is not None else self._unchecked()
        checks = {"mount": mount, **rest}
        live = mount == "ok"
        ready = live and all(v == "ok" for v in checks.values())
        body: dict[str, object] = {
            "status": "ok" if ready else "degraded" if live else "down",
            "live": live,
            "ready": ready,
            "mount_point": self.mount_point,
            "pid": self.pid,
            "device": self.device,
            "checks": checks,
        }
        return live, body

    # -- the checks --------------------------------------------------------------------------

    def check_mount(self) -> str:
        """``ok`` when the mount at the mount point is ours and its health file reads there."""
        return with_deadline(self._mount, self.timeout)

    def _mount(self) -> str:
        if self.device is None:
            return "not mounted yet"
        entry = find_mount(self.mount_point)
        if entry is None:
            return "not mounted"
        if entry.device != self.device:
            return (
                f"error: the mount at {self.mount_point} is not this process's "
                f"(device {entry.device}, ours {self.device})"
            )
        return probe_read(self.mount_point)

    def _unchecked(self) -> dict[str, str]:
        return {"cache": NOT_CHECKED, **{f"backend:{n}": NOT_CHECKED for n in self.wd.backends}}

    def _round(self) -> dict[str, str]:
        probes: dict[str, Callable[[], str]] = {"cache": self._cache}
        for name, backend in self.wd.backends.items():
            probes[f"backend:{name}"] = partial(probe_backend, backend)
        return with_deadlines(probes, self.timeout)

    def _cache(self) -> str:
        self.wd.usage()
        return "ok"

    def _old(self) -> bool:
        checked = self._checked
        return checked is None or time.monotonic() - checked[0] >= self.reuse

    def _refresh_if_old(self, wait: bool) -> None:
        """Run a round when the last is older than ``reuse``: here (``wait``), else in the
        background; while one runs, a waiting caller waits for it and another goes on."""
        if not self._old() or not self._refreshing.acquire(blocking=wait):
            return
        if wait:
            self._refresh_locked()
        else:
            threading.Thread(
                target=self._refresh_locked, name="warpdrive-health-round", daemon=True
            ).start()

    def _refresh_locked(self) -> None:
        """The caller holds ``_refreshing``; released here."""
        try:
            if self._old():  # another round may have ended while we waited for the lock
                self._checked = (time.monotonic(), self._round())
        finally:
            self._refreshing.release()


def probe_backend(backend: Backend) -> str:
    """One listing request, without retries: is the store reachable with our credentials?"""
    if isinstance(backend, RetryingBackend):
        backend.probe()  # a store it cannot reach is taken as down (answered from the cache)
    else:
        next(iter(backend.list_pages("")), None)
    return "ok"
