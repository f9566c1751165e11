"""What a DataLoader worker reads next: a sampler whose order every worker can compute, and the
batches dealt to this worker after the one it reads now.

A map-style dataset sees one batch of indices at a time; the sampler runs in the main process.
:class:`OrderSampler` draws each epoch's order from (seed, epoch) alone, so the dataset, holding
the same sampler (pickled into each worker when the worker starts, before the epoch's first
batch is drawn), computes the same order. The DataLoader deals batches to its workers in turn
(batch ``k`` to worker ``k mod num_workers``), so a worker reading batch ``k`` reads ``k + W``,
``k + 2W``, … next. :class:`Ahead` checks each batch against the order it expects and names
nothing when they differ (another sampler, persistent workers a later epoch): a wrong guess
would fetch another worker's files.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler, get_worker_info


class OrderSampler(Sampler[int]):
    """Every index once per epoch, shuffled by (``seed``, epoch) unless ``shuffle`` is off.
    The epoch advances by itself at each pass (or ``set_epoch``, as DistributedSampler)."""

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0  # the epoch the next pass draws

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=gen)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.order(epoch).tolist())


class Ahead:
    """The batches this process reads after the current one, from an :class:`OrderSampler`."""

    def __init__(self, sampler: OrderSampler, batches: int) -> None:
        self.sampler = sampler
        self.batches = batches
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)
        self._position = torch.empty(0, dtype=torch.long)  # index → where it is in the order
        self._hinted: set[int] = set()  # indices named this epoch

    def __getstate__(self) -> dict[str, object]:
        """Only the sampler and the count travel to workers; each draws its order itself."""
        return {"sampler": self.sampler, "batches": self.batches}

    def __setstate__(self, state: dict[str, object]) -> None:
        sampler, batches = state["sampler"], state["batches"]
        assert isinstance(sampler, OrderSampler)
        assert isinstance(batches, int)
        self.__init__(sampler, batches)  # type: ignore[misc]

    def to_hint(self, indices: list[int]) -> list[int]:
        """What to hint before reading ``indices``: those of its indices and of the next
        batches dealt to this worker not named before this epoch; ``indices`` alone when it is
        not a batch of the sampler's order."""
        ahead = self.next_batches(indices)
        if ahead is None:
            return indices
        todo = [i for batch in (indices, *ahead) for i in batch if i not in self._hinted]
        self._hinted.update(todo)
        return todo

    def next_batches(self, indices: list[int]) -> list[list[int]] | None:
        """The next ``batches`` batches dealt to this worker after ``indices`` (fewer at the
        epoch's end); None if ``indices`` is not a batch of the sampler's order."""
        if not indices:
            return None
        # In a worker the sampler is the copy made before this epoch's pass began; in the
        # main process (no workers) it has advanced already.
        candidates = (self.sampler.epoch, self.sampler.epoch - 1)
        if self._epoch in candidates:  # the order already drawn first: no second randperm
            candidates = (self._epoch, sum(candidates) - self._epoch)
        for epoch in candidates:
            at = self._locate(epoch, indices)
            if at is not None:
                break
        else:
            return None
        info = get_worker_info()
        workers = 1 if info is None else info.num_workers
        size = len(indices)
        return [
            self._order[start : start + size].tolist()
            for k in range(1, self.batches + 1)
            if (start := at + k * workers * size) < len(self._order)
        ]

    def _locate(self, epoch: int, indices: list[int]) -> int | None:
        if epoch < 0:
            return None
        if epoch != self._epoch:
            self._hinted.clear()
            self._order = self.sampler.order(epoch)
            self._position = torch.empty_like(self._order)
            self._position[self._order] = torch.arange(len(self._order))
            self._epoch = epoch
        first = indices[0]
        if not 0 <= first < len(self._position):
            return None
        at = int(self._position[first])
        if at % len(indices) or self._order[at : at + len(indices)].tolist() != indices:
            return None
        return at
