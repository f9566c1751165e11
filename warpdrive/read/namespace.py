"""Mount paths → (backend, key), with the metadata and listing caches.

Paths are mount-relative (``/cac/train/x.tar``); paths under the configured mount point
(``/wd/cac/train/x.tar``) mean the same. A ``warpdrive://NAME/key`` URL names backend ``NAME``
(fsspec's ``protocol://bucket/key``), whatever its mount path: with ``datasets-cac`` mounted at
``/cac``, ``warpdrive://datasets-cac/train/x.tar`` is ``/cac/train/x.tar``; an unknown ``NAME``
is a NotFoundError naming the backends and mount paths there are. ``warpdrive://`` alone is the
root. Empty and ``.`` components are dropped; ``..``, NUL and over-long names are refused, so no
path can leave its backend's prefix. Directories above the mount paths (``/`` itself,
``/regions`` for ``/regions/a``) are virtual.

Object metadata (size, etag) is fresh for ``cache.stale_ttl`` seconds, listings (up to
``MAX_CACHED_LISTING`` entries, whoever listed: ``ls``, a revalidation) for ``cache.list_ttl``:
a directory listed again within it asks the backend nothing. Listings also refresh the metadata
of the objects they show. Past its
``stale_ttl``, known metadata is still answered at once (stale-while-revalidate) while one
background listing of the object's directory refreshes it and every sibling — a page of a
listing names up to thousands of objects, where a re-stat per open is a round trip each. What
this process never saw, it takes from the cache index (the version some process last cached),
revalidated the same way; only an object known nowhere is stat'ed before it is opened. Objects
under a backend's ``immutable`` prefixes are never revalidated; with ``stale_ttl: 0`` every open
asks the backend (no stale answers). A handle pins the version it opened and reads only its
bytes, so versions never mix; an open within one revalidation of a change may still get the old
version.

A directory unknown to this process is known the same way when some cached object lies under
it (and no listing showed it gone since).

Outages: every version known carries when a backend last confirmed it (a stat, a listing, the
fetch that cached it; kept in the index for other processes). A known version is answered
without the backend only while that is at most ``cache.offline_max_age`` ago; an older one is
asked about first, which in an outage fails as an unknown object does. While a backend cannot
be reached (``Backend.unreachable``: no call, and no wait on retries; or a listing that just
failed after its retries), a listing is this process's last one of the directory (if within
the bound) or else what the cache holds there, which is partial; a listing that fails after
its first page is an error, never a mix. Answers given while it cannot be reached are counted
in ``warpdrive_offline_served_total`` and the outage is logged once; background listings keep
probing, and the first answer ends it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload

from warpdrive.backends import Backend, Entry, ObjectMeta
from warpdrive.config import Config
from warpdrive.errors import (
    BackendUnavailableError,
    ConfigError,
    InvalidPathError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
)
from warpdrive.metrics import Metrics
from warpdrive.units import format_duration

log = logging.getLogger(__name__)

URL_SCHEME = "warpdrive://"
RELIST_BACKOFF = 5.0  # seconds before a directory whose revalidation failed is listed again
MAX_COMPONENT = 1024
MAX_PATH = 4096
MAX_CACHED_LISTING = 10_000
MAX_LOCATED = 1 << 16  # remembered locations (~200 bytes each); all forgotten when full
MAX_META_ENTRIES = 200_000
# A version's confirmation is written to the index at most this often per process (or every
# eighth of offline_max_age, if less): a stored time may lag, which only makes the bound stricter.
CONFIRM_EVERY = 600.0


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a path is: a directory, or an object of a given size and version."""

    path: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: str | None = None
    immutable: bool = False  # under a backend's ``immutable`` prefixes: never changes

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Location:
    backend: Backend | None  # None: a virtual directory above the mount paths
    key: str  # key relative to the backend's prefix ("" for the backend's root)
    path: str  # the normalised mount-relative path


Confirmed = tuple[ObjectMeta, float]  # a version, and when a backend last showed it (wall clock)


