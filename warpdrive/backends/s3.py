"""Amazon S3 and S3-compatible stores (``type: s3``) through s3fs.

s3fs resolves credentials (static, profile, the default chain, anonymous) and builds the
aiobotocore client, with botocore's own retries turned off (ours are the only ones) and a
connection pool as wide as ``max_parallel_fetch``. Reads are ranged GETs with ``If-Match`` on the
ETag; listings are single ``ListObjectsV2`` pages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from warpdrive.backends import _aio
from warpdrive.backends.auth import s3_credentials
from warpdrive.backends.base import Entry, ObjectClient, ObjectMeta, child_name, join_key
from warpdrive.config import AuthConfig, FetchConfig, S3Options
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

_PART = 8 << 20  # multipart upload part size (S3 wants at least 5 MiB but for the last)
# botocore error code -> what it means here.
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}  # NoSuchBucket: the backend is broken
_DENIED = {
    "AccessDenied",
    "Forbidden",
    "403",
    "401",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}
_CHANGED = {"PreconditionFailed", "412"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503", "429"}
_SERVER = {"InternalError", "ServiceUnavailable", "500", "502", "504", "RequestTimeout"}


class S3Client(ObjectClient):
    def __init__(
        self,
        name: str,
        opts: S3Options,
        auth: AuthConfig,
        fetch: FetchConfig,
        max_connections: int,
        metrics: BackendMetrics,
        env: Mapping[str, str],
    ) -> None:
        super().__init__(name, "s3")
        from s3fs import S3FileSystem

        self.bucket = opts.bucket
        self.prefix = opts.prefix
        self.page_size = opts.list_page_size
        self.timeout = fetch.request_timeout
        creds = s3_credentials(auth, env)
        self.fs = S3FileSystem(
            endpoint_url=opts.endpoint_url,
            client_kwargs={"region_name": opts.region} if opts.region else {},
            config_kwargs={
                "retries": {"total_max_attempts": 1},
                "max_pool_connections": max_connections,
                "connect_timeout": min(fetch.request_timeout, 10),
                "read_timeout": fetch.request_timeout,
            },
            skip_instance_cache=True,
            loop=_aio.loop(),
            asynchronous=False,
            **creds,
        )
        provider = f"aws_{auth.method}"
        try:
            self._s3: Any = _aio.run(self.fs.set_session, self.timeout, self._translator(""))
        except WarpDriveError:
            metrics.auth_refresh(provider, ok=False)
            raise
        metrics.auth_refresh(provider, ok=True)

    def stat(self, key: str) -> ObjectMeta:
        full = join_key(self.prefix, key)

        async def call() -> ObjectMeta:
            head = await self._s3.head_object(Bucket=self.bucket, Key=full)
            modified = head.get("LastModified")
            return ObjectMeta(
                key=key,
                size=int(head["ContentLength"]),
                etag=str(head["ETag"]),
                mtime=modified.timestamp() if modified else 0.0,
            )

        try:
            return self._run(call, key)
        except NotFoundError:
            if self._has_children(full):
                raise IsDirectoryError(f"{self.name}: {key!r} is a directory") from None
            raise

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        full = (
            join_key(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        )

        async def call() -> tuple[list[Entry], str | None]:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": full,
                "Delimiter": "/",
                "MaxKeys": self.page_size,
            }
            if token:
                kwargs["ContinuationToken"] = token
            out = await self._s3.list_objects_v2(**kwargs)
            entries = [
                Entry(name=name, is_dir=True)
                for p in out.get("CommonPrefixes", [])
                if (name := child_name(p["Prefix"], full))
            ]
            for obj in out.get("Contents", []):
                name = child_name(obj["Key"], full)
                if name and not obj["Key"].endswith("/"):
                    modified = obj.get("LastModified")
                    mtime = modified.timestamp() if modified else 0.0
                    entries.append(Entry(name, False, int(obj["Size"]), mtime, str(obj["ETag"])))
            next_token = out.get("NextContinuationToken") if out.get("IsTruncated") else None
            return entries, next_token

        return self._run(call, prefix)

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        full = join_key(self.prefix, key)

        async def call() -> bytes:
            resp = await self._s3.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={start}-{end - 1}", IfMatch=etag
            )
            body = resp["Body"]
            try:
                return bytes(await body.read())
            finally:
                body.close()

        return self._run(call, key)

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        """One PUT for a small object, a multipart upload (parts of 8 MiB and more) otherwise;
        nothing is visible until it completes, and a failed upload is aborted."""
        full = join_key(self.prefix, key)
        parts: list[dict[str, Any]] = []
        pending = bytearray()
        upload_id: str | None = None

        async def put_all(body: bytes) -> None:
            await self._s3.put_object(Bucket=self.bucket, Key=full, Body=body)

        async def start() -> str:
            out = await self._s3.create_multipart_upload(Bucket=self.bucket, Key=full)
            return str(out["UploadId"])

        async def part(number: int, body: bytes, upload: str) -> None:
            out = await self._s3.upload_part(
                Bucket=self.bucket, Key=full, PartNumber=number, UploadId=upload, Body=body
            )
            parts.append({"PartNumber": number, "ETag": out["ETag"]})

        try:
            for chunk in chunks:
                pending += chunk
                if len(pending) >= _PART:
                    upload_id = upload_id or self._run(start, key)
                    body, pending = bytes(pending), bytearray()
                    self._run(partial(part, len(parts) + 1, body, upload_id), key)
            if upload_id is None:
                self._run(partial(put_all, bytes(pending)), key)
                return
            if pending:
                self._run(partial(part, len(parts) + 1, bytes(pending), upload_id), key)
            layout = {"Parts": parts}
            self._run(
                partial(
                    self._s3.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload=layout,
                ),
                key,
            )
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(WarpDriveError):
                    self._run(
                        partial(
                            self._s3.abort_multipart_upload,
                            Bucket=self.bucket,
                            Key=full,
                            UploadId=upload_id,
                        ),
                        key,
                    )
            raise

    def delete(self, key: str) -> None:
        full = join_key(self.prefix, key)
        self._run(partial(self._s3.delete_object, Bucket=self.bucket, Key=full), key)

    def close(self) -> None:
        creator = getattr(self.fs, "_s3creator", None)
        if creator is not None:
            self.fs._s3creator = None
            with contextlib.suppress(WarpDriveError):
                _aio.run(lambda: creator.__aexit__(None, None, None), 10, self._translator(""))

    def _has_children(self, full: str) -> bool:
        async def call() -> bool:
            out = await self._s3.list_objects_v2(Bucket=self.bucket, Prefix=full + "/", MaxKeys=1)
            return bool(out.get("KeyCount") or out.get("Contents"))

        return bool(self._run(call, full))

    def _run(self, call: Callable[[], Coroutine[Any, Any, T]], subject: str) -> T:
        return _aio.run(call, self.timeout, self._translator(subject))

    def _translator(self, key: str) -> Callable[[BaseException], WarpDriveError]:
        return lambda exc: self._translate(exc, key)

    def _translate(self, exc: BaseException, key: str) -> WarpDriveError:
        where = f"{self.name}: {key!r}"
        response = getattr(exc, "response", None)
        if not isinstance(response, dict):
            return _aio.fallback(exc, where)
        code = str(response.get("Error", {}).get("Code", ""))
        meta = response.get("ResponseMetadata", {})
        status = str(meta.get("HTTPStatusCode", ""))
        codes = {code, status}
        if codes & _CHANGED:
            return ObjectChangedError(f"{where} changed since it was opened (ETag mismatch)")
        if code == "NoSuchBucket":
            return ContainerNotFoundError(f"{self.name}: bucket {self.bucket!r} does not exist")
        if codes & _NOT_FOUND:
            return NotFoundError(f"{where}: no such object in bucket {self.bucket!r}")
        if codes & _DENIED:
            return PermissionDeniedError(f"{where}: access denied ({code or status})")
        if codes & _THROTTLED:
            headers = meta.get("HTTPHeaders", {})
            return TransientBackendError(
                f"{where}: throttled ({code or status})",
                kind="throttled",
                retry_after=_aio.parse_retry_after(headers.get("retry-after")),
            )
        if codes & _SERVER or status.startswith("5"):
            return TransientBackendError(f"{where}: server error ({code or status})", kind="server")
        return BackendError(
            f"{where}: {code or status}: {response.get('Error', {}).get('Message', '')}"
        )
