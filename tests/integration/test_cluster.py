"""Many nodes, one dataset: simulated clusters (warpdrive.testing.cluster) of torchrun nodes,
each with its own cache (and mount), reading two Azurite "regions". Bytes are counted from each
node's cache index or its mount's /metrics, never timed."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

from tests.integration.test_torch import REGIONS, Regions, upload_regions
from warpdrive import WarpDrive, parse_config
from warpdrive.admin import cache_counters
from warpdrive.partition import node_shards
from warpdrive.shards import expand
from warpdrive.testing.cluster import Cluster, EpochReport, fetched, sample_digest
from warpdrive.testing.servers import AZURITE_KEY, Server
from warpdrive_torch import FileDataset, NodeSampler, ResumableLoader, ShardDataset
from warpdrive_torch.progress import Consumed

pytestmark = pytest.mark.integration

SHARDS = 24
PER_SHARD = 6
SEED = 42


@pytest.fixture
def data(azurite: Server, tmp_path: Path) -> Regions:
    return upload_regions(azurite, tmp_path, SHARDS, PER_SHARD, "c")


def node_config(data: Regions, cache: Path, point: Path, port: int) -> str:
    backends = "".join(
        f"  - name: {name}\n    type: azureblob\n"
        f"    config: {{account: devstoreaccount1, container: {container}, "
        f"endpoint: '{data.server.blob_endpoint()}'}}\n"
        "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
        for name, container in data.containers.items()
    )
    metrics = f"{{addr: '127.0.0.1:{port}'}}" if port else "{enabled: false}"
    return (
        f"mount_point: {point}\nmetrics: {metrics}\n"
        # As the Helm chart and the Slurm playbook set it: a node reads only its share.
        f"cache: {{path: {cache}, max_size: 256MB, block_size: 64KB, readahead_blocks: 2, "
        "scan_prefetch: false}\n"
        "fetch: {initial_backoff: 10ms, max_backoff: 100ms, request_timeout: 10s}\n"
        f"backends:\n{backends}"
    )


def cluster(data: Regions, nodes: int, mounts: bool = False) -> Cluster:
    os.environ["WD_TEST_AZURE_KEY"] = AZURITE_KEY
    return Cluster(
        data.tmp / "cluster",
        nodes,
        lambda cache, point, port: node_config(data, cache, point, port),
        mounts=mounts,
    )


def dataset_bytes(data: Regions) -> int:
    return dataset_bytes_of(data, SHARDS)


def check_exactly_once(samples: list[list[Any]], data: Regions) -> None:
    keys = [key for key, _, _ in samples]
    assert len(keys) == len(set(keys)) == SHARDS * PER_SHARD
    assert set(keys) == set(data.content)
    for key, digest, _ in samples:
        assert digest == sample_digest(data.content[key]), key


def shards_by_node(report: EpochReport, ranks_per_node: int) -> dict[int, set[str]]:
    """Which shards (by the key's shard number) each node's ranks read in this epoch."""
    found: dict[int, set[str]] = collections.defaultdict(set)
    for key, _, rank in report.samples:
        found[rank // ranks_per_node].add(key[:6])
    return found


SPEC = {"seed": SEED, "epochs": 3, "workers": 2, "batch_size": 4}


def test_three_nodes_fetch_the_dataset_once_and_then_nothing(data: Regions) -> None:
    total = dataset_bytes(data)
    with cluster(data, 3) as c:
        # Node 0 is warmed first, as the Slurm prolog does: exactly its share, computed by the
        # code the dataset uses.
        node0 = c.members[0]
        warm = subprocess.run(
            [sys.executable, "-m", "warpdrive.ctl.main", "warm", "--num-nodes", "3",
             "--node-rank", "0", "--seed", str(SEED), "--json", *data.urls],
            env=c.env(node0), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert warm.returncode == 0, warm.stderr
        warmed = json.loads(warm.stdout)["bytes_fetched"]
        wd = WarpDrive(parse_config(node0.config.read_text()))
        share = node_shards([expand(wd, u) for u in data.urls], SEED, True, 3, 0)
        assert warmed == sum(wd.version(s.path).size for s in share) > 0
        wd.close()
        # static rendezvous: node i is the torchrun given --node-rank i (as under Slurm).
        reports = c.train({**SPEC, "urls": data.urls}, rdzv="static")
    assert [r.epoch for r in reports] == [0, 1, 2]
    for report in reports:
        check_exactly_once(report.samples, data)
    per_epoch = fetched(reports)
    configs = [str(n.config) for n in c.members]
    assert per_epoch[0][configs[0]] == 0  # warmed: its first epoch read only from its cache
    assert warmed + sum(per_epoch[0].values()) == total  # the cluster fetched the dataset once
    for later in per_epoch[1:]:
        assert later == dict.fromkeys(configs, 0)
    hits = fetched(reports, "hits")
    misses = fetched(reports, "misses")
    for epoch in (1, 2):
        for config in configs:
            assert misses[epoch][config] == 0 and hits[epoch][config] > 0
    # Each node read the same shards every epoch, and the nodes' shards are disjoint.
    sets = [shards_by_node(r, 2) for r in reports]
    assert sets[0] == sets[1] == sets[2]
    assert sum(len(s) for s in sets[0].values()) == SHARDS


def test_three_mounts_fetch_the_dataset_once_and_then_nothing(data: Regions) -> None:
    total = dataset_bytes(data)
    urls = [
        "{mount}/" + f"{REGIONS[0]}/train/shard-*.tar",
        "{mount}/" + f"{REGIONS[1]}/train/shard-*.tar",
    ]
    with cluster(data, 3, mounts=True) as c:
        reports = c.train({**SPEC, "urls": urls, "reader": "posix"})  # c10d rendezvous
    for report in reports:
        check_exactly_once(report.samples, data)
    per_epoch = fetched(reports)
    assert sum(per_epoch[0].values()) == total, per_epoch
    for later in per_epoch[1:]:
        assert set(later.values()) == {0}, per_epoch


def test_resume_on_two_nodes_from_a_three_node_checkpoint(data: Regions) -> None:
    spec = {**SPEC, "urls": data.urls}
    with cluster(data, 3) as c:
        first = c.train({**spec, "stop": [1, 3]}, rdzv="static")
        assert [(r.epoch, r.partial) for r in first] == [(0, False), (1, True)]
        checkpoint = c.checkpoint()
        resume = {**spec, "epochs": 4, "resume": str(checkpoint)}
        after = c.train(resume, nodes=c.members[:2], rdzv="static")
    assert [(r.epoch, r.resumed) for r in after] == [(1, True), (2, False), (3, False)]
    # Epoch 1: what the three nodes consumed and what the two read after the resume, exactly once.
    check_exactly_once(first[1].samples + after[0].samples, data)
    check_exactly_once(after[1].samples, data)
    check_exactly_once(after[2].samples, data)
    # The survivors kept their shards and read nothing to find what was consumed: after the
    # resume they fetched exactly the third node's share (each shard once, by its new owner),
    # then nothing.
    third_share = fetched(first)[0][str(c.members[2].config)]
    refetched = fetched(after)
    assert sum(sum(epoch.values()) for epoch in refetched) == third_share > 0, refetched
    assert set(refetched[2].values()) == {0}, refetched


def test_file_dataset_nodes_sample_their_own_files_every_epoch(data: Regions) -> None:
    # FileDataset with NodeSampler, three single-rank "nodes", each with its own cache.
    wds = [data.wd(f"files{n}") for n in range(3)]
    ds = [FileDataset([f"warpdrive://{r}/train" for r in REGIONS], wd=wd) for wd in wds]
    sizes = {
        ds[0].paths(i)["tar"]: wds[0].version(ds[0].paths(i)["tar"]).size for i in range(len(ds[0]))
    }
    for epoch in range(2):
        seen = []
        for n in range(3):
            sampler = NodeSampler(ds[n], seed=SEED, rank=n, world_size=3, num_nodes=3)
            sampler.set_epoch(epoch)
            seen += [
                s["__key__"]
                for b in DataLoader(ds[n], sampler=sampler, batch_size=4, collate_fn=list)
                for s in b
            ]
            wds[n].flush()
        assert sorted(seen) == sorted(ds[0].keys)
        fetched_now = [cache_counters(w.config).get("bytes_fetched", 0) for w in wds]
        if epoch == 0:
            first = fetched_now
            assert sum(first) == sum(sizes.values())
        else:
            assert fetched_now == first  # the second epoch fetched nothing on any node
    for wd in wds:
        wd.close()


def in_process(
    data: Regions, wd: WarpDrive, rank: int, world: int, nodes: int, **kw: Any
) -> ShardDataset:
    return ShardDataset(data.urls, wd=wd, seed=SEED, rank=rank, world_size=world, num_nodes=nodes, shuffle_buffer=8, **kw)  # fmt: skip


def take(ds: ShardDataset, n: int) -> list[str]:
    it = iter(ds)
    return [next(it)["__key__"] for _ in range(n)]


def test_resume_on_any_layout_again_and_again_in_process(data: Regions) -> None:
    wd = data.wd()
    # Three nodes of one rank consume 7 samples each of epoch 1...
    old = [in_process(data, wd, r, 3, 3) for r in range(3)]
    consumed: list[str] = []
    for ds in old:
        ds.set_epoch(1)
        consumed += take(ds, 7)
    states = [ds.state_dict() for ds in old]
    # ...two nodes of one rank resume from all three states and consume 5 each...
    middle = [in_process(data, wd, r, 2, 2) for r in range(2)]
    for ds in middle:
        ds.load_state_dict(states)
        assert ds.epoch == 1
        consumed += take(ds, 5)
    assert len(set(consumed)) == len(consumed) == 31
    again = [ds.state_dict() for ds in middle]
    # What the three had handed out of each rank's new shards, and what it handed out since.
    assert sum(len(Consumed(st["skipped"])) for st in again) == 21
    assert [len(Consumed(st["consumed"])) for st in again] == [5, 5]
    # ...and two nodes of two ranks with two DataLoader workers each read exactly the rest.
    rest: list[str] = []
    for r in range(4):
        loader = ResumableLoader(
            in_process(data, wd, r, 4, 2), batch_size=3, num_workers=2, collate_fn=list
        )
        loader.load_state_dict(again)
        rest += [s["__key__"] for batch in loader for s in batch]
    assert sorted(consumed + rest) == sorted(data.content)
    # The same layout as a checkpoint's rank resumes from that rank's state alone.
    same = in_process(data, wd, 1, 2, 2)
    same.load_state_dict(again[1])
    assert set(take(same, 3)) <= set(rest)
    with pytest.raises(
        ValueError, match=r"of rank\(s\) \[1\] of 2 on 2 node\(s\), this is rank 0 of 3"
    ):
        in_process(data, wd, 0, 3, 3).load_state_dict(again[1])
    with pytest.raises(ValueError, match=r"need the state of every rank|rank\(s\) \[0\] of 2"):
        in_process(data, wd, 0, 3, 3).load_state_dict(again[:1])
    with pytest.raises(ValueError, match="the checkpoint has seed=42, this dataset seed=0"):
        ShardDataset(data.urls, wd=wd).load_state_dict(again)


def test_epoch_size_keeps_equal_steps_across_a_change_of_layout(data: Regions) -> None:
    wd = data.wd()
    old = [in_process(data, wd, r, 3, 3, epoch_size=40) for r in range(3)]
    consumed = [k for ds in old for k in take(ds, 7)]
    states = [ds.state_dict() for ds in old]
    rest = []
    for r in range(2):
        ds = in_process(data, wd, r, 2, 2, epoch_size=40)
        ds.load_state_dict(states)
        mine = [s["__key__"] for s in ds]
        assert len(mine) == 40 - 7  # every rank finishes the epoch's 40 steps
        rest += mine
    # Unconsumed samples first: 21 + 66 of the 144 need no repeat.
    assert len(set(consumed + rest)) == len(consumed + rest) == 87


def test_forge_trains_under_torchrun_on_two_nodes(azurite: Server, tmp_path: Path) -> None:
    from forge.gen import generate

    names = {r: f"forge{r[-3:]}-{os.getpid()}" for r in REGIONS}
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string()
    generate([f"az://{c}/train" for c in names.values()], 8, 12, 32, log=lambda _: None)
    data = Regions(azurite, names, {}, tmp_path, 8)
    total = dataset_bytes_of(data, 8)
    with cluster(data, 2) as c:
        out = c.root / "forge"
        out.mkdir()
        # 2 nodes × 2 ranks, 24 images a rank an epoch: 6 steps of 8 are two epochs.
        c.torchrun(
            ["-m", "forge", "train", "--reader", "warpdrive", "--steps", "6", "--batch-size", "8",
             "--num-workers", "1", "--log-every", "3",
             "--train-root-a", f"warpdrive://{REGIONS[0]}/train",
             "--train-root-b", f"warpdrive://{REGIONS[1]}/train",
             "--json-out", str(out / "rank-{rank}.json")],
            out, rdzv="static",
        )  # fmt: skip
        runs = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(4)]
        assert [r["layout"]["node"] for r in runs] == [0, 0, 1, 1]
        assert all(r["summary"]["ranks"] == 4 and r["summary"]["steps"] == 6 for r in runs)
        # Two epochs, and each node fetched only its own shards, once: the dataset, once.
        by_node = []
        for node in c.members:
            wd = WarpDrive(parse_config(node.config.read_text()))
            by_node.append(cache_counters(wd.config).get("bytes_fetched", 0))
            wd.close()
    assert all(by_node) and sum(by_node) == total, (by_node, total)


def dataset_bytes_of(data: Regions, shards: int) -> int:
    wd = data.wd("sizes")
    try:
        return sum(
            wd.version(f"/{REGIONS[i % 2]}/train/shard-{i:06d}.tar").size for i in range(shards)
        )
    finally:
        wd.close()
