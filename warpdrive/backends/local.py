"""A directory on this machine as a backend (``type: local``).

The version of a file is its (mtime_ns, size, inode): a rewrite in place or a replacement by
rename changes it. Keys never leave ``root``: symlinks are followed only when their target stays
inside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
from collections.abc import Iterable

from warpdrive.backends.base import Entry, ObjectClient, ObjectMeta
from warpdrive.config import LocalOptions
from warpdrive.errors import (
    BackendError,
    ContainerNotFoundError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ObjectChangedError,
    PermissionDeniedError,
    TransientBackendError,
    WarpDriveError,
)


def version_of(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"


class LocalClient(ObjectClient):
    def __init__(self, name: str, options: LocalOptions) -> None:
        super().__init__(name, "local")
        self.root = os.path.realpath(options.root)
        self.page_size = options.list_page_size
        self._names: tuple[str, int, list[str]] | None = None

    def _path(self, key: str) -> str:
        path = os.path.join(self.root, key) if key else self.root
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise NotFoundError(f"{self.name}: {key!r} points outside the backend root")
        return real

    def stat(self, key: str) -> ObjectMeta:
        try:
            st = os.stat(self._path(key))
        except OSError as exc:
            raise self._translate(exc, key) from None
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsDirectoryError(f"{self.name}: {key!r} is a directory")
        return ObjectMeta(key=key, size=st.st_size, etag=version_of(st), mtime=st.st_mtime)

    def _sorted_names(self, path: str) -> list[str]:
        """The directory's names, sorted; reused across the pages of one listing while the
        directory is unchanged, so paging a huge directory does not rescan it for every page."""
        mtime = os.stat(path).st_mtime_ns
        cached = self._names
        if cached is not None and cached[0] == path and cached[1] == mtime:
            return cached[2]
        with os.scandir(path) as it:
            names = sorted(entry.name for entry in it)
        self._names = (path, mtime, names)
        return names

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        start = int(token) if token else 0
        try:
            names = self._sorted_names(self._path(prefix.rstrip("/")))
        except NotADirectoryError:
            raise NotDirectoryError(
                f"{self.name}: {prefix!r} is an object, not a directory"
            ) from None
        except OSError as exc:
            raise self._translate(exc, prefix) from None
        page: list[Entry] = []
        for name in names[start : start + self.page_size]:
            try:
                st = os.stat(self._path(prefix + name))
            except (OSError, WarpDriveError):
                continue  # vanished, dangling or escaping symlink: not listed
            if stat_mod.S_ISDIR(st.st_mode):
                page.append(Entry(name=name, is_dir=True, mtime=st.st_mtime))
            elif stat_mod.S_ISREG(st.st_mode):
                page.append(
                    Entry(name, False, size=st.st_size, mtime=st.st_mtime, etag=version_of(st))
                )
        end = start + self.page_size
        return page, (str(end) if end < len(names) else None)

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._translate(exc, key) from None
        try:
            if version_of(os.fstat(fd)) != etag:
                raise ObjectChangedError(f"{self.name}: {key!r} changed (expected version {etag})")
            chunks: list[bytes] = []
            pos = start
            while pos < end:
                chunk = os.pread(fd, end - pos, pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except OSError as exc:
            raise self._translate(exc, key) from None
        finally:
            os.close(fd)

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        path = os.path.join(self.root, key)
        if not os.path.realpath(os.path.dirname(path)).startswith(self.root):
            raise NotFoundError(f"{self.name}: {key!r} points outside the backend root")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.warpdrive-tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._translate(exc, key) from None

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except OSError as exc:
            raise self._translate(exc, key) from None

    def _translate(self, exc: OSError, key: str) -> WarpDriveError:
        where = f"{self.name}: {key!r}"
        if exc.errno == errno.ENOENT and not os.path.isdir(self.root):
            return ContainerNotFoundError(f"{self.name}: root {self.root} does not exist")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return NotFoundError(f"{where}: no such object")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PermissionDeniedError(f"{where}: permission denied")
        if exc.errno == errno.EISDIR:
            return IsDirectoryError(f"{where} is a directory")
        if exc.errno in (errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT):
            return TransientBackendError(f"{where}: {exc.strerror}", kind="other")
        return BackendError(f"{where}: {exc.strerror}")
