#!/usr/bin/env python3
"""Many nodes, one dataset: a simulated cluster reading epochs through one cache per node.

``--nodes`` "nodes" (each its own cache directory and config, optionally its own FUSE mount)
each start ``--ranks`` ranks with torchrun (gloo on 127.0.0.1); every rank reads ``--epochs``
epochs of a ShardDataset through a ResumableLoader with ``--workers`` DataLoader workers. The
shards lie in two Azurite "regions" (even shards in one, odd in the other) behind the
user-space WAN emulator (default 30 ms / 200 Mbit/s and 60 ms / 150 Mbit/s, the demo's links).

The same run, in one process and on the same data, for ``partition="node"`` (each node the
same shards every epoch) and ``partition="global"`` (a new share each epoch): per node and
epoch, the bytes its cache fetched, its hit ratio (block reads served from its cache over all
block reads; blocks a hint or readahead brought in before the read count as hits) and the
slowest of its ranks' epoch time; then the bytes fetched over all epochs
as a multiple of the dataset. Then elasticity: a checkpoint taken in the middle of epoch 1 on
``--nodes`` nodes is resumed on one node fewer (node-aware mode), and the bytes fetched again
are reported; and the reuse the partitioning allows when the node count changes (the share of
each new node's shards that it had before), computed for several changes.

Prints tables and writes bench/out/cluster.json.
Run: ``python bench/cluster.py [--nodes 4] [--ranks 2] [--workers 1] [--epochs 3]
[--shards 32] [--shard-mb 4] [--mounts] [--rtt-a 30ms --bw-a 200mbit --rtt-b 60ms --bw-b 150mbit]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import print_table, write_json
from bench.torch_loader import make_shard
from warpdrive.partition import node_sets
from warpdrive.testing.cluster import Cluster, EpochReport, fetched
from warpdrive.testing.servers import AZURITE_KEY, start_azurite, start_wan_proxy

REGIONS = ("region-a", "region-b")
MB = 1e6


def node_config(endpoints: dict[str, str], cache: Path, point: Path, port: int) -> str:
    backends = "".join(
        f"  - name: {region}\n    type: azureblob\n"
        f"    config: {{account: devstoreaccount1, container: {region}, endpoint: '{url}'}}\n"
        "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
        for region, url in endpoints.items()
    )
    metrics = f"{{addr: '127.0.0.1:{port}'}}" if port else "{enabled: false}"
    return (
        f"mount_point: {point}\nmetrics: {metrics}\n"
        f"cache: {{path: {cache}, max_size: 8GB, block_size: 4MB, scan_prefetch: false}}\n"
        f"backends:\n{backends}"
    )


def upload(az: Any, shards: int, samples: int, kb: int) -> int:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(az.connection_string())
    containers = {r: service.create_container(r) for r in REGIONS}
    total = 0
    for i in range(shards):
        data = make_shard(i, samples, kb)
        containers[REGIONS[i % 2]].upload_blob(f"train/shard-{i:06d}.tar", data)
        total += len(data)
    return total


def per_node_rows(mode: str, reports: list[EpochReport], configs: list[str]) -> list[list[str]]:
    got, hits, misses = fetched(reports), fetched(reports, "hits"), fetched(reports, "misses")
    rows = []
    for e, report in enumerate(reports):
        seconds = {n["config"]: n["seconds"] for n in report.nodes.values()}
        for i, config in enumerate(configs):
            served = hits[e][config] + misses[e][config]
            ratio = hits[e][config] / served if served else float("nan")
            rows.append(
                [mode, str(report.epoch + 1), str(i), f"{got[e][config] / MB:,.1f}",
                 f"{ratio:.3f}", f"{seconds[config]:.2f}"]
            )  # fmt: skip
    return rows


def summary(reports: list[EpochReport], total: int) -> dict[str, Any]:
    got, hits, misses = fetched(reports), fetched(reports, "hits"), fetched(reports, "misses")
    later = [
        hits[e][c] / (hits[e][c] + misses[e][c])
        for e in range(1, len(reports))
        for c in got[e]
        if hits[e][c] + misses[e][c]
    ]
    return {
        "fetched_over_dataset": sum(sum(epoch.values()) for epoch in got) / total,
        "epoch1_fetched_over_dataset": sum(got[0].values()) / total,
        "min_hit_ratio_from_epoch_2": min(later) if later else float("nan"),
        "epoch_seconds": [max(n["seconds"] for n in r.nodes.values()) for r in reports],
    }


def reuse_table(counts: list[tuple[int, int]], shards: int) -> list[list[str]]:
    """For P → P' nodes: the share of the new nodes' shards that the same node index had."""
    rows = []
    for before, after in counts:
        old, new = node_sets(shards, before), node_sets(shards, after)
        kept = sum(len(set(new[p]) & set(old[p])) for p in range(min(before, after)))
        best = sum(min(len(new[p]), len(old[p])) for p in range(min(before, after)))
        rows.append([f"{before} -> {after}", f"{kept / shards:.3f}", f"{best / shards:.3f}"])
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--ranks", type=int, default=2, help="ranks per node")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--shards", type=int, default=32)
    p.add_argument("--shard-mb", type=float, default=4.0, help="shard size (11 for shard-sized)")
    p.add_argument(
        "--mounts",
        action="store_true",
        help="read through each node's FUSE mount (the page cache is dropped after each epoch, "
        "else later epochs never reach the mounts)",
    )
    p.add_argument("--rtt-a", default="30ms")
    p.add_argument("--bw-a", default="200mbit")
    p.add_argument("--rtt-b", default="60ms")
    p.add_argument("--bw-b", default="150mbit")
    p.add_argument("--json", default="bench/out/cluster.json")
    args = p.parse_args()
    samples, kb = 40, max(1, int(args.shard_mb * 1000 / 40))
    os.environ["WD_BENCH_KEY"] = AZURITE_KEY
    az = start_azurite()
    proxies = [
        start_wan_proxy(az.port, args.rtt_a, args.bw_a),
        start_wan_proxy(az.port, args.rtt_b, args.bw_b),
    ]
    results: dict[str, Any] = {}
    try:
        total = upload(az, args.shards, samples, kb)
        endpoints = {
            region: f"http://127.0.0.1:{proxy.port}/devstoreaccount1"
            for region, proxy in zip(REGIONS, proxies, strict=True)
        }
        if args.mounts:
            urls = [f"{{mount}}/{r}/train/shard-*.tar" for r in REGIONS]
        else:
            urls = [f"warpdrive://{r}/train/shard-*.tar" for r in REGIONS]
        spec = {"urls": urls, "seed": 42, "epochs": args.epochs, "workers": args.workers,
                "batch_size": 16, "shuffle_buffer": 64, "prefetch_shards": 2,
                "reader": "posix" if args.mounts else "warpdrive",
                "drop_page_cache": args.mounts}  # fmt: skip
        print(
            f"{args.shards} shards, {total / MB:,.1f} MB in two regions "
            f"({args.rtt_a}/{args.bw_a}, {args.rtt_b}/{args.bw_b}); {args.nodes} nodes × "
            f"{args.ranks} ranks × {args.workers} workers, {args.epochs} epochs, "
            f"{'through each node' + chr(39) + 's mount' if args.mounts else 'in-process'}\n"
        )
        rows: list[list[str]] = []
        with tempfile.TemporaryDirectory(prefix="wd-cluster-") as tmp:
            for mode in ("node", "global"):
                with Cluster(
                    Path(tmp) / mode,
                    args.nodes,
                    lambda c, pt, port: node_config(endpoints, c, pt, port),
                    mounts=args.mounts,
                ) as cluster:
                    reports = cluster.train(
                        {**spec, "partition": mode}, ranks_per_node=args.ranks, rdzv="static"
                    )
                    configs = [str(n.config) for n in cluster.members]
                rows += per_node_rows(mode, reports, configs)
                results[mode] = summary(reports, total)
            print_table(rows, ("mode", "epoch", "node", "fetched MB", "hit ratio", "epoch s"))
            print()
            print_table(
                [
                    (m, f"{results[m]['fetched_over_dataset']:.2f}x",
                     f"{results[m]['min_hit_ratio_from_epoch_2']:.3f}",
                     " / ".join(f"{s:.1f}" for s in results[m]["epoch_seconds"]))
                    for m in ("node", "global")
                ],
                ("mode", "fetched / dataset (all epochs)", "min hit ratio, epoch >= 2", "epoch s"),
            )  # fmt: skip
            # Elasticity: checkpoint in epoch 1 (second epoch) on N nodes, resume on N - 1.
            if args.nodes > 1:
                with Cluster(
                    Path(tmp) / "elastic",
                    args.nodes,
                    lambda c, pt, port: node_config(endpoints, c, pt, port),
                ) as cluster:
                    elastic = {**spec, "reader": "warpdrive", "epochs": 3, "partition": "node",
                               "drop_page_cache": False}  # fmt: skip
                    elastic["urls"] = [f"warpdrive://{r}/train/shard-*.tar" for r in REGIONS]
                    steps = max(1, args.shards * samples // (args.nodes * args.ranks * 16) // 2)
                    first = cluster.train(
                        {**elastic, "stop": [1, steps]}, ranks_per_node=args.ranks, rdzv="static"
                    )
                    after = cluster.train(
                        {**elastic, "resume": str(cluster.checkpoint())},
                        nodes=cluster.members[:-1],
                        ranks_per_node=args.ranks,
                        rdzv="static",
                    )
                again = [sum(e.values()) for e in fetched(after)]
                lost = fetched(first)[0][str(cluster.members[-1].config)]
                results["elastic"] = {
                    "from_nodes": args.nodes,
                    "to_nodes": args.nodes - 1,
                    "checkpoint_batches_per_rank": steps,
                    "refetched_over_dataset": sum(again) / total,
                    "refetched_per_epoch_mb": [x / MB for x in again],
                    "removed_node_share_over_dataset": lost / total,
                }
                print(
                    f"\nelastic: {args.nodes} -> {args.nodes - 1} nodes, resumed mid epoch 2 "
                    f"({steps} batches a rank): re-fetched {sum(again) / MB:,.1f} MB = "
                    f"{sum(again) / total:.3f}x the dataset (the removed node's share: "
                    f"{lost / total:.3f}x); epoch 3 fetched {again[-1] / MB:,.1f} MB"
                )
        changes = [(4, 2), (4, 3), (3, 2), (2, 4), (8, 6), (3, 4)]
        reuse = reuse_table(changes, args.shards)
        print("\nreuse when the node count changes (share of the dataset a node already had):")
        print_table(reuse, ("nodes", "kept", "most a balanced layout can keep"))
        results["reuse"] = {r[0]: float(r[1]) for r in reuse}
        results["dataset_bytes"] = total
    finally:
        for proxy in proxies:
            proxy.stop()
        az.stop()
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
