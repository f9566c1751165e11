"""forge's input pipeline: shards found under each training root, read by ShardDataset (plain
files or through the cache), epoch after epoch, batched and featurised in DataLoader workers.

Unlike the original (one shard at a time whatever ``--num-workers``, order from Go's map
iteration), each worker reads its own shards in parallel, the shard order is reproducible for
a seed, and the roots (regions) are taken in turn.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from forge.features import Collate
from warpdrive import WarpDrive
from warpdrive.errors import NotFoundError
from warpdrive.shards import URL_SCHEME
from warpdrive_torch import ShardDataset
from warpdrive_torch.decode import Sample

SHARD_NAME = re.compile(r"^shard-[0-9]{6,}\.tar$")  # as the original discovers them


def discover(root: str, wd: WarpDrive | None) -> list[str]:
    """The shard files under ``root`` (recursively), sorted; through WarpDrive's listings for
    ``warpdrive://`` roots or when reading through the cache, else the file system."""
    if wd is None:
        if root.startswith(URL_SCHEME):
            raise SystemExit(f"{root}: warpdrive:// roots need --reader warpdrive")
        if not os.path.isdir(root):
            raise SystemExit(f"training root {root}: not a directory")
        found = [
            os.path.join(d, name)
            for d, _, names in os.walk(root)
            for name in names
            if SHARD_NAME.match(name)
        ]
        return sorted(found)
    try:
        paths = sorted(i.path for i in wd.walk(root) if SHARD_NAME.match(i.name))
    except NotFoundError as exc:
        raise SystemExit(f"training root {root}: {exc}") from None
    if root.startswith(URL_SCHEME):  # named as the root was: warpdrive://BACKEND/key
        return [wd.url(p) or p for p in paths]
    return paths


class Endless(IterableDataset[Sample]):
    """Epoch after epoch of a ShardDataset inside each worker (no worker restarts between
    epochs); each epoch's order is that of ``set_epoch(e)``."""

    def __init__(self, dataset: ShardDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def __iter__(self) -> Iterator[Sample]:
        epoch = 0
        while True:
            self.dataset.set_epoch(epoch)
            seen = 0
            for sample in self.dataset:
                seen += 1
                yield sample
            if not seen:
                return  # this worker has no shards: it ends, the others go on
            epoch += 1


def make_loader(
    roots: list[str],
    reader: str,
    wd: WarpDrive | None,
    batch_size: int,
    num_workers: int,
    seed: int,
    decode: bool,
    partition: str = "node",
) -> tuple[DataLoader[Any], dict[str, int]]:
    """The batch stream of this rank (its rank and node from torch.distributed and the
    launcher), and how many shards each root holds."""
    groups = {root: discover(root, wd) for root in roots}
    for root, shards in groups.items():
        if not shards:
            raise SystemExit(f"no shards discovered under {root}")
    dataset = ShardDataset(
        list(groups.values()),
        wd=wd,
        reader=reader,
        seed=seed,
        shuffle=True,
        partition=partition,
    )
    loader: DataLoader[Any] = DataLoader(
        Endless(dataset),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=Collate(decode),
        prefetch_factor=2 if num_workers else None,
    )
    return loader, {root: len(shards) for root, shards in groups.items()}
