"""Google Cloud Storage (``type: gcs``) through gcsfs.

gcsfs provides the credentials (default, a service-account key file, anonymous) and the aiohttp
session; the requests are made here, one attempt each, so that gcsfs's built-in retry loop does
not stack under ours. The version of an object is its generation: reads name it
(``generation=``), so bytes of another version are never returned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

from warpdrive.backends import _aio
from warpdrive.backends.base import Entry, ObjectClient, ObjectMeta, child_name, join_key
from warpdrive.config import AuthConfig, FetchConfig, GcsOptions
from warpdrive.errors import (
    BackendError,
    ContainerNotFoundError,
    IsDirectoryError,
    NotFoundError,
    ObjectChangedError,
    PermissionDeniedError,
    TransientBackendError,
    WarpDriveError,
)
from warpdrive.metrics import BackendMetrics

T = TypeVar("T")


class HttpStatusError(Exception):
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


def _mtime(item: Mapping[str, Any]) -> float:
    updated = item.get("updated")
    if not updated:
        return 0.0
    return datetime.fromisoformat(str(updated).replace("Z", "+00:00")).timestamp()


class GcsClient(ObjectClient):
    def __init__(
        self,
        name: str,
        opts: GcsOptions,
        auth: AuthConfig,
        fetch: FetchConfig,
        metrics: BackendMetrics,
        env: Mapping[str, str],
    ) -> None:
        super().__init__(name, "gcs")
        from gcsfs import GCSFileSystem

        self.bucket = opts.bucket
        self.prefix = opts.prefix
        self.page_size = opts.list_page_size
        self.timeout = fetch.request_timeout
        token: Any = None
        if auth.method in ("anonymous", "none"):
            token = "anon"
        elif auth.method == "service_account":
            token = auth.key_file
        self.fs = GCSFileSystem(
            project=opts.project,
            token=token,
            endpoint_url=opts.endpoint_url,
            skip_instance_cache=True,
            loop=_aio.loop(),
            asynchronous=False,
        )
        metrics.auth_refresh(f"gcp_{auth.method}", ok=True)

    def stat(self, key: str) -> ObjectMeta:
        full = join_key(self.prefix, key)

        async def call() -> ObjectMeta:
            _, body = await self._get(
                f"/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(full, safe='')}"
            )
            item = json.loads(body)
            return ObjectMeta(
                key=key, size=int(item["size"]), etag=str(item["generation"]), mtime=_mtime(item)
            )

        try:
            return self._run(call, key)
        except NotFoundError:
            entries, _ = self._list(full + "/", None, 1)
            if entries:
                raise IsDirectoryError(f"{self.name}: {key!r} is a directory") from None
            raise

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        full = (
            join_key(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        )
        return self._list(full, token, self.page_size)

    def _list(self, full: str, token: str | None, size: int) -> tuple[list[Entry], str | None]:
        async def call() -> tuple[list[Entry], str | None]:
            params = {"prefix": full, "delimiter": "/", "maxResults": str(size)}
            if token:
                params["pageToken"] = token
            _, body = await self._get(f"/storage/v1/b/{quote(self.bucket, safe='')}/o", params)
            out = json.loads(body)
            entries = [
                Entry(name=name, is_dir=True)
                for p in out.get("prefixes", [])
                if (name := child_name(p, full))
            ]
            for item in out.get("items", []):
                name = child_name(item["name"], full)
                if name and not item["name"].endswith("/"):
                    entries.append(
                        Entry(name, False, int(item["size"]), _mtime(item), str(item["generation"]))
                    )
            return entries, out.get("nextPageToken") or None

        try:
            return self._run(call, full)
        except NotFoundError:  # a listing is 404 only when the bucket is not there
            raise ContainerNotFoundError(
                f"{self.name}: bucket {self.bucket!r} does not exist"
            ) from None

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        full = join_key(self.prefix, key)

        async def call() -> bytes:
            path = f"/download/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(full, safe='')}"
            params = {"alt": "media", "generation": etag}
            headers, body = await self._get(path, params, {"Range": f"bytes={start}-{end - 1}"})
            served = headers.get("x-goog-generation")
            if served is not None and served != etag:  # a server that ignored generation=
                raise ObjectChangedError(f"{self.name}: {key!r} is now generation {served}")
            return body

        try:
            return self._run(call, key)
        except NotFoundError:
            # That generation is gone: the object was replaced (or deleted) since it was opened.
            raise ObjectChangedError(
                f"{self.name}: {key!r} changed (generation {etag} is gone)"
            ) from None

    async def _get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Mapping[str, str], bytes]:
        await self.fs._set_session()
        async with self.fs.session.request(
            "GET",
            self.fs._location + path,
            params=self.fs._get_params(dict(params or {})),
            headers=self.fs._get_headers(dict(headers or {})),
        ) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise HttpStatusError(resp.status, resp.headers, body)
            return resp.headers, body

    def _run(self, call: Callable[[], Coroutine[Any, Any, T]], subject: str) -> T:
        return _aio.run(call, self.timeout, lambda exc: self._translate(exc, subject))

    def _translate(self, exc: BaseException, key: str) -> WarpDriveError:
        where = f"{self.name}: {key!r}"
        if not isinstance(exc, HttpStatusError):
            return _aio.fallback(exc, where)
        status = exc.status
        if status == 404:
            return NotFoundError(f"{where}: no such object in bucket {self.bucket!r}")
        if status == 412:
            return ObjectChangedError(f"{where} changed since it was opened")
        if status in (401, 403):
            return PermissionDeniedError(f"{where}: access denied (HTTP {status})")
        if status in (429, 503):
            return TransientBackendError(
                f"{where}: throttled (HTTP {status})",
                kind="throttled",
                retry_after=_aio.parse_retry_after(exc.headers.get("Retry-After")),
            )
        if status >= 500 or status == 408:
            return TransientBackendError(f"{where}: server error (HTTP {status})", kind="server")
        return BackendError(f"{where}: HTTP {status}")
