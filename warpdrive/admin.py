"""The admin facade: what tools do to a node's cache and stores, apart from reading them.

``Admin(config)`` answers ``warpdrive-ctl``'s and the control plane's questions and carries out
their changes: the shared cache index (usage, counters, objects), quotas, teams, eviction, and
the backends for crawls, ``stale`` and ``move``. The read facade
(:class:`warpdrive.read.reader.WarpDrive`) only reads; neither imports the other. Both open the
same shared cache (one LMDB environment per process, see ``warpdrive.cache.lmdbenv``), so an
eviction or a quota set here is seen by every reader at once, in this process or another.

Like ``WarpDrive``, an ``Admin`` holds only its configuration until first used; the cache and
the backends are opened on first use, each on its own (``usage`` opens no backend client).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from types import TracebackType

from warpdrive.backends import Backend, make_backend
from warpdrive.cache import BlockCache, CacheIndex, Quota, Usage
from warpdrive.cache.blockcache import LAYOUT_VERSION
from warpdrive.config import Config, load_config
from warpdrive.metrics import Metrics
from warpdrive.teams import TeamResolver


class Admin:
    """Index, usage, counters, quotas, teams, eviction and backends of one node's cache.

    Thread-safe; one per process (never used across ``fork()``). ``close()`` is idempotent."""

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        """``config``: a Config, a YAML path, or None for ``$WARPDRIVE_CONFIG``. ``metrics``:
        where evictions are counted (default: a registry of its own, exported nowhere)."""
        self.config = config if isinstance(config, Config) else load_config(config)
        self.metrics = metrics if metrics is not None else Metrics()
        self._lock = threading.Lock()  # guards _cache, _backends, _teams (opening and closing)
        self._cache: BlockCache | None = None
        self._backends: dict[str, Backend] | None = None
        self._teams: TeamResolver | None = None

    @property
    def cache_root(self) -> str:
        """The versioned cache directory (``<cache.path>/v2``); opens nothing."""
        return os.path.join(self.config.cache.path, LAYOUT_VERSION)

    @property
    def _block_cache(self) -> BlockCache:
        cache = self._cache
        if cache is not None:
            return cache
        with self._lock:
            if self._cache is None:
                self._cache = BlockCache(self.config.cache, self.metrics)
            return self._cache

    # -- the index -------------------------------------------------------------------------

    @property
    def index(self) -> CacheIndex:
        """The shared cache index (objects, blocks, usage, counters, teams, quotas)."""
        return self._block_cache.index

    def usage(self) -> Usage:
        """Bytes and blocks in the shared cache (all processes)."""
        return self._block_cache.usage()

    def counters(self) -> dict[str, int]:
        """The cache's counters (hits, misses, bytes fetched...) as every process flushed them."""
        return self.index.counters()

    # -- changes ---------------------------------------------------------------------------

    def evict(self, oids: list[bytes]) -> int:
        """Drop every cached block of these objects but pinned ones; how many blocks went."""
        return self._block_cache.evict_objects(oids)[0]

    def evict_unpinned(self, oids: list[bytes]) -> tuple[int, list[bytes]]:
        """:meth:`evict`, and the oids it skipped: pinned, because a process has them open
        with FUSE passthrough (the kernel reads their cache files); evict them once closed."""
        return self._block_cache.evict_objects(oids)

    def set_quota(self, quota: Quota) -> int:
        """Store a team's quota; how many blocks were evicted at once to honour it."""
        return self._block_cache.set_quota(quota)

    def remove_quota(self, team: str, backend: str = "") -> bool:
        """Forget a team's quota (on one backend, or the all-backends one); False if none."""
        return self.index.remove_quota(team, backend)

    def set_user_team(self, user: str, team: str | None) -> None:
        """Put ``user`` in ``team`` (None: forget the assignment; the config's mapping stays)."""
        self.index.set_user_team(user, team)

    def user_and_team(self, uid: int | None = None) -> tuple[str, str | None]:
        """The user name of ``uid`` (default: this process's) and their team."""
        teams = self._teams
        if teams is None:
            index = self.index
            with self._lock:
                if self._teams is None:
                    self._teams = TeamResolver(self.config.governance.teams, index.user_team)
                teams = self._teams
        return teams.user_and_team(uid)

    # -- the stores --------------------------------------------------------------------------

    @property
    def backends(self) -> Mapping[str, Backend]:
        """Every configured backend by name (crawls, ``stale``, ``move``, status checks)."""
        backends = self._backends
        if backends is not None:
            return backends
        with self._lock:
            if self._backends is None:
                opened: dict[str, Backend] = {}
                try:
                    for b in self.config.backends:
                        opened[b.name] = make_backend(b, self.config, self.metrics, None)
                except BaseException:
                    for backend in opened.values():
                        backend.close()
                    raise
                self._backends = opened
            return self._backends

    def path_of(self, backend: str, key: str) -> str:
        """The mount-relative path of ``key`` in ``backend``."""
        mount = self.config.backend(backend).mount_path
        return f"{mount}/{key}" if key else mount

    # -- lifecycle -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write this facade's pending counters to the index now (evictions it counted)."""
        if self._cache is not None:
            self._cache.flush()

    def close(self) -> None:
        """Release the cache and the backend clients; idempotent."""
        with self._lock:
            cache, self._cache = self._cache, None
            backends, self._backends = self._backends, None
            self._teams = None
        if cache is not None:
            cache.close()
        for backend in (backends or {}).values():
            backend.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def cache_counters(config: Config) -> dict[str, int]:
    """The shared cache's counters, with an :class:`Admin` opened and closed around the
    question (for tools and tests that read through a ``WarpDrive`` and then ask)."""
    with Admin(config) as admin:
        return admin.counters()
