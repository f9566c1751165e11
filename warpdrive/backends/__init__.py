"""Object stores behind one small protocol (:class:`Backend`), built from the config.

``make_backend`` picks the client for ``type`` (importing its SDK only then, so an install
without the ``[azure]``, ``[s3]`` or ``[gcs]`` extra fails with a message saying which one is
missing) and wraps it in retries, timeouts and metrics.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import partial

from warpdrive.backends.base import Backend, Entry, ObjectClient, ObjectMeta, Outage
from warpdrive.backends.retry import RetryingBackend, RetryPolicy
from warpdrive.config import (
    AzureBlobOptions,
    BackendConfig,
    Config,
    GcsOptions,
    LocalOptions,
    S3Options,
)
from warpdrive.errors import BackendError, ConfigError
from warpdrive.metrics import Metrics

__all__ = [
    "Backend",
    "ClientWrapper",
    "Entry",
    "LazyClient",
    "ObjectClient",
    "ObjectMeta",
    "Outage",
    "RetryPolicy",
    "RetryingBackend",
    "make_backend",
    "make_client",
]

ClientWrapper = Callable[[ObjectClient], ObjectClient]
_EXTRAS = {"azureblob": "azure", "s3": "s3", "gcs": "gcs"}


def make_client(
    backend: BackendConfig, config: Config, metrics: Metrics, env: Mapping[str, str] | None = None
) -> ObjectClient:
    """The store client for one backend (one attempt per call, errors translated)."""
    env = os.environ if env is None else env
    opts, bm = backend.options, metrics.backend(backend.name)
    if backend.auth.unresolved is not None:  # a ${VAR} of its credentials was not set
        raise ConfigError(*backend.auth.unresolved)
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


class LazyClient(ObjectClient):
    """A store client made on its first call. A warm epoch (versions from the cache index,
    bytes from the cache) makes no backend call, so a new process — a DataLoader worker, a
    restarted job — never pays the client library's import and set-up (adlfs alone takes ~0.5 s
    here) unless it has to. A failure to make the client is raised by the call that needed it,
    and by the next one again (nothing is cached but success)."""

    def __init__(self, name: str, type_: str, make: Callable[[], ObjectClient]) -> None:
        super().__init__(name, type_)
        self._make = make
        self._client: ObjectClient | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _get(self) -> ObjectClient:
        client = self._client
        if client is None:
            with self._lock:
                if self._closed:
                    raise BackendError(f"{self.name}: the backend is closed")
                if self._client is None:
                    self._client = self._make()
                client = self._client
        return client

    def stat(self, key: str) -> ObjectMeta:
        return self._get().stat(key)

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        return self._get().list_page(prefix, token)

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        return self._get().read_range(key, start, end, etag)

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        self._get().write(key, chunks)

    def delete(self, key: str) -> None:
        self._get().delete(key)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()


def make_backend(
    backend: BackendConfig,
    config: Config,
    metrics: Metrics,
    wrap: ClientWrapper | None = None,
    env: Mapping[str, str] | None = None,
) -> RetryingBackend:
    """The backend the read path uses: client (made on first use, optionally wrapped) +
    retries + metrics."""
    client: ObjectClient = LazyClient(
        backend.name, backend.type, partial(make_client, backend, config, metrics, env)
    )
    if wrap is not None:
        client = wrap(client)
    return RetryingBackend(
        client, RetryPolicy.from_config(config.fetch), metrics.backend(backend.name)
    )
