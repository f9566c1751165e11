"""Background work on a timer (the mount's storage crawl, its reports to the control plane)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Periodic:
    """Runs :meth:`tick` every ``interval`` seconds in a daemon thread until :meth:`close`
    (once more on the way out when ``final_tick``). A tick that fails is logged and the next
    one tries again: background work must never stop for good, nor touch the reads."""

    def __init__(self, name: str, interval: float, final_tick: bool = False) -> None:
        self.name = name
        self.interval = interval
        self.final_tick = final_tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"warpdrive-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._safe_tick()
        if self.final_tick:
            self._safe_tick()

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:
            log.exception("%s failed; trying again in %.0f s", self.name, self.interval)
