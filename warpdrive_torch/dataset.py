"""ShardDataset: WebDataset shards read in-process through the WarpDrive cache.

One epoch, in each DataLoader worker of each rank::

    shards ──this rank's shards of the epoch (warpdrive.partition: the node's fixed set,
      permuted by (seed, epoch), dealt to its ranks; or the global permutation)──▶ workers
      ──▶ for each of my shards: hint the next K to the cache, read its tar (tario), group
          members into samples by key ──▶ bounded shuffle buffer (seed, epoch, rank, worker)
      ──▶ [epoch_size: stop at this worker's quota, or pad by another pass] ──▶ decode, tag

Every step is a pure function of (shards, seed, epoch, layout, worker, workers), so the
stream can be replayed: a sample's position in its worker's stream (``__index__``) is all a
checkpoint needs. Resuming replays the stream without reading the data of what was consumed
(tar headers only, skipping member bytes) and continues at the first unconsumed position.
A checkpoint also names the samples handed out (``progress.Consumed``: ordinals by shard), so
resuming on another layout (more or fewer nodes, ranks or workers) from every rank's state reads
nothing to find them: each new rank skips them in its new shards for the rest of the epoch.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch.utils.data import IterableDataset

from warpdrive import Config, WarpDrive
from warpdrive.errors import WarpDriveError
from warpdrive.partition import MODES, Layout, quotas, rank_shards, share
from warpdrive.shards import Shard
from warpdrive_torch.decode import DecodeSpec, Sample, make_decoder
from warpdrive_torch.handlers import Handler, reraise_exception
from warpdrive_torch.progress import Consumed
from warpdrive_torch.sources import CacheSource, FileSource, Source
from warpdrive_torch.tario import ShardError, iter_members
from warpdrive_torch.world import Place, worker_and_count

log = logging.getLogger(__name__)

STATE_VERSION = 2


@dataclass(slots=True)
class _Pending:
    """A sample as grouped from its shard: field data, or where it lies when only the headers
    were read (replay)."""

    key: str
    shard: Shard
    ordinal: int  # the sample's place in its shard: what a checkpoint's skip set names
    fields: dict[str, bytes | tuple[int, int]] = field(default_factory=dict)

    def load(self, source: Source) -> Sample:
        sample: Sample = {"__key__": self.key, "__url__": self.shard.url}
        for ext, value in self.fields.items():
            sample[ext] = source.read(self.shard, *value) if isinstance(value, tuple) else value
        return sample


@dataclass(slots=True)
class _Replay:
    """Positions below ``until`` were consumed before a checkpoint: read no data for them."""

    until: int
    emitted: int = 0

    @property
    def active(self) -> bool:
        return self.emitted < self.until


class ShardDataset(IterableDataset[Sample]):
    """WebDataset shards as an ``IterableDataset`` of sample dicts, read through the cache.

    ``urls``: brace patterns, globs, a list, several roots at once; ``warpdrive://`` URLs or
    paths under the mount point (read in-process all the same, no mount needed). Each item of
    the list (a pattern, or itself a list of shards) is a group, e.g. a region.
    ``wd``: a WarpDrive, a Config, a config path, or None for ``$WARPDRIVE_CONFIG``.
    ``reader``: ``"warpdrive"`` (through the cache) or ``"posix"`` (plain files, e.g. under a
    mount or a local copy: the same samples in the same order, no cache, no hints).
    ``decode``: None (bytes), ``"pil"``, ``"torch"``, ``{ext: fn}`` or ``fn(sample)``.
    ``shuffle``: permute shards by (seed, epoch) and samples through a buffer of
    ``shuffle_buffer``; with several URL patterns (regions), each pattern's shards are permuted
    and the patterns taken in turn, so every region is read throughout the epoch.
    ``partition``: ``"node"`` (default): each node of the job reads the same shards every
    epoch of a run, so its cache serves every epoch after the first; ``"global"``: each epoch
    deals a permutation of all shards to all ranks. With one node both give the same order.
    ``rank``/``world_size``, ``node_rank``/``num_nodes``: default from torch.distributed and
    the launcher (torchrun, Slurm), resolved when iteration starts; see
    :mod:`warpdrive_torch.world`.
    ``epoch_size``: samples per rank per epoch, for equal steps on every rank: each worker stops
    at its share (the rest of its samples are dropped this epoch) or, when short, pads with a
    further pass over its own shards (repeats); None: every sample once.
    ``prefetch_shards``: how many of its next shards a worker hints to the cache (0: none).
    ``handler``: what a damaged shard or undecodable sample does (see ``handlers``).
    """

    def __init__(
        self,
        urls: str | Iterable[str | Sequence[str]],
        *,
        wd: WarpDrive | Config | str | os.PathLike[str] | None = None,
        reader: str = "warpdrive",
        decode: DecodeSpec = None,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 256,
        partition: str = "node",
        rank: int | None = None,
        world_size: int | None = None,
        node_rank: int | None = None,
        num_nodes: int | None = None,
        epoch_size: int | None = None,
        prefetch_shards: int = 2,
        handler: Handler = reraise_exception,
    ) -> None:
        super().__init__()
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer={shuffle_buffer}: must be at least 1")
        if prefetch_shards < 0:
            raise ValueError(f"prefetch_shards={prefetch_shards}: must be 0 or more")
        if epoch_size is not None and epoch_size < 1:
            raise ValueError(f"epoch_size={epoch_size}: must be at least 1")
        if partition not in MODES:
            raise ValueError(f"partition={partition!r}: expected one of {', '.join(MODES)}")
        if reader == "warpdrive":
            self.source: Source = CacheSource(wd)
        elif reader == "posix":
            self.source = FileSource()
        else:
            raise ValueError(f"reader={reader!r}: expected 'warpdrive' or 'posix'")
        patterns = [urls] if isinstance(urls, str) else list(urls)
        self._groups = [self.source.expand(p) for p in patterns] or [self.source.expand([])]
        self.shards = [shard for group in self._groups for shard in group]
        self.decoder = make_decoder(decode)
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.partition = partition
        self._place = Place(rank, world_size, node_rank, num_nodes)
        self.epoch_size = epoch_size
        self.prefetch_shards = prefetch_shards
        self.handler = handler
        self.epoch = 0
        self._resume: dict[str, Any] | None = None
        # Handed out so far this epoch (in-process iteration only, num_workers=0; with workers
        # ResumableLoader keeps them from the batches).
        self._positions: dict[int, int] = {}
        self._consumed = Consumed()
        # This epoch continues a checkpoint of another layout: the samples of this rank's
        # shards handed out before it, and how many samples each old rank had given.
        self._skip: frozenset[tuple[str, int]] = frozenset()
        self._done = 0

    @property
    def layout(self) -> Layout:
        """This process's place in the job, resolved now unless given (see ``world.Place``)."""
        return self._place.get()

    @property
    def rank(self) -> int:
        return self.layout.rank

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    def __bool__(self) -> bool:  # a dataset is there even when its length is unknown
        return True

    def __len__(self) -> int:
        """Samples per epoch on this rank: known only with ``epoch_size``."""
        if self.epoch_size is None:
            raise TypeError("ShardDataset has no length unless epoch_size is given")
        return self.epoch_size

    # Where every ShardDataset of this process takes its epoch from when iteration starts, if
    # set: the Lightning callback points it at the trainer (warpdrive_torch.lightning).
    epoch_source: ClassVar[Callable[[], int] | None] = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration reads (its shard and sample order)."""
        if epoch != self.epoch:
            self._resume = None
            self._positions, self._consumed = {}, Consumed()
            self._skip, self._done = frozenset(), 0
        self.epoch = epoch

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(
        self,
        positions: dict[int, int] | None = None,
        num_workers: int | None = None,
        consumed: Consumed | None = None,
        next_worker: int = 0,
    ) -> dict[str, Any]:
        """Where this rank stands in its epoch. Iterating in-process this is tracked here;
        inside a DataLoader worker (torchdata's ``StatefulDataLoader`` asks each worker) it is
        that worker's stream, of as many workers as the loader has; :class:`ResumableLoader`
        passes the positions it saw in the batches. To resume on another layout, save every
        rank's state (e.g. ``torch.distributed.all_gather_object``) and load the list.
        ``next_worker``: the worker stream whose batch a loader takes next (ResumableLoader)."""
        if num_workers is None:
            num_workers = worker_and_count()[1]
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "partition": self.partition,
            "layout": self.layout.as_dict(),
            "num_workers": max(1, num_workers),
            "epoch_size": self.epoch_size,
            "shards": len(self.shards),
            "positions": {str(w): n for w, n in sorted((positions or self._positions).items())},
            "consumed": (consumed if consumed is not None else self._consumed).state(),
            "skipped": _ranges(self._skip),
            "done": self._done,
            "next_worker": next_worker,
        }

    def load_state_dict(
        self, state: dict[str, Any] | Sequence[dict[str, Any]], num_workers: int | None = None
    ) -> None:
        """Continue from a checkpoint at the next iteration: the same epoch, the samples not
        yet consumed, exactly once. ``state``: this rank's state (the same layout and number of
        workers), or the states of all ranks of the checkpoint (any layout, any number of
        workers; ``num_workers``: this run's, when it uses DataLoader workers). ValueError
        naming what differs if it cannot be continued."""
        states = [state] if isinstance(state, dict) else list(state)
        if not states:
            raise ValueError("cannot resume: no state given")
        for st in states:
            self._check_run(st)
        epoch = int(states[0]["epoch"])
        if len({int(st["epoch"]) for st in states}) > 1:
            raise ValueError("cannot resume: the states are of different epochs")
        self.set_epoch(epoch)
        self._resume, self._positions, self._consumed = None, {}, Consumed()
        self._skip, self._done = frozenset(), 0
        mine = [st for st in states if _layout(st) == self.layout]
        ranks = sorted(_layout(st).rank for st in states)
        whole = ranks == list(range(_layout(states[0]).world_size))
        if mine and (num_workers is None or mine[0]["num_workers"] == max(1, num_workers)):
            state = mine[0]  # this rank's stream replays to its position
            self._resume = state
            self._positions = {int(w): int(n) for w, n in state["positions"].items()}
            self._consumed = Consumed(state["consumed"])
            self._skip = frozenset(Consumed(state["skipped"]).pairs())
            self._done = int(state["done"])
        elif whole:  # another layout: skip what any old rank handed out, in this rank's shards
            handed = Consumed()
            for st in states:
                handed.update(Consumed(st["consumed"]))
                handed.update(Consumed(st["skipped"]))
            urls = {shard.url for shard in self._rank_shards(self.layout)}
            self._skip = frozenset(handed.pairs(urls))
            self._done = max(int(st["done"]) + sum(st["positions"].values()) for st in states)
        else:
            old = _layout(states[0])
            raise ValueError(
                f"cannot resume: the checkpoint is of rank(s) {ranks} of {old.world_size} on "
                f"{old.nodes} node(s), this is rank {self.rank} of {self.world_size} on "
                f"{self.layout.nodes}; load the states of all ranks to change the layout"
            )

    def _check_run(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r}: expected {STATE_VERSION}")
        for name, mine in (
            ("seed", self.seed),
            ("shards", len(self.shards)),
            ("partition", self.partition),
            ("epoch_size", self.epoch_size),
        ):
            if state[name] != mine:
                raise ValueError(
                    f"cannot resume: the checkpoint has {name}={state[name]!r}, "
                    f"this dataset {name}={mine!r}"
                )

    # -- iteration -------------------------------------------------------------------------

    def shard_order(self, epoch: int | None = None) -> list[Shard]:
        """All shards in the global order of ``epoch`` (``partition="global"``'s, before
        they are dealt to ranks and workers)."""
        epoch = self.epoch if epoch is None else epoch
        return rank_shards(
            self._groups, Layout(), seed=self.seed, epoch=epoch, shuffle=self.shuffle
        )

    def _rank_shards(self, layout: Layout) -> list[Shard]:
        return rank_shards(
            self._groups,
            layout,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
            mode=self.partition,
        )

    def _quota(self, worker: int, workers: int, done: int) -> int | None:
        """epoch_size's share of one worker (None: no epoch_size), after ``done`` samples per
        rank were given before a change of layout."""
        if self.epoch_size is None:
            return None
        return quotas(max(0, self.epoch_size - done), [1] * workers)[worker]

    def _follow_epoch(self) -> None:
        source = ShardDataset.epoch_source
        if source is not None:
            self.set_epoch(source())

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a spawned DataLoader worker as iteration starts: the epoch as of now (a
        # forked worker asks the inherited source itself).
        self._follow_epoch()
        return dict(self.__dict__)

    def __iter__(self) -> Iterator[Sample]:
        self._follow_epoch()
        worker, workers = worker_and_count()
        start = 0
        if self._resume is not None:
            if self._resume["num_workers"] != workers:
                raise ValueError(
                    f"cannot resume: the checkpoint was taken with {self._resume['num_workers']} "
                    f"loader worker(s), this loader has {workers}"
                )
            # A DataLoader takes batches from its workers in turn starting at worker 0; the
            # stream whose turn was next at the checkpoint is given to worker 0, so batches
            # interleave as they would have without the interruption.
            worker = (worker + int(self._resume.get("next_worker", 0))) % workers
            start = int(self._resume["positions"].get(str(worker), 0))
            self._resume = None  # a later iteration starts the epoch afresh
        mine = share(self._rank_shards(self.layout), worker, workers)
        want = self._quota(worker, workers, self._done)
        if want and not mine:
            raise ValueError(
                f"epoch_size={self.epoch_size}: rank {self.rank} worker {worker} has no "
                f"shard to read ({len(self.shards)} shards for {self.world_size} rank(s) × "
                f"{workers} worker(s)); use fewer workers or more shards"
            )
        return self._stream(mine, worker, want, start)

    def _stream(
        self, mine: list[Shard], worker: int, want: int | None, start: int
    ) -> Iterator[Sample]:
        replay = _Replay(start)
        stream = self._ordered(mine, worker, want, replay)
        try:
            for position, pending in enumerate(stream):
                replay.emitted = position + 1
                if position < start:
                    continue
                self._positions[worker] = position + 1
                self._consumed.add(pending.shard.url, pending.ordinal)
                try:
                    sample = pending.load(self.source)
                    if self.decoder is not None:
                        sample = self.decoder(sample)
                except Exception as exc:  # the handler decides
                    error = ShardError(
                        pending.shard.url, None, None, f"sample {pending.key!r}: {exc}"
                    )
                    error.__cause__ = exc
                    if self._skip_error(error, "sample"):
                        continue
                    return
                sample["__worker__"] = worker
                sample["__index__"] = position
                sample["__ordinal__"] = pending.ordinal
                yield sample
        finally:
            self.source.flush()

    def _ordered(
        self, mine: list[Shard], worker: int, want: int | None, replay: _Replay
    ) -> Iterator[_Pending]:
        """This worker's samples in output order (before decoding): all of them but those
        handed out before a change of layout, or exactly ``want`` (epoch_size's share), cut
        short or padded by further passes (which may repeat any sample)."""
        skip = self._skip
        produced = 0
        if want == 0:
            return
        for pass_ in range(1 if want is None else 1 << 30):
            stream = self._grouped(mine, replay)
            if skip and pass_ == 0:
                stream = (p for p in stream if (p.shard.url, p.ordinal) not in skip)
            if self.shuffle:
                rng = random.Random(
                    f"samples:{self.seed}:{self.epoch}:{self.rank}:{worker}:{pass_}"
                )
                stream = _shuffled(stream, self.shuffle_buffer, rng)
            before = produced
            for pending in stream:
                produced += 1
                yield pending
                if want is not None and produced >= want:
                    return
            if want is None or produced >= want or produced == before:
                return

    def _grouped(self, mine: list[Shard], replay: _Replay) -> Iterator[_Pending]:
        """Samples of each shard in turn, hinting the next shards to the cache as it goes."""
        hinted = 0
        for j, shard in enumerate(mine):
            ahead = mine[max(hinted, j + 1) : j + 1 + self.prefetch_shards]
            if ahead:
                self.source.prefetch(ahead)
                hinted = j + 1 + self.prefetch_shards
            try:
                yield from self._samples_of(shard, replay)
            except (WarpDriveError, OSError) as exc:
                if not self._skip_error(exc, "shard"):
                    return

    def _samples_of(self, shard: Shard, replay: _Replay) -> Iterator[_Pending]:
        with self.source.open(shard) as f:
            current: _Pending | None = None
            ordinal = 0
            try:
                for member in iter_members(f, shard.url, skip_data=replay.active):
                    key, ext = split_name(member.name)
                    if key is None:
                        continue
                    if current is not None and current.key != key:
                        yield current
                        current = None
                    if current is None:
                        current = _Pending(key, shard, ordinal)
                        ordinal += 1
                    if ext in current.fields:
                        raise ShardError(
                            shard.url, member.name, member.offset, f"duplicate field {ext!r}"
                        )
                    current.fields[ext] = (
                        member.data if member.data is not None else (member.offset, member.size)
                    )
            except ShardError as exc:
                # Damage in a member of the next sample leaves the current one whole; damage
                # in an unnamed header may have cut it short, so it goes with the rest.
                named = exc.member is not None and split_name(exc.member)[0]
                if current is not None and named and named != current.key:
                    yield current
                raise
            if current is not None:
                yield current

    def _skip_error(self, exc: BaseException, reason: str) -> bool:
        """Ask the handler; count the skip if it lets the epoch go on."""
        go_on = self.handler(exc)
        if go_on:
            self.source.skipped(reason)
            log.warning("skipped a %s: %s", reason, exc)
        return bool(go_on)


def _layout(state: dict[str, Any]) -> Layout:
    return Layout(**state["layout"])


def _ranges(pairs: frozenset[tuple[str, int]]) -> dict[str, list[list[int]]]:
    consumed = Consumed()
    for url, ordinal in sorted(pairs):
        consumed.add(url, ordinal)
    return consumed.state()


def _shuffled(stream: Iterator[_Pending], size: int, rng: random.Random) -> Iterator[_Pending]:
    """A bounded shuffle: fill a buffer of ``size``, then emit a random slot per arrival."""
    buf: list[_Pending] = []
    for item in stream:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def split_name(name: str) -> tuple[str | None, str]:
    """WebDataset's grouping: key = the path up to the first dot of the file name, field = the
    rest, lowercased; ``__meta__`` files and names without a dot belong to no sample."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or (base.startswith("__") and base.endswith("__")):
        return None, ""
    return (f"{directory}/{stem}" if directory else stem), ext.lower()
