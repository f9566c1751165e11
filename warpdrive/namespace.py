"""Mount paths → (backend, key), with the metadata and listing caches.

Paths are mount-relative (``/datasets-cac/train/x.tar``); ``warpdrive://datasets-cac/...`` URLs
and paths under the configured mount point (``/wd/datasets-cac/...``) mean the same. Empty and
``.`` components are dropped; ``..``, NUL and over-long names are refused, so no path can leave
its backend's prefix. Directories above the mount paths (``/`` itself, ``/regions`` for
``/regions/a``) are virtual.

Object metadata (size, etag) is trusted for ``cache.stale_ttl`` seconds, listings for
``cache.list_ttl``; listings also refresh the metadata of the objects they show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from warpdrive.backends import Backend, Entry, ObjectMeta
from warpdrive.config import Config
from warpdrive.errors import InvalidPathError, IsDirectoryError, NotDirectoryError, NotFoundError

URL_SCHEME = "warpdrive://"
MAX_COMPONENT = 1024
MAX_PATH = 4096
MAX_CACHED_LISTING = 10_000
MAX_META_ENTRIES = 200_000


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a path is: a directory, or an object of a given size and version."""

    path: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Location:
    backend: Backend | None  # None: a virtual directory above the mount paths
    key: str  # key relative to the backend's prefix ("" for the backend's root)
    path: str  # the normalised mount-relative path


