"""Block files on local disk: written whole to a temporary name, renamed into place, read back
only after their checksums match.

Layout under ``<cache.path>/v1/blocks/``: ``<oid[:2]>/<oid>.<index>.<nonce>``. The nonce makes
every write of a block a new file, so evicting one copy can never delete a newer one that another
process just wrote. Files are 0600 in 0700 directories.

Checksums are xxh3-64 over 64 KiB chunks, kept in the index. A read verifies exactly the chunks
it touches: the interior of the range lands straight in the caller's buffer, partial chunks at the
ends go through a small scratch buffer. A mismatch or a short file is reported, never returned.
"""

from __future__ import annotations

import errno
import os
import secrets
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from warpdrive.cache.keys import OID_LEN

CHUNK = 64 * 1024
_hash = xxhash.xxh3_64_intdigest
_TMP_PREFIX = ".tmp-"


def chunk_sums(data: bytes | memoryview) -> bytes:
    """The packed per-chunk checksums of a block's bytes (8 bytes per 64 KiB chunk)."""
    view = memoryview(data)
    sums = array("Q", (_hash(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)))
    return sums.tobytes()


@dataclass(frozen=True, slots=True)
class BlockFile:
    """A block file found on disk by :meth:`BlockStore.scan`."""

    path: str
    bkey: bytes
    nonce: int
    size: int
    mtime: float


