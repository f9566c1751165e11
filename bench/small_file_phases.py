#!/usr/bin/env python3
"""Where a warm small file's time goes through the mount: each system call of reading it
(``stat``, ``open``, ``read``, ``close``) timed on the mount and on local files, beside the
mount's own handler time per FUSE request (from /metrics): what is left is the FUSE round trip
itself (the kernel, two process wake-ups, the reply), which no handler can make cheaper.

``--files`` files of ~``--kb`` KB behind a local backend (no emulated WAN: every pass is warm),
read once to fill the cache, then, after ``stale_ttl`` (2 s) has passed, read in name order by
one reader with the page cache dropped (``/proc/sys/vm/drop_caches``, which drops the kernel's
dentries too: every file is looked up again) and hot, mount and local files alternating, the
better of ``--runs`` passes each. Needs root. Prints a table and writes
bench/out/small_file_phases.json. Run: ``python bench/small_file_phases.py [--files 1000]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import drop_caches, mount_config
from bench.report import print_table, write_json
from warpdrive.testing.mounts import Mount, start_mount

PHASES = ("stat", "open", "read", "close")
OPS = ("lookup", "open", "release")  # the requests a warm passthrough file makes
HANDLER = "warpdrive_fuse_operation_duration_seconds"


def one_pass(paths: list[str], drop: bool) -> tuple[float, dict[str, float]]:
    """(files/s, mean µs per phase) of reading every file once, in order."""
    if drop:
        drop_caches()
    spent = dict.fromkeys(PHASES, 0.0)
    clock = time.perf_counter
    started = clock()
    for path in paths:
        t0 = clock()
        os.stat(path)
        t1 = clock()
        fd = os.open(path, os.O_RDONLY)
        t2 = clock()
        while os.read(fd, 1 << 20):
            pass
        t3 = clock()
        os.close(fd)
        t4 = clock()
        for phase, took in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[phase] += took
    rate = len(paths) / (clock() - started)
    return rate, {k: v / len(paths) * 1e6 for k, v in spent.items()}


def handler_totals(mount: Mount) -> dict[str, tuple[float, float]]:
    return {
        op: (
            mount.metric(f"{HANDLER}_sum", operation=op),
            mount.metric(f"{HANDLER}_count", operation=op),
        )
        for op in OPS
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--kb", type=int, default=110)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", default=str(Path(__file__).parent / "out" / "small_file_phases.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-phases-", dir="/var/tmp"))
    mount = None
    try:
        source = work / "source"
        for i in range(args.files):
            path = source / "train" / f"c{i % 10}" / f"{i:06d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(args.kb * 1000))
        config, point, port = mount_config(
            work,
            "max_size: 8GB, stale_ttl: 2s, list_ttl: 2s",
            f"  - {{name: ds, type: local, config: {{root: {source}}}}}\n",
        )
        mount = start_mount(config, point, port)
        ours = [str(q) for q in sorted(point.glob("ds/train/*/*.JPEG"), key=lambda q: q.name)]
        local = [str(q) for q in sorted(source.glob("train/*/*.JPEG"), key=lambda q: q.name)]
        assert len(ours) == args.files
        one_pass(ours, drop=False)  # cold: fills the cache
        time.sleep(2.5)  # past stale_ttl, as in bench/small_files.py
        results: dict[str, float] = {}
        rows = []
        for drop in (True, False):
            label = "dropped" if drop else "hot"
            best: dict[str, tuple[float, dict[str, float]]] = {}
            if not drop:  # hot: both in memory first
                one_pass(ours, drop=False)
                one_pass(local, drop=False)
            before = handler_totals(mount)
            for _ in range(args.runs):
                for name, paths in (("mount", ours), ("local", local)):
                    measured = one_pass(paths, drop)
                    if name not in best or measured[0] > best[name][0]:
                        best[name] = measured
            after = handler_totals(mount)
            for name, (rate, phases) in best.items():
                results[f"{label} {name} files/s"] = rate
                for phase, us in phases.items():
                    results[f"{label} {name} {phase} us"] = us
            for op in OPS:
                count = after[op][1] - before[op][1]
                if count:
                    us = (after[op][0] - before[op][0]) / count * 1e6
                    results[f"{label} handler {op} us"] = us
            m, loc = best["mount"][1], best["local"][1]
            for phase in PHASES:
                rows.append((f"{label}, {phase}", f"{m[phase]:.0f}", f"{loc[phase]:.0f}"))
            rows.append(
                (
                    f"{label}, files/s",
                    f"{best['mount'][0]:,.0f}",
                    f"{best['local'][0]:,.0f} ({best['mount'][0] / best['local'][0]:.2f}x)",
                )
            )
            timed = [op for op in OPS if f"{label} handler {op} us" in results]
            handlers = ", ".join(f"{op} {results[f'{label} handler {op} us']:.0f}" for op in timed)
            print(f"{label}: mount handler time per request (us): {handlers}")
        print(f"\n{args.files} files of {args.kb} KB, warm, one reader in name order")
        print_table(rows, ("phase (us per file)", "mount", "local files"))
        write_json(args.json, args, results)
    finally:
        if mount is not None:
            mount.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
