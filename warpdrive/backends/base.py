"""The Backend seam: what the read path needs from an object store, and nothing more.

A backend answers three questions about keys relative to its configured prefix: what is this
object (:meth:`Backend.stat`), what is under this prefix, one level, page by page
(:meth:`Backend.list_pages`), and what are these bytes of this version
(:meth:`Backend.read_range`, which refuses to return bytes of any other version).

Each store implements :class:`ObjectClient` (one attempt per call, its exceptions translated to
``warpdrive.errors`` once, from a table); :class:`warpdrive.backends.retry.RetryingBackend`
turns a client into a :class:`Backend` with timeouts, retries and metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from warpdrive.errors import BackendError


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """One version of one object. ``etag`` identifies the version (ETag, generation, or for local
    files mtime+size+inode): when it changes, every cached block of the old one is dead."""

    key: str
    size: int
    etag: str
    mtime: float


@dataclass(frozen=True, slots=True)
class Outage:
    """A backend that cannot be reached: since when (``time.monotonic()``) and the last cause.
    One outage lasts from the first failure to connect until a call gets an answer."""

    since: float
    cause: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One child in a listing: a directory (a common prefix) or an object."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: str | None = None


class Backend(Protocol):
    """The object store as the read path sees it (thread-safe; every call may block)."""

    name: str
    type: str

    def stat(self, key: str) -> ObjectMeta:
        """Size and version of the object ``key``; NotFoundError if there is none."""
        ...

    def list_pages(self, prefix: str) -> Iterator[list[Entry]]:
        """Children one level under ``prefix`` (``""`` or ending in ``/``), a page at a time."""
        ...

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        """Bytes ``[start, end)`` of version ``etag`` of ``key``, exactly ``end - start`` of them.

        ObjectChangedError when ``key`` is now another version."""
        ...

    def unreachable(self) -> Outage | None:
        """The outage under way, if a call lately could not reach the store (connection
        refused or reset, no answer in time) and none has been answered since; None otherwise.
        Never blocks: callers that can answer from the cache do so rather than wait on retries."""
        ...

    def close(self) -> None: ...


class ObjectClient(ABC):
    """One store's protocol, one attempt per call. Raises only ``warpdrive.errors`` types:
    TransientBackendError for what a retry may fix, the others for what it will not."""

    def __init__(self, name: str, type_: str) -> None:
        self.name = name
        self.type = type_

    @abstractmethod
    def stat(self, key: str) -> ObjectMeta: ...

    @abstractmethod
    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        """One page of children of ``prefix`` and the token of the next page (None: last)."""

    @abstractmethod
    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes: ...

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        """Store the object ``key`` from ``chunks``, streamed (``warpdrive-ctl move``). Not part
        of the read path; stores that cannot be written raise BackendError."""
        raise BackendError(f"{self.name}: writing to a {self.type} backend is not supported")

    def delete(self, key: str) -> None:
        raise BackendError(f"{self.name}: deleting from a {self.type} backend is not supported")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; idempotent."""


def join_key(prefix: str, key: str) -> str:
    """The store's key for ``key`` under the backend's configured ``prefix``."""
    return f"{prefix}/{key}" if prefix else key


def child_name(full: str, listed_prefix: str) -> str:
    """Last component of a listed key or common prefix, relative to the listed prefix."""
    return full[len(listed_prefix) :].rstrip("/")
