"""Clients that wrap a real client: one counts requests, one injects faults.

They exist for what no real server can show on demand (the k-th request failing, a request
count seen from the reader's side); the bytes still come from the real store underneath.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from warpdrive.backends.base import Entry, ObjectClient, ObjectMeta
from warpdrive.errors import TransientBackendError, WarpDriveError


class CountingClient(ObjectClient):
    """Counts every call per operation (``calls["read"]``) and the byte ranges read."""

    def __init__(self, inner: ObjectClient) -> None:
        super().__init__(inner.name, inner.type)
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.ranges: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def _count(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1

    def stat(self, key: str) -> ObjectMeta:
        self._count("stat")
        return self.inner.stat(key)

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        self._count("list")
        return self.inner.list_page(prefix, token)

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        with self._lock:
            self.calls["read"] += 1
            self.ranges.append((key, start, end))
        return self.inner.read_range(key, start, end, etag)

    def close(self) -> None:
        self.inner.close()


Fault = Callable[[str, str], WarpDriveError | None]


def fail_first(k: int, ops: tuple[str, ...] = ("read",), kind: str = "server") -> Fault:
    """A fault plan: the first ``k`` calls of ``ops`` fail with a transient error of ``kind``."""
    remaining = {"n": k}
    lock = threading.Lock()

    def plan(op: str, key: str) -> WarpDriveError | None:
        if op not in ops:
            return None
        with lock:
            if remaining["n"] <= 0:
                return None
            remaining["n"] -= 1
        return TransientBackendError(f"injected {kind} fault on {op} {key!r}", kind=kind)

    return plan


class FaultInjectingClient(ObjectClient):
    """Before each call, asks ``fault(op, key)``; raises what it returns, else calls through."""

    def __init__(self, inner: ObjectClient, fault: Fault) -> None:
        super().__init__(inner.name, inner.type)
        self.inner = inner
        self.fault = fault

    def _maybe_fail(self, op: str, key: str) -> None:
        error = self.fault(op, key)
        if error is not None:
            raise error

    def stat(self, key: str) -> ObjectMeta:
        self._maybe_fail("stat", key)
        return self.inner.stat(key)

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        self._maybe_fail("list", prefix)
        return self.inner.list_page(prefix, token)

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        self._maybe_fail("read", key)
        return self.inner.read_range(key, start, end, etag)

    def close(self) -> None:
        self.inner.close()
