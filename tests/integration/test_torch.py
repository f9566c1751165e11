"""warpdrive_torch against real parts: two Azurite "regions" read through the cache, real
DataLoader worker processes, a real torch.distributed (gloo) group, a real FUSE mount, and
webdataset itself."""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import webdataset
from torch.utils.data import DataLoader

from tests.conftest import Store
from tests.shardgen import Fields, make_shard, sample_fields
from warpdrive import NotFoundError, WarpDrive, parse_config
from warpdrive.admin import cache_counters
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import AZURITE_KEY, Server, free_port, start_wan_proxy
from warpdrive_torch import (
    FileDataset,
    ResumableLoader,
    ShardDataset,
    ShardError,
    ignore_and_continue,
    warn_and_continue,
)

pytestmark = pytest.mark.integration

REGIONS = ("datasets-cac", "datasets-wus3")
SHARDS = 12
_containers = itertools.count()
PER_SHARD = 10


@dataclass
class Regions:
    """Two containers of one Azurite, each a backend ("region"): even shards in the first,
    odd in the second, as the demo splits them."""

    server: Server
    containers: dict[str, str]
    content: dict[str, Fields]  # sample key → fields
    tmp: Path
    shards: int

    def config_text(
        self, cache: Path, endpoint: str | None = None, mount_point: str = "/wd"
    ) -> str:
        blob = endpoint or self.server.blob_endpoint()
        backends = "".join(
            f"  - name: {name}\n    type: azureblob\n"
            f"    config: {{account: devstoreaccount1, container: {container}, endpoint: '{blob}'}}\n"
            "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
            for name, container in self.containers.items()
        )
        return (
            f"mount_point: {mount_point}\nmetrics: {{enabled: false}}\n"
            f"cache: {{path: {cache}, max_size: 256MB, block_size: 64KB, readahead_blocks: 2}}\n"
            "fetch: {initial_backoff: 10ms, max_backoff: 100ms, request_timeout: 10s}\n"
            f"backends:\n{backends}"
        )

    def wd(self, name: str = "cache", **kw: Any) -> WarpDrive:
        return WarpDrive(parse_config(self.config_text(self.tmp / name, **kw)))

    @property
    def urls(self) -> list[str]:
        """Both regions at once: a brace range with a step, and a glob."""
        return [
            f"warpdrive://{REGIONS[0]}/train/shard-{{000000..{self.shards - 1:06d}..2}}.tar",
            f"warpdrive://{REGIONS[1]}/train/shard-*.tar",
        ]


def upload_regions(server: Server, tmp: Path, shards: int, per_shard: int, tag: str) -> Regions:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(server.connection_string())
    n = next(_containers)
    containers = {region: f"{tag}{n}-{region}-{os.getpid()}" for region in REGIONS}
    clients = {region: client.create_container(c) for region, c in containers.items()}
    content: dict[str, Fields] = {}
    for i in range(shards):
        data, samples = make_shard(i, per_shard)
        clients[REGIONS[i % 2]].upload_blob(f"train/shard-{i:06d}.tar", data)
        content.update(samples)
    return Regions(server, containers, content, tmp, shards)


@pytest.fixture
def regions(azurite: Server, tmp_path: Path) -> Regions:
    return upload_regions(azurite, tmp_path, SHARDS, PER_SHARD, "t")


def check_exact(samples: list[dict[str, Any]], content: dict[str, Fields]) -> None:
    for sample in samples:
        expected = content[sample["__key__"]]
        assert {k: sample[k] for k in expected} == expected, sample["__key__"]


def keys_of(batches: list[Any]) -> list[str]:
    return [key for batch in batches for key in batch["__key__"]]


def test_every_sample_once_over_2_ranks_x_3_workers_x_2_epochs(regions: Regions) -> None:
    wd = regions.wd()
    orders = []
    for epoch in range(2):
        seen: list[str] = []
        for rank in range(2):
            ds = ShardDataset(regions.urls, wd=wd, rank=rank, world_size=2, seed=7)
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=4, num_workers=3, collate_fn=list)
            samples = [s for batch in loader for s in batch]
            check_exact(samples, regions.content)
            assert {s["__worker__"] for s in samples} == {0, 1, 2}
            seen += [s["__key__"] for s in samples]
        assert sorted(seen) == sorted(regions.content), f"epoch {epoch}"
        assert len(seen) == len(set(seen)) == SHARDS * PER_SHARD
        orders.append(seen)
    assert orders[0] != orders[1]


