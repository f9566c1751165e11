"""The persistent block cache: block files (store), the LMDB index, and the facade over both."""

from warpdrive.cache.accounts import Quota, Usage
from warpdrive.cache.blockcache import BlockCache
from warpdrive.cache.index import BlockRecord, CacheIndex, ObjectRecord
from warpdrive.cache.keys import ObjectVersion
from warpdrive.cache.store import BlockStore, BlockView

__all__ = [
    "BlockCache",
    "BlockRecord",
    "BlockStore",
    "BlockView",
    "CacheIndex",
    "ObjectRecord",
    "ObjectVersion",
    "Quota",
    "Usage",
]
