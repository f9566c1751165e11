"""Lightning: what a ShardDataset needs from the trainer, in one callback.

    trainer = lightning.Trainer(callbacks=[WarpDriveCallback()], strategy="ddp", ...)

**Epochs.** Lightning calls ``set_epoch`` on a DataLoader's sampler, never on an
``IterableDataset``, so without this every epoch would read the first epoch's order. The
callback points :attr:`ShardDataset.epoch_source` at the trainer's epoch for the length of a fit
(the one Lightning gives samplers): every ShardDataset of the process, made in a DataModule's
``__init__`` or in ``train_dataloader``, reads it when its iteration starts — including the
first epoch of a run resumed from a checkpoint, whose loader Lightning starts before any epoch
hook.

**Mid-epoch checkpoints under DDP.** With torchdata's ``StatefulDataLoader`` Lightning puts the
loader's state in its checkpoints, but only the writing rank's: every other rank would resume
rank 0's stream (ShardDataset refuses that: "the checkpoint is of rank(s) [0]"). The callback
gathers every rank's loader state into the checkpoint and gives each rank its own back on load.

Rank and world size need nothing: ShardDataset resolves them when iteration starts, once
Lightning's process group exists.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer

from warpdrive_torch.dataset import ShardDataset

KEY = "warpdrive_loader_states"  # in the checkpoint: every rank's train loader states


class WarpDriveCallback(Callback):
    """Epochs from the trainer, and every rank's loader state in mid-epoch checkpoints."""

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

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Every rank builds the checkpoint (one writes it): all of them take part in the gather.
        if trainer.world_size < 2 or not dist.is_initialized():
            return
        mine = _loop_state(checkpoint).get("combined_loader")
        gathered: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(gathered, mine)
        if any(state is not None for state in gathered):
            checkpoint[KEY] = gathered

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        gathered = checkpoint.get(KEY)
        if gathered is None:
            return
        if len(gathered) != trainer.world_size:
            raise ValueError(
                f"cannot resume the loaders mid-epoch: the checkpoint holds {len(gathered)} "
                f"ranks' loader states, this run has {trainer.world_size} ranks"
            )
        # Lightning restores the loops (and the loaders' states) after the callbacks.
        _loop_state(checkpoint)["combined_loader"] = gathered[trainer.global_rank]


def _loop_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    loop: dict[str, Any] = checkpoint.setdefault("loops", {}).setdefault("fit_loop", {})
    state: dict[str, Any] = loop.setdefault("state_dict", {})
    return state
