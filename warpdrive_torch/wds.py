"""``warpdrive://`` URLs in webdataset: ``webdataset.WebDataset("warpdrive://…")`` reads through
the cache.

Importing ``warpdrive_torch`` registers the opener in webdataset's ``gopen_schemes``; DataLoader
workers inherit it when forked, and re-import it when spawned as long as the training script
imports ``warpdrive_torch`` at top level. The opener reads with one WarpDrive per process, from
the config given to :func:`register_webdataset`, else ``$WARPDRIVE_CONFIG``. Paths under a FUSE
mount need nothing: webdataset opens them as files.

webdataset opens one shard at a time, so a cold epoch waits at every shard's start for its first
blocks. :func:`split_by_worker` (``WebDataset(urls, workersplitter=split_by_worker)``) or the
stage :func:`hint_shards` in a ``DataPipeline`` tells the cache a worker's next shards as it
opens each one, as ``ShardDataset(prefetch_shards=2)`` does.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from warpdrive import Config, WarpDrive
from warpdrive.errors import WarpDriveError
from warpdrive_torch.world import rank_and_world

SCHEME = "warpdrive"

_lock = threading.Lock()
_config: Config | str | os.PathLike[str] | None = None
_instance: tuple[int, WarpDrive] | None = None


def register_webdataset(config: WarpDrive | Config | str | os.PathLike[str] | None = None) -> None:
    """Make webdataset open ``warpdrive://`` URLs through WarpDrive, configured by ``config``
    (a WarpDrive, a Config or a path; None: ``$WARPDRIVE_CONFIG``)."""
    global _config, _instance
    from webdataset.gopen import gopen_schemes

    with _lock:
        if isinstance(config, WarpDrive):
            _config, _instance = config.config, (os.getpid(), config)
        else:
            _config, _instance = config, None
    gopen_schemes[SCHEME] = open_url


def open_url(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    """webdataset's opener protocol: a readable binary stream of ``url``.

    An error of ours (a backend name the config lacks, a missing shard) is raised from here
    with its one-line message and none of the read path's frames: in a DataLoader worker
    the traceback torch prints is webdataset's pipeline and this call, ending in that line."""
    if mode != "rb":
        raise ValueError(f"{url}: warpdrive:// is read-only (mode {mode!r})")
    try:
        stream = _warpdrive().open(url, "rb", max(bufsize, 1 << 20), scan=_sole_reader())
    except WarpDriveError as exc:
        raise exc.with_traceback(None) from None
    return stream  # type: ignore[return-value]


Stage = Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]


def hint_shards(ahead: int = 2) -> Stage:
    """A webdataset stage over the shard stream (``{"url": …}`` items, after the node and
    worker split): passes it through unchanged, and as each shard goes on to be opened tells the
    cache the next ``ahead`` ``warpdrive://`` shards, which are then fetched behind the reads."""
    if ahead < 1:
        raise ValueError(f"hint_shards: ahead must be at least 1, got {ahead}")

    def stage(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        window: deque[dict[str, Any]] = deque()  # stream positions first, first + 1, …
        first = hinted = 0  # positions below `hinted` have been hinted

        def release() -> dict[str, Any]:
            nonlocal first, hinted
            # window[0] is opened now (a demand read): hint only those after it, each once
            _hint([window[i] for i in range(max(1, hinted - first), len(window))])
            hinted, first = first + len(window), first + 1
            return window.popleft()

        for item in src:
            window.append(item)
            if len(window) > ahead:
                yield release()
        while window:
            yield release()

    return stage


def split_by_worker(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset's ``split_by_worker``, then :func:`hint_shards` (2 ahead): a drop-in
    ``workersplitter`` for ``webdataset.WebDataset``."""
    import webdataset

    return hint_shards(2)(webdataset.split_by_worker(src))


def _hint(items: list[dict[str, Any]]) -> None:
    urls = [u for u in (i.get("url") for i in items) if isinstance(u, str)]
    ours = [u for u in urls if u.startswith(f"{SCHEME}://")]
    if ours:
        _warpdrive().prefetch(ours)


def _sole_reader() -> bool:
    """Whether this process reads the whole shard list. webdataset deals shards out to ranks
    and DataLoader workers; then a directory-scan prefetch in one would fetch the others'."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    try:
        world = rank_and_world()[1]
    except ValueError:  # RANK/WORLD_SIZE inconsistent: not ours to refuse, but not alone either
        return False
    return (info is None or info.num_workers == 1) and world == 1


def _warpdrive() -> WarpDrive:
    global _instance
    with _lock:
        if _instance is None or _instance[0] != os.getpid():
            _instance = (os.getpid(), WarpDrive(_config))
        return _instance[1]