class BlockView:
    """An open, verified-on-read block file. Not thread-safe: one per handle/caller."""

    __slots__ = ("_fd", "_sums", "nonce", "size")

    def __init__(self, fd: int, size: int, sums: bytes, nonce: int = 0) -> None:
        self._fd = fd
        self.size = size
        self.nonce = nonce
        self._sums = array("Q")
        self._sums.frombytes(sums)

    def read_into(self, offset: int, dst: memoryview) -> bool:
        """Fill ``dst`` with bytes ``[offset, offset+len(dst))`` of the block, verified.

        False if the file is short or any touched chunk fails its checksum; ``dst`` then holds
        garbage that the caller must overwrite. One ``preadv`` per call."""
        end, size = offset + len(dst), self.size
        if end > size or not dst:
            return end <= size
        first, last = offset // CHUNK, (end - 1) // CHUNK
        first_lo, last_lo = first * CHUNK, last * CHUNK
        first_hi, last_hi = min(first_lo + CHUNK, size), min(last_lo + CHUNK, size)
        head_partial = offset > first_lo or (first == last and end < last_hi)
        tail_partial = first != last and end < last_hi
        buffers: list[memoryview] = []
        head = tail = None
        if head_partial:
            head = bytearray(first_hi - first_lo)
            buffers.append(memoryview(head))
        inner_lo = first_hi if head_partial else offset
        inner_hi = last_lo if tail_partial else end
        if inner_hi > inner_lo:
            buffers.append(dst[inner_lo - offset : inner_hi - offset])
        if tail_partial:
            tail = bytearray(last_hi - last_lo)
            buffers.append(memoryview(tail))
        try:
            got = os.preadv(self._fd, buffers, first_lo if head_partial else offset)
        except OSError:
            return False
        if got != sum(len(b) for b in buffers):
            return False
        sums = self._sums
        if head is not None:
            if _hash(head) != sums[first]:
                return False
            dst[: min(end, first_hi) - offset] = memoryview(head)[
                offset - first_lo : min(end, first_hi) - first_lo
            ]
        if inner_hi > inner_lo:
            inner = dst[inner_lo - offset : inner_hi - offset]
            base = inner_lo // CHUNK
            for i in range(0, len(inner), CHUNK):
                if _hash(inner[i : i + CHUNK]) != sums[base + i // CHUNK]:
                    return False
        if tail is not None:
            if _hash(tail) != sums[last]:
                return False
            dst[last_lo - offset :] = memoryview(tail)[: end - last_lo]
        return True

    def read_bytes(self, offset: int, n: int, nowait: bool = False) -> bytes | None:
        """Bytes ``[offset, offset+n)`` of the block, verified, or None (as :meth:`read_into`).

        One ``pread`` of the whole chunks covering the range, into a new bytes object: no
        zeroed buffer, and no copy at all when the range is chunk-aligned. With ``nowait``,
        None also when the range's first or last page is not in memory (the read would wait
        for the disk)."""
        end = offset + n
        if end > self.size or n <= 0:
            return b"" if n == 0 and end <= self.size else None
        first = offset // CHUNK
        span_lo, span_hi = first * CHUNK, min(-(-end // CHUNK) * CHUNK, self.size)
        if nowait and not (in_memory(self._fd, span_lo) and in_memory(self._fd, span_hi - 1)):
            return None
        try:
            data = os.pread(self._fd, span_hi - span_lo, span_lo)
        except OSError:
            return None
        if len(data) != span_hi - span_lo:
            return None
        view, sums = memoryview(data), self._sums
        for i in range(0, len(data), CHUNK):
            if _hash(view[i : i + CHUNK]) != sums[first + i // CHUNK]:
                return None
        if span_lo == offset and span_hi == end:
            return data
        return data[offset - span_lo : end - span_lo]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BlockStore:
    """The block files under ``<root>/blocks``."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "blocks")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def path(self, bkey: bytes, nonce: int) -> str:
        oid = bkey[:OID_LEN].hex()
        index = int.from_bytes(bkey[OID_LEN:], "big")
        return f"{self.dir}/{oid[:2]}/{oid}.{index}.{nonce:016x}"

    def write(self, bkey: bytes, data: bytes | memoryview) -> int:
        """Store ``data`` as a new file for ``bkey``; returns its nonce. Atomic: the final name
        only ever holds complete data (temp file, then rename)."""
        nonce = secrets.randbits(64)
        final = self.path(bkey, nonce)
        shard, name = os.path.split(final)
        tmp = os.path.join(shard, _TMP_PREFIX + name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(shard, mode=0o700, exist_ok=True)
            fd = os.open(tmp, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        return nonce

    def open(self, bkey: bytes, nonce: int, size: int, sums: bytes) -> BlockView | None:
        """The block file as a :class:`BlockView`, or None if it is gone."""
        try:
            fd = os.open(self.path(bkey, nonce), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        return BlockView(fd, size, sums, nonce)

    def remove(self, bkey: bytes, nonce: int) -> None:
        _unlink(self.path(bkey, nonce))

    def scan(self) -> Iterator[BlockFile | str]:
        """Every block file (as :class:`BlockFile`) and every stray file (as its path)."""
        try:
            shards = sorted(os.scandir(self.dir), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                yield shard.path
                continue
            with os.scandir(shard.path) as entries:
                for entry in entries:
                    parsed = _parse_name(entry.name)
                    if parsed is None or not entry.is_file(follow_symlinks=False):
                        yield entry.path
                        continue
                    st = entry.stat(follow_symlinks=False)
                    yield BlockFile(entry.path, parsed[0], parsed[1], st.st_size, st.st_mtime)


def _parse_name(name: str) -> tuple[bytes, int] | None:
    parts = name.split(".")
    if len(parts) != 3 or name.startswith(_TMP_PREFIX):
        return None
    try:
        oid = bytes.fromhex(parts[0])
        index, nonce = int(parts[1]), int(parts[2], 16)
    except ValueError:
        return None
    if len(oid) != OID_LEN or not 0 <= index < 1 << 32:
        return None
    return oid + index.to_bytes(4, "big"), nonce


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


_NOWAIT = getattr(os, "RWF_NOWAIT", None)


def in_memory(fd: int, offset: int) -> bool:
    """Whether the page holding ``offset`` is in the page cache (False when unknown)."""
    if _NOWAIT is None:
        return False
    try:
        return os.preadv(fd, [bytearray(1)], offset, _NOWAIT) == 1
    except OSError:  # EAGAIN: on disk only; EOPNOTSUPP: cannot tell
        return False
