"""Retries with exponential backoff and jitter around one store's :class:`ObjectClient`.

Only TransientBackendError is retried (timeouts, resets, 5xx, 429/503 throttling, short bodies);
the server's Retry-After is honoured up to ``max_backoff``. When attempts run out the caller gets
BackendUnavailableError, naming backend, operation, key and the last cause. Every attempt is timed
into ``warpdrive_backend_request_duration_seconds``; each failure, and only a failure (see
:data:`ANSWERS`), is counted by type in ``warpdrive_backend_errors_total``.

Reachability: a request that could not reach the store after every retry (connection refused or
reset, no answer in time), or a health probe that could not, starts an :class:`Outage`; any
answer ends it. For ``DOWN_FOR`` seconds after the last such failure :meth:`unreachable` says so,
and the namespace answers what the cache index holds without asking (and waiting on retries);
requests themselves are never refused here, so whoever does ask finds the store as soon as it
is back. 5xx and throttling do not count: the store is there, only failing.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from warpdrive.backends.base import Entry, ObjectClient, ObjectMeta, Outage
from warpdrive.config import FetchConfig
from warpdrive.errors import (
    BackendUnavailableError,
    ContainerNotFoundError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ObjectChangedError,
    PermissionDeniedError,
    TransientBackendError,
    WarpDriveError,
)
from warpdrive.metrics import BackendMetrics

T = TypeVar("T")

# What a store says about the thing asked for is an answer, not a failure: a healthy backend
# gives these all day, so they are never counted as errors (the >1% error-ratio alert would page
# on a healthy node: every lookup of a directory stats it first and gets IsDirectoryError).
#   NotFoundError       no such object: a stat of a name that is not there, a read of an object
#                       deleted since its stat, a listing of a directory that is not there
#   IsDirectoryError    the key is a directory (a stat of a prefix)
#   NotDirectoryError   the key is an object (listed as if it were a directory)
#   ObjectChangedError  the version check refused another version (412 / etag mismatch): it did
#                       its job; the reader gets ESTALE, counted in warpdrive_fuse_errors_total
# Failures, counted by error_type: timeout, connection, throttled, server (the transient ones,
# retried), permission (401/403), container_not_found (the container, bucket or root is not
# there: ContainerNotFoundError, not a NotFoundError, because then nothing in it can be read) and
# other (any other refusal, e.g. a 400).
ANSWERS = (NotFoundError, IsDirectoryError, NotDirectoryError, ObjectChangedError)
UNREACHABLE = ("connection", "timeout")  # failure kinds that mean the store was not reached
DOWN_FOR = 30.0  # seconds after a failure to reach the store that it is taken as down


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    timeout: float = 60.0

    @classmethod
    def from_config(cls, fetch: FetchConfig) -> RetryPolicy:
        return cls(
            fetch.max_attempts, fetch.initial_backoff, fetch.max_backoff, fetch.request_timeout
        )

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): "equal jitter"
        exponential backoff, so retrying clients spread out but never retry at once."""
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay


def error_type(exc: BaseException) -> str:
    """The bounded ``error_type`` label for a failed attempt (never one of :data:`ANSWERS`)."""
    if isinstance(exc, TransientBackendError):
        return exc.kind if exc.kind in ("timeout", "connection", "throttled", "server") else "other"
    if isinstance(exc, PermissionDeniedError):
        return "permission"
    if isinstance(exc, ContainerNotFoundError):
        return "container_not_found"
    return "other"


class RetryingBackend:
    """A :class:`warpdrive.backends.base.Backend` over one client: retries, timing, byte counts."""

    def __init__(
        self,
        client: ObjectClient,
        policy: RetryPolicy,
        metrics: BackendMetrics,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.name = client.name
        self.type = client.type
        self.policy = policy
        self._metrics = metrics
        self._sleep = sleep
        # The outage under way (None: none) and when the store was last not reached
        # (monotonic). Read without the lock (one attribute each); _lock orders changes.
        self._outage: Outage | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()

    def unreachable(self) -> Outage | None:
        """The outage under way, while its last failure is under ``DOWN_FOR`` old."""
        outage = self._outage
        if outage is None or time.monotonic() - self._failed_at > DOWN_FOR:
            return None
        return outage

    def probe(self) -> None:
        """One listing request, without retries (health checks): whether the store answers
        with our credentials. Raises what it failed with; updates :meth:`unreachable`."""
        try:
            self.client.list_page("", None)
        except TransientBackendError as exc:
            if exc.kind in UNREACHABLE:
                self._not_reached(exc)
            raise
        self._answered()

    def _not_reached(self, exc: BaseException) -> None:
        with self._lock:
            self._failed_at = time.monotonic()
            since = self._failed_at if self._outage is None else self._outage.since
            self._outage = Outage(since, str(exc))

    def _answered(self) -> None:
        if self._outage is not None:
            with self._lock:
                self._outage = None

    def stat(self, key: str) -> ObjectMeta:
        return self._call("stat", key, lambda: self.client.stat(key))

    def list_pages(self, prefix: str) -> Iterator[list[Entry]]:
        token: str | None = None
        while True:
            page, token = self._call("list", prefix, partial(self.client.list_page, prefix, token))
            yield page
            if token is None:
                return

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        def attempt() -> bytes:
            data = self.client.read_range(key, start, end, etag)
            if len(data) != end - start:
                raise TransientBackendError(
                    f"short read: got {len(data)} of {end - start} bytes", kind="connection"
                )
            return data

        data = self._call("read", key, attempt)
        self._metrics.bytes_read.inc(len(data))
        return data

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        """Not retried: a stream cannot be replayed; the caller retries the whole object."""
        self.client.write(key, chunks)

    def delete(self, key: str) -> None:
        self._call("delete", key, partial(self.client.delete, key))

    def close(self) -> None:
        self.client.close()

    def _call(self, op: str, subject: str, attempt: Callable[[], T]) -> T:
        duration = self._metrics.duration[op]
        for n in range(1, self.policy.max_attempts + 1):
            started = time.monotonic()
            try:
                result = attempt()
            except TransientBackendError as exc:
                duration.observe(time.monotonic() - started)
                self._metrics.errors[error_type(exc)].inc()
                if n == self.policy.max_attempts:
                    if exc.kind in UNREACHABLE:
                        self._not_reached(exc)
                    raise BackendUnavailableError(
                        f"{self.name}: {op} {subject!r} failed after {n} attempts: {exc}"
                    ) from exc
                self._metrics.retries[op].inc()
                self._sleep(self.policy.backoff(n, exc.retry_after))
            except WarpDriveError as exc:
                duration.observe(time.monotonic() - started)
                if isinstance(exc, ANSWERS):
                    self._answered()
                else:
                    self._metrics.errors[error_type(exc)].inc()
                raise
            else:
                duration.observe(time.monotonic() - started)
                self._answered()
                return result
        raise AssertionError("unreachable: max_attempts >= 1")
