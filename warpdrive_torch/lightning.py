"""Lightning: the epoch of :class:`ShardDataset` follows the trainer's.

Lightning calls ``set_epoch`` on a DataLoader's sampler, never on an ``IterableDataset``, so
without this every epoch would read the first epoch's order::

    trainer = lightning.Trainer(callbacks=[WarpDriveEpochs()], strategy="ddp", ...)

The callback points :attr:`ShardDataset.epoch_source` at the trainer's epoch for the length of
a fit (the one Lightning gives samplers' ``set_epoch``): every ShardDataset of the process, made
in a DataModule's ``__init__`` or in ``train_dataloader``, reads the trainer's epoch when its
iteration starts — including the first epoch of a run resumed from a checkpoint, whose loader
Lightning starts before any epoch hook.
Rank and world size need nothing: ShardDataset resolves them when iteration starts, once
Lightning's process group exists.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from warpdrive_torch.dataset import ShardDataset


class WarpDriveEpochs(Callback):
    """Every ShardDataset of this process reads the trainer's epoch while a fit runs."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            # The epoch Lightning gives samplers (``processed``): on a resumed run it is
            # right before the loader starts, where ``current_epoch`` still has the old one.
            progress = trainer.fit_loop.epoch_progress
            # `current` is a _ProcessedTracker, though typed as its base class
            ShardDataset.epoch_source = lambda: int(progress.current.processed)  # type: ignore[attr-defined]

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            ShardDataset.epoch_source = None

    def state_dict(self) -> dict[str, Any]:
        return {}
