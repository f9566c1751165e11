"""Storage crawl: every object a backend holds (key, size, mtime, etag), for ``stale`` to find
data nobody reads. Run by ``warpdrive-ctl crawl``, or by the mount every
``governance.crawl_interval``."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from warpdrive.backends import Backend
from warpdrive.governance.store import GovernanceStore
from warpdrive.periodic import Periodic

log = logging.getLogger(__name__)


def walk(backend: Backend, prefix: str = "") -> Iterator[tuple[str, int, float, str | None]]:
    """Every object under ``prefix``, depth first, a listing page at a time."""
    pending = [prefix]
    while pending:
        current = pending.pop()
        for page in backend.list_pages(current):
            for entry in page:
                if entry.is_dir:
                    pending.append(f"{current}{entry.name}/")
                else:
                    yield f"{current}{entry.name}", entry.size, entry.mtime, entry.etag


def crawl(
    backends: Mapping[str, Backend], store: GovernanceStore, names: list[str] | None = None
) -> dict[str, tuple[int, int]]:
    """Crawl the named backends (default: all); objects and bytes found per backend."""
    found = {}
    for name, backend in backends.items():
        if names is None or name in names:
            found[name] = store.replace_crawl(name, walk(backend))
    return found


class PeriodicCrawl(Periodic):
    """The mount's crawl thread (only when ``governance.crawl_interval`` is set)."""

    def __init__(self, backends: Mapping[str, Backend], cache_root: str, interval: float) -> None:
        super().__init__("crawl", interval)
        self.backends = backends
        self.cache_root = cache_root
        self.start()

    def tick(self) -> None:
        store = GovernanceStore(self.cache_root)
        try:
            for name, (count, total) in crawl(self.backends, store).items():
                log.info("crawled %s: %d objects, %d bytes", name, count, total)
        finally:
            store.close()
