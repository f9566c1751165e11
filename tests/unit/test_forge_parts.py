"""forge's pure parts: features, the run-config file, metric deltas from scraped text, the
comparison table."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from forge import compare, metrics
from forge.__main__ import run_config, train_parser
from forge.features import FEATURES, byte_features
from forge.gen import HIGH, make_image
from forge.train import Window, log_line


def test_byte_features_sample_at_even_intervals() -> None:
    raw = bytes(range(256)) * 4  # 1024 bytes: stride 4
    features = byte_features(raw)
    assert features.shape == (FEATURES,)
    assert features[1] == pytest.approx(4 / 255) and features[255] == pytest.approx(252 / 255)
    short = byte_features(b"\x00\x10\xff")  # stride 1, then the last byte repeats
    assert short[:3].tolist() == pytest.approx([0, 16 / 255, 1.0]) and short[-1] == 1.0
    with pytest.raises(ValueError, match="empty"):
        byte_features(b"")


def test_generated_jpeg_spells_its_label_where_forge_samples() -> None:
    import io

    from PIL import Image

    for label in (0, 3, 9):
        data = make_image(random.Random(label), label, 64, 10)
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (64, 64)  # a real JPEG, the comment skipped
        assert data[2:4] == b"\xff\xfe"  # a COM segment right after SOI
        length, stride = int.from_bytes(data[4:6], "big") - 2, len(data) // FEATURES
        features = (byte_features(data) * 255).round().astype(int)
        coded = [i for i in range(FEATURES) if 6 <= i * stride < 6 + length]
        assert len(coded) > FEATURES // 3
        assert all((features[i] == HIGH) == (i % 10 == label) for i in coded)


def test_window_and_log_line_have_the_original_form() -> None:
    window = Window()
    window.record(64, 0.050, 0.010, 2.5)
    window.record(64, 0.030, 0.010, 2.25)
    snap = window.snapshot(150)
    assert (
        log_line(snap)
        == "step=150 images_per_sec=1280.0 data_ms=40.00 compute_ms=10.00 loss=2.2500"
    )
    assert window.steps == 0  # a fresh window after each line


def test_run_config_file_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text("train_root_a: /wd/a\ntrain_root_b: /wd/b\nsteps: 7\nbatch_size: 3\n")
    args = train_parser().parse_args(["-config", str(config), "-steps", "9", "--train-root", "/x"])
    cfg = run_config(args)
    assert cfg.train_roots == ["/wd/a", "/wd/b", "/x"] and cfg.steps == 9 and cfg.batch_size == 3
    assert cfg.num_workers == 8 and cfg.seed == 42 and cfg.model == "linear"
    decoded = run_config(train_parser().parse_args(["--train-root-a", "/a", "--decode"]))
    assert decoded.decode and decoded.model == "cnn"
    config.write_text("train_root_a: /wd/a\nstep: 7\n")
    with pytest.raises(SystemExit, match="unknown key 'step'"):
        run_config(train_parser().parse_args(["-config", str(config)]))
    config.write_text("steps: many\n")
    with pytest.raises(SystemExit, match="steps: expected int, got 'many'"):
        run_config(train_parser().parse_args(["-config", str(config)]))


SCRAPE_BEFORE = """# HELP warpdrive_cache_hit_total Blocks reads found in the cache
warpdrive_cache_hit_total 10.0
warpdrive_cache_miss_total 5.0
warpdrive_fuse_operations_total{operation="read"} 100.0
warpdrive_fuse_operations_total{operation="lookup"} 7.0
warpdrive_backend_bytes_read_total{backend="datasets-cac"} 1000.0
warpdrive_cache_hit_created 1.7e9
"""
SCRAPE_AFTER = """warpdrive_cache_hit_total 40.0
warpdrive_cache_miss_total 15.0
warpdrive_fuse_operations_total{operation="read"} 180.0
warpdrive_fuse_operations_total{operation="lookup"} 9.0
warpdrive_fuse_passthrough_opens_total 6.0
warpdrive_backend_bytes_read_total{backend="datasets-cac"} 3000.0
warpdrive_backend_bytes_read_total{backend="datasets-wus3"} 500.0
"""


def test_metric_deltas_from_two_scrapes() -> None:
    before, after = metrics.parse_prometheus(SCRAPE_BEFORE), metrics.parse_prometheus(SCRAPE_AFTER)
    assert metrics.delta(before, after, "metrics-url") == {
        "source": "metrics-url",
        "hits": 30,
        "misses": 10,
        "hit_rate": 0.75,
        "bytes_fetched": 2500,
        "bytes_fetched_by_backend": {"datasets-cac": 2000, "datasets-wus3": 500},
        "fuse_reads": 80,
        "passthrough_opens": 6,
    }
    assert metrics.delta({}, {}, "cache-index")["hit_rate"] is None


def _result(
    wall_ms: float, ips: float, data_ms: float, hits: int, misses: int, fetched: int
) -> dict:
    return {
        "summary": {"wall_ms": wall_ms, "images_per_sec": ips, "data_ms_per_step": data_ms},
        "metrics": {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses),
            "bytes_fetched": fetched,
        },
    }


def test_compare_table_numbers(tmp_path: Path) -> None:
    cold, warm = tmp_path / "cold.json", tmp_path / "warm.json"
    cold.write_text(json.dumps(_result(60000, 200.0, 300.0, 100, 900, 3 << 30)))
    warm.write_text(json.dumps(_result(12000, 1000.0, 20.0, 1000, 0, 0)))
    table = compare.rows(compare.load(str(cold)), compare.load(str(warm)))
    assert table == [
        ("Wall time", "60000 ms", "12000 ms", "5.0x"),
        ("Throughput (images)", "200.0/sec", "1000.0/sec", "5.0x"),
        ("Avg data load / step", "300.00 ms", "20.00 ms", "15.0x"),
        ("Cache hit rate", "10.0%", "100.0%", ""),
        ("Cache hits", "100", "1000", ""),
        ("Cache misses", "900", "0", ""),
        ("Backend data fetched", "3.00 GB", "0.00 GB", ""),
    ]
    text = compare.run(str(cold), str(warm))
    assert text.splitlines()[0].split() == ["Metric", "Cold", "Warm", "Δ"]
    assert "Avg data load / step" in text and "15.0x" in text
    markdown = compare.run(str(cold), str(warm), "markdown").splitlines()
    assert markdown[0] == "| Metric | Cold | Warm | Δ |"
    assert markdown[2] == "| Wall time | 60000 ms | 12000 ms | 5.0x |"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a forge train result"):
        compare.load(str(tmp_path / "bad.json"))
