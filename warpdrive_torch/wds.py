"""``warpdrive://`` URLs in webdataset: ``webdataset.WebDataset("warpdrive://…")`` reads through
the cache.

Importing ``warpdrive_torch`` registers the opener in webdataset's ``gopen_schemes``; DataLoader
workers inherit it when forked, and re-import it when spawned as long as the training script
imports ``warpdrive_torch`` at top level. The opener reads with one WarpDrive per process, from
the config given to :func:`register_webdataset`, else ``$WARPDRIVE_CONFIG``. Paths under a FUSE
mount need nothing: webdataset opens them as files.
"""

from __future__ import annotations

import os
import threading
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
