"""``forge train``: a training loop whose bottleneck is loading, timed the original's way.

Each step takes a batch (data time), then runs one SGD step (compute time). Every
``log_every`` steps one line in the original's form::

    step=150 images_per_sec=577.3 data_ms=55.18 compute_ms=0.25 loss=2.2941

where images/s, data and compute ms are over the steps since the previous line, as the
original's window, and loss is the last step's. The run ends with a summary line and, with
``json_out``, the same as JSON together with every logged window and WarpDrive's counter deltas.
"""

from __future__ import annotations

import gc
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from forge import metrics
from forge.data import make_loader
from forge.model import Trainer, make_model
from warpdrive import WarpDrive
from warpdrive_torch.world import resolve


@dataclass
class RunConfig:
    train_roots: list[str]
    steps: int = 2000
    batch_size: int = 64
    num_workers: int = 8
    seed: int = 42
    log_every: int = 100
    lr: float = 0.05
    reader: str = "posix"
    model: str = "linear"
    decode: bool = False
    device: str = "auto"
    metrics_url: str | None = None
    json_out: str | None = None
    warpdrive_config: str | None = None
    partition: str = "node"
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """SystemExit naming the first bad setting."""
        if len(self.train_roots) < 1:
            raise SystemExit("forge train: give at least one training root (--train-root-a)")
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise SystemExit(f"forge train: {name} must be > 0 (got {getattr(self, name)})")
        if self.num_workers < 0:
            raise SystemExit(f"forge train: num_workers must be >= 0 (got {self.num_workers})")
        if self.lr <= 0:
            raise SystemExit(f"forge train: lr must be > 0 (got {self.lr})")
        if self.reader not in ("posix", "warpdrive"):
            raise SystemExit(f"forge train: reader {self.reader!r}: expected posix or warpdrive")
        if self.model not in ("linear", "cnn"):
            raise SystemExit(f"forge train: model {self.model!r}: expected linear or cnn")
        if self.model == "cnn" and not self.decode:
            raise SystemExit("forge train: --model cnn needs --decode (it learns from pixels)")
        if self.device not in ("cpu", "cuda", "auto"):
            raise SystemExit(f"forge train: device {self.device!r}: expected cpu, cuda or auto")
        if self.partition not in ("node", "global"):
            raise SystemExit(f"forge train: partition {self.partition!r}: expected node or global")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("forge train: --device cuda, but torch sees no CUDA device")


