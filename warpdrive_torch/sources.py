"""Where a dataset's bytes come from: the WarpDrive cache, or plain files.

Both give the same samples in the same order (the split, shuffle and resume logic is above
them), so a run over the mount or a local copy (``reader="posix"``) and one through the cache
in-process (``reader="warpdrive"``) are directly comparable.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterable
from typing import BinaryIO, Protocol

from warpdrive import Config, WarpDrive
from warpdrive.errors import NotFoundError
from warpdrive.shards import Shard, expand, expand_braces

READ_BUFFER = 1 << 20


class Source(Protocol):
    def expand(self, urls: str | Iterable[str]) -> list[Shard]: ...  # one group of shards

    def open(self, shard: Shard) -> BinaryIO: ...

    def read(self, shard: Shard, offset: int, size: int) -> bytes: ...

    def prefetch(self, shards: Iterable[Shard]) -> None: ...

    def skipped(self, reason: str) -> None: ...

    def flush(self) -> None: ...


class CacheSource:
    """Reads through a WarpDrive (in-process; DataLoader workers each open their own)."""

    def __init__(self, wd: WarpDrive | Config | str | os.PathLike[str] | None) -> None:
        self.wd = wd if isinstance(wd, WarpDrive) else WarpDrive(wd)

    def expand(self, urls: str | Iterable[str]) -> list[Shard]:
        return expand(self.wd, urls)

    def open(self, shard: Shard) -> BinaryIO:
        try:
            # Shards are dealt out to ranks and workers, and each worker hints its own next
            # ones: a directory scan here would fetch the other workers' shards a second time.
            handle = self.wd.open_handle(shard.path, scan=False)
        except NotFoundError:
            raise NotFoundError(f"{shard.url}: shard not found") from None
        return io.BufferedReader(handle, READ_BUFFER)

    def read(self, shard: Shard, offset: int, size: int) -> bytes:
        return self.wd.read(shard.path, offset, size)

    def prefetch(self, shards: Iterable[Shard]) -> None:
        self.wd.prefetch(s.path for s in shards)

    def skipped(self, reason: str) -> None:
        self.wd.metrics.loader_skipped.labels(reason).inc()

    def flush(self) -> None:
        self.wd.flush()  # this process's counters (misses, hint hits, skips) into the index


class FileSource:
    """Reads local files (or files under a FUSE mount) with plain ``open``: no cache of its
    own, no hints. Braces and globs expand against the file system."""

    def __init__(self) -> None:
        self.skips: dict[str, int] = {}

    def expand(self, urls: str | Iterable[str]) -> list[Shard]:
        patterns = [urls] if isinstance(urls, str) else list(urls)
        if not patterns:
            raise ValueError("no shards: the list of paths is empty")
        shards: list[Shard] = []
        for pattern in patterns:
            for path in expand_braces(pattern):
                if glob.has_magic(path):
                    matched = sorted(glob.glob(path))
                    if not matched:
                        raise NotFoundError(f"{path}: no shard matches")
                    shards.extend(Shard(p, p) for p in matched if os.path.isfile(p))
                else:
                    shards.append(Shard(path, path))
        return shards

    def open(self, shard: Shard) -> BinaryIO:
        try:
            return open(shard.path, "rb", buffering=READ_BUFFER)
        except FileNotFoundError:
            raise NotFoundError(f"{shard.url}: shard not found") from None

    def read(self, shard: Shard, offset: int, size: int) -> bytes:
        with open(shard.path, "rb") as f:
            return os.pread(f.fileno(), size, offset)

    def prefetch(self, shards: Iterable[Shard]) -> None:
        pass

    def skipped(self, reason: str) -> None:
        self.skips[reason] = self.skips.get(reason, 0) + 1

    def flush(self) -> None:
        pass