def test_orders_differ_by_seed_and_epoch_and_repeat_exactly(regions: Regions) -> None:
    wd = regions.wd()

    def order(seed: int, epoch: int) -> list[str]:
        ds = ShardDataset(regions.urls, wd=wd, seed=seed, shuffle_buffer=8)
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    base = order(1, 0)
    assert order(1, 0) == base
    assert sorted(base) == sorted(regions.content)
    others = [order(2, 0), order(1, 1)]
    assert all(o != base and sorted(o) == sorted(base) for o in others)
    # Shard order interleaves the regions; the buffer mixes samples across shards.
    unshuffled = [s["__key__"] for s in ShardDataset(regions.urls, wd=wd, shuffle=False)]
    assert unshuffled == [
        k
        for i in [*range(0, SHARDS, 2), *range(1, SHARDS, 2)]
        for k in sorted(regions.content)
        if k.startswith(f"{i:06d}")
    ]
    first_shards = {k[:6] for k in base[:PER_SHARD]}
    assert len(first_shards) > 1
    # Two patterns (regions): the epoch's shard order takes them in turn.
    ds = ShardDataset(regions.urls, wd=wd, seed=1)
    regions_in_order = [s.path.split("/")[1] for s in ds.shard_order()]
    assert regions_in_order == [REGIONS[0], REGIONS[1]] * (SHARDS // 2)


def test_resume_in_process_yields_exactly_the_rest(regions: Regions) -> None:
    wd = regions.wd()

    def make() -> ShardDataset:
        ds = ShardDataset(regions.urls, wd=wd, seed=3, shuffle_buffer=8)
        ds.set_epoch(1)
        return ds

    full = [s["__key__"] for s in make()]
    for n in (1, 23, 57, len(full) - 1):
        first = make()
        it = iter(first)
        head = [next(it)["__key__"] for _ in range(n)]
        state = json.loads(json.dumps(first.state_dict()))  # a checkpoint survives JSON
        resumed = make()
        resumed.set_epoch(0)  # the checkpoint's epoch wins
        resumed.load_state_dict(state)
        rest = list(resumed)
        check_exact(rest, regions.content)
        assert head + [s["__key__"] for s in rest] == full, f"after {n}"


def test_resume_with_dataloader_workers(regions: Regions) -> None:
    wd = regions.wd()

    def make() -> ResumableLoader:
        ds = ShardDataset(regions.urls, wd=wd, seed=5, shuffle_buffer=6)
        loader = ResumableLoader(ds, batch_size=4, num_workers=2)
        loader.set_epoch(2)
        return loader

    def by_worker(batches: list[Any]) -> dict[int, list[str]]:
        out = collections.defaultdict(list)
        for batch in batches:
            for worker, key in zip(batch["__worker__"].tolist(), batch["__key__"], strict=True):
                out[worker].append(key)
        return dict(out)

    full = list(make())
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(7)]
    state = first.state_dict()
    del it
    assert state["num_workers"] == 2 and sum(state["positions"].values()) == 7 * 4
    again = make()
    again.load_state_dict(state)
    rest = list(again)
    seen = keys_of(head) + keys_of(rest)
    assert sorted(seen) == sorted(regions.content) and len(seen) == len(set(seen))
    resumed = by_worker(head + rest)
    assert resumed == by_worker(full)  # each worker's stream continues where it stopped
    # ... and the workers' batches interleave as they did uninterrupted (7 batches: worker 1's
    # turn is next, not worker 0's).
    assert [b["__worker__"][0].item() for b in head + rest] == [
        b["__worker__"][0].item() for b in full
    ]
    assert keys_of(head + rest) == keys_of(full)
    assert again.state_dict()["positions"] == first_positions_at_end(full)
    wrong = ResumableLoader(ShardDataset(regions.urls, wd=wd, seed=5), batch_size=4, num_workers=3)
    with pytest.raises(ValueError, match="2 loader worker"):
        wrong.load_state_dict(state)
    with pytest.raises(ValueError, match=r"seed=5.*seed=6"):
        ShardDataset(regions.urls, wd=wd, seed=6).load_state_dict(state)


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_exactly(regions: Regions, workers: int) -> None:
    """torchdata's StatefulDataLoader, PyTorch's checkpointing loader, asks each worker's dataset
    for its state and restores the workers' turns itself."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    wd = regions.wd()

    def make(epoch: int = 1) -> tuple[ShardDataset, StatefulDataLoader]:
        ds = ShardDataset(regions.urls, wd=wd, seed=9, shuffle_buffer=6)
        ds.set_epoch(epoch)
        return ds, StatefulDataLoader(ds, batch_size=4, num_workers=workers, collate_fn=keys)

    def keys(batch: list[dict[str, Any]]) -> list[str]:
        return [s["__key__"] for s in batch]

    full = list(make()[1])
    next_epoch = list(make(2)[1])
    assert sorted(k for b in full for k in b) == sorted(regions.content)
    for n in (1, 6, len(full) - 1):
        _, first = make()
        it = iter(first)
        head = [next(it) for _ in range(n)]
        state = json.loads(json.dumps(first.state_dict()))  # a checkpoint survives JSON
        del it
        ds, again = make(epoch=0)  # the checkpoint's epoch wins
        again.load_state_dict(state)
        assert head + list(again) == full, f"after {n} batches"
        ds.set_epoch(2)  # and the run goes on as if never interrupted
        assert list(again) == next_epoch


def first_positions_at_end(batches: list[Any]) -> dict[str, int]:
    counts = collections.Counter(w for b in batches for w in b["__worker__"].tolist())
    return {str(w): n for w, n in sorted(counts.items())}


@pytest.mark.parametrize("epoch_size", [45, 70])
def test_epoch_size_gives_equal_steps_by_dropping_or_padding(
    regions: Regions, epoch_size: int
) -> None:
    wd = regions.wd()
    # 11 shards: the ranks hold 60 and 50 samples; each still yields epoch_size.
    urls = [f"warpdrive://{REGIONS[i % 2]}/train/shard-{i:06d}.tar" for i in range(11)]
    steps = []
    for rank in range(2):
        ds = ShardDataset(urls, wd=wd, rank=rank, world_size=2, epoch_size=epoch_size)
        assert len(ds) == epoch_size
        loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=list)
        batches = list(loader)
        keys = [s["__key__"] for b in batches for s in b]
        check_exact([s for b in batches for s in b], regions.content)
        assert len(keys) == epoch_size
        for worker in range(2):
            # Each worker yields its equal share: its own samples, cut short or repeated.
            shards = {s.path[-10:-4] for s in ds.shard_order()[rank::2][worker::2]}
            own = {k for k in regions.content if k[:6] in shards}
            got = [s["__key__"] for b in batches for s in b if s["__worker__"] == worker]
            assert len(got) == epoch_size // 2 + (worker < epoch_size % 2)
            assert set(got) <= own and len(set(got)) == min(len(got), len(own))
        steps.append(len(batches))
    assert steps[0] == steps[1]


def test_real_dataloader_with_decoders_over_azurite(azurite: Server, tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(
        azurite.connection_string()
    ).create_container(f"img{next(_containers)}-{os.getpid()}")
    content: dict[str, Fields] = {}
    for i in range(4):
        data, samples = make_shard(i, 6, jpeg=True)
        container.upload_blob(f"train/shard-{i:06d}.tar", data)
        content.update(samples)
    wd = WarpDrive(
        parse_config(
            f"cache: {{path: {tmp_path / 'c'}, max_size: 64MB, block_size: 64KB}}\nbackends:\n"
            f"  - name: img\n    type: azureblob\n"
            f"    config: {{account: devstoreaccount1, container: {container.container_name}, "
            f"endpoint: '{azurite.blob_endpoint()}'}}\n"
            "    auth: {method: account_key, account_key_env: WD_TEST_AZURE_KEY}\n"
        )
    )
    ds = ShardDataset("warpdrive://img/train/shard-{000000..000003}.tar", wd=wd, decode="torch")
    batches = list(DataLoader(ds, batch_size=8, num_workers=2))
    assert sum(len(b["__key__"]) for b in batches) == 24
    for batch in batches:
        assert batch["jpg"].dtype == torch.uint8 and tuple(batch["jpg"].shape[1:]) == (3, 12, 16)
        expected = [int(content[k]["cls"]) for k in batch["__key__"]]
        assert batch["cls"].tolist() == expected
    # The workers' reads went through the shared cache: all of it is there now.
    assert cache_counters(wd.config).get("misses", 0) > 0
    before = cache_counters(wd.config).get("misses", 0)
    list(DataLoader(ds, batch_size=8, num_workers=2))
    assert cache_counters(wd.config).get("misses", 0) == before  # warm epoch: no misses at all


def test_prefetch_hints_cut_demand_misses_in_a_cold_epoch(azurite: Server, tmp_path: Path) -> None:
    regions = upload_regions(azurite, tmp_path, shards=10, per_shard=40, tag="h")
    proxy = start_wan_proxy(azurite.port, rtt="20ms", bandwidth="200mbit")
    try:
        endpoint = f"http://127.0.0.1:{proxy.port}/devstoreaccount1"
        results = {}
        for k in (0, 3):
            wd = regions.wd(f"cache-{k}", endpoint=endpoint)
            ds = ShardDataset(regions.urls, wd=wd, seed=11, prefetch_shards=k, shuffle_buffer=4)
            for _ in ds:
                time.sleep(0.004)  # a training step: what gives a hint time to land
            results[k] = cache_counters(wd.config)
            wd.close()
    finally:
        proxy.stop()
    without, with_hints = results[0], results[3]
    assert with_hints.get("hint_hits", 0) > 0 and without.get("hint_hits", 0) == 0
    assert with_hints["misses"] < without["misses"] / 2, (without, with_hints)


def test_webdataset_stage_hints_the_next_shards_as_each_opens(regions: Regions) -> None:
    from warpdrive_torch import register_webdataset
    from warpdrive_torch.wds import hint_shards

    wd = regions.wd()
    register_webdataset(wd)
    urls = [f"warpdrive://{REGIONS[i % 2]}/train/shard-{i:06d}.tar" for i in range(6)]
    sizes = [wd.version(u.removeprefix("warpdrive:/")).size for u in urls]

    def cached_becomes(expected: int) -> None:
        deadline = time.monotonic() + 30
        while wd.usage().bytes < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wd.usage().bytes == expected

    stream = hint_shards(2)(iter([{"url": u} for u in urls]))
    assert next(stream)["url"] == urls[0]  # about to be opened: 1 and 2 are hinted, 0 is not
    cached_becomes(sizes[1] + sizes[2])
    assert next(stream)["url"] == urls[1]
    cached_becomes(sizes[1] + sizes[2] + sizes[3])
    assert [i["url"] for i in stream] == urls[2:]
    cached_becomes(sum(sizes[1:]))
    with pytest.raises(ValueError, match="ahead must be at least 1, got 0"):
        hint_shards(0)


@pytest.mark.parametrize(
    "loader", ["shard_dataset", "shard_dataset_no_hints", "webdataset", "webdataset_hints"]
)
def test_workers_of_a_cold_epoch_fetch_every_byte_once(regions: Regions, loader: str) -> None:
    # The workers' WarpDrives share the cache but not their fetchers: a directory-scan
    # prefetch in one fetched the shards dealt to the others again (~11% more bytes).
    wd = regions.wd()
    urls = [f"warpdrive://{REGIONS[i % 2]}/train/shard-{i:06d}.tar" for i in range(regions.shards)]
    if loader.startswith("webdataset"):
        from warpdrive_torch import register_webdataset, wds

        register_webdataset(wd)
        split = wds.split_by_worker if loader == "webdataset_hints" else webdataset.split_by_worker
        ds: Any = webdataset.WebDataset(
            urls, shardshuffle=False, nodesplitter=None, workersplitter=split
        )
    else:
        hints = 0 if loader == "shard_dataset_no_hints" else 2
        ds = ShardDataset(regions.urls, wd=wd, seed=5, prefetch_shards=hints, shuffle_buffer=4)
    keys = [s["__key__"] for s in DataLoader(ds, batch_size=None, num_workers=3)]
    assert sorted(keys) == sorted(regions.content)
    source = sum(wd.version(u.removeprefix("warpdrive:/")).size for u in urls)
    counters = cache_counters(wd.config)
    assert wd.usage().bytes == source
    assert counters["bytes_fetched"] == source, counters


def test_damaged_shards_raise_or_are_skipped_by_the_handler(
    azure_store: Store, tmp_path: Path
) -> None:
    content: dict[str, Fields] = {}
    for i in range(4):
        data, samples = make_shard(i, 5)
        if i == 1:  # a flipped byte in the header of its fourth sample: the third, then in
            at = data.index(b"0000010003.jpg")  # progress, may be incomplete and goes too
            data = data[:at] + b"#" + data[at + 1 :]
            samples = {k: v for k, v in samples.items() if k < "0000010002"}
        if i == 2:  # cut in the middle of its third sample's image
            at = data.index(b"0000020002.jpg") + 600
            data = data[:at]
            samples = {k: v for k, v in samples.items() if k < "0000020002"}
        azure_store.put(f"train/shard-{i:06d}.tar", data)
        content.update(samples)
    urls = f"warpdrive://{azure_store.name}/train/shard-{{000000..000003}}.tar"
    wd = azure_store.reader()
    with pytest.raises(
        ShardError,
        match=r"shard-000001\.tar at offset \d+: bad tar header checksum \(after member '0000010002\.cls'\)",
    ):
        list(ShardDataset(urls, wd=wd, shuffle=False))
    with pytest.raises(ShardError, match=r"shard-000002\.tar: member '0000020002\.jpg'.*truncated"):
        list(ShardDataset([urls.replace("{000000..000003}", "00000{0,2}")], wd=wd, shuffle=False))
    with pytest.warns(UserWarning, match="skipped"):
        samples = list(ShardDataset(urls, wd=wd, handler=warn_and_continue))
    check_exact(samples, content)
    assert sorted(s["__key__"] for s in samples) == sorted(content), set(content) ^ {
        s["__key__"] for s in samples
    }
    assert wd.metrics.totals()["loader_skipped"] == 2
    # A sample that fails to decode is skipped alone.
    bad = {"0000090000": {"jpg": b"not a jpeg", "cls": b"1"}}
    azure_store.put("train/bad.tar", tar_bytes(bad))
    with pytest.raises(ShardError, match=r"bad\.tar: sample '0000090000'"):
        list(ShardDataset(f"warpdrive://{azure_store.name}/train/bad.tar", wd=wd, decode="pil"))
    quiet = ShardDataset(
        f"/{azure_store.name}/train/bad.tar", wd=wd, decode="pil", handler=ignore_and_continue
    )
    assert list(quiet) == []
    assert wd.metrics.totals()["loader_skipped"] == 3
    missing = f"warpdrive://{azure_store.name}/train/shard-000009.tar"
    with pytest.raises(NotFoundError, match=re.escape(f"{missing}: shard not found")):
        list(ShardDataset(missing, wd=wd))
    with pytest.raises(NotFoundError, match=r"nothing-\*\.tar: no shard matches"):
        ShardDataset(f"warpdrive://{azure_store.name}/train/nothing-*.tar", wd=wd)


def test_urls_name_backends_whose_mount_paths_differ(regions: Regions) -> None:
    """``warpdrive://datasets-cac/…`` is backend datasets-cac, mounted at /cac here: ShardDataset,
    its globs (over backend names too) and webdataset's workers read it; the mount path is an
    absolute path; an unknown name is one line naming the backends and their mount paths."""
    text = regions.config_text(regions.tmp / "moved")
    for region in REGIONS:
        short = region.split("-")[1]
        text = text.replace(
            f"  - name: {region}\n", f"  - name: {region}\n    mount_path: /{short}\n"
        )
    wd = WarpDrive(parse_config(text))
    samples = list(ShardDataset(regions.urls, wd=wd, shuffle=False))
    check_exact(samples, regions.content)
    assert sorted(s["__key__"] for s in samples) == sorted(regions.content)
    assert samples[0]["__url__"] == f"warpdrive://{REGIONS[0]}/train/shard-000000.tar"
    both = ShardDataset("warpdrive://datasets-*/train/shard-00000[01].tar", wd=wd, shuffle=False)
    assert sorted({s["__url__"] for s in both}) == [
        f"warpdrive://{REGIONS[0]}/train/shard-000000.tar",
        f"warpdrive://{REGIONS[1]}/train/shard-000001.tar",
    ]
    by_path = ShardDataset("/wd/wus3/train/shard-000001.tar", wd=wd, shuffle=False)
    assert [s["__key__"] for s in by_path] == [s["__key__"] for s in both][PER_SHARD:]
    with pytest.raises(
        NotFoundError, match=r"no backend named 'cac' \(backends: datasets-cac \(at /cac\)"
    ):
        ShardDataset("warpdrive://cac/train/shard-*.tar", wd=wd)

    from warpdrive_torch import register_webdataset

    register_webdataset(wd.config)
    url = f"warpdrive://{REGIONS[1]}/train/shard-000001.tar"
    loader = DataLoader(webdataset.WebDataset(url, shardshuffle=False), num_workers=1)
    assert [s["__key__"][0] for s in loader] == [s["__key__"] for s in by_path]
    # In a worker: torch prints the worker's traceback; ours adds one frame and one line.
    bad = DataLoader(
        webdataset.WebDataset("warpdrive://wus3/train/x.tar", shardshuffle=False), num_workers=1
    )
    with pytest.raises(NotFoundError) as err:
        list(bad)
    shown = str(err.value)
    assert shown.splitlines()[-1].endswith(
        "'warpdrive://wus3/train/x.tar': no backend named 'wus3' (backends: datasets-cac (at "
        "/cac), datasets-wus3 (at /wus3); warpdrive://NAME/… names a backend, a mount path is "
        "an absolute path)"
    )
    assert "warpdrive/read/reader.py" not in shown and "warpdrive/read/namespace.py" not in shown


def tar_bytes(content: dict[str, Fields]) -> bytes:
    from tests.shardgen import tar_of

    return tar_of(content)


def test_webdataset_and_the_fuse_mount_read_the_same_samples(regions: Regions) -> None:
    point = regions.tmp / "wd"
    config = regions.tmp / "config.yaml"
    config.write_text(regions.config_text(regions.tmp / "mcache", mount_point=str(point)))
    shards = [f"{REGIONS[i % 2]}/train/shard-{i:06d}.tar" for i in range(4)]

    def fields(samples: Iterator[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
        return [(s["__key__"], s["jpg"], s["cls"]) for s in samples]

    expected = [
        (k, f["jpg"], f["cls"])
        for i in range(4)
        for k, f in sorted(regions.content.items())
        if k.startswith(f"{i:06d}")
    ]
    wd = regions.wd()
    ours = ShardDataset([f"warpdrive://{s}" for s in shards], wd=wd, shuffle=False)
    assert fields(iter(ours)) == expected
    # webdataset opening warpdrive:// URLs through the cache (the opener importing us registered).
    from warpdrive_torch import register_webdataset

    register_webdataset(wd)
    via_wds = webdataset.WebDataset([f"warpdrive://{s}" for s in shards], shardshuffle=False)
    assert fields(iter(via_wds)) == expected
    mount = start_mount(config, point, 0)
    try:
        under_mount = [str(point / s) for s in shards]
        assert fields(iter(webdataset.WebDataset(under_mount, shardshuffle=False))) == expected
        # The same mount paths given to ShardDataset are read in-process, not through FUSE.
        in_process = ShardDataset(under_mount, wd=WarpDrive(config), shuffle=False)
        samples = list(in_process)
        assert fields(iter(samples)) == expected
        assert samples[0]["__url__"] == under_mount[0]
        # Plain files under the mount (reader="posix"): the same samples in the same order.
        through_fuse = ShardDataset(under_mount, reader="posix", seed=4)
        in_cache = ShardDataset([f"warpdrive://{s}" for s in shards], wd=wd, seed=4)
        assert fields(iter(through_fuse)) == fields(iter(in_cache))
        globbed = ShardDataset(
            f"{point}/datasets-*/train/shard-00000[0-3].tar", wd=WarpDrive(config), shuffle=False
        )
        assert [s.url for s in globbed.shards] == sorted(
            under_mount, key=lambda u: (u.split("/")[-3], u)
        )
    finally:
        mount.cleanup()


def test_file_dataset_random_access_through_the_cache(azure_store: Store) -> None:
    files: dict[str, bytes] = {}
    for cls in ("cat", "dog"):
        for i in range(5):
            fields = sample_fields(f"{cls}{i}")
            files[f"images/{cls}/{i:04d}.jpg"] = fields["jpg"]
            files[f"images/{cls}/{i:04d}.json"] = json.dumps({"i": i}).encode()
    files["images/README"] = b"no extension: not a sample"
    for key, data in files.items():
        azure_store.put(key, data)
    wd = azure_store.reader()
    ds = FileDataset(f"warpdrive://{azure_store.name}/images", wd=wd, labels=True)
    assert len(ds) == 10 and ds.classes == ["cat", "dog"]
    base = f"/{azure_store.name}/images"
    for index in (7, 0, 9, 3):  # random access
        sample = ds[index]
        cls, stem = sample["__key__"].removeprefix(base + "/").split("/")
        assert sample["jpg"] == files[f"images/{cls}/{stem}.jpg"]
        assert sample["json"] == files[f"images/{cls}/{stem}.json"]
        assert sample["cls"] == ds.classes.index(cls)
    wd.flush()
    before = cache_counters(wd.config).get("bytes_fetched", 0)
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, collate_fn=list)
    got = {s["__key__"]: s["jpg"] for batch in loader for s in batch}
    # The workers fetched the samples not read above, and their counters reached the shared
    # index as they exited (nothing closes a worker's WarpDrive).
    read_above = {ds[i]["__key__"].removeprefix(base + "/") for i in (7, 0, 9, 3)}
    cold = sum(
        len(data)
        for key, data in files.items()
        if key != "images/README" and key[7:].rpartition(".")[0] not in read_above
    )
    assert cache_counters(wd.config)["bytes_fetched"] - before == cold
    assert got == {
        f"{base}/{k.split('/')[1]}/{k.split('/')[2][:4]}": v
        for k, v in files.items()
        if k.endswith(".jpg")
    }
    only_json = FileDataset(f"/{azure_store.name}/images/*/000[0-1].json", wd=wd, decode="pil")
    assert [s["json"] for s in (only_json[i] for i in range(len(only_json)))] == [
        {"i": 0},
        {"i": 1},
    ] * 2
    with pytest.raises(NotFoundError, match="nowhere"):
        FileDataset(f"/{azure_store.name}/nowhere", wd=wd)


DIST_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from torch.utils.data import DataLoader
from warpdrive_torch import NodeSampler, ShardDataset
rank, world, port, config, urls, out = sys.argv[1:7]
os.environ["WORLD_SIZE"] = world  # as Lightning's launcher: a world size, no RANK
# Made before the process group exists (a DataModule's __init__): no rank is fixed here ...
ds = ShardDataset(json.loads(urls), wd=config, seed=1)
sampler = NodeSampler(range(10), seed=1)
try:
    next(iter(ds))
    early = ""
except ValueError as exc:  # ... and reading before it exists is refused
    early = str(exc)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=int(rank), world_size=int(world))
# Spawned workers get the layout resolved as the loader starts them.
loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
keys = [s["__key__"] for s in loader]
gathered = [None] * int(world)
dist.all_gather_object(gathered, [keys, list(sampler), early])
if int(rank) == 0:
    json.dump({"ranks": [ds.rank, ds.world_size], "gathered": gathered}, open(out, "w"))
dist.destroy_process_group()
"""


