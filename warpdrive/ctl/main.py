"""``warpdrive-ctl``: cache operations and data governance, usable while the mount runs.

Exit status: 0 done (``status``: healthy); 1 something failed (an object named on stderr), or
``status`` found the node degraded; 2 the command could not start (bad arguments, bad config,
unknown path, no cache, ``serve``'s address in use); 130 interrupted. Every command takes
``--config`` and ``--format table|csv|json`` (``--json`` for short), before or after its name.

Commands that only read the cache (``stats``, ``usage``, ``stale``, ``quota``, ``team``,
``job-*``, ``evict`` of something cached) open no backend client, so they run without the
backends' credentials; ``warm``, ``crawl``, ``move`` and ``status`` (which probes them) need them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

from warpdrive.admin import Admin
from warpdrive.cache.blockcache import LAYOUT_VERSION
from warpdrive.cliargs import FILE, add_version_and_completion, complete
from warpdrive.config import load_config
from warpdrive.ctl import cachecmds, govern, jobs, warm
from warpdrive.ctl import move as mover
from warpdrive.ctl.output import FORMATS, emit, emit_record
from warpdrive.ctl.paths import objects_under
from warpdrive.errors import WarpDriveError, printable
from warpdrive.governance.store import GovernanceStore
from warpdrive.partition import node_shards
from warpdrive.read.reader import WarpDrive
from warpdrive.shards import expand
from warpdrive.units import format_size, parse_size

Command = Callable[[argparse.Namespace, WarpDrive, Admin], int]


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def workers_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def days_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of days {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of days, 0 or more, got {text!r}")
    return value


def time_arg(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r} (ISO 8601, e.g. 2026-01-31T12:00Z)"
        ) from None


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line naming the problem (``--help`` has the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {printable(message)} (see --help)\n")


# Commands that only read the cache: without one they say so instead of creating an empty one.
NEED_CACHE = {"stats", "evict", "status", "job-report", "usage", "stale", "quota list", "quota rm"}
NEED_CACHE |= {"team list", "team rm"}


def add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--config``, ``--format``, ``--json``: on the top parser with their defaults, on each
    command without (argparse would let a command's default overwrite what was given before
    the command's name), so they work before and after it."""
    config = parser.add_argument(
        "--config",
        "-c",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $WARPDRIVE_CONFIG, /etc/warpdrive/config.yaml)",
    )
    complete(config, FILE)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table" if top else argparse.SUPPRESS,
        help="output format",
    )
    parser.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        default=argparse.SUPPRESS,
        help="--format json",
    )


def parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    add_common(common, top=False)

    p = Parser(
        prog="warpdrive-ctl",
        description="Cache operations and data governance, usable while the mount runs.",
        epilog="Exit status: 0 done (status: healthy), 1 something failed or status degraded, "
        "2 could not start (bad arguments, config, path; no cache; serve's address in use), "
        "130 interrupted. --config, --format and --json go before or after the command. "
        "Details: docs/ctl.md.",
    )
    add_version_and_completion(p)
    add_common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sv = sub.add_parser(
        "serve", help="the control plane: API and dashboard (docs/control-plane.md)"
    )
    sv.add_argument("--addr", default=":8080", help="listen address, host:port or :port")
    sv.add_argument(
        "--database",
        help="sqlite:///path or postgresql://user:password@host/db "
        "(default: $WARPDRIVE_DATABASE_URL, else sqlite:///warpdrive-control.db)",
    )
    sv.add_argument(
        "--token-env", default="WARPDRIVE_API_TOKEN", help="variable holding the write token"
    )
    sv.add_argument("--private-reads", action="store_true", help="require the token for reads too")

    w = sub.add_parser("warm", parents=[common], help="fetch objects into the cache")
    w_paths = w.add_argument(
        "paths", nargs="*", metavar="PATH", help="under the mount, mount-relative, or warpdrive://"
    )
    complete(w_paths, FILE)
    w.add_argument("--backend", help="the original's form: warm every object of this backend…")
    w.add_argument("--prefix", default="", help="…under this key prefix")
    w.add_argument("--recursive", "-r", action="store_true", help="include subdirectories")
    w.add_argument(
        "--num-nodes",
        type=int,
        help="warm one node's share of a dataset: PATHs are its shard URLs as given to "
        "ShardDataset (braces, globs; each one a group), split as the dataset splits them",
    )
    w.add_argument("--node-rank", type=int, help="…for this node (0 … num-nodes - 1)")
    w.add_argument("--seed", type=int, default=0, help="…the dataset's seed (0)")
    w.add_argument("--no-shuffle", action="store_true", help="…a dataset with shuffle=False")
    w.add_argument("--max-size", type=size_arg, help="stop before fetching more than this")
    w.add_argument(
        "--workers", type=workers_arg, default=32, help="parallel fetches, 1 or more (default 32)"
    )
    w.add_argument("--dry-run", action="store_true", help="say what would be fetched")
    w.add_argument(
        "--quiet", "-q", action="store_true", help="no progress on stderr (the summary stays)"
    )
    w.set_defaults(run=cmd_warm)

    s = sub.add_parser("stats", parents=[common], help="cache size, hits, misses, evictions")
    s.set_defaults(run=cmd_stats)

    e = sub.add_parser("evict", parents=[common], help="drop cached blocks of objects")
    complete(e.add_argument("paths", nargs="+", metavar="PATH"), FILE)
    e.add_argument("--recursive", "-r", action="store_true")
    e.set_defaults(run=cmd_evict)

    st = sub.add_parser("status", parents=[common], help="mount, metrics, cache, backends")
    st.set_defaults(run=cmd_status)

    js = sub.add_parser("job-start", parents=[common], help="snapshot counters (Slurm prolog)")
    js.add_argument("--job-id", required=True)
    js.set_defaults(run=cmd_job_start)

    jr = sub.add_parser(
        "job-report", parents=[common], help="a job's cache activity (Slurm epilog)"
    )
    jr.add_argument("--job-id", required=True)
    jr.add_argument("--user", required=True)
    jr.add_argument("--status", type=int, required=True)
    jr.set_defaults(run=cmd_job_report)

    u = sub.add_parser("usage", parents=[common], help="bytes read and cached per group")
    u.add_argument("--group-by", choices=govern.GROUPS, default="team")
    u.add_argument("--backend")
    u.set_defaults(run=cmd_usage)

    sl = sub.add_parser("stale", parents=[common], help="objects nobody read for N days")
    sl.add_argument("--days", type=days_arg, default=90, help="0 or more (default 90)")
    sl.add_argument("--min-size", type=size_arg, default=0)
    sl.add_argument("--backend")
    sl.add_argument("--evict", action="store_true", help="drop their cached blocks")
    sl.add_argument("--now", type=time_arg, help="judge as of this time (ISO 8601)")
    sl.set_defaults(run=cmd_stale)

    c = sub.add_parser("crawl", parents=[common], help="list the backends for stale")
    c.add_argument("--backend")
    c.set_defaults(run=cmd_crawl)

    q = sub.add_parser("quota", help="per-team cache limits")
    qs = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    qset = qs.add_parser("set", parents=[common], help="set a team's soft and hard limits")
    qset.add_argument("--team", required=True)
    qset.add_argument("--backend")
    qset.add_argument("--soft", type=size_arg, required=True)
    qset.add_argument("--hard", type=size_arg, required=True)
    qset.set_defaults(run=cmd_quota_set)
    qls = qs.add_parser("list", parents=[common], help="quotas with usage and status")
    qls.set_defaults(run=cmd_quota_list)
    qrm = qs.add_parser("rm", parents=[common], help="remove a quota")
    qrm.add_argument("--team", required=True)
    qrm.add_argument("--backend")
    qrm.set_defaults(run=cmd_quota_rm)

    t = sub.add_parser("team", help="which team a user reads for")
    ts = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tadd = ts.add_parser("add", parents=[common], help="put USER in TEAM")
    tadd.add_argument("user")
    tadd.add_argument("team")
    tadd.set_defaults(run=cmd_team_add)
    trm = ts.add_parser("rm", parents=[common], help="forget USER's team (config mapping stays)")
    trm.add_argument("user")
    trm.set_defaults(run=cmd_team_rm)
    tls = ts.add_parser("list", parents=[common], help="users and teams")
    tls.set_defaults(run=cmd_team_list)

    m = sub.add_parser("move", parents=[common], help="copy or move objects between backends")
    m.add_argument("--src", required=True, metavar="BACKEND:PATH")
    m.add_argument("--dst", required=True, metavar="BACKEND:PATH")
    m.add_argument("--recursive", "-r", action="store_true")
    m.add_argument(
        "--delete", action="store_true", help="delete each source once its copy is verified"
    )
    m.set_defaults(run=cmd_move)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        from warpdrive.control.serve import serve

        try:
            return serve(args.addr, args.database, args.token_env, args.private_reads)
        except WarpDriveError as exc:
            print(f"warpdrive-ctl serve: {printable(str(exc))}", file=sys.stderr)
            return 2
    try:
        config = load_config(args.config)
        command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
        cache_root = os.path.join(config.cache.path, LAYOUT_VERSION)
        if command in NEED_CACHE and not os.path.isdir(cache_root):
            raise WarpDriveError(
                f"no cache at {config.cache.path} yet (warpdrive-mount or warpdrive-ctl warm "
                "creates it)"
            )
        if args.command == "warm":
            cache = dataclasses.replace(config.cache, max_parallel_fetch=max(1, args.workers))
            config = dataclasses.replace(config, cache=cache)
        # The read facade for what reads (warm, paths), the admin facade for the rest; each
        # opens the cache and the backends only if a command uses it.
        with WarpDrive(config) as wd, Admin(config) as admin:
            result: int = args.run(args, wd, admin)
            return result
    except KeyboardInterrupt:
        print("warpdrive-ctl: interrupted", file=sys.stderr)
        return 130
    except (WarpDriveError, OSError, RuntimeError) as exc:
        print(f"warpdrive-ctl {args.command}: {printable(str(exc))}", file=sys.stderr)
        return 2


