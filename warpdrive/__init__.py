"""WarpDrive: object storage (Azure Blob, S3, GCS, local) read through one persistent block cache.

>>> from warpdrive import WarpDrive
>>> wd = WarpDrive("/etc/warpdrive/config.yaml")
>>> with wd.open("/datasets-cac/train/shard-000000.tar") as f:
...     header = f.read(512)
"""

from importlib import metadata as _metadata

from warpdrive.admin import Admin
from warpdrive.config import Config, load_config, parse_config
from warpdrive.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    InvalidPathError,
    NotFoundError,
    ObjectChangedError,
    PermissionDeniedError,
    WarpDriveError,
)
from warpdrive.governance.access import AccessRecorder as _AccessRecorder
from warpdrive.read.namespace import FileInfo
from warpdrive.read.reader import WarpDrive, observe_by_default

# Every reader of a node adds to its access records (``warpdrive-ctl usage``): governance
# observes the read path's closed handles; the read path never imports governance.
observe_by_default(_AccessRecorder)

# One source: the version in pyproject.toml, as installed (also warpdrive_torch.__version__ and
# both tools' --version). A source tree on sys.path that was never installed has none.
try:
    __version__ = _metadata.version("warpdrive")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = [
    "Admin",
    "BackendError",
    "BackendUnavailableError",
    "Config",
    "ConfigError",
    "FileInfo",
    "InvalidPathError",
    "NotFoundError",
    "ObjectChangedError",
    "PermissionDeniedError",
    "WarpDrive",
    "WarpDriveError",
    "load_config",
    "parse_config",
]