class VersionIndex(Protocol):
    """What the namespace asks of the cache index (every process's versions; reader.py)."""

    def known(self, backend: str, key: str) -> Confirmed | None:
        """The version of ``key`` the cache holds (the last one any process cached)."""
        ...

    def cached_under(self, backend: str, prefix: str) -> bool:
        """Whether the cache holds some object whose key starts with ``prefix``."""
        ...

    def children(self, backend: str, prefix: str) -> tuple[list[str], list[Confirmed]]:
        """Directories (names) holding cached objects right under ``prefix``, and the cached
        objects right in it."""
        ...

    def confirm(self, backend: str, meta: ObjectMeta, when: float) -> None:
        """A backend showed this version at ``when`` (recorded if the cache holds it)."""
        ...


class _Known(NamedTuple):
    until: float  # fresh until (monotonic): past it, revalidated in the background
    confirmed: float  # when a backend last showed this version (wall clock)
    meta: ObjectMeta


class Namespace:
    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        index: VersionIndex | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.mount_point = config.mount_point
        self.stale_ttl = config.cache.stale_ttl
        self.list_ttl = config.cache.list_ttl
        self.offline_max_age = config.cache.offline_max_age
        self._confirm_every = min(CONFIRM_EVERY, self.offline_max_age / 8)
        self._mounts: dict[tuple[str, ...], Backend] = {
            tuple(b.mount_path.strip("/").split("/")): backends[b.name] for b in config.backends
        }
        self._roots = {b.name: b.mount_path for b in config.backends}  # URL name → mount path
        # Paths (as given, and normalised) located before: an open asks for its path's
        # location three times, and a warm epoch's opens cost mostly such Python. GIL-guarded.
        self._located: dict[str, Location] = {}
        # What a path that names no backend is told (one line, made once: FUSE lookups of
        # names that exist nowhere end here).
        self._hint = (
            "backends: "
            + (", ".join(f"{b.name} (at {b.mount_path})" for b in config.backends) or "none")
            + "; warpdrive://NAME/… names a backend, a mount path is an absolute path"
        )
        # Guarded by the GIL only: single dict operations, races cost at most a repeated stat.
        self._meta: dict[tuple[str, str], _Known] = {}
        # Listings by path: (fresh until (monotonic), listed at (wall clock), entries).
        self._listings: dict[str, tuple[float, float, list[FileInfo]]] = {}
        # Objects a listing of their directory no longer showed: asked about before they
        # are answered from the index again. GIL-guarded, bounded as _meta.
        self._gone: set[tuple[str, str]] = set()
        # Backends whose outage was logged (name → Outage.since). GIL-guarded.
        self._outages: dict[str, float] = {}
        self._lock = threading.Lock()
        self._index = index
        self._metrics = metrics
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
        self._closing = False

    # -- paths -----------------------------------------------------------------------------

    def normalize(self, path: str) -> str:
        """The canonical mount-relative form of ``path``; InvalidPathError if it cannot be one."""
        known = self._located.get(path) if type(path) is str else None
        if known is not None:
            return known.path
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
        known = self._located.get(path) if type(path) is str else None
        if known is not None:
            return known
        norm = self.normalize(path)
        parts = tuple(p for p in norm.split("/") if p)
        for mount, backend in self._mounts.items():
            if parts[: len(mount)] == mount:
                loc = Location(backend, "/".join(parts[len(mount) :]), norm)
                break
        else:
            if not any(mount[: len(parts)] == parts for mount in self._mounts):
                raise NotFoundError(f"{norm!r}: no backend is mounted there ({self._hint})")
            loc = Location(None, "", norm)
        if len(self._located) >= MAX_LOCATED:
            self._located.clear()
        self._located[path] = self._located[norm] = loc
        return loc

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

    def remember(self, infos: Iterable[FileInfo], listed_at: float) -> None:
        """Take object metadata that a listing showed at ``listed_at`` (wall clock), in this or
        another process, as if this process had listed it then: fresh until ``stale_ttl`` after
        ``listed_at``, then served while revalidated. A version known already stays."""
        now, age = time.monotonic(), time.time() - listed_at
        until = now + self.stale_ttl - age
        for info in infos:
            if info.is_dir or info.etag is None:
                continue
            loc = self.locate(info.path)
            if loc.backend is None or not loc.key or (loc.backend.name, loc.key) in self._meta:
                continue
            meta = ObjectMeta(loc.key, info.size, info.etag, info.mtime)
            if self._immutable_key(loc.backend.name, loc.key):
                known = _Known(float("inf"), listed_at, meta)
            else:
                known = _Known(until, listed_at, meta)
            if len(self._meta) >= MAX_META_ENTRIES:
                self._meta.clear()
            self._meta[(loc.backend.name, loc.key)] = known

    def cached_stat(self, path: str) -> FileInfo | None:
        """What :meth:`stat` would answer, when that needs no backend call (the object's
        metadata or the directory is known); None otherwise. Never blocks."""
        loc = self.locate(path)
        if loc.backend is None or not loc.key:
            return FileInfo(loc.path, is_dir=True)
        fixed = self._immutable_key(loc.backend.name, loc.key)
        if self._known_dir(loc.backend, loc.key):
            return FileInfo(loc.path, is_dir=True, immutable=fixed)
        meta = self._meta_for(loc.backend, loc.key, nowait=True)
        if meta is None:
            cached_dir = self._cached_dir(loc.backend, loc.key)
            return FileInfo(loc.path, is_dir=True, immutable=fixed) if cached_dir else None
        return FileInfo(loc.path, False, meta.size, meta.mtime, meta.etag, fixed)

    @overload
    def _meta_for(self, backend: Backend, key: str) -> ObjectMeta: ...
    @overload
    def _meta_for(self, backend: Backend, key: str, nowait: bool) -> ObjectMeta | None: ...

    def _meta_for(self, backend: Backend, key: str, nowait: bool = False) -> ObjectMeta | None:
        """Fresh metadata; else the known version, revalidated in the background, if a backend
        confirmed it within ``offline_max_age``; else (unless ``nowait``: then None) the
        backend's answer."""
        now = time.monotonic()
        cached = self._meta.get((backend.name, key))
        if cached is not None and cached.until > now:
            return cached.meta
        known = None
        if self.stale_ttl > 0:  # 0: every open asks the backend (strict)
            known = cached if cached is not None else self._from_index(backend, key, now)
        if known is not None:
            if known.until > now:
                return known.meta  # from the index, confirmed within stale_ttl
            if self._immutable_key(backend.name, key):
                return known.meta  # never changes: never asked about again
            if self._servable(known.confirmed):
                self._revalidate(backend, key)  # meanwhile the known version is the answer
                if backend.unreachable() is not None:
                    self._served_offline(backend)
                return known.meta
        if nowait:
            return None
        try:
            meta = backend.stat(key)
        except BackendUnavailableError as exc:
            if known is None:
                raise
            age = format_duration(time.time() - known.confirmed)
            raise BackendUnavailableError(
                f"{exc}; the cached version was last confirmed {age} ago, longer than "
                f"cache.offline_max_age ({format_duration(self.offline_max_age)}) allows"
            ) from exc
        self._answered(backend)
        self._remember(backend.name, meta, now)
        if known is not None:
            self._revalidate(backend, key)  # its siblings are as old: confirmed in one listing
        return meta

    def _servable(self, confirmed: float) -> bool:
        """Whether a version a backend last showed at ``confirmed`` (wall clock) may be the
        answer without asking it first."""
        return time.time() - confirmed <= self.offline_max_age and self.offline_max_age > 0

    def _from_index(self, backend: Backend, key: str, now: float) -> _Known | None:
        """The version of ``key`` the cache index holds, remembered as a backend confirmed it
        then (see :meth:`_remember`; under an immutable prefix, as fresh for good); None for
        one a listing showed gone."""
        if self._index is None or (backend.name, key) in self._gone:
            return None
        found = self._index.known(backend.name, key)
        return None if found is None else self._remember(backend.name, found[0], now, found[1])

    def _remember(
        self, backend: str, meta: ObjectMeta, now: float, confirmed: float | None = None
    ) -> _Known:
        """Remember ``meta``: the backend's answer just now (``confirmed`` None: fresh for
        ``stale_ttl``), or a version a backend showed at ``confirmed`` (wall clock): fresh
        until ``stale_ttl`` (and ``offline_max_age``) after that, as if this process had asked
        then (a new DataLoader worker reading what its parent cached a moment ago asks
        nothing; its client library is not even imported), then stale."""
        if len(self._meta) >= MAX_META_ENTRIES:
            self._meta.clear()  # crude but bounded; entries are cheap to fetch again
        if confirmed is None:
            confirmed, until = time.time(), now + self.stale_ttl
            self._confirmed(backend, meta, confirmed)
        else:
            # within offline_max_age too: a version is never fresher than it is servable
            window = min(self.stale_ttl, self.offline_max_age) - (time.time() - confirmed)
            until = now + min(window, self.stale_ttl) if window > 0 else now
        if self._immutable_key(backend, meta.key):
            until = float("inf")  # never changes: never asked for again
        known = _Known(until, confirmed, meta)
        self._meta[(backend, meta.key)] = known
        return known

    def _confirmed(self, backend: str, meta: ObjectMeta, when: float) -> None:
        """Tell the index a backend showed ``meta`` now (unless it was told lately)."""
        if self._gone:
            self._gone.discard((backend, meta.key))
        if self._index is None or self.offline_max_age <= 0:
            return
        before = self._meta.get((backend, meta.key))
        if (
            before is None
            or before.meta.etag != meta.etag
            or when - before.confirmed >= self._confirm_every
        ):
            self._index.confirm(backend, meta, when)

    def _remember_dir(self, backend: str, key: str, now: float) -> None:
        if len(self._dirs) >= MAX_META_ENTRIES:
            self._dirs.clear()  # bounded, as the object metadata
        self._dirs[(backend, key)] = now + self.list_ttl

    def _known_dir(self, backend: Backend, key: str) -> bool:
        """Whether ``key`` is a directory seen lately (a stale one revalidated meanwhile)."""
        until = self._dirs.get((backend.name, key))
        if until is None or self.stale_ttl <= 0:
            return False
        if until <= time.monotonic() and not self._immutable_key(backend.name, key):
            self._revalidate(backend, key)
            if backend.unreachable() is not None:
                self._served_offline(backend)
        return True

    def _immutable_key(self, backend: str, key: str) -> bool:
        return any(key.startswith(p) for p in self._immutable.get(backend, ()))

    # -- revalidation ----------------------------------------------------------------------

    def _revalidate(self, backend: Backend, key: str) -> None:
        """List ``key``'s directory in the background (unless that is under way, or failed
        moments ago): fresh metadata for it and its siblings, a page at a time."""
        directory = key.rpartition("/")[0]
        with self._lock:
            self._asked.setdefault((backend.name, directory), set()).add(key)
        self._relist_soon(backend, directory)

    def _relist_soon(self, backend: Backend, directory: str) -> None:
        """List ``directory`` in the background, unless that is under way or failed moments
        ago."""
        job, now = (backend.name, directory), time.monotonic()
        with self._lock:
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
                if self._closing:  # the backend's client is being closed under this listing
                    return
                # In an outage already logged, each directory's failures are not news; nor is
                # a config error (a credential not set): the call that needs the backend, the
                # mount's start and its /readyz report it.
                quiet = isinstance(exc, ConfigError) or (
                    isinstance(exc, BackendUnavailableError) and backend.name in self._outages
                )
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "revalidating %s:%s/ failed: %s", backend.name, directory, exc)
                retry_at = time.monotonic() + RELIST_BACKOFF
            with self._lock:
                self._relisting[(backend.name, directory)] = retry_at

    def _relist(self, backend: Backend, directory: str) -> None:
        prefix = f"{directory}/" if directory else ""
        path = self.normalize(f"{self._roots[backend.name]}/{directory}")
        base, started = path.rstrip("/"), time.monotonic()
        listed: set[str] = set()
        seen: list[FileInfo] | None = []
        for page in backend.list_pages(prefix):
            now = time.monotonic()
            for entry in page:
                if not _nameable(entry.name):
                    continue
                info = self._info(base, backend.name, prefix, entry, now)
                if entry.is_dir or entry.etag is not None:
                    listed.add(prefix + entry.name)
                if seen is not None:
                    seen.append(info)
                    if len(seen) > MAX_CACHED_LISTING:
                        seen = None
        self._answered(backend)
        if seen is not None:  # the next `ls` and scan prefetch reuse it
            self._keep_listing(path, started, sorted(seen, key=lambda e: e.name))
        # Asked-for objects the listing no longer names are gone (or never were listable):
        # forgotten, so that the next open asks the backend itself (not the index).
        with self._lock:
            asked = self._asked.pop((backend.name, directory), set())
        for key in asked - listed:
            self._meta.pop((backend.name, key), None)
            self._dirs.pop((backend.name, key), None)
            if len(self._gone) >= MAX_META_ENTRIES:
                self._gone.clear()
            self._gone.add((backend.name, key))

    def close(self) -> None:
        """Stop the background revalidation; idempotent."""
        self._closing = True
        if self._relister is not None:
            self._relists.put(None)

    def stat(self, path: str) -> FileInfo:
        loc = self.locate(path)
        backend, key = loc.backend, loc.key
        if backend is None or not key:
            return FileInfo(loc.path, is_dir=True)
        fixed = self._immutable_key(backend.name, key)
        if self._known_dir(backend, key):
            return FileInfo(loc.path, is_dir=True, immutable=fixed)
        meta = self._meta_for(backend, key, nowait=True)
        if meta is None:
            if self._cached_dir(backend, key):
                return FileInfo(loc.path, is_dir=True, immutable=fixed)
            try:
                meta = self._meta_for(backend, key)
            except IsDirectoryError:
                self._answered(backend)
                self._remember_dir(backend.name, key, time.monotonic())
                return FileInfo(loc.path, is_dir=True, immutable=fixed)
        return FileInfo(loc.path, False, meta.size, meta.mtime, meta.etag, fixed)

    # -- outages ---------------------------------------------------------------------------

    def _cached_dir(self, backend: Backend, key: str) -> bool:
        """Whether ``key`` is a directory as the cache sees it (some cached object lies under
        it, and no listing showed it gone): then it is the answer, as a known version is for an
        object, and the parent directory is listed in the background to revalidate it."""
        if self.stale_ttl <= 0 or self.offline_max_age <= 0 or self._index is None:
            return False
        if (backend.name, key) in self._gone or not self._index.cached_under(
            backend.name, f"{key}/"
        ):
            return False
        self._dirs[(backend.name, key)] = time.monotonic()  # known, stale: revalidated
        self._revalidate(backend, key)
        if backend.unreachable() is not None:
            self._served_offline(backend)
        return True

    def _offline_listing(self, backend: Backend, loc: Location) -> list[FileInfo] | None:
        """In an outage: the directory at ``loc`` as this process last listed it, if within
        ``offline_max_age``, else as the cache holds it (partial: only what is cached, and
        only versions within the bound); None when there is nothing to answer with."""
        if self.offline_max_age <= 0:
            return None
        base = loc.path.rstrip("/")
        kept = self._listings.get(loc.path)
        if kept is not None and self._servable(kept[1]):
            entries = kept[2]
        elif self._index is not None:
            prefix = f"{loc.key}/" if loc.key else ""
            dirs, objects = self._index.children(backend.name, prefix)
            infos = [FileInfo(f"{base}/{d}", is_dir=True) for d in dirs if _nameable(d)]
            for meta, confirmed in objects:
                name = meta.key[len(prefix) :]
                if not _nameable(name):
                    continue
                if self._servable(confirmed) or self._immutable_key(backend.name, meta.key):
                    path = f"{base}/{name}"
                    infos.append(FileInfo(path, False, meta.size, meta.mtime, meta.etag))
            if not infos:
                return None
            entries = sorted(infos, key=lambda e: e.name)
        else:
            return None
        self._served_offline(backend)
        self._relist_soon(backend, loc.key)
        return entries

    def _served_offline(self, backend: Backend) -> None:
        """An answer taken from the cache because ``backend`` could not be reached: counted,
        and logged once per outage."""
        if self._metrics is not None:
            self._metrics.offline_served.labels(backend.name).inc()
        outage = backend.unreachable()
        since = -1.0 if outage is None else outage.since
        if self._outages.get(backend.name) != since:
            self._outages[backend.name] = since
            log.warning(
                "%s: the backend cannot be reached (%s); answering from the cache what a backend "
                "confirmed within %s (cache.offline_max_age) until it answers again",
                backend.name,
                "its requests fail" if outage is None else outage.cause,
                format_duration(self.offline_max_age),
            )

    def _answered(self, backend: Backend) -> None:
        """``backend`` answered: an outage logged is over."""
        if self._outages and self._outages.pop(backend.name, None) is not None:
            log.warning("%s: the backend answers again", backend.name)

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
        kept = self._listings.get(loc.path)
        if kept is not None and kept[0] > time.monotonic():
            yield kept[2]  # listed within list_ttl: `ls -R` again asks the backend nothing
            return
        backend, prefix = loc.backend, f"{loc.key}/" if loc.key else ""
        if backend.unreachable() is not None:  # down: no call (and retries) for each listing
            offline = self._offline_listing(backend, loc)
            if offline is not None:
                yield offline
                return
        now = time.monotonic()
        empty, listed = True, False
        seen: list[FileInfo] | None = []  # kept for listdir() while the directory is small
        try:
            for page in backend.list_pages(prefix):
                infos = [
                    self._info(base, backend.name, prefix, e, now)
                    for e in page
                    if _nameable(e.name)
                ]
                empty = empty and not infos
                if seen is not None:
                    seen.extend(infos)
                    if len(seen) > MAX_CACHED_LISTING:
                        seen = None
                listed = True
                yield infos
        except BackendUnavailableError:
            # Before any page: the cache answers. After one: an error, never a mix of both.
            offline = None if listed else self._offline_listing(backend, loc)
            if offline is None:
                raise
            yield offline
            return
        self._answered(backend)
        if empty and loc.key:
            try:
                backend.stat(loc.key)
            except IsDirectoryError:
                pass
            except NotFoundError:
                raise NotFoundError(f"{loc.path!r}: no such directory") from None
            else:
                raise NotDirectoryError(f"{loc.path!r} is an object, not a directory")
        if seen is not None:  # listed to the end: `ls` then open lists once
            self._keep_listing(loc.path, now, sorted(seen, key=lambda e: e.name))

    def listdir(self, path: str, stale_ok: bool = False) -> list[FileInfo]:
        """All children of ``path``, sorted by name; small listings are reused ``list_ttl``
        (what :meth:`list_pages` keeps: never an answer from the cache in an outage).
        ``stale_ok`` (for prefetch, which is advice): a listing kept past ``list_ttl`` is
        answered at once while the directory is listed again in the background (not under an
        immutable prefix: there the next ``ls`` of it refreshes what is kept)."""
        norm = self.normalize(path)
        cached = self._listings.get(norm)
        if cached is not None and cached[0] > time.monotonic():
            return cached[2]
        if cached is not None and stale_ok:
            loc = self.locate(norm)
            if loc.backend is not None:
                if not self._immutable_key(loc.backend.name, f"{loc.key}/"):
                    self._relist_soon(loc.backend, loc.key)
                return cached[2]
        return sorted((e for page in self.list_pages(norm) for e in page), key=lambda e: e.name)

    def _keep_listing(self, norm: str, now: float, entries: list[FileInfo]) -> None:
        with self._lock:
            if len(self._listings) > 1024:
                self._listings.clear()
            self._listings[norm] = (now + self.list_ttl, time.time(), entries)

    def _info(self, base: str, backend: str, prefix: str, entry: Entry, now: float) -> FileInfo:
        path, key = f"{base}/{entry.name}", prefix + entry.name
        fixed = self._immutable_key(backend, key)
        if entry.is_dir:
            self._remember_dir(backend, key, now)
            return FileInfo(path, is_dir=True, mtime=entry.mtime, immutable=fixed)
        if entry.etag is not None:
            self._remember(backend, ObjectMeta(key, entry.size, entry.etag, entry.mtime), now)
        return FileInfo(path, False, entry.size, entry.mtime, entry.etag, fixed)

    @staticmethod
    def _is_prefix(mount: tuple[str, ...], path: str) -> bool:
        parts = tuple(p for p in path.split("/") if p)
        return mount[: len(parts)] == parts


def _nameable(name: str) -> bool:
    """Whether a listed name can be a path component: keys like ``a/../b``, ``a/./b`` or
    ``a//b`` give names that no path can reach (and must not be listed as if they could)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name