def test_rank_comes_from_torch_distributed(regions: Regions) -> None:
    config = regions.tmp / "dist.yaml"
    config.write_text(regions.config_text(regions.tmp / "dcache"))
    out = regions.tmp / "gathered.json"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["WD_TEST_AZURE_KEY"] = AZURITE_KEY
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DIST_SCRIPT,
                str(r),
                "2",
                str(port),
                str(config),
                json.dumps(regions.urls),
                str(out),
            ],
            env=env,
        )
        for r in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    result = json.loads(out.read_text())
    assert result["ranks"] == [0, 2]
    per_rank = [keys for keys, _, _ in result["gathered"]]
    assert len(per_rank[0]) == len(per_rank[1]) == SHARDS * PER_SHARD // 2
    assert sorted(per_rank[0] + per_rank[1]) == sorted(regions.content)
    indices = [sampled for _, sampled, _ in result["gathered"]]
    assert len(indices[0]) == len(indices[1]) == 5
    assert sorted(indices[0] + indices[1]) == list(range(10))
    for _, _, early in result["gathered"]:
        assert "WORLD_SIZE=2 but this process has no rank" in early


LIGHTNING_SCRIPT = """
import json, sys
import lightning as L, torch
from lightning.pytorch.callbacks import ModelCheckpoint
from warpdrive_torch import ShardDataset
from warpdrive_torch.lightning import WarpDriveCallback
from warpdrive.admin import cache_counters

built, config, urls, out, ckpt_dir, resume, stateful = sys.argv[1:8]

def make():
    # With a length (epoch_size) Lightning does not read a batch ahead to find the epoch's end,
    # a batch a mid-epoch checkpoint would count as consumed.
    size = 60 if stateful else None
    return ShardDataset(json.loads(urls), wd=config, seed=11, shuffle_buffer=4, epoch_size=size)

def keys(batch):
    return [s["__key__"] for s in batch]

class Data(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        # "early": made before fit, before Lightning has set any rank or process group.
        self.ds = make() if built == "early" else None

    def train_dataloader(self):
        if stateful:  # Lightning saves and restores its state in mid-epoch checkpoints
            from torchdata.stateful_dataloader import StatefulDataLoader as DataLoader
        else:
            from torch.utils.data import DataLoader
        return DataLoader(self.ds or make(), batch_size=5, num_workers=2, collate_fn=keys)

class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = {}

    def training_step(self, batch, i):
        self.seen.setdefault(self.current_epoch, []).extend(batch)
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        with open(f"{out}.{self.global_rank}", "w") as f:
            json.dump(self.seen, f)

trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    callbacks=[
        WarpDriveCallback(),
        ModelCheckpoint(dirpath=ckpt_dir, filename="end-{epoch}", save_top_k=-1),
        ModelCheckpoint(
            dirpath=ckpt_dir, filename="mid-{epoch}-{step}", save_top_k=-1, every_n_train_steps=5
        ),
    ],
)
trainer.fit(Model(), datamodule=Data(), ckpt_path=resume or None)
"""


