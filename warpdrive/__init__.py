"""WarpDrive: object storage (Azure Blob, S3, GCS, local) read through one persistent block cache.

>>> from warpdrive import WarpDrive
>>> wd = WarpDrive("/etc/warpdrive/config.yaml")
>>> with wd.open("/datasets-cac/train/shard-000000.tar") as f:
...     header = f.read(512)
"""

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
from warpdrive.namespace import FileInfo
from warpdrive.reader import WarpDrive

__version__ = "0.1.0"

__all__ = [
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
