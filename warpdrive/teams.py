"""Which team a reader belongs to: ``warpdrive-ctl team add`` (kept in the cache index, seen by
every process at once) before the config's ``governance.teams``. Answers are reused for a minute,
so a read never waits on a lookup."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Mapping

REUSE_SECONDS = 60.0


def username(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class TeamResolver:
    def __init__(
        self, configured: Mapping[str, str], assigned: Callable[[str], str | None]
    ) -> None:
        self.configured = dict(configured)
        self.assigned = assigned
        self._known: dict[int, tuple[float, str, str | None]] = {}

    def user_and_team(self, uid: int | None = None) -> tuple[str, str | None]:
        """The user name and team of ``uid`` (default: this process's user)."""
        uid = os.getuid() if uid is None else uid
        now = time.monotonic()
        known = self._known.get(uid)
        if known is not None and known[0] > now:
            return known[1], known[2]
        user = username(uid)
        team = self.assigned(user) or self.configured.get(user)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[uid] = (now + REUSE_SECONDS, user, team)
        return user, team
