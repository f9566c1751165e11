"""Background work on a timer keeps going after a failing round, and stops when closed."""

from __future__ import annotations

import logging
import time

import pytest

from warpdrive.periodic import Periodic


class Flaky(Periodic):
    def __init__(self, final_tick: bool) -> None:
        super().__init__("flaky", 0.01, final_tick)
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("the first round fails")


@pytest.mark.parametrize("final_tick", [False, True])
def test_a_failing_round_is_logged_and_the_next_runs(
    caplog: pytest.LogCaptureFixture, final_tick: bool
) -> None:
    worker = Flaky(final_tick)
    with caplog.at_level(logging.ERROR, logger="warpdrive.periodic"):
        worker.start()
        deadline = time.monotonic() + 10
        while worker.ticks < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.close()
    assert worker.ticks >= 3
    assert "flaky failed" in caplog.text and "the first round fails" in caplog.text
    stopped = worker.ticks
    time.sleep(0.05)
    assert worker.ticks == stopped  # closed: no more rounds
    assert not worker._thread.is_alive()
