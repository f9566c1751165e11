"""What the demo shows, without a mount: the images/s chart as a picture (slide-sized, round
ticks, labelled axes, drawn from the data), the metrics dashboard's mean read latency and the
cache's share of its disk from a real cache's metrics, and warpdrive-ctl's other commands."""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from demo import chart, dashboard, showcase
from warpdrive.cache import BlockCache, ObjectVersion
from warpdrive.config import parse_config
from warpdrive.metrics import Metrics
from warpdrive.metrics_server import MetricsServer

STEPS = [50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
COLD = [412.7, 560.1, 577.3, 590.4, 566.0, 601.2]
WARM = [4980.2, 5620.0, 5490.7, 5652.3, 5599.1, 5571.9]
BLUE = (0x1F, 0x77, 0xB4)  # the cold line's colour


def runs(cold: list[float], warm: list[float]) -> dict[str, chart.Series]:
    return {
        "cold": list(zip(STEPS, cold, strict=True)),
        "warm": list(zip(STEPS, warm, strict=True)),
    }


def png(tmp_path: Path, name: str, cold: list[float], warm: list[float]) -> Image.Image:
    out = tmp_path / name
    chart.draw(runs(cold, warm), str(out))
    return Image.open(io.BytesIO(out.read_bytes())).convert("RGB")


def mean_row(image: Image.Image, colour: tuple[int, int, int]) -> float:
    """Mean row of the pixels of exactly ``colour`` (the line's body, not its antialiased edge)."""
    rows = np.nonzero((np.asarray(image) == colour).all(axis=2))[0]
    assert len(rows) > 500, f"hardly any pixels of {colour}: is the line drawn?"
    return float(rows.mean())


def test_the_chart_is_a_slide_sized_picture_of_the_data(tmp_path: Path) -> None:
    image = png(tmp_path, "a.png", COLD, WARM)
    assert image.size == (1600, 900)  # 16:9
    # The same warm run and a cold run twice as fast: the picture changes, and the cold line
    # (blue) moves up (rows count from the top) while the axis, set by the warm run, stays.
    faster = png(tmp_path, "b.png", [2 * v for v in COLD], WARM)
    assert faster.tobytes() != image.tobytes()
    assert mean_row(faster, BLUE) < mean_row(image, BLUE) - 20
    assert png(tmp_path, "c.png", COLD, WARM).tobytes() == image.tobytes()  # and only the data


def test_the_chart_has_round_ticks_labelled_axes_and_starts_at_the_first_step() -> None:
    ax = chart.figure(runs(COLD, WARM)).axes[0]
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    assert low == 0 and high >= max(WARM) and len(ticks) >= 4
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5)), ticks
    assert all(math.isclose(t / step, round(t / step)) for t in ticks), ticks
    assert "images" in ax.get_ylabel() and "step" in ax.get_xlabel() and ax.get_title(loc="left")
    left, right = ax.get_xlim()
    assert STEPS[0] - 0.1 * (STEPS[-1] - STEPS[0]) <= left < STEPS[0] and right > STEPS[-1]
    labels = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.yaxis.label, ax.xaxis.label]
    assert min(label.get_fontsize() for label in labels) >= 11
    assert [t.get_text() for t in ax.get_yticklabels() if t.get_text()][-1].count(",") == 1


def test_the_dashboard_shows_the_mean_read_latency_and_the_caches_share_of_its_disk(
    tmp_path: Path,
) -> None:
    config = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 256KB}}\n"
        f"backends: [{{name: b, type: local, config: {{root: {tmp_path}}}}}]\n",
        env={},
    )
    metrics = Metrics()
    cache = BlockCache(config.cache, metrics, flush_interval=3600)
    server = MetricsServer("127.0.0.1:0", metrics.registry, lambda: (True, {})).start()
    try:
        obj = ObjectVersion("b", "shard-0.tar", "e1", 3 << 18, 0.0, 1 << 18)
        for index in range(3):
            assert cache.put(obj, index, os.urandom(1 << 18))
        for seconds in (0.0002, 0.0004, 0.0009):  # as the FUSE layer records its reads
            metrics.fuse_duration.labels("read").observe(seconds)
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = dashboard.render(dashboard.scrape(url), url)
    finally:
        server.close()
        cache.close()
    assert "    Mean: 500 μs across 3 reads" in text.splitlines()
    disk = os.statvfs(tmp_path)
    disk_bytes = disk.f_blocks * disk.f_frsize
    line = next(line for line in text.splitlines() if "cache used" in line)
    assert line == (
        f"    cache used     768.0 KiB ({dashboard.percent(3 << 18, disk_bytes)} of the "
        f"{dashboard.size(disk_bytes)} cache disk; 1.2% of max_size)"
    )
    assert "(0.0% of" not in line  # a small cache on a large disk still shows its share


def test_shares_keep_two_significant_digits_when_small() -> None:
    assert dashboard.percent(2372, 51_500) == "4.6%"
    assert dashboard.percent(550, 8_000_000) == "0.0069%"
    assert dashboard.percent(0, 10) == "0.0%" and dashboard.percent(1, 0) == "0.0%"


def test_the_dashboard_without_the_disk_metric_shows_the_share_of_max_size() -> None:
    samples = dashboard.parse(
        "warpdrive_cache_size_bytes 1048576\nwarpdrive_cache_utilization_ratio 0.25\n"
    )
    assert "    cache used     1.0 MiB (25.0% of max_size)" in dashboard.render(samples, "u")


def test_the_other_available_commands_are_warpdrive_ctls_own() -> None:
    text = showcase.other_commands({"stats", "usage", "crawl", "stale"})
    lines = re.sub(r"\033\[[0-9;]*m", "", text).splitlines()
    assert lines[0].strip() == "Other available commands:"
    listed = {line.split()[1]: line.split(None, 2)[2] for line in lines[1:]}
    # The original's five are there, each with its help from warpdrive-ctl's parser; the
    # commands the demo ran are not.
    for name in ("warm", "quota", "move", "status", "serve"):
        assert listed[name] == showcase.ctl_commands()[name], name
    assert listed["warm"] == "fetch objects into the cache"
    assert not {"stats", "usage", "crawl", "stale"} & set(listed)
    assert set(listed) | {"stats", "usage", "crawl", "stale"} == set(showcase.ctl_commands())
