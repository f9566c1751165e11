"""``warpdrive://`` as an fsspec filesystem, registered through the ``fsspec.specs`` entry point.

``fsspec.open("warpdrive://datasets-cac/train/shard-000000.tar")`` reads through the same cache
as the mount. The configuration comes from ``storage_options={"config": ...}`` (a path or a
:class:`~warpdrive.config.Config`), else from ``$WARPDRIVE_CONFIG``. Read-only.
"""

from __future__ import annotations

import io
import os
from typing import Any

from fsspec.spec import AbstractFileSystem

from warpdrive.config import Config
from warpdrive.namespace import FileInfo
from warpdrive.reader import WarpDrive


class WarpDriveFileSystem(AbstractFileSystem):  # type: ignore[misc]
    protocol = "warpdrive"
    root_marker = ""

    def __init__(
        self, config: WarpDrive | Config | str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.wd = config if isinstance(config, WarpDrive) else WarpDrive(config)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith("warpdrive://"):
            path = path[len("warpdrive://") :]
        return path.strip("/")

    def _info_dict(self, info: FileInfo) -> dict[str, Any]:
        return {
            "name": info.path.lstrip("/"),
            "size": info.size,
            "type": "directory" if info.is_dir else "file",
            "mtime": info.mtime,
            "etag": info.etag,
        }

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._info_dict(self.wd.stat(self._strip_protocol(path)))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entries = [self._info_dict(e) for e in self.wd.listdir(self._strip_protocol(path))]
        return entries if detail else [e["name"] for e in entries]

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Bytes ``[start, end)``; negative positions count from the end, as in fsspec."""
        path = self._strip_protocol(path)
        start, end = start or 0, end
        if start < 0 or (end is not None and end < 0):
            size = self.wd.stat(path).size
            start = max(0, size + start) if start < 0 else start
            end = max(0, size + end) if end is not None and end < 0 else end
        return self.wd.read(path, start, -1 if end is None else max(0, end - start))

    def _open(
        self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any
    ) -> io.IOBase:
        if mode != "rb":
            raise ValueError(f"warpdrive:// is read-only: mode {mode!r} not supported")
        return self.wd.open(self._strip_protocol(path), "rb")

    def ukey(self, path: str) -> str:
        return str(self.info(path).get("etag"))
