"""``forge`` / ``python -m forge``: train, compare, gen-shards.

The original warpdrive-forge's invocation runs unchanged: no subcommand means ``train``, and
its single-dash flags (``-config``, ``-train-root-a``, ``-steps``, …) are accepted beside the
double-dash ones. Settings come from the flags, then ``-config FILE`` (the original's keys:
train_root_a, train_root_b, steps, batch_size, num_workers, seed, log_every; and ours in
snake_case), then the defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from forge import gen
from forge.train import RunConfig

COMMANDS = ("train", "compare", "gen-shards")
# Settings a -config file may hold: the original's keys, then ours.
CONFIG_KEYS = {
    "train_root_a": str,
    "train_root_b": str,
    "train_roots": list,
    "steps": int,
    "batch_size": int,
    "num_workers": int,
    "seed": int,
    "log_every": int,
    "lr": float,
    "reader": str,
    "model": str,
    "decode": bool,
    "device": str,
    "metrics_url": str,
    "json_out": str,
    "warpdrive_config": str,
    "partition": str,
}


def _option(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """``--name`` and the original's ``-name``."""
    p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), default=None, **kw)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forge train",
        description="Train a small model on WebDataset shards from one or more roots, timing "
        "data loading against compute.",
        allow_abbrev=False,
    )
    _option(p, "config", metavar="FILE", help="run settings (YAML, the original's keys)")
    _option(p, "train-root-a", metavar="ROOT", help="directory of shards, or warpdrive:// URL")
    _option(p, "train-root-b", metavar="ROOT", help="a second root (the other region)")
    p.add_argument("--train-root", action="append", default=[], metavar="ROOT", help="more roots")
    _option(p, "steps", type=int, help="training steps (2000)")
    _option(p, "batch-size", type=int, help="images per step (64)")
    _option(p, "num-workers", type=int, help="DataLoader workers reading in parallel (8)")
    _option(p, "seed", type=int, help="shard/sample order and model init (42)")
    _option(p, "log-every", type=int, help="steps per log line (100)")
    _option(p, "lr", type=float, help="SGD learning rate (0.05)")
    _option(
        p,
        "reader",
        choices=["posix", "warpdrive"],
        help="plain files (e.g. under the mount) or in-process through the cache (posix)",
    )
    _option(
        p,
        "partition",
        choices=["node", "global"],
        help="under torchrun: each node reads the same shards every epoch (node, default) "
        "or a new share of all of them (global)",
    )
    _option(p, "model", choices=["linear", "cnn"], help="linear (default) or cnn (with --decode)")
    p.add_argument(
        "--decode",
        "-decode",
        action="store_true",
        default=None,
        help="decode JPEGs with Pillow and resize (off, as in the original)",
    )
    _option(p, "device", choices=["cpu", "cuda", "auto"], help="where the model runs (auto)")
    _option(p, "metrics-url", metavar="URL", help="WarpDrive /metrics to scrape before and after")
    _option(p, "json-out", metavar="PATH", help="write the summary and log as JSON")
    _option(
        p,
        "warpdrive-config",
        metavar="FILE",
        help="WarpDrive config for --reader warpdrive ($WARPDRIVE_CONFIG)",
    )
    return p


def load_run_file(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"forge: config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"forge: config {path}: expected key: value lines")
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            expected = ", ".join(CONFIG_KEYS)
            raise SystemExit(
                f"forge: config {path}: unknown key {key!r} (expected one of {expected})"
            )
        kind = CONFIG_KEYS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            if kind is float and isinstance(value, int):
                continue
            raise SystemExit(
                f"forge: config {path}: {key}: expected {kind.__name__}, got {value!r}"
            )
    return data


def run_config(args: argparse.Namespace) -> RunConfig:
    settings: dict[str, Any] = load_run_file(args.config) if args.config else {}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    roots = [settings.pop(k) for k in ("train_root_a", "train_root_b") if settings.get(k)]
    settings.pop("train_root_a", None)
    settings.pop("train_root_b", None)
    roots += list(settings.pop("train_roots", []) or []) + list(args.train_root)
    if settings.get("decode") and "model" not in settings:
        settings["model"] = "cnn"
    settings["decode"] = bool(settings.get("decode", False))
    return RunConfig(train_roots=roots, **settings)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: forge {train,compare,gen-shards} ...\n\n"
            "  train       train on shards, timing data loading (the default command)\n"
            "  compare     the cold vs warm table from two `train --json-out` files\n"
            "  gen-shards  write the synthetic dataset (real JPEGs, learnable labels)\n\n"
            "`forge COMMAND --help` for each command's options."
        )
        return 0
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if command == "compare":
        p = argparse.ArgumentParser(prog="forge compare", description="cold vs warm table")
        p.add_argument("cold")
        p.add_argument("warm")
        p.add_argument("--format", choices=["text", "markdown"], default="text")
        args = p.parse_args(argv)
        from forge import compare

        print(compare.run(args.cold, args.warm, args.format))
        return 0
    if command == "gen-shards":
        p = argparse.ArgumentParser(prog="forge gen-shards", description=gen.__doc__)
        gen.add_arguments(p)
        return gen.run(p.parse_args(argv))
    from forge import train

    train.run(run_config(train_parser().parse_args(argv)), out=_print)
    return 0


def _print(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
