"""PyTorch datasets over the WarpDrive cache, no mount needed.

>>> from warpdrive_torch import ShardDataset, ResumableLoader
>>> ds = ShardDataset(
...     ["warpdrive://datasets-cac/train/shard-{000000..000099}.tar",
...      "warpdrive://datasets-wus3/train/shard-*.tar"],
...     decode="pil", seed=42)
>>> loader = ResumableLoader(ds, batch_size=64, num_workers=8)

Importing this package also lets ``webdataset.WebDataset("warpdrive://…")`` read through the
cache (see :mod:`warpdrive_torch.wds`).
"""

import contextlib

# The package's version (one source: warpdrive's installed metadata).
from warpdrive import __version__ as __version__
from warpdrive.shards import Shard, expand, expand_braces
from warpdrive_torch.dataset import ShardDataset
from warpdrive_torch.decode import make_decoder
from warpdrive_torch.files import FileDataset
from warpdrive_torch.handlers import (
    ignore_and_continue,
    reraise_exception,
    warn_and_continue,
    warn_and_stop,
)
from warpdrive_torch.loader import ResumableLoader
from warpdrive_torch.sampler import NodeSampler
from warpdrive_torch.tario import ShardError
from warpdrive_torch.wds import register_webdataset

__all__ = [
    "FileDataset",
    "NodeSampler",
    "ResumableLoader",
    "Shard",
    "ShardDataset",
    "ShardError",
    "expand",
    "expand_braces",
    "ignore_and_continue",
    "make_decoder",
    "register_webdataset",
    "reraise_exception",
    "warn_and_continue",
    "warn_and_stop",
]

with contextlib.suppress(ImportError):  # webdataset is optional: only its interop needs it
    register_webdataset()
