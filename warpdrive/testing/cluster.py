"""A simulated cluster on one machine, for the tests and ``bench/cluster.py``.

Each "node" is what a GPU node of a real job has: its own WarpDrive cache directory and config
(``WARPDRIVE_CONFIG``), optionally its own FUSE mount with its own metrics port, and one
``torchrun`` that starts the node's ranks (gloo on 127.0.0.1). The ranks run
:mod:`warpdrive.testing.cluster_rank`: epochs of a ``ShardDataset`` through a ``ResumableLoader``
with real DataLoader workers. After every epoch each node reports what its cache fetched and
served — from its cache index (in-process readers) or its mount's ``/metrics`` — and rank 0
writes one JSON file per epoch with every rank's sample keys and digests.

Rendezvous: ``"c10d"`` numbers the nodes in the order they arrive (torchrun ignores
``--node-rank``; every node reports the number it got); ``"static"`` keeps ``--node-rank`` i for
node i, as under Slurm, where a node's number is known before the job starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warpdrive.testing.mounts import Mount, start_mount
from warpdrive.testing.servers import free_port


@dataclass
class Node:
    index: int
    config: Path
    cache: Path
    point: Path
    metrics_port: int
    mount: Mount | None = None

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.mount.metrics_port}/metrics" if self.mount else None


@dataclass
class EpochReport:
    """One epoch as the nodes saw it. ``nodes[group_rank]``: that node's ``config``, its
    counters after the epoch (cumulative: ``bytes_fetched``, ``hits``, ``misses``) and the
    slowest of its ranks' ``seconds``; ``samples``: [key, digest, rank] of every sample."""

    epoch: int
    nodes: dict[int, dict[str, Any]]
    samples: list[list[Any]]
    resumed: bool = False  # continued from a checkpoint
    partial: bool = False  # stopped at a checkpoint


@dataclass
class Cluster:
    """``nodes`` nodes under ``root``; ``config_text(cache_dir, mount_point, metrics_port)``
    gives each node's WarpDrive config."""

    root: Path
    nodes: int
    config_text: Callable[[Path, Path, int], str]
    mounts: bool = False
    members: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.nodes):
            cache, point, port = self.root / f"node{i}-cache", self.root / f"node{i}-wd", 0
            if self.mounts:
                point.mkdir(exist_ok=True)
                port = free_port()
            config = self.root / f"node{i}.yaml"
            config.write_text(self.config_text(cache, point, port))
            self.members.append(Node(i, config, cache, point, port))

    def __enter__(self) -> Cluster:
        if self.mounts:
            try:
                for node in self.members:
                    node.mount = start_mount(node.config, node.point, node.metrics_port)
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for node in self.members:
            if node.mount is not None:
                node.mount.cleanup()
                node.mount = None

    def env(self, node: Node, extra: dict[str, str] | None = None) -> dict[str, str]:
        launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")
        env = {k: v for k, v in os.environ.items() if k not in launcher}
        env["WARPDRIVE_CONFIG"] = str(node.config)
        if node.metrics_url:
            env["WARPDRIVE_METRICS_URL"] = node.metrics_url
            env["WARPDRIVE_MOUNT"] = str(node.point)
        return env | (extra or {})

    def train(
        self,
        spec: dict[str, Any],
        *,
        nodes: Sequence[Node] | None = None,
        ranks_per_node: int = 2,
        rdzv: str = "c10d",
        timeout: float = 600,
        extra_env: dict[str, str] | None = None,
    ) -> list[EpochReport]:
        """Run :mod:`warpdrive.testing.cluster_rank` with ``spec`` on ``nodes`` (default: all)
        under torchrun; the epochs' reports, in order."""
        out = self.root / f"run-{time.monotonic_ns()}"
        out.mkdir()
        program = ["-m", "warpdrive.testing.cluster_rank", json.dumps({**spec, "out": str(out)})]
        self.torchrun(program, out, nodes, ranks_per_node, rdzv, timeout, extra_env)
        reports = []
        for path in sorted(out.glob("epoch-*.json"), key=lambda p: int(p.stem.split("-")[1])):
            data = json.loads(path.read_text())
            nodes_seen = {int(k): v for k, v in data["nodes"].items()}
            reports.append(
                EpochReport(
                    data["epoch"], nodes_seen, data["samples"], data["resumed"], data["partial"]
                )
            )
        return reports

    def torchrun(
        self,
        program: Sequence[str],
        out: Path,
        nodes: Sequence[Node] | None = None,
        ranks_per_node: int = 2,
        rdzv: str = "c10d",
        timeout: float = 600,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``torchrun … PROGRAM`` on each of ``nodes`` (default: all), its log in ``out``;
        RuntimeError with the logs' tails if a node fails."""
        nodes = list(self.members if nodes is None else nodes)
        port = free_port()
        rendezvous = (
            ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
            if rdzv == "c10d"
            else ["--master-addr", "127.0.0.1", "--master-port", str(port)]
        )
        procs = []
        for i, node in enumerate(nodes):
            log = open(out / f"node{node.index}.log", "wb")  # noqa: SIM115 - closed below
            argv = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={len(nodes)}",
                f"--node-rank={i}",
                f"--nproc-per-node={ranks_per_node}",
                *rendezvous,
                *program,
            ]
            env = self.env(node, extra_env)
            procs.append((node, log, subprocess.Popen(argv, env=env, stdout=log, stderr=log)))
        failed = []
        deadline = time.monotonic() + timeout
        for node, log, proc in procs:
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            log.close()
            if code != 0:
                failed.append(f"node {node.index} exited {code}: {_tail(out, node)}")
        if failed:
            for _, _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            raise RuntimeError("; ".join(failed))

    def checkpoint(self, run: Path | None = None) -> Path:
        """The all-rank state file the last run with ``stop`` left."""
        runs = sorted(self.root.glob("run-*"), key=lambda p: int(p.name.split("-")[1]))
        path = (run or runs[-1]) / "state.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the run left no checkpoint")
        return path


def sample_digest(sample: Mapping[str, Any]) -> str:
    """sha256 over a sample's fields (not its ``__tags__``) in name order: what a test holds
    against the bytes it uploaded."""
    digest = hashlib.sha256()
    for name in sorted(k for k in sample if not k.startswith("__")):
        digest.update(name.encode() + b"\0" + bytes(sample[name]) + b"\0")
    return digest.hexdigest()


def fetched(reports: Sequence[EpochReport], key: str = "bytes_fetched") -> list[dict[str, int]]:
    """Per epoch, per node config: the counter's increase over that epoch."""
    last: dict[str, int] = {}
    rows = []
    for report in reports:
        row = {}
        for node in report.nodes.values():
            value = int(node[key])
            row[node["config"]] = value - last.get(node["config"], node.get(f"{key}_start", 0))
            last[node["config"]] = value
        rows.append(row)
    return rows


def _tail(out: Path, node: Node) -> str:
    text = (out / f"node{node.index}.log").read_text(errors="replace")
    return text[-3000:]
