"""Storage crawl: every object a backend holds (key, size, mtime, etag), for ``stale`` to find
data nobody reads. Run by ``warpdrive-ctl crawl``, or by the mount every
``governance.crawl_interval``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from warpdrive.backends import Backend
from warpdrive.governance.store import GovernanceStore
from warpdrive.reader import WarpDrive

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
    wd: WarpDrive, store: GovernanceStore, names: list[str] | None = None
) -> dict[str, tuple[int, int]]:
    """Crawl the named backends (default: all); objects and bytes found per backend."""
    found = {}
    for name, backend in wd.backends.items():
        if names is None or name in names:
            found[name] = store.replace_crawl(name, walk(backend))
    return found


class PeriodicCrawl:
    """The mount's crawl thread (only when ``governance.crawl_interval`` is set)."""

    def __init__(self, wd: WarpDrive, interval: float) -> None:
        self.wd = wd
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warpdrive-crawl", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            store = GovernanceStore(self.wd.cache_root)
            try:
                for name, (count, total) in crawl(self.wd, store).items():
                    log.info("crawled %s: %d objects, %d bytes", name, count, total)
            except Exception:  # the next round tries again; reads are not affected
                log.exception("storage crawl failed")
            finally:
                store.close()
