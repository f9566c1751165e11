"""Who reads which shards: nodes, then ranks, then DataLoader workers; per node the same each epoch.

A cluster runs one WarpDrive cache per node. If every epoch dealt a fresh global permutation of
the shards to ranks, a node would read a different share each epoch and end up fetching (and
storing) the whole dataset. In ``"node"`` mode the shards are divided **once per run** among the
nodes; each epoch only reorders a node's own shards and deals them to its ranks and workers::

    groups (regions) ──seed──▶ the run's order ──node_sets(count, nodes)──▶ node p's shards
       ──(seed, epoch) permutation, per group, groups in turn──▶ dealt to p's local ranks
       ──▶ each rank's share dealt to its workers

``node_sets`` is *balanced* (node sizes differ by at most one shard) and *sticky* when the node
count changes: it grows from one node by letting each existing node hand the end of its list to
the newcomer, so for any counts P' < P, node p's set under P is a subset of its set under P'.
Shrinking P keeps every shard a surviving node had; growing it keeps as many as its smaller
balanced share allows; both are the most any balanced layout can keep (docs/torch.md).

``"global"`` mode deals each epoch's permutation of all shards round-robin to all ranks (the
behaviour before node awareness). With one node the two modes give the same order.

Nothing here reads data or imports torch: the datasets, ``warpdrive-ctl warm --num-nodes`` and
the benchmarks all call these functions, so a node's warm-up is exactly what it will read.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MODES = ("node", "global")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one training process sits: its global rank among ``world_size``, and its node
    (``node`` of ``nodes``) with its place among the node's ``local_world`` ranks."""

    rank: int = 0
    world_size: int = 1
    node: int = 0
    nodes: int = 1
    local_rank: int = 0
    local_world: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank={self.rank}, world_size={self.world_size}: need 0 <= rank < world_size"
            )
        if self.nodes < 1 or not 0 <= self.node < self.nodes:
            raise ValueError(f"node={self.node}, nodes={self.nodes}: need 0 <= node < nodes")
        if not 0 <= self.local_rank < self.local_world:
            raise ValueError(
                f"local_rank={self.local_rank}, local_world={self.local_world}: "
                "need 0 <= local_rank < local_world"
            )
        if self.local_world * self.nodes != self.world_size:
            raise ValueError(
                f"{self.nodes} node(s) × {self.local_world} rank(s) per node != "
                f"world_size={self.world_size}"
            )

    @classmethod
    def of(cls, rank: int, world_size: int, nodes: int = 1) -> Layout:
        """Ranks numbered node by node (torchrun's and Slurm's block order)."""
        if nodes < 1 or world_size % nodes:
            raise ValueError(f"world_size={world_size} is not a multiple of nodes={nodes}")
        local_world = world_size // nodes
        return cls(rank, world_size, rank // local_world, nodes, rank % local_world, local_world)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def base_order(groups: Sequence[Sequence[int]], seed: int, shuffle: bool) -> list[int]:
    """The run's fixed order of all shards: each group (region) permuted by the seed alone, the
    groups taken in turn, so every node gets a share of every region."""
    return _permuted(groups, f"partition:{seed}", shuffle)


@functools.lru_cache(maxsize=64)
def node_sets(count: int, nodes: int) -> tuple[tuple[int, ...], ...]:
    """Positions ``0..count-1`` of the run's order divided among ``nodes``: balanced, and
    nested across node counts (see the module docstring). O(nodes² + count·log nodes)."""
    if nodes < 1:
        raise ValueError(f"nodes={nodes}: must be at least 1")
    sets = [list(range(count))]
    for n in range(2, nodes + 1):
        base, extra = divmod(count, n)
        newcomer: list[int] = []
        for p, members in enumerate(sets):
            keep = base + (p < extra)
            newcomer += members[keep:]
            del members[keep:]
        sets.append(newcomer)
    return tuple(tuple(s) for s in sets)


def epoch_order(groups: Sequence[Sequence[int]], seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The shards of ``groups`` in the order of ``epoch``: each group permuted by (seed, epoch),
    the groups taken in turn."""
    return _permuted(groups, f"shards:{seed}:{epoch}", shuffle)


def node_shards(
    groups: Sequence[Sequence[T]], seed: int, shuffle: bool, nodes: int, node: int
) -> list[T]:
    """The shards node ``node`` of ``nodes`` reads every epoch of a run (in the run's order)."""
    flat, ids = _numbered(groups)
    order = base_order(ids, seed, shuffle)
    return [flat[order[i]] for i in node_sets(len(order), nodes)[node]]


def rank_shards(
    groups: Sequence[Sequence[T]],
    layout: Layout,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    mode: str = "node",
) -> list[T]:
    """This rank's shards of ``epoch``, in reading order (before the split among workers)."""
    if mode not in MODES:
        raise ValueError(f"partition={mode!r}: expected one of {', '.join(map(repr, MODES))}")
    flat, ids = _numbered(groups)
    if mode == "global" or layout.nodes == 1:
        order = epoch_order(ids, seed, epoch, shuffle)[layout.rank :: layout.world_size]
    else:
        run = base_order(ids, seed, shuffle)
        mine = {run[i] for i in node_sets(len(run), layout.nodes)[layout.node]}
        # Each group's own shards in their listed order, then the epoch's permutation: with
        # one node this is exactly the global order.
        kept = [[i for i in group if i in mine] for group in ids]
        order = epoch_order(kept, seed, epoch, shuffle)[layout.local_rank :: layout.local_world]
    return [flat[i] for i in order]


def share(items: Sequence[T], part: int, parts: int) -> list[T]:
    """Every ``parts``-th item from ``part``: round-robin, so each item is in exactly one share."""
    return list(items[part::parts])


def quotas(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, rounded by largest remainder (ties to the
    lower index), so the parts sum to ``total`` exactly."""
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    parts = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _permuted(groups: Sequence[Sequence[int]], key: str, shuffle: bool) -> list[int]:
    """Each group permuted by the RNG named ``key`` and its index, then the groups in turn;
    without ``shuffle``, the groups one after another as listed."""
    if not shuffle:
        return [s for group in groups for s in group]
    orders = []
    for g, group in enumerate(groups):
        order = list(group)
        random.Random(f"{key}:{g}").shuffle(order)
        orders.append(order)
    return _interleave(orders)


def _numbered(groups: Sequence[Sequence[T]]) -> tuple[list[T], list[list[int]]]:
    """The shards in one list, and each group as positions in it: a shard listed twice is
    two shards, read twice, wherever they fall."""
    flat = [s for group in groups for s in group]
    ids, start = [], 0
    for group in groups:
        ids.append(list(range(start, start + len(group))))
        start += len(group)
    return flat, ids


def _interleave(orders: Sequence[Sequence[int]]) -> list[int]:
    """Round-robin across the lists, the longer ones finishing last."""
    return [s for turn in itertools.zip_longest(*orders) for s in turn if s is not None]
