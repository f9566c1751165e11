"""One rank of a simulated cluster (:mod:`warpdrive.testing.cluster`), started by torchrun.

``python -m warpdrive.testing.cluster_rank SPEC`` where SPEC is JSON: ``urls``, ``seed``,
``epochs``, ``workers``, ``batch_size``, ``out`` and optionally ``reader`` ("warpdrive" or
"posix"), ``partition``, ``shuffle_buffer``, ``prefetch_shards``, ``epoch_size``, ``step_ms``
(a training step's time, slept per batch), ``drop_page_cache`` (after every epoch, as on
nodes whose data outgrows memory; needs root), ``stop`` ([epoch, batches]: checkpoint every rank's
state there and exit) and ``resume`` (a checkpoint file to continue from). The node's WarpDrive
config comes from ``WARPDRIVE_CONFIG``; with a mount, ``{mount}`` in a URL is its mount point
(``WARPDRIVE_MOUNT``) and its counters come from ``WARPDRIVE_METRICS_URL``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch.distributed as dist
from prometheus_client.parser import text_string_to_metric_families

from warpdrive.admin import cache_counters
from warpdrive.testing.cluster import sample_digest
from warpdrive_torch import ResumableLoader, ShardDataset
from warpdrive_torch.sources import CacheSource

MOUNT_COUNTERS = {
    "warpdrive_backend_bytes_read": "bytes_fetched",
    "warpdrive_cache_hit": "hits",
    "warpdrive_cache_miss": "misses",
}


def collate(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    tags = ("__key__", "__worker__", "__index__", "__url__", "__ordinal__")
    batch = {tag: [s[tag] for s in samples] for tag in tags}
    batch["digest"] = [sample_digest(s) for s in samples]
    return batch


def node_counters(ds: ShardDataset) -> dict[str, int]:
    """What this node's cache fetched and served so far (cumulative)."""
    url = os.environ.get("WARPDRIVE_METRICS_URL")
    if url:  # the mount's own counters
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        totals = dict.fromkeys(MOUNT_COUNTERS.values(), 0)
        for family in text_string_to_metric_families(text):
            if family.name in MOUNT_COUNTERS:
                total = sum(s.value for s in family.samples if s.name.endswith("_total"))
                totals[MOUNT_COUNTERS[family.name]] = int(total)
        return totals
    assert isinstance(ds.source, CacheSource)
    counters = cache_counters(ds.source.wd.config)  # every rank of the node has flushed
    return {name: int(counters.get(name, 0)) for name in MOUNT_COUNTERS.values()}


def main() -> int:
    spec = json.loads(sys.argv[1])
    out = Path(spec["out"])
    dist.init_process_group("gloo")
    mount = os.environ.get("WARPDRIVE_MOUNT", "")
    ds = ShardDataset(
        [url.replace("{mount}", mount) for url in spec["urls"]],
        reader=spec.get("reader", "warpdrive"),
        seed=spec["seed"],
        partition=spec.get("partition", "node"),
        shuffle_buffer=spec.get("shuffle_buffer", 16),
        prefetch_shards=spec.get("prefetch_shards", 2),
        epoch_size=spec.get("epoch_size"),
    )
    loader = ResumableLoader(
        ds, batch_size=spec["batch_size"], num_workers=spec["workers"], collate_fn=collate
    )
    local_lead = ds.layout.local_rank == 0
    start = node_counters(ds) if local_lead else None  # before a resume reads anything
    dist.barrier()  # and before any rank of the node reads: else its fetches precede ``start``
    first = 0
    if spec.get("resume"):
        loader.load_state_dict(json.loads(Path(spec["resume"]).read_text()))
        first = ds.epoch
    stop = spec.get("stop")
    for epoch in range(first, spec["epochs"]):
        resumed = bool(spec.get("resume")) and epoch == first
        if not resumed:
            loader.set_epoch(epoch)
        seen: list[list[Any]] = []
        began = time.perf_counter()
        batches = iter(loader)
        stopped = False
        for n, batch in enumerate(batches, 1):
            seen += [
                [k, d, ds.rank] for k, d in zip(batch["__key__"], batch["digest"], strict=True)
            ]
            if spec.get("step_ms"):
                time.sleep(spec["step_ms"] / 1000)
            if stop and stop == [epoch, n]:
                stopped = True
                break
        batches.close()  # DataLoader workers exit now: their counters reach the node's index
        gc.collect()
        if isinstance(ds.source, CacheSource):
            ds.source.wd.flush()  # and this process's own (a same-layout resume replays here)
        seconds = time.perf_counter() - began
        mine = {
            "node": ds.layout.node,
            "config": os.environ["WARPDRIVE_CONFIG"],
            "seconds": seconds,
        }
        if stopped:
            mine["state"] = loader.state_dict()
        ranks: list[Any] = [None] * ds.world_size
        dist.all_gather_object(ranks, (mine, seen))  # every rank has ended the epoch
        counters = node_counters(ds) if local_lead else None
        leads: list[Any] = [None] * ds.world_size
        dist.all_gather_object(leads, (ds.layout.node, counters, start))
        if ds.rank == 0:
            nodes: dict[int, dict[str, Any]] = {}
            for node, counted, at_start in leads:
                if counted is not None:
                    nodes[node] = {**counted, **{f"{k}_start": v for k, v in at_start.items()}}
            for info, _ in ranks:
                entry = nodes[info["node"]]
                entry["config"] = info["config"]
                entry["seconds"] = max(entry.get("seconds", 0.0), info["seconds"])
            record = {
                "epoch": epoch,
                "resumed": resumed,
                "partial": stopped,
                "nodes": nodes,
                "samples": [s for _, samples in ranks for s in samples],
            }
            (out / f"epoch-{epoch}.json").write_text(json.dumps(record))
            if stopped:
                states = [info["state"] for info, _ in ranks]
                (out / "state.json").write_text(json.dumps(states))
            if spec.get("drop_page_cache"):
                Path("/proc/sys/vm/drop_caches").write_text("1\n")
        if stopped:
            break
        dist.barrier()  # the next epoch starts on every node after rank 0's bookkeeping
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
