"""``warpdrive-ctl warm``: fetch every missing block of some objects into the shared cache.

Only missing blocks are fetched, so a second warm fetches nothing and an interrupted one resumes
where it stopped. ``--max-size`` stops before the bytes to fetch would exceed the budget. Blocks
are fetched ``--workers`` at a time through the read path's fetcher (the same retries, the same
cache), and count against the team of the user who runs warm.

Progress goes to stderr: on a terminal a tqdm bar, redrawn in place and as wide as the terminal
(measured again at each redraw, so a resize is followed); otherwise (a log, a pipe) a plain line
every ``REPORT_EVERY`` seconds; with ``quiet``, nothing. The result is the caller's to print.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm import tqdm

from warpdrive.cache import ObjectVersion
from warpdrive.errors import WarpDriveError
from warpdrive.read.fetch import BlockData, Priority
from warpdrive.read.reader import WarpDrive
from warpdrive.units import format_size

REPORT_EVERY = 5.0  # seconds between progress lines when not on a terminal


@dataclass
class Plan:
    """What a warm will do: objects with their missing blocks, and what is cached already."""

    todo: list[tuple[ObjectVersion, str, list[int]]] = field(default_factory=list)
    objects: int = 0
    missing_bytes: int = 0
    cached_bytes: int = 0
    skipped_for_budget: int = 0
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    objects: int
    fetched_bytes: int
    cached_bytes: int
    seconds: float
    failed: dict[str, str]
    interrupted: bool = False
    skipped_for_budget: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.fetched_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


def plan(wd: WarpDrive, paths: Iterable[str], max_size: int | None) -> Plan:
    """Which blocks each object misses (checked in the index), within the byte budget."""
    out = Plan()
    for path in paths:
        try:
            obj = wd.version(path)
        except WarpDriveError as exc:
            out.failed[path] = str(exc)
            continue
        missing = [b for b in range(obj.nblocks) if not wd.cached(obj, b)]
        need = sum(obj.block_len(b) for b in missing)
        if max_size is not None and out.missing_bytes + need > max_size:
            out.skipped_for_budget += 1
            continue
        out.objects += 1
        out.missing_bytes += need
        out.cached_bytes += obj.size - need
        if missing:
            out.todo.append((obj, path, missing))
    return out


def run(
    wd: WarpDrive,
    work: Plan,
    workers: int,
    progress: TextIO | None = None,
    quiet: bool = False,
) -> Result:
    """Fetch the planned blocks, at most ``2 × workers`` requested at once.

    Progress goes to ``progress`` (default stderr), none with ``quiet``."""
    out = None if quiet else progress if progress is not None else sys.stderr
    meter = _Progress(out, work.missing_bytes, len(work.todo))
    started = time.monotonic()
    inflight: dict[Future[BlockData], tuple[str, int]] = {}
    failed = dict(work.failed)
    fetched = 0
    interrupted = False
    team = wd.user_and_team()[1]
    pending = deque((obj, path, b) for obj, path, blocks in work.todo for b in blocks)
    remaining_per_path = {path: len(blocks) for _, path, blocks in work.todo}
    try:
        while pending or inflight:
            while pending and len(inflight) < 2 * workers:
                obj, path, index = pending.popleft()
                if path in failed:
                    continue
                for fut in wd.fetch_blocks(obj, [index], Priority.DEMAND, team).values():
                    inflight[fut] = (path, obj.block_len(index))
            if not inflight:
                continue
            done, _ = wait(inflight, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                path, size = inflight.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    failed.setdefault(path, str(exc))
                    continue
                fetched += size
                remaining_per_path[path] -= 1
                if remaining_per_path[path] == 0:
                    meter.file_done()
            meter.update(fetched)
    except KeyboardInterrupt:
        interrupted = True
    meter.finish(fetched)
    return Result(
        objects=work.objects,
        fetched_bytes=fetched,
        cached_bytes=work.cached_bytes,
        seconds=time.monotonic() - started,
        failed=failed,
        interrupted=interrupted,
        skipped_for_budget=work.skipped_for_budget,
    )


class _Progress:
    """A tqdm bar on a terminal, a plain line every few seconds otherwise; nothing without ``out``
    or without bytes to fetch."""

    def __init__(self, out: TextIO | None, total: int, files: int) -> None:
        self.out = out if total else None
        self.total = total
        self.files = files
        self.files_done = 0
        self.started = time.monotonic()
        self.last = 0.0
        self.bar: Any = None  # a tqdm (the package has no type information)
        if self.out is not None and self.out.isatty():
            self.bar = tqdm(
                total=total,
                desc="warm",
                unit="B",
                unit_scale=True,
                file=self.out,
                dynamic_ncols=True,  # the terminal's width, measured at each redraw
                mininterval=0.2,
                postfix=self._files(),
            )

    def _files(self) -> str:
        return f"{self.files_done}/{self.files} files"

    def file_done(self) -> None:
        self.files_done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(self._files(), refresh=False)

    def update(self, fetched: int, final: bool = False) -> None:
        if self.bar is not None:
            self.bar.update(fetched - self.bar.n)  # tqdm redraws at most every mininterval
            return
        if self.out is None:
            return
        now = time.monotonic()
        if not final and now - self.last < REPORT_EVERY:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        rate = fetched / elapsed
        pct = 100.0 * fetched / self.total
        eta = (self.total - fetched) / rate if rate > 0 else 0.0
        self.out.write(
            f"warm: {self._files()}  {format_size(fetched)}/{format_size(self.total)}  "
            f"{pct:5.1f}%  {rate / 1e6:7.1f} MB/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}\n"
        )
        self.out.flush()

    def finish(self, fetched: int) -> None:
        self.update(fetched, final=True)
        if self.bar is not None:
            self.bar.close()
