"""PATH arguments of warpdrive-ctl: a path under the mount (``/wd/datasets-cac/train``), a
mount-relative one (``/datasets-cac/train``, ``datasets-cac/train``) or a ``warpdrive://NAME/…``
URL (NAME a backend's name, wherever it is mounted); and the objects they name."""

from __future__ import annotations

from collections.abc import Iterator

from warpdrive.errors import NotFoundError
from warpdrive.read.namespace import FileInfo
from warpdrive.read.reader import WarpDrive


def objects_under(wd: WarpDrive, path: str, recursive: bool) -> Iterator[FileInfo]:
    """The object at ``path``, or the objects in the directory at ``path`` (all of them below
    it when ``recursive``), in listing order. NotFoundError names a path that does not exist."""
    objects = wd.walk(path, recursive)
    try:
        first = next(objects, None)
    except NotFoundError as exc:
        raise NotFoundError(f"{path}: no such object or directory ({exc})") from None
    if first is not None:
        yield first
        yield from objects
