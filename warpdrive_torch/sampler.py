"""NodeSampler: DistributedSampler's contract, with each node sampling the same items every epoch.

For map-style datasets (:class:`FileDataset`, one file per sample): the items are divided among
the nodes once per run by :mod:`warpdrive.partition` (the same code that divides ShardDataset's
shards), and each epoch permutes a node's own items and deals them to its ranks. So a node's
cache holds what its ranks read, and every epoch after the first reads from it.

As ``DistributedSampler``: ``set_epoch(e)`` before each epoch; every rank yields the same number
of indices (``len(sampler)``), padding with repeats of its own items (or, with ``drop_last``,
dropping the last few) so that every rank takes the same number of steps. The rank is resolved
when asked (``len``, ``iter``), so a sampler made before the process group exists is right.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

from torch.utils.data import Sampler

from warpdrive.partition import MODES, Layout, rank_shards
from warpdrive_torch.world import Place


class NodeSampler(Sampler[int]):
    """``partition``, ``rank``/``world_size`` and ``node_rank``/``num_nodes`` as in
    :class:`ShardDataset`; ``shuffle``, ``seed``, ``drop_last`` as in DistributedSampler."""

    def __init__(
        self,
        dataset: Sized,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        partition: str = "node",
        rank: int | None = None,
        world_size: int | None = None,
        node_rank: int | None = None,
        num_nodes: int | None = None,
    ) -> None:
        if partition not in MODES:
            raise ValueError(f"partition={partition!r}: expected one of {', '.join(MODES)}")
        self.size = len(dataset)
        self.shuffle, self.seed, self.drop_last, self.partition = (
            shuffle,
            seed,
            drop_last,
            partition,
        )
        self._place = Place(rank, world_size, node_rank, num_nodes)
        self.epoch = 0

    @property
    def layout(self) -> Layout:
        """This process's place in the job, resolved now unless given (see ``world.Place``)."""
        return self._place.get()

    @property
    def num_samples(self) -> int:
        world = self.layout.world_size
        return self.size // world if self.drop_last else math.ceil(self.size / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        layout, want = self.layout, self.num_samples
        mine = rank_shards(
            [range(self.size)],
            layout,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
            mode=self.partition,
        )
        if want and not mine:
            raise ValueError(
                f"rank {layout.rank} has no item to sample ({self.size} items for "
                f"{layout.world_size} ranks)"
            )
        while len(mine) < want:  # repeats of this rank's own items: equal steps
            mine += mine[: want - len(mine)]
        return iter(mine[:want])
