"""A streaming tar reader for WebDataset shards, strict about damage.

Reads POSIX ustar, GNU and pax archives front to back (no seeking needed) and yields the regular
files; directories, links and device entries are passed over, as webdataset does. Every header's
checksum is verified, sizes are checked against the bytes that follow, and an archive must end
with its end-of-archive block: a shard cut short at a member boundary is reported, not taken for
a smaller shard. Damage raises :class:`ShardError` naming the shard, the member and the offset.

With ``skip_data`` the member bytes are not read (only their offsets are reported): resuming a
loader replays the headers of what was already consumed without fetching its data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from warpdrive.errors import WarpDriveError

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6", b"g", b"K", b"D", b"V", b"M", b"N", b"S")
_MAX_META = 1 << 20  # a pax header or GNU long name larger than this is damage, not a name


class ShardError(WarpDriveError):
    """A shard that cannot be read as a tar archive, or a sample in it that cannot be used."""

    def __init__(self, url: str, member: str | None, offset: int | None, problem: str) -> None:
        where = f"{url}"
        if member is not None:
            where += f": member {member!r}"
        if offset is not None:
            where += f" at offset {offset}"
        super().__init__(f"{where}: {problem}")
        self.url = url
        self.member = member
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    offset: int  # of the data, in the archive
    size: int
    data: bytes | None  # None when read with skip_data


def iter_members(f: BinaryIO, url: str, skip_data: bool = False) -> Iterator[Member]:
    """The regular files of the tar archive ``f`` (positioned at its start), in order."""
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    last = None  # the member read last, to name where a damaged header follows

    def read_exact(n: int, what: str, member: str | None) -> bytes:
        nonlocal pos
        data = f.read(n)
        if len(data) != n:
            raise ShardError(
                url, member, pos + len(data), f"truncated: {what} needs {n} bytes, got {len(data)}"
            )
        pos += n
        return data

    while True:
        header_at = pos
        header = f.read(BLOCK)
        pos += len(header)
        if not header:
            raise ShardError(
                url, last, header_at, "truncated: the archive ends without its end-of-archive block"
            )
        if len(header) != BLOCK:
            raise ShardError(url, last, header_at, f"truncated: header of {len(header)} bytes")
        if header == bytes(BLOCK):
            return  # end of archive (the second zero block, if any, is not needed)
        name, size, kind = _parse_header(header, url, header_at, last)
        if kind in (b"L", b"x"):
            if size > _MAX_META:
                raise ShardError(url, name, header_at, f"metadata entry of {size} bytes")
            meta = read_exact(_padded(size), "metadata entry", name)[:size]
            if kind == b"L":
                long_name = meta.rstrip(b"\0").decode("utf-8", "surrogateescape")
            else:
                pax.update(_parse_pax(meta, url, name, header_at))
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if pax:
            name = pax.get("path", name)
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise ShardError(url, name, header_at, "bad pax size") from None
            pax = {}
        data_at = pos
        if kind in _REGULAR:
            last = name
            if skip_data:
                pos += _padded(size)
                if not _skip(f, _padded(size), pos):
                    raise ShardError(url, name, data_at, f"truncated: data of {size} bytes")
                yield Member(name, data_at, size, None)
            else:
                data = read_exact(size, "data", name)
                read_exact(_padded(size) - size, "padding", name)
                yield Member(name, data_at, size, data)
        elif kind in _SKIPPED or kind.isalpha() or kind.isdigit():
            read_exact(_padded(size), f"entry of type {kind.decode()!r}", name)
        else:
            raise ShardError(url, name, header_at, f"unknown entry type {kind!r}")


def _parse_header(header: bytes, url: str, at: int, last: str | None) -> tuple[str, int, bytes]:
    stored = _octal(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + b" " * 8 + header[156:])
    if stored is None or stored not in (unsigned, signed):
        after = f"after member {last!r}" if last is not None else "first header"
        raise ShardError(url, None, at, f"bad tar header checksum ({after}): corrupt or not a tar")
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    text = name.decode("utf-8", "surrogateescape")
    size = _size(header[124:136])
    if size is None:
        raise ShardError(url, text, at, "bad size field in tar header")
    return text, size, header[156:157]


def _size(field: bytes) -> int | None:
    if field[0] & 0x80:  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    return _octal(field)


def _octal(field: bytes) -> int | None:
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def _parse_pax(meta: bytes, url: str, member: str, at: int) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(meta):
        space = meta.find(b" ", pos)
        try:
            length = int(meta[pos:space])
        except ValueError:
            raise ShardError(url, member, at, "bad pax record") from None
        record = meta[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        if length <= 0:
            raise ShardError(url, member, at, "bad pax record length")
        pos += length
    return out


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _skip(f: BinaryIO, n: int, target: int) -> bool:
    """Move ``n`` bytes on, to offset ``target``; False if the archive ends before it."""
    if f.seekable():
        end = f.seek(0, 2)
        f.seek(target)
        return end >= target
    while n:
        got = len(f.read(min(n, 1 << 20)))
        if not got:
            return False
        n -= got
    return True
