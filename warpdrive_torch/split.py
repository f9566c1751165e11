"""Who reads what: shards split by rank, then by DataLoader worker.

Each epoch's shard list (already in its shuffled order) is dealt round-robin to ranks, and each
rank's share round-robin to its workers, so every shard goes to exactly one worker of one rank.
The rank is fixed when a dataset is made, in the training process: explicit arguments, else the
initialised ``torch.distributed`` process group, else ``RANK``/``WORLD_SIZE`` from the launcher
(``torchrun`` sets them; worker processes have no process group to ask), else a single process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world size); ValueError naming an inconsistent pair."""
    if rank is None and world_size is None:
        rank, world_size = _from_torch() or _from_env() or (0, 1)
    elif rank is None or world_size is None:
        raise ValueError("give both rank and world_size, or neither")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return rank, world_size


def _from_torch() -> tuple[int, int] | None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency of this package
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _from_env() -> tuple[int, int] | None:
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        return int(rank), int(world)
    except ValueError:
        raise ValueError(f"RANK={rank!r}, WORLD_SIZE={world!r}: not integers") from None


def worker_and_count() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) outside workers."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def share(items: Sequence[T], rank: int, world: int, worker: int, workers: int) -> list[T]:
    """The items of ``worker`` on ``rank``: every item in exactly one share."""
    return list(items[rank::world][worker::workers])


def quotas(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (each worker's shard count), rounded by
    largest remainder (ties to the lower index), so the parts sum to ``total`` exactly."""
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    parts = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts
