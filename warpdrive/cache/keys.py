"""How the cache names things: one version of one object, and its blocks.

A block is named by (backend, key, etag, block size, block index). A new etag makes new names,
so blocks of an old version can never be served for the new one; a different block size does
the same, so a cache survives a change of ``cache.block_size``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

OID_LEN = 16
BLOCK_KEY_LEN = OID_LEN + 4


@functools.lru_cache(maxsize=1 << 16)  # a warm epoch makes each open's version anew
def object_id(backend: str, key: str, etag: str, block_size: int) -> bytes:
    h = hashlib.blake2b(digest_size=OID_LEN)
    for part in (backend, key, etag, str(block_size)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.digest()


def block_key(oid: bytes, index: int) -> bytes:
    return oid + index.to_bytes(4, "big")


def split_block_key(bkey: bytes) -> tuple[bytes, int]:
    return bkey[:OID_LEN], int.from_bytes(bkey[OID_LEN:], "big")


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One version of one object, as the cache and the fetcher see it."""

    backend: str
    key: str
    etag: str
    size: int
    mtime: float
    block_size: int
    oid: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "oid", object_id(self.backend, self.key, self.etag, self.block_size)
        )

    @property
    def nblocks(self) -> int:
        return -(-self.size // self.block_size)

    def block_len(self, index: int) -> int:
        """Length of block ``index`` (the last one may be short)."""
        return min(self.block_size, self.size - index * self.block_size)

    def block_key(self, index: int) -> bytes:
        return self.oid + index.to_bytes(4, "big")
