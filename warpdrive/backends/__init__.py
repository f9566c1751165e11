"""Object stores behind one small protocol (:class:`Backend`), built from the config.

``make_backend`` picks the client for ``type`` (importing its SDK only then, so an install
without the ``[azure]``, ``[s3]`` or ``[gcs]`` extra fails with a message saying which one is
missing) and wraps it in retries, timeouts and metrics.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Mapping

from warpdrive.backends.base import Backend, Entry, ObjectClient, ObjectMeta
from warpdrive.backends.retry import RetryingBackend, RetryPolicy
from warpdrive.config import (
    AzureBlobOptions,
    BackendConfig,
    Config,
    GcsOptions,
    LocalOptions,
    S3Options,
)
from warpdrive.errors import ConfigError
from warpdrive.metrics import Metrics

__all__ = [
    "Backend",
    "ClientWrapper",
    "Entry",
    "ObjectClient",
    "ObjectMeta",
    "RetryPolicy",
    "RetryingBackend",
    "import_sdks",
    "make_backend",
    "make_client",
]

ClientWrapper = Callable[[ObjectClient], ObjectClient]
_EXTRAS = {"azureblob": "azure", "s3": "s3", "gcs": "gcs"}


_SDK_MODULES = {
    AzureBlobOptions: ("adlfs", "azure.identity.aio"),
    S3Options: ("s3fs",),
    GcsOptions: ("gcsfs",),
}


def import_sdks(config: Config) -> None:
    """Import the client libraries the configured backends use, so that processes forked from
    this one (DataLoader workers) start with them loaded instead of each paying the import
    (adlfs alone takes ~0.5 s here). One that is not installed is left for :func:`make_client`
    to report."""
    for backend in config.backends:
        for module in _SDK_MODULES.get(type(backend.options), ()):
            with contextlib.suppress(ImportError):
                importlib.import_module(module)


def make_client(
    backend: BackendConfig, config: Config, metrics: Metrics, env: Mapping[str, str] | None = None
) -> ObjectClient:
    """The store client for one backend (one attempt per call, errors translated)."""
    env = os.environ if env is None else env
    opts, bm = backend.options, metrics.backend(backend.name)
    try:
        if isinstance(opts, LocalOptions):
            from warpdrive.backends.local import LocalClient

            return LocalClient(backend.name, opts)
        if isinstance(opts, AzureBlobOptions):
            from warpdrive.backends.azure import AzureBlobClient

            return AzureBlobClient(backend.name, opts, backend.auth, config.fetch, bm, env)
        if isinstance(opts, S3Options):
            from warpdrive.backends.s3 import S3Client

            pool = config.cache.max_parallel_fetch + 4
            return S3Client(backend.name, opts, backend.auth, config.fetch, pool, bm, env)
        if isinstance(opts, GcsOptions):
            from warpdrive.backends.gcs import GcsClient

            return GcsClient(backend.name, opts, backend.auth, config.fetch, bm, env)
    except ImportError as exc:
        extra = _EXTRAS.get(backend.type, backend.type)
        raise ConfigError(
            f"backends[{backend.name}].type",
            f"type {backend.type!r} needs the '{extra}' extra ({exc.name} is not installed): "
            f"pip install 'warpdrive[{extra}]'",
        ) from None
    raise ConfigError(f"backends[{backend.name}].type", f"unsupported type {backend.type!r}")


def make_backend(
    backend: BackendConfig,
    config: Config,
    metrics: Metrics,
    wrap: ClientWrapper | None = None,
    env: Mapping[str, str] | None = None,
) -> RetryingBackend:
    """The backend the read path uses: client (optionally wrapped) + retries + metrics."""
    client = make_client(backend, config, metrics, env)
    if wrap is not None:
        client = wrap(client)
    return RetryingBackend(
        client, RetryPolicy.from_config(config.fetch), metrics.backend(backend.name)
    )