def _store(admin: Admin) -> GovernanceStore:
    return GovernanceStore(admin.cache_root)


# -- cache operations -------------------------------------------------------------------------


def cmd_warm(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    if args.backend:
        if args.backend not in wd.backends:
            raise WarpDriveError(f"no backend named {args.backend!r}")
        paths = [wd.path_of(args.backend, args.prefix.strip("/"))]
        recursive = True
    elif args.paths:
        paths, recursive = args.paths, args.recursive
    else:
        raise WarpDriveError("give PATH… or --backend NAME [--prefix P]")
    if args.num_nodes is not None or args.node_rank is not None:
        files = node_share(wd, args)
    else:
        files = [f.path for path in paths for f in objects_under(wd, path, recursive)]
    plan = warm.plan(wd, files, args.max_size)
    if args.dry_run:
        emit_record(
            {
                "objects": plan.objects,
                "bytes_to_fetch": plan.missing_bytes,
                "bytes_cached": plan.cached_bytes,
                "skipped_for_budget": plan.skipped_for_budget,
            },
            args.format,
        )
        return 0
    result = warm.run(wd, plan, args.workers, quiet=args.quiet)
    summary = {
        "objects": result.objects,
        "bytes_fetched": result.fetched_bytes,
        "bytes_already_cached": result.cached_bytes,
        "seconds": round(result.seconds, 2),
        "mb_per_s": round(result.mb_per_s, 1),
        "skipped_for_budget": result.skipped_for_budget,
        "failed": result.failed,
        "interrupted": result.interrupted,
    }
    emit_record(summary, args.format)
    for path, error in result.failed.items():
        print(f"warpdrive-ctl warm: {path}: {error}", file=sys.stderr)
    if result.interrupted:
        return 130
    return 1 if result.failed else 0


def node_share(wd: WarpDrive, args: argparse.Namespace) -> list[str]:
    """The shards node ``--node-rank`` reads every epoch of a run of the dataset ``PATH…``."""
    nodes, node = args.num_nodes, args.node_rank
    if nodes is None or node is None:
        raise WarpDriveError("--node-rank and --num-nodes go together")
    if args.backend or not args.paths:
        raise WarpDriveError("--num-nodes takes the dataset's shard URLs as PATH…")
    if nodes < 1 or not 0 <= node < nodes:
        raise WarpDriveError(f"--node-rank {node} --num-nodes {nodes}: need 0 <= rank < count")
    try:
        groups = [expand(wd, pattern) for pattern in args.paths]
    except ValueError as exc:
        raise WarpDriveError(str(exc)) from None
    return [s.path for s in node_shards(groups, args.seed, not args.no_shuffle, nodes, node)]


def cmd_stats(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    emit_record(cachecmds.stats(admin), args.format)
    return 0


def cmd_evict(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    plans = [cachecmds.evict_plan(wd, admin, path, args.recursive) for path in args.paths]
    rows = [cachecmds.evict(admin, plan) for plan in plans]  # all checked before any goes
    emit(rows, ["path", "objects", "blocks", "bytes"], args.format)
    return 0


def cmd_status(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    healthy, report = cachecmds.status(admin)
    emit_record(report, args.format)
    return 0 if healthy else 1


def cmd_job_start(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    store = _store(admin)
    try:
        emit_record(jobs.start(admin, store, args.job_id), args.format)
    finally:
        store.close()
    return 0


def cmd_job_report(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    store = _store(admin)
    try:
        record, sent = jobs.report(admin, store, args.job_id, args.user, args.status)
    finally:
        store.close()
    emit_record({**record, "sent_to_control_plane": sent}, args.format)
    return 0


# -- governance --------------------------------------------------------------------------------


def cmd_usage(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    store = _store(admin)
    try:
        rows = govern.usage(admin, store, args.group_by, args.backend)
    finally:
        store.close()
    columns = ["group", "bytes_read", "files_accessed", "hit_ratio", "cached_bytes", "last_access"]
    emit(rows, columns, args.format)
    return 0


def cmd_stale(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    store = _store(admin)
    try:
        rows = govern.stale(admin, store, args.days, args.min_size, args.backend, args.now)
    finally:
        store.close()
    if args.evict:
        evicted, skipped = admin.evict_unpinned([r["oid"] for r in rows if r["oid"] is not None])
        pinned = f" ({len(skipped)} objects skipped: pinned, open with passthrough)"
        print(
            f"warpdrive-ctl stale: evicted {evicted} cached blocks{pinned if skipped else ''}",
            file=sys.stderr,
        )
    columns = [
        "path",
        "size",
        "last_access",
        "modified_at",
        "cached_bytes",
        "source",
        "backend",
        "key",
    ]
    emit(rows, columns, args.format)
    return 0


def cmd_crawl(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    store = _store(admin)
    try:
        rows = govern.run_crawl(admin, store, args.backend)
    finally:
        store.close()
    emit(rows, ["backend", "objects", "bytes"], args.format)
    return 0


def cmd_quota_set(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    evicted = govern.set_quota(admin, args.team, args.backend, args.soft, args.hard)
    scope = f" on {args.backend}" if args.backend else ""
    print(
        f"quota for team {args.team}{scope}: soft {format_size(args.soft)}, hard "
        f"{format_size(args.hard)}; {evicted} blocks evicted to honour it",
        file=sys.stderr,
    )
    return cmd_quota_list(args, wd, admin)


def cmd_quota_list(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    emit(
        govern.quota_rows(admin),
        ["team", "backend", "soft", "hard", "usage_bytes", "status"],
        args.format,
    )
    return 0


def cmd_quota_rm(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    if not admin.remove_quota(args.team, args.backend or ""):
        raise WarpDriveError(
            f"no quota for team {args.team!r}" + (f" on {args.backend}" if args.backend else "")
        )
    return cmd_quota_list(args, wd, admin)


def cmd_team_add(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    admin.set_user_team(args.user, args.team)
    return cmd_team_list(args, wd, admin)


def cmd_team_rm(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    if admin.index.user_team(args.user) is None:
        raise WarpDriveError(f"user {args.user!r} has no team set with warpdrive-ctl")
    admin.set_user_team(args.user, None)
    return cmd_team_list(args, wd, admin)


def cmd_team_list(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    emit(govern.team_rows(admin), ["user", "team", "source"], args.format)
    return 0


def cmd_move(args: argparse.Namespace, wd: WarpDrive, admin: Admin) -> int:
    done, failed = mover.move(admin, args.src, args.dst, args.recursive, args.delete)
    rows: list[dict[str, Any]] = [dataclasses.asdict(m) for m in done]
    emit(rows, ["src", "dst", "size", "sha256", "deleted"], args.format)
    for label, error in failed.items():
        print(f"warpdrive-ctl move: {label}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
