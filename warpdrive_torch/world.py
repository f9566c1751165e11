"""This process's place in the job: rank, node and DataLoader worker, from what launchers set.

Rank and world size: explicit arguments, else the initialised ``torch.distributed`` group, else
``RANK``/``WORLD_SIZE`` (torchrun, or set by hand under srun), else one process. The node:
explicit arguments, else torchrun's ``GROUP_RANK``/``LOCAL_WORLD_SIZE``/``LOCAL_RANK``, else
Slurm's ``SLURM_NODEID``/``SLURM_NNODES``/``SLURM_LOCALID``, else one node.
Explicit ranks pair only with explicit nodes (a rank given by hand is not the launcher's).
A dataset resolves its place when iteration starts (:class:`Place`), not where it is made: a
dataset made before the process group (Lightning's DataModule ``__init__``, before ``fit``) must
not fix itself as rank 0 of 1. ``WORLD_SIZE`` > 1 with no process group and no ``RANK`` is an
error (Lightning sets one, not the other, until its group exists). An inconsistent set is a
ValueError naming the variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from warpdrive.partition import Layout


def resolve(
    rank: int | None = None,
    world_size: int | None = None,
    node_rank: int | None = None,
    num_nodes: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Layout:
    """The :class:`Layout` of this process (see the module docstring for the order of sources)."""
    env = os.environ if env is None else env
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if node_rank is not None and num_nodes is None:
        raise ValueError("node_rank needs num_nodes")
    explicit = rank is not None
    if rank is None or world_size is None:
        rank, world_size = _from_torch() or _pair(env, "RANK", "WORLD_SIZE") or _alone(env)
    if num_nodes is not None:
        layout = Layout.of(rank, world_size, num_nodes)
        if node_rank is not None and node_rank != layout.node:
            raise ValueError(
                f"node_rank={node_rank} but rank {rank} of {world_size} in {num_nodes} node(s) "
                f"is on node {layout.node}"
            )
        return layout
    if explicit or world_size == 1:  # one process is one node, whatever the allocation
        return Layout.of(rank, world_size)
    return (
        _torchrun(env, rank, world_size)
        or _slurm(env, rank, world_size)
        or (Layout.of(rank, world_size))
    )


def _alone(env: Mapping[str, str]) -> tuple[int, int]:
    """Rank 0 of 1, unless the environment says the job is larger."""
    world = _int(env, "WORLD_SIZE")
    if world is not None and world > 1:
        raise ValueError(
            f"WORLD_SIZE={world} but this process has no rank: no torch.distributed process "
            "group is initialised and RANK is not set; iterate once the group exists (Lightning: "
            "inside fit), or pass rank= and world_size="
        )
    return 0, 1


class Place:
    """Where a dataset or sampler made with these arguments reads: the explicit layout if any
    argument is given (checked at once), else :func:`resolve` at the time of asking. A DataLoader
    worker asks in its own process: forked, it inherits the process group; spawned, it gets the
    layout resolved when the loader pickled the dataset for it, in the training process."""

    def __init__(
        self,
        rank: int | None = None,
        world_size: int | None = None,
        node_rank: int | None = None,
        num_nodes: int | None = None,
    ) -> None:
        given = (rank, world_size, node_rank, num_nodes)
        self._fixed = resolve(*given) if any(v is not None for v in given) else None
        self._pinned: Layout | None = None  # set in a copy pickled for a worker

    def get(self) -> Layout:
        if self._fixed is not None:
            return self._fixed
        if self._pinned is not None and _in_worker():
            return self._pinned
        return resolve()

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        if self._fixed is None:
            try:
                state["_pinned"] = resolve()
            except ValueError:  # not resolvable here; the worker will say why when it asks
                state["_pinned"] = None
        return state


def _in_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def _torchrun(env: Mapping[str, str], rank: int, world: int) -> Layout | None:
    found = _pair(env, "GROUP_RANK", "LOCAL_WORLD_SIZE")
    if found is None:
        return None
    node, local_world = found
    if local_world < 1 or world % local_world:
        raise ValueError(f"LOCAL_WORLD_SIZE={local_world} does not divide world size {world}")
    local = _int(env, "LOCAL_RANK")
    local = rank - node * local_world if local is None else local
    names = "GROUP_RANK, LOCAL_WORLD_SIZE, LOCAL_RANK and RANK/WORLD_SIZE"
    if rank != node * local_world + local:
        raise ValueError(
            f"inconsistent {names}: rank {rank} is not GROUP_RANK={node} × "
            f"LOCAL_WORLD_SIZE={local_world} + LOCAL_RANK={local}"
        )
    return _checked(names, rank, world, node, world // local_world, local, local_world)


def _slurm(env: Mapping[str, str], rank: int, world: int) -> Layout | None:
    found = _pair(env, "SLURM_NODEID", "SLURM_NNODES")
    if found is None:
        return None
    node, nodes = found
    if nodes < 1 or world % nodes:
        raise ValueError(
            f"SLURM_NNODES={nodes} does not divide world size {world} "
            "(WarpDrive needs the same number of ranks on every node)"
        )
    local_world = world // nodes
    local = _int(env, "SLURM_LOCALID")
    names = "SLURM_NODEID, SLURM_NNODES, SLURM_LOCALID and the rank/world size"
    local = rank % local_world if local is None else local
    return _checked(names, rank, world, node, nodes, local, local_world)


def _checked(
    names: str, rank: int, world: int, node: int, nodes: int, local: int, local_world: int
) -> Layout:
    try:
        return Layout(rank, world, node, nodes, local, local_world)
    except ValueError as exc:
        raise ValueError(f"inconsistent {names}: {exc}") from None


def _from_torch() -> tuple[int, int] | None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency of this package
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _pair(env: Mapping[str, str], a: str, b: str) -> tuple[int, int] | None:
    first, second = _int(env, a), _int(env, b)
    if first is None or second is None:
        return None  # half a pair is not a launcher's
    return first, second


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: not an integer") from None


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world size); ValueError naming an inconsistent pair."""
    layout = resolve(rank, world_size)
    return layout.rank, layout.world_size


def worker_and_count() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) outside workers."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