class Namespace:
    def __init__(self, config: Config, backends: Mapping[str, Backend]) -> None:
        self.mount_point = config.mount_point
        self.stale_ttl = config.cache.stale_ttl
        self.list_ttl = config.cache.list_ttl
        self._mounts: dict[tuple[str, ...], Backend] = {
            tuple(b.mount_path.strip("/").split("/")): backends[b.name] for b in config.backends
        }
        # Guarded by the GIL only: single dict operations, races cost at most a repeated stat.
        self._meta: dict[tuple[str, str], tuple[float, ObjectMeta]] = {}
        self._listings: dict[str, tuple[float, list[FileInfo]]] = {}
        self._lock = threading.Lock()

    # -- paths -----------------------------------------------------------------------------

    def normalize(self, path: str) -> str:
        """The canonical mount-relative form of ``path``; InvalidPathError if it cannot be one."""
        if not isinstance(path, str):
            raise InvalidPathError(f"path must be a string, got {type(path).__name__}")
        if "\0" in path:
            raise InvalidPathError(f"path contains a NUL byte: {path!r}")
        if path.startswith(URL_SCHEME):
            path = "/" + path[len(URL_SCHEME) :]
        if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
            raise InvalidPathError(f"path longer than {MAX_PATH} bytes: {path[:60]!r}…")
        parts = [p for p in path.split("/") if p and p != "."]
        for part in parts:
            if part == "..":
                raise InvalidPathError(f"'..' is not allowed in paths: {path!r}")
            if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT:
                raise InvalidPathError(
                    f"path component longer than {MAX_COMPONENT} bytes in {path[:60]!r}…"
                )
        mp = [p for p in self.mount_point.split("/") if p]
        if mp and parts[: len(mp)] == mp and not self._under_mount(parts):
            parts = parts[len(mp) :]
        return "/" + "/".join(parts)

    def locate(self, path: str) -> Location:
        norm = self.normalize(path)
        parts = tuple(p for p in norm.split("/") if p)
        for mount, backend in self._mounts.items():
            if parts[: len(mount)] == mount:
                return Location(backend, "/".join(parts[len(mount) :]), norm)
        if any(mount[: len(parts)] == parts for mount in self._mounts):
            return Location(None, "", norm)
        raise NotFoundError(f"{norm!r}: no backend is mounted there")

    def mirrors(self, path: str) -> list[str]:
        """The same relative directory under every other backend's mount path: where a dataset
        split across regions keeps its other shards (``/datasets-cac/train`` →
        ``/datasets-wus3/train``)."""
        parts = tuple(p for p in self.normalize(path).split("/") if p)
        for mount in self._mounts:
            if parts[: len(mount)] == mount:
                rel = parts[len(mount) :]
                return ["/" + "/".join(other + rel) for other in self._mounts if other != mount]
        return []

    def _under_mount(self, parts: list[str]) -> bool:
        return any(tuple(parts[: len(m)]) == m for m in self._mounts)

    # -- metadata --------------------------------------------------------------------------

    def object_meta(self, path: str) -> tuple[Backend, ObjectMeta]:
        """Backend and current metadata of the object at ``path`` (cached ``stale_ttl``)."""
        loc = self.locate(path)
        if loc.backend is None or not loc.key:
            raise IsDirectoryError(f"{loc.path!r} is a directory")
        return loc.backend, self._meta_for(loc.backend, loc.key)

    def cached_stat(self, path: str) -> FileInfo | None:
        """What :meth:`stat` would answer, when that needs no backend call (the object's
        metadata is known and fresh); None otherwise. Never blocks."""
        loc = self.locate(path)
        if loc.backend is None or not loc.key:
            return FileInfo(loc.path, is_dir=True)
        cached = self._meta.get((loc.backend.name, loc.key))
        if cached is None or cached[0] <= time.monotonic():
            return None
        meta = cached[1]
        return FileInfo(loc.path, False, meta.size, meta.mtime, meta.etag)

    def _meta_for(self, backend: Backend, key: str, refresh: bool = False) -> ObjectMeta:
        now = time.monotonic()
        cached = None if refresh else self._meta.get((backend.name, key))
        if cached is not None and cached[0] > now:
            return cached[1]
        meta = backend.stat(key)
        self._remember(backend.name, meta, now)
        return meta

    def _remember(self, backend: str, meta: ObjectMeta, now: float) -> None:
        if len(self._meta) >= MAX_META_ENTRIES:
            self._meta.clear()  # crude but bounded; entries are cheap to fetch again
        self._meta[(backend, meta.key)] = (now + self.stale_ttl, meta)

    def stat(self, path: str) -> FileInfo:
        loc = self.locate(path)
        if loc.backend is None or not loc.key:
            return FileInfo(loc.path, is_dir=True)
        try:
            meta = self._meta_for(loc.backend, loc.key)
        except IsDirectoryError:
            return FileInfo(loc.path, is_dir=True)
        return FileInfo(loc.path, False, meta.size, meta.mtime, meta.etag)

    # -- listings --------------------------------------------------------------------------

    def list_pages(self, path: str) -> Iterator[list[FileInfo]]:
        """Children of the directory at ``path``, a page at a time, in the backend's order."""
        loc = self.locate(path)
        base = loc.path.rstrip("/")
        if loc.backend is None:
            depth = len([p for p in loc.path.split("/") if p])
            names = sorted(
                {m[depth] for m in self._mounts if len(m) > depth and self._is_prefix(m, loc.path)}
            )
            yield [FileInfo(f"{base}/{n}", is_dir=True) for n in names]
            return
        backend, prefix = loc.backend, f"{loc.key}/" if loc.key else ""
        now = time.monotonic()
        empty = True
        seen: list[FileInfo] | None = []  # kept for listdir() while the directory is small
        for page in backend.list_pages(prefix):
            infos = [
                self._info(base, backend.name, prefix, e, now) for e in page if _nameable(e.name)
            ]
            empty = empty and not infos
            if seen is not None:
                seen.extend(infos)
                if len(seen) > MAX_CACHED_LISTING:
                    seen = None
            yield infos
        if seen is not None and not empty:  # listed to the end: `ls` then open lists once
            self._keep_listing(loc.path, now, sorted(seen, key=lambda e: e.name))
        if empty and loc.key:
            try:
                backend.stat(loc.key)
            except IsDirectoryError:
                return
            except NotFoundError:
                raise NotFoundError(f"{loc.path!r}: no such directory") from None
            raise NotDirectoryError(f"{loc.path!r} is an object, not a directory")

    def listdir(self, path: str) -> list[FileInfo]:
        """All children of ``path``, sorted by name; small listings are reused ``list_ttl``."""
        norm = self.normalize(path)
        now = time.monotonic()
        cached = self._listings.get(norm)
        if cached is not None and cached[0] > now:
            return cached[1]
        entries = sorted((e for page in self.list_pages(norm) for e in page), key=lambda e: e.name)
        self._keep_listing(norm, now, entries)
        return entries

    def _keep_listing(self, norm: str, now: float, entries: list[FileInfo]) -> None:
        if len(entries) <= MAX_CACHED_LISTING:
            with self._lock:
                if len(self._listings) > 1024:
                    self._listings.clear()
                self._listings[norm] = (now + self.list_ttl, entries)

    def _info(self, base: str, backend: str, prefix: str, entry: Entry, now: float) -> FileInfo:
        path = f"{base}/{entry.name}"
        if entry.is_dir:
            return FileInfo(path, is_dir=True, mtime=entry.mtime)
        if entry.etag is not None:
            meta = ObjectMeta(prefix + entry.name, entry.size, entry.etag, entry.mtime)
            self._remember(backend, meta, now)
        return FileInfo(path, False, entry.size, entry.mtime, entry.etag)

    @staticmethod
    def _is_prefix(mount: tuple[str, ...], path: str) -> bool:
        parts = tuple(p for p in path.split("/") if p)
        return mount[: len(parts)] == parts


def _nameable(name: str) -> bool:
    """Whether a listed name can be a path component: keys like ``a/../b``, ``a/./b`` or
    ``a//b`` give names that no path can reach (and must not be listed as if they could)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name
