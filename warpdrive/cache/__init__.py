"""The persistent block cache: one sparse file per object (store), the LMDB index, and the
facade over both."""

from warpdrive.cache.accounts import Quota, Usage
from warpdrive.cache.blockcache import BlockCache
from warpdrive.cache.index import BlockRecord, CacheIndex, ObjectRecord
from warpdrive.cache.keys import ObjectVersion
from warpdrive.cache.store import ObjectFile, ObjectStore

__all__ = [
    "BlockCache",
    "BlockRecord",
    "CacheIndex",
    "ObjectFile",
    "ObjectRecord",
    "ObjectStore",
    "ObjectVersion",
    "Quota",
    "Usage",
]
