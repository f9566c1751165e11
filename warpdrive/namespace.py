"""Mount paths → (backend, key), with the metadata and listing caches.

Paths are mount-relative (``/cac/train/x.tar``); paths under the configured mount point
(``/wd/cac/train/x.tar``) mean the same. A ``warpdrive://NAME/key`` URL names backend ``NAME``
(fsspec's ``protocol://bucket/key``), whatever its mount path: with ``datasets-cac`` mounted at
``/cac``, ``warpdrive://datasets-cac/train/x.tar`` is ``/cac/train/x.tar``; an unknown ``NAME``
is a NotFoundError naming the backends and mount paths there are. ``warpdrive://`` alone is the
root. Empty and ``.`` components are dropped; ``..``, NUL and over-long names are refused, so no
path can leave its backend's prefix. Directories above the mount paths (``/`` itself,
``/regions`` for ``/regions/a``) are virtual.

Object metadata (size, etag) is fresh for ``cache.stale_ttl`` seconds, listings for
``cache.list_ttl``; listings also refresh the metadata of the objects they show. Past its
``stale_ttl``, known metadata is still answered at once (stale-while-revalidate) while one
background listing of the object's directory refreshes it and every sibling — a page of a
listing names up to thousands of objects, where a re-stat per open is a round trip each. What
this process never saw, it takes from the cache index (the version some process last cached),
revalidated the same way; only an object known nowhere is stat'ed before it is opened. Objects
under a backend's ``immutable`` prefixes are never revalidated; with ``stale_ttl: 0`` every open
asks the backend (no stale answers). A handle pins the version it opened and reads only its
bytes, so versions never mix; an open within one revalidation of a change may still get the old
version.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import overload

from warpdrive.backends import Backend, Entry, ObjectMeta
from warpdrive.config import Config
from warpdrive.errors import InvalidPathError, IsDirectoryError, NotDirectoryError, NotFoundError

log = logging.getLogger(__name__)

URL_SCHEME = "warpdrive://"
RELIST_BACKOFF = 5.0  # seconds before a directory whose revalidation failed is listed again
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


KnownVersions = Callable[[str, str], ObjectMeta | None]  # (backend, key) → what the index holds


class Namespace:
    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        known: KnownVersions | None = None,
    ) -> None:
        self.mount_point = config.mount_point
        self.stale_ttl = config.cache.stale_ttl
        self.list_ttl = config.cache.list_ttl
        self._mounts: dict[tuple[str, ...], Backend] = {
            tuple(b.mount_path.strip("/").split("/")): backends[b.name] for b in config.backends
        }
        self._roots = {b.name: b.mount_path for b in config.backends}  # URL name → mount path
        # What a path that names no backend is told (one line, made once: FUSE lookups of
        # names that exist nowhere end here).
        self._hint = (
            "backends: "
            + (", ".join(f"{b.name} (at {b.mount_path})" for b in config.backends) or "none")
            + "; warpdrive://NAME/… names a backend, a mount path is an absolute path"
        )
        # Guarded by the GIL only: single dict operations, races cost at most a repeated stat.
        self._meta: dict[tuple[str, str], tuple[float, ObjectMeta]] = {}
        self._listings: dict[str, tuple[float, list[FileInfo]]] = {}
        self._lock = threading.Lock()
        self._known = known
        self._immutable = {b.name: b.immutable for b in config.backends}
        # Directories being listed to revalidate their objects' metadata (one at a time each),
        # and when a failed one may be tried again; the keys whose opens asked for it. Guarded
        # by _lock.
        self._relisting: dict[tuple[str, str], float] = {}
        self._asked: dict[tuple[str, str], set[str]] = {}
        # Directories (backend, key) seen in listings or stats, until when (list_ttl); a
        # stale one is still a directory while its parent is listed again. GIL-guarded.
        self._dirs: dict[tuple[str, str], float] = {}
        self._relists: queue.SimpleQueue[tuple[Backend, str] | None] = queue.SimpleQueue()
        self._relister: threading.Thread | None = None

    # -- paths -----------------------------------------------------------------------------

    def normalize(self, path: str) -> str:
        """The canonical mount-relative form of ``path``; InvalidPathError if it cannot be one."""
        if not isinstance(path, str):
            raise InvalidPathError(f"path must be a string, got {type(path).__name__}")
        if "\0" in path:
            raise InvalidPathError(f"path contains a NUL byte: {path!r}")
        if path.startswith(URL_SCHEME):
            path = self._url_path(path)
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

    def _url_path(self, url: str) -> str:
        """The mount-relative path of ``warpdrive://NAME/key``: NAME's mount path + key."""
        name, _, key = url[len(URL_SCHEME) :].partition("/")
        if not name and not key.strip("/"):
            return "/"  # warpdrive:// itself: the root
        root = self._roots.get(name)
        if root is None:
            raise NotFoundError(f"{url[:200]!r}: no backend named {name[:100]!r} ({self._hint})")
        return f"{root}/{key}"

    def locate(self, path: str) -> Location:
        norm = self.normalize(path)
        parts = tuple(p for p in norm.split("/") if p)
        for mount, backend in self._mounts.items():
            if parts[: len(mount)] == mount:
                return Location(backend, "/".join(parts[len(mount) :]), norm)
        if any(mount[: len(parts)] == parts for mount in self._mounts):
            return Location(None, "", norm)
        raise NotFoundError(f"{norm!r}: no backend is mounted there ({self._hint})")

    def url(self, path: str) -> str | None:
        """The ``warpdrive://NAME/key`` URL of ``path``; None for the virtual directories above
        the mount paths, which no backend holds."""
        loc = self.locate(path)
        if loc.backend is None:
            return None
        name = loc.backend.name
        return f"{URL_SCHEME}{name}/{loc.key}" if loc.key else f"{URL_SCHEME}{name}"

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

    def known_meta(self, path: str) -> tuple[Backend, ObjectMeta] | None:
        """:meth:`object_meta`, when that needs no backend call; None otherwise (never blocks,
        and a directory is None too: the blocking call says what it is)."""
        loc = self.locate(path)
        if loc.backend is None or not loc.key:
            return None
        meta = self._meta_for(loc.backend, loc.key, nowait=True)
        return None if meta is None else (loc.backend, meta)

    def cached_stat(self, path: str) -> FileInfo | None:
        """What :meth:`stat` would answer, when that needs no backend call (the object's
        metadata or the directory is known); None otherwise. Never blocks."""
        loc = self.locate(path)
        if loc.backend is None or not loc.key or self._known_dir(loc.backend, loc.key):
            return FileInfo(loc.path, is_dir=True)
        meta = self._meta_for(loc.backend, loc.key, nowait=True)
        if meta is None:
            return None
        return FileInfo(loc.path, False, meta.size, meta.mtime, meta.etag)

    @overload
    def _meta_for(self, backend: Backend, key: str) -> ObjectMeta: ...
    @overload
    def _meta_for(self, backend: Backend, key: str, nowait: bool) -> ObjectMeta | None: ...

    def _meta_for(self, backend: Backend, key: str, nowait: bool = False) -> ObjectMeta | None:
        """Fresh metadata; else the known version, revalidated in the background; else (unless
        ``nowait``: then None) the backend's answer."""
        now = time.monotonic()
        cached = self._meta.get((backend.name, key))
        if cached is not None and cached[0] > now:
            return cached[1]
        known = None
        if self.stale_ttl > 0:  # 0: every open asks the backend (strict)
            known = cached[1] if cached is not None else self._from_index(backend, key, now)
        if known is not None:
            if not self._immutable_key(backend.name, key):
                self._revalidate(backend, key)  # meanwhile the known version is the answer
            return known
        if nowait:
            return None
        meta = backend.stat(key)
        self._remember(backend.name, meta, now)
        return meta

    def _from_index(self, backend: Backend, key: str, now: float) -> ObjectMeta | None:
        """The version of ``key`` the cache index holds, remembered as stale (or, under an
        immutable prefix, as fresh for good)."""
        meta = self._known(backend.name, key) if self._known is not None else None
        if meta is not None:
            self._remember(backend.name, meta, now, stale=True)
        return meta

    def _remember(self, backend: str, meta: ObjectMeta, now: float, stale: bool = False) -> None:
        if len(self._meta) >= MAX_META_ENTRIES:
            self._meta.clear()  # crude but bounded; entries are cheap to fetch again
        if self._immutable_key(backend, meta.key):
            until = float("inf")  # never changes: never asked for again
        else:
            until = now if stale else now + self.stale_ttl
        self._meta[(backend, meta.key)] = (until, meta)

    def _remember_dir(self, backend: str, key: str, now: float) -> None:
        if len(self._dirs) >= MAX_META_ENTRIES:
            self._dirs.clear()  # bounded, as the object metadata
        self._dirs[(backend, key)] = now + self.list_ttl

    def _known_dir(self, backend: Backend, key: str) -> bool:
        """Whether ``key`` is a directory seen lately (a stale one revalidated meanwhile)."""
        until = self._dirs.get((backend.name, key))
        if until is None or self.stale_ttl <= 0:
            return False
        if until <= time.monotonic():
            self._revalidate(backend, key)
        return True

    def _immutable_key(self, backend: str, key: str) -> bool:
        return any(key.startswith(p) for p in self._immutable.get(backend, ()))

    # -- revalidation ----------------------------------------------------------------------

    def _revalidate(self, backend: Backend, key: str) -> None:
        """List ``key``'s directory in the background (unless that is under way, or failed
        moments ago): fresh metadata for it and its siblings, a page at a time."""
        directory = key.rpartition("/")[0]
        job, now = (backend.name, directory), time.monotonic()
        with self._lock:
            self._asked.setdefault(job, set()).add(key)
            if self._relisting.get(job, 0.0) > now:
                return
            self._relisting[job] = float("inf")  # under way
            if self._relister is None:
                self._relister = threading.Thread(
                    target=self._relist_loop, name="warpdrive-revalidate", daemon=True
                )
                self._relister.start()
        self._relists.put((backend, directory))

    def _relist_loop(self) -> None:
        while (job := self._relists.get()) is not None:
            backend, directory = job
            retry_at = 0.0
            try:
                self._relist(backend, directory)
            except Exception as exc:  # the known versions stay the answer meanwhile
                log.warning("revalidating %s:%s/ failed: %s", backend.name, directory, exc)
                retry_at = time.monotonic() + RELIST_BACKOFF
            with self._lock:
                self._relisting[(backend.name, directory)] = retry_at

    def _relist(self, backend: Backend, directory: str) -> None:
        prefix = f"{directory}/" if directory else ""
        listed: set[str] = set()
        for page in backend.list_pages(prefix):
            now = time.monotonic()
            for entry in page:
                if not _nameable(entry.name):
                    continue
                key = prefix + entry.name
                if entry.is_dir:
                    listed.add(key)
                    self._remember_dir(backend.name, key, now)
                    continue
                if entry.etag is None:
                    continue
                listed.add(key)
                self._remember(
                    backend.name, ObjectMeta(key, entry.size, entry.etag, entry.mtime), now
                )
        # Asked-for objects the listing no longer names are gone (or never were listable):
        # forgotten, so that the next open asks the backend itself.
        with self._lock:
            asked = self._asked.pop((backend.name, directory), set())
        for key in asked - listed:
            self._meta.pop((backend.name, key), None)
            self._dirs.pop((backend.name, key), None)

    def close(self) -> None:
        """Stop the background revalidation; idempotent."""
        if self._relister is not None:
            self._relists.put(None)

    def stat(self, path: str) -> FileInfo:
        loc = self.locate(path)
        if loc.backend is None or not loc.key or self._known_dir(loc.backend, loc.key):
            return FileInfo(loc.path, is_dir=True)
        try:
            meta = self._meta_for(loc.backend, loc.key)
        except IsDirectoryError:
            self._remember_dir(loc.backend.name, loc.key, time.monotonic())
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
            self._remember_dir(backend, prefix + entry.name, now)
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