def run_lightning(
    regions: Regions, built: str, name: str, resume: Path | None = None, stateful: bool = False
) -> tuple[list[dict[str, list[str]]], Path]:
    """A 2-process Lightning DDP fit of 2 epochs (CPU, gloo); each rank's keys by epoch."""
    tmp = regions.tmp / name
    tmp.mkdir()
    config = tmp / "wd.yaml"
    config.write_text(regions.config_text(regions.tmp / "lcache"))
    script = tmp / "fit.py"
    script.write_text(LIGHTNING_SCRIPT)
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_PORT", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["WD_TEST_AZURE_KEY"] = AZURITE_KEY
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    args = [built, str(config), json.dumps(regions.urls), str(tmp / "seen"), str(tmp / "ckpt")]
    proc = subprocess.run(
        [sys.executable, str(script), *args, str(resume or ""), "1" if stateful else ""],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp / f"seen.{rank}").read_text()) for rank in range(2)]
    return seen, tmp / "ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("built", ["early", "late"])
def test_lightning_ddp_reads_each_sample_once_per_epoch(regions: Regions, built: str) -> None:
    """Lightning's launcher sets WORLD_SIZE but not RANK: a dataset made in a DataModule's
    __init__ must still find its rank (when iteration starts), and epochs must differ."""
    seen, checkpoints = run_lightning(regions, built, built)
    for epoch in ("0", "1"):
        both = seen[0][epoch] + seen[1][epoch]
        assert sorted(both) == sorted(regions.content), f"epoch {epoch}"
    for rank in range(2):
        assert seen[rank]["0"] != seen[rank]["1"], f"rank {rank}: epoch 1 repeats epoch 0"
    if built == "late":
        return
    # Resumed from the checkpoint of epoch 0, the run reads epoch 1 as it did uninterrupted
    # (Lightning starts that loader before any epoch hook runs).
    first = checkpoints / "end-epoch=0.ckpt"
    resumed, _ = run_lightning(regions, built, "resumed", resume=first)
    assert [r["1"] for r in resumed] == [r["1"] for r in seen]


@pytest.mark.slow
def test_lightning_resumes_mid_epoch_with_a_stateful_dataloader(regions: Regions) -> None:
    """With torchdata's StatefulDataLoader, Lightning keeps the loader's state in its
    checkpoints: a run resumed from step 5 of epoch 0 reads exactly the rest of that epoch."""
    seen, checkpoints = run_lightning(regions, "early", "whole", stateful=True)
    step5 = checkpoints / "mid-epoch=0-step=5.ckpt"
    resumed, _ = run_lightning(regions, "early", "resumed", resume=step5, stateful=True)
    for rank in range(2):
        assert resumed[rank]["0"] == seen[rank]["0"][5 * 5 :], f"rank {rank}"
        assert resumed[rank]["1"] == seen[rank]["1"]
