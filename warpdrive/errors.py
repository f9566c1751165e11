"""Typed errors of the read path and the errno each one means to a FUSE caller.

Backend exceptions are translated into these once, in the backend modules; the FUSE layer maps
them to errno with :func:`errno_for`. Messages name the thing that failed (backend, key, offset)
and never carry credentials.
"""

from __future__ import annotations

import errno


def printable(text: str) -> str:
    """``text`` on one line, control characters escaped: a name with a newline, a carriage
    return or an escape sequence must not split an error or rewrite the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class WarpDriveError(Exception):
    """Base class of every error WarpDrive raises on purpose."""

    errno: int = errno.EIO


class ConfigError(WarpDriveError, ValueError):
    """A configuration value is missing or wrong; ``key_path`` names it (``backends[1].auth``)."""

    errno = errno.EINVAL

    def __init__(self, key_path: str, message: str) -> None:
        self.key_path = key_path
        self.message = message
        # Keys come from the file: one with a newline would split the one-line error.
        super().__init__(printable(f"{key_path}: {message}" if key_path else message))


class InvalidPathError(WarpDriveError, ValueError):
    """A path that can never name an object: ``..``, NUL, an over-long component."""

    errno = errno.EINVAL


class NotFoundError(WarpDriveError, FileNotFoundError):
    """No object or directory at this path (or no backend mounted there)."""

    errno = errno.ENOENT


class IsDirectoryError(WarpDriveError, IsADirectoryError):
    """The path names a directory where an object was expected."""

    errno = errno.EISDIR


class NotDirectoryError(WarpDriveError, NotADirectoryError):
    """The path names an object where a directory was expected."""

    errno = errno.ENOTDIR


class PermissionDeniedError(WarpDriveError, PermissionError):
    """The backend refused our credentials for this object (401/403)."""

    errno = errno.EACCES


class ReadOnlyError(WarpDriveError):
    """Something tried to change the read-only mount."""

    errno = errno.EROFS


class ObjectChangedError(WarpDriveError):
    """The object's version (etag) changed under an open handle; reopen to read the new one."""

    errno = errno.ESTALE


class CacheDamagedError(WarpDriveError):
    """The cache index cannot be read and other processes still use the cache."""

    errno = errno.EIO


class BackendError(WarpDriveError, OSError):
    """A backend request failed for a reason that retrying will not fix."""

    errno = errno.EIO


class ContainerNotFoundError(BackendError):
    """The backend's container, bucket or root directory does not exist: the backend is broken
    (deleted, or misnamed in the config), which no answer about one object can say. EIO."""


class TransientBackendError(BackendError):
    """A backend request failed in a way worth retrying (timeout, reset, 5xx, throttling).

    ``retry_after`` carries the server's Retry-After hint in seconds, when it sent one.
    ``kind`` is a short, bounded label for metrics: timeout, connection, throttled, server.
    """

    def __init__(self, message: str, kind: str = "other", retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class BackendUnavailableError(BackendError):
    """A backend kept failing after every retry; the read fails with EIO, the mount stays up."""


def errno_for(exc: BaseException) -> int:
    """The errno a FUSE reply should carry for ``exc`` (EIO for anything unknown)."""
    if isinstance(exc, WarpDriveError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
