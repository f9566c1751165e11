#!/usr/bin/env python3
"""A terminal dashboard of a WarpDrive mount's ``/metrics``: FUSE operations, the read-latency
histogram drawn as bars with the mean read latency under it, the cache (hits, misses, hit rate,
evictions, the bytes it uses as a share of its disk and of ``max_size``), readahead hits and
waste, each backend's bytes, requests and errors, credential refreshes.

``python demo/dashboard.py --url http://localhost:9090/metrics`` once, or ``--watch 2`` to
redraw every 2 s until Ctrl-C (what ``demo/03_watch_warpdrive_metrics.sh`` runs).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]
BAR = 40


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return parse(reply.read().decode())


def parse(text: str) -> Samples:
    """Prometheus text format → samples by name."""
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((dict(sample.labels), float(sample.value)))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for lab, value in samples.get(name, []):
        out[lab.get(label, "")] += value
    return dict(out)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} TiB"


def latency_bars(samples: Samples, operation: str = "read") -> list[str]:
    """The histogram of ``operation`` durations: one bar per bucket (not cumulative)."""
    buckets = sorted(
        (float(lab["le"]), v)
        for lab, v in samples.get("warpdrive_fuse_operation_duration_seconds_bucket", [])
        if lab.get("operation") == operation
    )
    if not buckets or buckets[-1][1] == 0:
        return ["    (no reads yet)"]
    counts, previous = [], 0.0
    for le, cumulative in buckets:
        counts.append((le, cumulative - previous))
        previous = cumulative
    peak = max(c for _, c in counts) or 1
    lines = []
    for le, count in counts:
        label = "+Inf" if le == float("inf") else (f"{le * 1000:g} ms" if le < 1 else f"{le:g} s")
        bar = "█" * max(1 if count else 0, round(BAR * count / peak))
        lines.append(f"    ≤ {label:>8}  {bar:<{BAR}} {count:,.0f}")
    name = "warpdrive_fuse_operation_duration_seconds"
    seconds = total(samples, f"{name}_sum", operation=operation)
    count = total(samples, f"{name}_count", operation=operation)
    if count:
        lines.append(f"    Mean: {seconds / count * 1e6:,.0f} μs across {count:,.0f} {operation}s")
    return lines


def percent(part: float, whole: float) -> str:
    """``part`` as a share of ``whole``: one decimal, or two significant digits below 0.1%
    (a small cache on a large disk is not 0.0%)."""
    p = part / whole * 100 if whole else 0.0
    return f"{p:.2g}%" if 0 < p < 0.1 else f"{p:.1f}%"


def cache_used(samples: Samples) -> str:
    """Bytes in the cache, as a share of the disk holding it (``warpdrive_cache_disk_bytes``,
    from mounts that export it) and of ``max_size``."""
    used = total(samples, "warpdrive_cache_size_bytes")
    shares = []
    disk = total(samples, "warpdrive_cache_disk_bytes")
    if disk:
        shares.append(f"{percent(used, disk)} of the {size(disk)} cache disk")
    shares.append(f"{percent(total(samples, 'warpdrive_cache_utilization_ratio'), 1)} of max_size")
    return f"{size(used)} ({'; '.join(shares)})"


def render(samples: Samples, url: str) -> str:
    lines = [f"WarpDrive metrics — {url}", ""]
    ops = by_label(samples, "warpdrive_fuse_operations_total", "operation")
    lines.append("FUSE operations")
    lines += [f"    {op:<12} {n:>12,.0f}" for op, n in sorted(ops.items(), key=lambda x: -x[1])]
    if not ops:
        lines.append("    (none yet)")
    lines += ["", "FUSE read latency (requests per bucket)", *latency_bars(samples), ""]
    hits = total(samples, "warpdrive_cache_hit_total")
    misses = total(samples, "warpdrive_cache_miss_total")
    rate = f"{hits / (hits + misses) * 100:.1f}% hit" if hits + misses else "no reads"
    lines += [
        "Cache",
        f"    hits / misses  {hits:,.0f} / {misses:,.0f}  ({rate})",
        f"    evictions      {total(samples, 'warpdrive_cache_evictions_total'):,.0f}",
        f"    cache used     {cache_used(samples)}",
        f"    readahead      {total(samples, 'warpdrive_readahead_hit_total'):,.0f} hits, "
        f"{total(samples, 'warpdrive_readahead_wasted_total'):,.0f} wasted; "
        f"{total(samples, 'warpdrive_prefetch_hint_hit_total'):,.0f} hint hits",
        "",
        "Backends",
    ]
    fetched = by_label(samples, "warpdrive_backend_bytes_read_total", "backend")
    requests = by_label(samples, "warpdrive_backend_request_duration_seconds_count", "backend")
    errors = by_label(samples, "warpdrive_backend_errors_total", "backend")
    for backend in sorted(set(fetched) | set(requests)):
        lines.append(
            f"    {backend:<16} fetched {size(fetched.get(backend, 0)):>11}   "
            f"requests {requests.get(backend, 0):>7,.0f}   errors {errors.get(backend, 0):,.0f}"
        )
    if not fetched and not requests:
        lines.append("    (no backend traffic yet)")
    refreshes = [
        f"{lab.get('provider', '?')} {lab.get('status', '?')}: {v:,.0f}"
        for lab, v in samples.get("warpdrive_auth_refresh_total", [])
    ]
    lines += ["", "Credential refreshes", f"    {', '.join(refreshes) or 'none'}"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description="WarpDrive metrics dashboard")
    p.add_argument("--url", default="http://localhost:9090/metrics")
    p.add_argument("--watch", type=float, default=0, help="redraw every N seconds")
    args = p.parse_args()
    while True:
        try:
            text = render(scrape(args.url), args.url)
        except (urllib.error.URLError, OSError) as exc:
            print(f"dashboard: cannot read {args.url}: {exc}", file=sys.stderr)
            return 1
        if args.watch:
            print("\033[2J\033[H" + text, flush=True)
            try:
                time.sleep(args.watch)
            except KeyboardInterrupt:
                return 0
        else:
            print(text)
            return 0


if __name__ == "__main__":
    sys.exit(main())