class Window:
    """Sums over the steps since the last log line (the original's metrics.Window)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.images = self.steps = 0
        self.data = self.compute = 0.0
        self.loss = float("nan")

    def record(self, images: int, data: float, compute: float, loss: float) -> None:
        self.images += images
        self.steps += 1
        self.data += data
        self.compute += compute
        self.loss = loss

    def snapshot(self, step: int) -> dict[str, float]:
        busy = self.data + self.compute
        snap = {
            "step": step,
            "images_per_sec": self.images / busy if busy > 0 else 0.0,
            "data_ms": self.data * 1000 / self.steps if self.steps else 0.0,
            "compute_ms": self.compute * 1000 / self.steps if self.steps else 0.0,
            "loss": self.loss,
        }
        self.reset()
        return snap


def log_line(snap: dict[str, float]) -> str:
    return (
        f"step={snap['step']} images_per_sec={snap['images_per_sec']:.1f} "
        f"data_ms={snap['data_ms']:.2f} compute_ms={snap['compute_ms']:.2f} "
        f"loss={snap['loss']:.4f}"
    )


def run(cfg: RunConfig, out: Callable[[str], None] = print) -> dict[str, Any]:
    cfg.check()
    # More workers than cores is the point here (they wait on I/O, not CPU): no advice needed.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    device = torch.device(
        "cuda"
        if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    group = Group.join(device)
    if group.rank:
        out = _quiet  # one rank speaks for the job; every rank trains on its own shards
    wd = WarpDrive(cfg.warpdrive_config) if cfg.reader == "warpdrive" else None
    source = "metrics-url" if cfg.metrics_url else ("cache-index" if wd is not None else None)
    before = _snapshot(cfg, wd)
    loader, counts = make_loader(
        cfg.train_roots,
        cfg.reader,
        wd,
        cfg.batch_size,
        cfg.num_workers,
        cfg.seed,
        cfg.decode,
        cfg.partition,
    )
    for root, n in counts.items():
        out(f"root={root} shards={n}")
    trainer = Trainer(make_model(cfg.model, cfg.seed), cfg.lr, device, group.size > 1)
    window, logged = Window(), []
    images = 0
    data_total = compute_total = 0.0
    first_loss = loss = float("nan")
    started = time.perf_counter()
    batches = iter(loader)
    try:
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            batch = next(batches, None)
            while batch is not None and not len(batch["labels"]):
                batch = next(batches, None)  # every image of a batch was unusable
            if batch is None:
                raise SystemExit("forge train: the shards hold no usable samples")
            t1 = time.perf_counter()
            loss = trainer.step(batch["inputs"], batch["labels"])
            t2 = time.perf_counter()
            if step == 1:
                first_loss = loss
            n = len(batch["labels"])
            images += n
            data_total += t1 - t0
            compute_total += t2 - t1
            window.record(n, t1 - t0, t2 - t1, loss)
            if step % cfg.log_every == 0:
                snap = window.snapshot(step)
                logged.append(snap)
                out(log_line(snap))
        wall = time.perf_counter() - started
    finally:
        del batches  # shuts the workers down: their counters reach the cache index as they exit
        gc.collect()
    after = _snapshot(cfg, wd)
    summary = {
        "steps": cfg.steps,
        "images": images,
        "wall_ms": wall * 1000,
        "images_per_sec": images / wall if wall > 0 else 0.0,
        "data_ms_per_step": data_total * 1000 / cfg.steps,
        "compute_ms_per_step": compute_total * 1000 / cfg.steps,
        "first_loss": first_loss,
        "final_loss": loss,
        "device": str(device),
        "ranks": group.size,
    }
    out(
        f"summary wall_ms={summary['wall_ms']:.0f} images_per_sec={summary['images_per_sec']:.1f} "
        f"data_ms={summary['data_ms_per_step']:.2f} "
        f"compute_ms={summary['compute_ms_per_step']:.2f} final_loss={loss:.4f}"
    )
    result: dict[str, Any] = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "roots": counts,
        "summary": summary,
        "log": logged,
        "metrics": None,
        "layout": group.layout,  # rank, node, … of this process (one process: rank 0 of 1)
    }
    if before is not None and after is not None and source is not None:
        result["metrics"] = deltas = metrics.delta(before, after, source)
        rate = deltas["hit_rate"]
        out(
            f"metrics hits={deltas['hits']} misses={deltas['misses']} "
            f"hit_rate={'n/a' if rate is None else f'{rate * 100:.1f}%'} "
            f"bytes_fetched={deltas['bytes_fetched']}"
            + (f" fuse_reads={deltas['fuse_reads']}" if deltas["fuse_reads"] is not None else "")
            + (
                f" passthrough_opens={deltas['passthrough_opens']}"
                if deltas["passthrough_opens"] is not None
                else ""
            )
        )
    json_out = cfg.json_out and cfg.json_out.replace("{rank}", str(group.rank))
    if json_out and (group.rank == 0 or json_out != cfg.json_out):
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    if wd is not None:
        wd.close()
    group.leave()
    return result


def _quiet(_: str) -> None:
    pass


@dataclass
class Group:
    """The torch.distributed group of a run under torchrun (WORLD_SIZE > 1): gloo on the CPU,
    NCCL on CUDA; a group of one otherwise."""

    rank: int = 0
    size: int = 1
    node: int = 0
    layout: dict[str, int] = field(default_factory=dict)
    owned: bool = False

    @classmethod
    def join(cls, device: torch.device) -> Group:
        owned = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owned = True
        layout = resolve()
        return cls(layout.rank, layout.world_size, layout.node, layout.as_dict(), owned)

    def leave(self) -> None:
        if self.owned:
            dist.destroy_process_group()


def _snapshot(cfg: RunConfig, wd: WarpDrive | None) -> metrics.Snapshot | None:
    if cfg.metrics_url:
        try:
            return metrics.scrape(cfg.metrics_url)
        except OSError as exc:
            raise SystemExit(f"forge train: --metrics-url {cfg.metrics_url}: {exc}") from None
    return metrics.from_index(wd) if wd is not None else None
