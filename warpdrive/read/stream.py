"""A stream: one open handle's reading of one object version (``handle → stream → blocks``).

The stream owns what is per handle: the readahead state (``prefetch.Readahead``), the reader
(user and team) and what its reads found (hits, fetches, late prefetches, bytes). It asks the
block source (``blocks.py``) for bytes and hears back, block by block, what each was; it
tells the prefetcher about its reads. Nothing below it knows of handles.

A whole cached file: once every block of the object is cached and verified, reads go straight to
the cache file (one ``pread``/``preadv``), while the eviction clock shows nothing left the cache
since and the verification is recent; otherwise through the block source, which looks again
every ``WHOLE_CHECK_EVERY`` reads.
"""

from __future__ import annotations

import os
import time

from warpdrive.cache import ObjectFile, ObjectVersion
from warpdrive.read.blocks import BlockSource, CacheFile
from warpdrive.read.prefetch import Prefetcher, Readahead

WHOLE_CHECK_EVERY = 16  # reads through the block source between looks for a whole cache file
# Direct reads of a whole cache file counted in the metrics together (a Prometheus increment
# takes a lock: two per read were a third of a hot read's own cost), and at close.
COUNT_EVERY = 64


class Stream:
    """Thread-safe for reads (the kernel may send several reads of one open file at once); the
    counts are statistics, approximate under such concurrent reads. ``close`` is idempotent."""

    __slots__ = (
        "_blocks",
        "_clock",
        "_counted",
        "_file",
        "_pins",
        "_prefetcher",
        "_slow_reads",
        "_whole",
        "bytes_read",
        "cache_bytes",
        "fetched",
        "hits",
        "late",
        "obj",
        "ra",
        "team",
        "user",
    )

    def __init__(
        self,
        blocks: BlockSource,
        prefetcher: Prefetcher,
        obj: ObjectVersion,
        user: str,
        team: str | None,
        readahead: bool = True,
    ) -> None:
        """``readahead=False``: a one-off read that names the bytes it wants (no readahead)."""
        self._blocks = blocks
        self._clock = blocks.clock
        self._counted = [0, 0, 0]  # direct reads, blocks, bytes not yet in the metrics
        self._prefetcher = prefetcher
        self.obj = obj
        self.user = user
        self.team = team  # whose quota this stream's fetches count against
        self.ra: Readahead | None = prefetcher.open(obj, team) if readahead else None
        self._file: CacheFile = blocks.file(obj)
        self.bytes_read = 0  # bytes this stream returned
        self.hits = 0  # blocks read from the cache
        self.fetched = 0  # blocks fetched from the backend for this stream's reads
        self.late = 0  # of those, blocks prefetched but not early enough
        self.cache_bytes = 0  # of bytes_read, bytes read from the cache
        # Set while every block is cached and verified: reads go straight to the cache file.
        self._whole: ObjectFile | None = None
        # Reads through the block source since the last look for it. A one-off read does
        # not look first: the block source reads verified blocks with one preadv too.
        self._slow_reads = 0 if readahead else 1
        self._pins = 0  # descriptors handed out by backing(): the object is pinned till close

    # -- reads (the caller clamps to the object's size; n > 0) -----------------------------

    def read(self, offset: int, n: int) -> bytes | bytearray | memoryview:
        """``n`` bytes at ``offset``, as any bytes-like object (may wait for the backend)."""
        whole = self._whole if self._slow_reads else self._first_look()
        if whole is not None:
            served = self._read_whole(whole, offset, n)
            if served is not None:
                return served
        if self.ra is not None:
            self._prefetcher.readahead(self.ra, offset, offset + n)
        data = self._blocks.read(self.obj, offset, n, self._file, self)
        self.bytes_read += n
        self._after_slow_read()
        return data

    def read_into(self, offset: int, dst: memoryview) -> None:
        """Fill ``dst`` with the bytes at ``offset`` (may wait for the backend)."""
        n = len(dst)
        whole = self._whole if self._slow_reads else self._first_look()
        if whole is not None and self._read_whole(whole, offset, n, dst) is not None:
            return
        if self.ra is not None:
            self._prefetcher.readahead(self.ra, offset, offset + n)
        self._blocks.read_into(self.obj, offset, dst, self._file, self)
        self.bytes_read += n
        self._after_slow_read()

    def backing(self) -> int | None:
        """A descriptor of the object's cache file for the kernel to read (FUSE passthrough),
        the caller's to close, if the object is cached whole and verified; the object stays
        pinned until this stream closes. None: read through this stream."""
        fd = self._blocks.open_backing(self.obj)
        if fd is not None:
            self._pins += 1
        return fd

    def read_by_kernel(self) -> None:
        """Count the whole object as read from the cache (see ``Handle.read_by_kernel``)."""
        size, blocks = self.obj.size, self.obj.nblocks
        self.bytes_read += size
        self.cache_bytes += size
        self.hits += blocks
        self._blocks.served_whole(blocks, size)

    def close(self) -> None:
        self._count_whole()
        self._whole = None
        self._file.close()
        if self.ra is not None:
            self._prefetcher.release(self.ra)
        pins, self._pins = self._pins, 0
        for _ in range(pins):
            self._blocks.unpin(self.obj)

    # -- what the block source reports (blocks.BlockReport) ---------------------------------

    def hit(self, index: int, n: int) -> None:
        self.hits += 1
        self.cache_bytes += n
        self._prefetcher.note_read(self.ra, self.obj.block_key(index), index)

    def hit_run(self, first: int, last: int, n: int) -> None:
        self.hits += last - first + 1
        self.cache_bytes += n
        ra = self.ra
        if ra is None or self._prefetcher.tracking(ra):
            for index in range(first, last + 1):
                self._prefetcher.note_read(ra, self.obj.block_key(index), index)

    def missed(self, index: int) -> None:
        ra = self.ra
        if ra is not None and self._prefetcher.prefetched(ra, self.obj.block_key(index), index):
            self._prefetcher.late(ra)  # prefetched, but not early enough: a wider window
            self.late += 1

    def fetched_block(self, index: int, n: int) -> None:
        self.fetched += 1
        self._prefetcher.note_read(self.ra, self.obj.block_key(index), index)

    # -- a whole cached file ---------------------------------------------------------------

    def _read_whole(
        self,
        whole: ObjectFile,
        offset: int,
        n: int,
        dst: memoryview | None = None,
    ) -> bytes | bytearray | memoryview | None:
        """A read straight from the cache file, while nothing was evicted since every block
        was found cached and verified (the eviction clock reads the same before and after) and
        the verification is recent; into ``dst`` (returned) or as new bytes. None: take the
        block source (and stop coming here until the file is found whole again)."""
        clock = self._clock
        at = whole.whole_at
        data: bytes | bytearray | memoryview | None = None
        if clock() == at and time.monotonic() < whole.whole_until:
            try:
                if dst is not None:
                    got = os.preadv(whole.fd, [dst], offset)
                    data = dst if got == n else None
                else:
                    data = os.pread(whole.fd, n, offset)
                    if len(data) != n:
                        data = None
            except OSError:
                data = None
            if data is not None and clock() == at:
                self.bytes_read += n
                bs = self.obj.block_size
                first, last = offset // bs, (offset + n - 1) // bs
                self.hit_run(first, last, n)
                counted = self._counted
                counted[0] += 1
                counted[1] += last - first + 1
                counted[2] += n
                if counted[0] >= COUNT_EVERY:
                    self._count_whole()
                return data
        self._whole = None
        self._count_whole()
        return None

    def _count_whole(self) -> None:
        counted = self._counted
        if counted[0]:
            self._blocks.served_whole(counted[1], counted[2])
            counted[:] = [0, 0, 0]

    def _first_look(self) -> ObjectFile | None:
        """Before the first read: if the object is whole in the cache, no read takes the block
        source (a warm epoch's files are)."""
        blocks, obj = self._blocks, self.obj
        if self._whole is None and (blocks.seen_whole(obj) or blocks.cached(obj, obj.nblocks - 1)):
            self._slow_reads = WHOLE_CHECK_EVERY - 1  # the next slow read does not look again
            self._whole = blocks.whole(obj, self._file)
        return self._whole

    def _after_slow_read(self) -> None:
        """Now and then, see whether the block source is still needed (every block cached and
        verified: then reads go straight to the file)."""
        self._slow_reads += 1
        if self._slow_reads % WHOLE_CHECK_EVERY != 1:
            return
        whole = self._blocks.whole(self.obj, self._file)
        if whole is not None:
            self._whole = whole
