"""ResumableLoader: a DataLoader over a ShardDataset that can checkpoint mid-epoch.

Workers run in other processes, so only the batches tell the training process how far each
worker got: every sample carries ``__worker__`` and ``__index__`` (its position in that worker's
stream), and the loader keeps, per worker, one past the last position it handed out — what
:meth:`ShardDataset.load_state_dict` needs to replay the rest of the epoch on the same layout.
Samples also carry ``__url__`` and ``__ordinal__`` (which shard, which sample of it): the loader
keeps those as ranges, so that any other layout can skip them. A DataLoader takes batches from
its workers in turn; the loader also keeps whose turn is next, and a resumed epoch starts the
turns there: the batches come in the order they would have without the interruption.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

from torch.utils.data import DataLoader

from warpdrive_torch.dataset import ShardDataset
from warpdrive_torch.progress import Consumed


class ResumableLoader:
    """``DataLoader(dataset, **kwargs)`` with ``state_dict()``/``load_state_dict()``.

    The collate function must keep the ``__worker__``, ``__index__``, ``__url__`` and
    ``__ordinal__`` fields (the default one does). ``persistent_workers`` is refused: workers
    that outlive an epoch would not see ``set_epoch`` or a loaded state."""

    def __init__(self, dataset: ShardDataset, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError("ResumableLoader: persistent_workers=True would ignore set_epoch")
        self.dataset = dataset
        self.loader: DataLoader[Any] = DataLoader(dataset, **kwargs)
        self.num_workers = self.loader.num_workers
        # A pending resume's positions; otherwise this epoch starts from the beginning.
        resuming = dataset._resume is not None
        self._positions: dict[int, int] = dict(dataset._positions) if resuming else {}
        self._consumed = Consumed(dataset._consumed.state()) if resuming else Consumed()
        self._next_worker = self._pending_next_worker()

    def __iter__(self) -> Generator[Any, None, None]:
        self._next_worker = self._pending_next_worker()
        it = iter(self.loader)
        if self.num_workers > 0:
            self.dataset._resume = None  # the workers took their copy; the next epoch is fresh
        for batch in it:
            self._note(batch)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.dataset.epoch:
            self._positions, self._consumed, self._next_worker = {}, Consumed(), 0
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict(
            self._positions, self.num_workers, self._consumed, self._next_worker
        )

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """This rank's state (same layout and workers), or every rank's (any layout)."""
        if isinstance(state, Mapping) and int(state.get("num_workers", 1)) != max(
            1, self.num_workers
        ):
            raise ValueError(
                f"cannot resume: the checkpoint was taken with {state.get('num_workers')} "
                f"loader worker(s), this loader has {max(1, self.num_workers)}"
            )
        self.dataset.load_state_dict(state, num_workers=self.num_workers)
        self._positions = dict(self.dataset._positions)
        self._consumed = Consumed(self.dataset._consumed.state())
        self._next_worker = self._pending_next_worker()

    def _pending_next_worker(self) -> int:
        resume = self.dataset._resume
        return int(resume.get("next_worker", 0)) if resume is not None else 0

    def _note(self, batch: Any) -> None:
        for worker, index, url, ordinal in _tags(batch):
            if index + 1 > self._positions.get(worker, 0):
                self._positions[worker] = index + 1
            self._consumed.add(url, ordinal)
            # A batch is one worker's: the loader's next turn is the following worker's.
            self._next_worker = (worker + 1) % max(1, self.num_workers)


TAGS = ("__worker__", "__index__", "__url__", "__ordinal__")


def _tags(batch: Any) -> list[tuple[int, int, str, int]]:
    if isinstance(batch, Mapping):
        lost = [tag for tag in TAGS if tag not in batch]
        if lost:
            raise ValueError(
                f"ResumableLoader: batches lost the {'/'.join(lost)} field(s); "
                "keep them in collate_fn"
            )
        workers, indices, urls, ordinals = (batch[tag] for tag in TAGS)
        if isinstance(workers, int):
            return [(workers, int(indices), str(urls), int(ordinals))]
        return [
            (int(w), int(i), str(u), int(o))
            for w, i, u, o in zip(
                _list(workers), _list(indices), _list(urls), _list(ordinals), strict=True
            )
        ]
    if isinstance(batch, list | tuple):
        return [t for item in batch for t in _tags(item)]
    raise ValueError(f"ResumableLoader: cannot find sample tags in a {type(batch).__name__}")


def _list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)
