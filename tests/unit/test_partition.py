"""Who reads what (warpdrive.partition) and where a process sits (warpdrive_torch.world): pure
functions, checked as properties over many shapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warpdrive.partition import (
    Layout,
    node_sets,
    node_shards,
    quotas,
    rank_shards,
    share,
)
from warpdrive_torch import NodeSampler
from warpdrive_torch.progress import Consumed
from warpdrive_torch.world import rank_and_world, resolve


def regions(a: int, b: int) -> list[list[str]]:
    return [[f"a{i:03d}" for i in range(a)], [f"b{i:03d}" for i in range(b)]]


layouts = st.tuples(st.integers(1, 6), st.integers(1, 4))  # (nodes, ranks per node)


@settings(max_examples=60)
@given(
    sizes=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    shape=layouts,
    seed=st.integers(0, 9),
    mode=st.sampled_from(["node", "global"]),
)
def test_every_shard_once_per_epoch_on_every_layout(
    sizes: tuple[int, int], shape: tuple[int, int], seed: int, mode: str
) -> None:
    groups = regions(*sizes)
    nodes, per_node = shape
    world = nodes * per_node
    for epoch in range(2):
        got = [
            s
            for r in range(world)
            for s in rank_shards(
                groups, Layout.of(r, world, nodes), seed=seed, epoch=epoch, mode=mode
            )
        ]
        assert sorted(got) == sorted(groups[0] + groups[1])


@settings(max_examples=60)
@given(
    sizes=st.tuples(st.integers(1, 40), st.integers(0, 40)), shape=layouts, seed=st.integers(0, 9)
)
def test_a_node_reads_the_same_shards_every_epoch_in_a_new_order(
    sizes: tuple[int, int], shape: tuple[int, int], seed: int
) -> None:
    groups = regions(*sizes)
    nodes, per_node = shape
    world = nodes * per_node
    for node in range(nodes):
        ranks = range(node * per_node, (node + 1) * per_node)
        epochs = [
            [
                s
                for r in ranks
                for s in rank_shards(groups, Layout.of(r, world, nodes), seed=seed, epoch=e)
            ]
            for e in range(3)
        ]
        assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])
        assert sorted(epochs[0]) == sorted(node_shards(groups, seed, True, nodes, node))
        if len(epochs[0]) >= 10:  # enough shards that a new permutation is a new order
            assert epochs[0] != epochs[1]


def test_the_global_mode_deals_a_new_share_each_epoch() -> None:
    groups = regions(32, 32)
    layout = Layout.of(0, 8, 4)
    sets = [set(rank_shards(groups, layout, seed=42, epoch=e, mode="global")) for e in range(3)]
    assert sets[0] != sets[1] != sets[2]


@given(count=st.integers(0, 300), nodes=st.integers(1, 24))
def test_node_sets_are_balanced_and_nested_across_node_counts(count: int, nodes: int) -> None:
    sets = node_sets(count, nodes)
    assert sorted(i for s in sets for i in s) == list(range(count))
    assert max(map(len, sets)) - min(map(len, sets)) <= 1
    smaller = node_sets(count, max(1, nodes - 1))
    for p, members in enumerate(sets[: len(smaller)]):
        # More nodes: each old node keeps a subset; fewer: each surviving node a superset.
        assert set(members) <= set(smaller[p])


def test_shrinking_keeps_every_shard_a_surviving_node_had() -> None:
    groups = regions(40, 24)
    before = [set(node_shards(groups, 7, True, 3, p)) for p in range(3)]
    after = [set(node_shards(groups, 7, True, 2, p)) for p in range(2)]
    assert before[0] <= after[0] and before[1] <= after[1]
    assert after[0] | after[1] == before[0] | before[1] | before[2]
    # Four nodes to two: each of the two is exactly what it had plus its share of the others.
    four = [set(node_shards(groups, 7, True, 4, p)) for p in range(4)]
    assert four[0] <= after[0] and four[1] <= after[1]


def test_one_node_is_the_global_order_and_regions_alternate() -> None:
    groups = regions(6, 6)
    single = Layout.of(0, 1)
    for epoch in range(3):
        node = rank_shards(groups, single, seed=3, epoch=epoch, mode="node")
        assert node == rank_shards(groups, single, seed=3, epoch=epoch, mode="global")
        assert [s[0] for s in node] == ["a", "b"] * 6
    # A node's share mixes both regions too.
    mine = node_shards(groups, 3, True, 2, 1)
    assert {s[0] for s in mine} == {"a", "b"}


def test_a_shard_listed_twice_is_read_twice() -> None:
    groups = [["x", "y", "x"], ["z"]]
    got = [s for r in range(2) for s in rank_shards(groups, Layout.of(r, 2, 2), seed=1, epoch=0)]
    assert sorted(got) == ["x", "x", "y", "z"]


def test_share_and_quotas() -> None:
    items = list(range(23))
    shares = [share(share(items, r, 2), w, 3) for r in range(2) for w in range(3)]
    assert sorted(i for s in shares for i in s) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert quotas(10, [1, 1, 1]) == [4, 3, 3]
    assert quotas(45, [3, 2]) == [27, 18]
    assert quotas(7, [0, 2, 1]) == [0, 5, 2]
    assert quotas(5, [0, 0]) == [0, 0]


def test_layout_refuses_what_cannot_be() -> None:
    with pytest.raises(ValueError, match="rank=3, world_size=3"):
        Layout.of(3, 3)
    with pytest.raises(ValueError, match="world_size=6 is not a multiple of nodes=4"):
        Layout.of(1, 6, 4)
    with pytest.raises(ValueError, match="local_rank=2, local_world=2"):
        Layout(2, 4, 0, 2, 2, 2)
    with pytest.raises(ValueError, match="partition='ring'"):
        rank_shards([["a"]], Layout(), seed=0, epoch=0, mode="ring")


TORCHRUN = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "GROUP_RANK": "2",
    "LOCAL_WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
}


def test_the_node_comes_from_torchrun_slurm_or_arguments() -> None:
    assert resolve(env={}) == Layout()
    assert resolve(env=TORCHRUN) == Layout(5, 8, 2, 4, 1, 2)
    slurm = {"RANK": "5", "WORLD_SIZE": "8", "SLURM_NODEID": "1", "SLURM_NNODES": "2"}
    assert resolve(env=slurm) == Layout(5, 8, 1, 2, 1, 4)
    assert resolve(env={**slurm, "SLURM_LOCALID": "3"}) == Layout(5, 8, 1, 2, 3, 4)
    # torchrun's variables win over Slurm's (srun starting one torchrun per node).
    assert resolve(env={**slurm, **TORCHRUN}) == Layout(5, 8, 2, 4, 1, 2)
    # Explicit ranks pair with explicit nodes only, never with the launcher's.
    assert resolve(3, 4, env=TORCHRUN) == Layout(3, 4, 0, 1, 3, 4)
    assert resolve(3, 4, num_nodes=2, env=TORCHRUN) == Layout(3, 4, 1, 2, 1, 2)
    assert resolve(3, 4, node_rank=1, num_nodes=2) == Layout(3, 4, 1, 2, 1, 2)
    assert resolve(num_nodes=4, env={"RANK": "6", "WORLD_SIZE": "8"}) == Layout(6, 8, 3, 4, 0, 2)
    # One process is one node, whatever the allocation says (a batch script on a 2-node job).
    assert resolve(env={"SLURM_NODEID": "0", "SLURM_NNODES": "2"}) == Layout()
    assert rank_and_world(1, 4) == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({}, {**TORCHRUN, "GROUP_RANK": "1"}, r"rank 5 is not GROUP_RANK=1 × LOCAL_WORLD_SIZE=2 \+ LOCAL_RANK=1"),
        ({}, {**TORCHRUN, "LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE=3 does not divide world size 8"),
        ({}, {**TORCHRUN, "LOCAL_RANK": "x"}, "LOCAL_RANK='x': not an integer"),
        ({}, {"RANK": "1", "WORLD_SIZE": "4", "SLURM_NODEID": "0", "SLURM_NNODES": "3"}, "SLURM_NNODES=3 does not divide"),
        ({}, {"RANK": "1", "WORLD_SIZE": "4", "SLURM_NODEID": "2", "SLURM_NNODES": "2"}, "SLURM_NODEID, SLURM_NNODES.*node=2, nodes=2"),
        ({}, {"RANK": "1", "WORLD_SIZE": "4", "SLURM_NODEID": "0", "SLURM_NNODES": "2", "SLURM_LOCALID": "5"}, "SLURM_LOCALID.*local_rank=5"),
        ({"rank": 1, "world_size": None}, {}, "both rank and world_size"),
        ({"rank": 3, "world_size": 4, "node_rank": 0, "num_nodes": 2}, {}, "node_rank=0 but rank 3 .* is on node 1"),
        ({"node_rank": 0}, {}, "node_rank needs num_nodes"),
        ({"rank": 1, "world_size": 3, "num_nodes": 2}, {}, "world_size=3 is not a multiple of nodes=2"),
    ],
)  # fmt: skip
def test_an_inconsistent_set_names_the_variables(
    kwargs: dict[str, int | None], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(**kwargs, env=env)  # type: ignore[arg-type]


def test_node_sampler_gives_equal_steps_and_keeps_each_node_on_its_items() -> None:
    data = list(range(50))
    for drop_last in (False, True):
        epochs = []
        for epoch in range(2):
            per_rank = []
            for rank in range(6):
                sampler = NodeSampler(
                    data, seed=1, rank=rank, world_size=6, num_nodes=3, drop_last=drop_last
                )
                sampler.set_epoch(epoch)
                per_rank.append(list(sampler))
                assert len(per_rank[-1]) == len(sampler) == (8 if drop_last else 9)
            flat = [i for r in per_rank for i in r]
            if drop_last:
                assert len(set(flat)) == len(flat) == 48
            else:  # every item, and two repeats to even the steps
                assert set(flat) == set(data) and len(flat) == 54
            epochs.append([set(per_rank[2 * n] + per_rank[2 * n + 1]) for n in range(3)])
        if not drop_last:
            assert epochs[0] == epochs[1]  # each node samples the same items every epoch
    with pytest.raises(ValueError, match="partition='x'"):
        NodeSampler(data, partition="x")


@given(st.lists(st.tuples(st.sampled_from(["a.tar", "b.tar"]), st.integers(0, 60)), max_size=120))
def test_consumed_keeps_exact_ranges_in_any_order(pairs: list[tuple[str, int]]) -> None:
    consumed = Consumed()
    for url, ordinal in pairs:
        consumed.add(url, ordinal)
    assert set(consumed.pairs()) == set(pairs) and len(consumed) == len(set(pairs))
    for ranges in consumed.state().values():  # sorted, disjoint and not touching
        assert all(a < b for a, b in ranges)
        assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))
    again = Consumed(consumed.state())
    assert again.state() == consumed.state()
    assert set(again.pairs(["b.tar", "c.tar"])) == {p for p in pairs if p[0] == "b.tar"}


def test_a_shard_read_to_its_end_is_one_range() -> None:
    consumed = Consumed()
    for ordinal in (3, 0, 2, 5, 1, 4):
        consumed.add("s.tar", ordinal)
    assert consumed.state() == {"s.tar": [[0, 6]]}
