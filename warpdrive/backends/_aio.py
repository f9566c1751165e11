"""Run one async SDK call from a worker thread, on fsspec's shared IO loop, with a deadline.

The async clients (adlfs/azure-storage-blob, s3fs/aiobotocore, gcsfs/aiohttp) all live on
fsspec's IO thread. A worker thread submits a coroutine and blocks on its result; on timeout the
coroutine is cancelled on the loop (``asyncio.timeout``), not left running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import fsspec.asyn

from warpdrive.errors import BackendError, TransientBackendError, WarpDriveError

T = TypeVar("T")

# Exceptions that mean "the network or the server let us down this time".
_TRANSIENT_NAMES = {
    "ClientConnectionError": "connection",
    "ClientOSError": "connection",
    "ServerDisconnectedError": "connection",
    "ClientPayloadError": "connection",
    "ServerTimeoutError": "timeout",
    "IncompleteReadError": "connection",
    "ConnectionResetError": "connection",
    "ConnectionRefusedError": "connection",
    "ConnectionAbortedError": "connection",
    "BrokenPipeError": "connection",
    "EndpointConnectionError": "connection",
    "ConnectionClosedError": "connection",
    "ReadTimeoutError": "timeout",
    "ConnectTimeoutError": "timeout",
    "ServiceRequestError": "connection",
    "ServiceResponseError": "connection",
    "ServiceRequestTimeoutError": "timeout",
    "ServiceResponseTimeoutError": "timeout",
}
# Mistakes in our own code: retrying them only wastes time.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, KeyError, IndexError, NameError, AssertionError)


def loop() -> asyncio.AbstractEventLoop:
    return fsspec.asyn.get_loop()  # type: ignore[no-any-return]


def run(
    coro_fn: Callable[[], Coroutine[Any, Any, T]],
    timeout: float,
    translate: Callable[[BaseException], WarpDriveError],
) -> T:
    """Result of ``coro_fn()`` run on the IO loop within ``timeout`` seconds; any exception comes
    back through ``translate`` (the client's table), timeouts as TransientBackendError."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):  # no second task, as wait_for makes
            return await coro_fn()

    future = asyncio.run_coroutine_threadsafe(bounded(), loop())
    try:
        return future.result()
    except (asyncio.TimeoutError, TimeoutError):
        raise TransientBackendError(f"no answer within {timeout:g}s", kind="timeout") from None
    except WarpDriveError:
        raise
    except Exception as exc:
        raise translate(exc) from exc


def transient_kind(exc: BaseException) -> str | None:
    """``"connection"``/``"timeout"`` when ``exc`` (or its cause chain) is a network failure."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        for cls in type(current).__mro__:
            kind = _TRANSIENT_NAMES.get(cls.__name__)
            if kind:
                return kind
        if isinstance(current, (asyncio.TimeoutError, TimeoutError)):
            return "timeout"
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def fallback(exc: BaseException, subject: str) -> WarpDriveError:
    """Translation for exceptions no table knows: network trouble is transient, our own bugs
    are not, anything else is retried as ``other``."""
    kind = transient_kind(exc)
    if kind is not None:
        return TransientBackendError(f"{subject}: {type(exc).__name__}: {exc}", kind=kind)
    if isinstance(exc, _PROGRAMMING_ERRORS):
        return BackendError(f"{subject}: internal error {type(exc).__name__}: {exc}")
    return TransientBackendError(f"{subject}: {type(exc).__name__}: {exc}", kind="other")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
