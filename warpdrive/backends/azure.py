"""Azure Blob Storage (``type: azureblob``) through adlfs and azure-identity.

adlfs builds the authenticated async service client (connection string, account key, SAS or an
azure-identity credential; any endpoint, so Azurite works); the calls themselves go to the
azure-storage-blob client it holds, because the read path needs what adlfs's fsspec surface does
not offer: ranged reads conditional on the ETag (``If-Match``) and listings a page at a time.
The SDK's own retries are switched off per call (``retry_total=0``): ours are the only ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from xml.etree import ElementTree

from warpdrive.backends import _aio
from warpdrive.backends.auth import azure_credential, read_secret
from warpdrive.backends.base import Entry, ObjectClient, ObjectMeta, child_name, join_key
from warpdrive.config import AuthConfig, AzureBlobOptions, FetchConfig
from warpdrive.errors import (
    BackendError,
    ConfigError,
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

_NO_SDK_RETRY = {"retry_total": 0}
AZURITE_ACCOUNT = "devstoreaccount1"  # the emulator's account (UseDevelopmentStorage=true)


class AzureBlobClient(ObjectClient):
    def __init__(
        self,
        name: str,
        opts: AzureBlobOptions,
        auth: AuthConfig,
        fetch: FetchConfig,
        metrics: BackendMetrics,
        env: Mapping[str, str],
    ) -> None:
        super().__init__(name, "azureblob")
        from adlfs import AzureBlobFileSystem

        self.container = opts.container
        self.prefix = opts.prefix
        self.page_size = opts.list_page_size
        self.timeout = fetch.request_timeout
        self.fs = AzureBlobFileSystem(
            skip_instance_cache=True,
            loop=_aio.loop(),
            asynchronous=False,
            **_adlfs_kwargs(name, opts, auth, env, metrics),
        )
        self._container_client = self.fs.service_client.get_container_client(self.container)

    # -- one attempt each ------------------------------------------------------------------

    def stat(self, key: str) -> ObjectMeta:
        blob = join_key(self.prefix, key)

        async def call() -> ObjectMeta:
            props = await self._container_client.get_blob_client(blob).get_blob_properties(
                **_NO_SDK_RETRY
            )
            return ObjectMeta(
                key=key,
                size=int(props.size),
                etag=_etag(props.etag),
                mtime=props.last_modified.timestamp() if props.last_modified else 0.0,
            )

        try:
            return self._run(call, key)
        except NotFoundError:
            if self._has_children(blob):
                raise IsDirectoryError(f"{self.name}: {key!r} is a directory") from None
            raise

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        full = (
            join_key(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        )

        async def call() -> tuple[list[Entry], str | None]:
            return _parse_listing(await self._list_xml(full, token), full)

        return self._run(call, prefix)

    async def _list_xml(self, full: str, token: str | None) -> bytes:
        """One List Blobs request (``delimiter=/``) through the SDK's pipeline (its auth and
        transport), the XML body returned unparsed: the SDK's model deserializer spends about
        0.35 ms of CPU per blob, which made a listing of 4,000 small files cost 1.4 s of CPU
        under the GIL the FUSE loop needs; ElementTree reads a page 20× faster."""
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob._generated.operations._container_operations import (
            build_list_blob_hierarchy_segment_request,
        )
        from azure.storage.blob._shared.response_handlers import process_storage_error

        generated = self._container_client._client
        request = build_list_blob_hierarchy_segment_request(
            url=generated._config.url,
            delimiter="/",
            version=generated._config.version,
            prefix=full or None,
            marker=token,
            maxresults=self.page_size,
            restype="container",
            comp="list",
        )
        request.url = generated._client.format_url(request.url)
        pipeline = generated._client._pipeline
        response = (await pipeline.run(request, stream=False, **_NO_SDK_RETRY)).http_response
        if response.status_code != 200:
            process_storage_error(HttpResponseError(response=response))  # raises the SDK's error
        body: bytes = response.body()
        return body

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        """Bytes ``[start, end)`` of version ``etag`` (If-Match): one Get Blob request through
        the container client's pipeline (its auth and transport). The SDK's ``download_blob``
        built a new blob client (its pipeline and policies) and a stream downloader for every
        call: 3 ms of CPU per 110 KB object here, which capped a cold epoch of small files at
        ~160 objects/s on two cores; this path costs a fraction of it (docs/read-path.md)."""
        if end <= start:
            return b""
        blob = join_key(self.prefix, key)

        async def call() -> bytes:
            from azure.core.exceptions import HttpResponseError
            from azure.storage.blob._generated.operations._blob_operations import (
                build_download_request,
            )
            from azure.storage.blob._shared.response_handlers import process_storage_error

            generated = self._container_client._client
            request = build_download_request(
                url=self._blob_url(blob),
                version=generated._config.version,
                range=f"bytes={start}-{end - 1}",
                if_match=f'"{etag}"',  # the quoted form
            )
            pipeline = generated._client._pipeline
            # Streamed, then loaded here: not streamed, the pipeline would decode the body
            response = (await pipeline.run(request, stream=True, **_NO_SDK_RETRY)).http_response
            await response.load_body()
            if response.status_code not in (200, 206):
                process_storage_error(HttpResponseError(response=response))  # the SDK's error
            body: bytes = response.body()
            return body

        data = self._run(call, key)
        if len(data) != end - start:
            raise BackendError(
                f"{self.name}: {key!r}: asked for {end - start} bytes at {start}, got {len(data)}"
            )
        return data

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        """Staged blocks, committed at the end: nothing is visible until every chunk is in."""
        blob = self._container_client.get_blob_client(join_key(self.prefix, key))
        ids = []
        for n, chunk in enumerate(chunks):
            block_id = f"{n:08d}".encode().hex()
            self._run(partial(blob.stage_block, block_id, chunk, **_NO_SDK_RETRY), key)
            ids.append(block_id)
        self._run(partial(blob.commit_block_list, ids, **_NO_SDK_RETRY), key)

    def delete(self, key: str) -> None:
        blob = self._container_client.get_blob_client(join_key(self.prefix, key))
        self._run(partial(blob.delete_blob, **_NO_SDK_RETRY), key)

    def close(self) -> None:
        client = getattr(self.fs, "service_client", None)
        if client is not None:
            with contextlib.suppress(WarpDriveError):
                _aio.run(client.close, 10, lambda e: BackendError(str(e)))

    # -- helpers ---------------------------------------------------------------------------

    def _has_children(self, blob: str) -> bool:
        async def call() -> bool:
            pages = self._container_client.walk_blobs(
                name_starts_with=blob + "/", delimiter="/", results_per_page=1, **_NO_SDK_RETRY
            ).by_page()
            async for page in pages:
                async for _ in page:
                    return True
                return False
            return False

        return self._run(call, blob)

    def _blob_url(self, blob: str) -> str:
        """The blob's URL: the container's, with the name quoted as the SDK quotes it (any
        query string, a SAS token, kept after the path)."""
        url = urlsplit(str(self._container_client._client._config.url))
        path = f"{url.path.rstrip('/')}/{quote(blob, safe='~/')}"
        return urlunsplit((url.scheme, url.netloc, path, url.query, ""))

    def _run(self, call: Callable[[], Coroutine[Any, Any, T]], subject: str) -> T:
        return _aio.run(call, self.timeout, lambda exc: self._translate(exc, subject))

    def _translate(self, exc: BaseException, key: str) -> WarpDriveError:
        from azure.core import exceptions as az

        where = f"{self.name}: {key!r}"
        status = getattr(exc, "status_code", None)
        if isinstance(exc, az.ResourceModifiedError) or status == 412:
            return ObjectChangedError(f"{where} changed since it was opened (ETag mismatch)")
        if getattr(exc, "error_code", None) == "ContainerNotFound":
            return ContainerNotFoundError(
                f"{self.name}: container {self.container!r} does not exist"
            )
        if isinstance(exc, az.ResourceNotFoundError) or status == 404:
            return NotFoundError(f"{where}: no such blob in container {self.container!r}")
        if isinstance(exc, az.ClientAuthenticationError) or status in (401, 403):
            return PermissionDeniedError(f"{where}: access denied ({_reason(exc)})")
        if status in (429, 503):
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) or {}
            return TransientBackendError(
                f"{where}: throttled (HTTP {status})",
                kind="throttled",
                retry_after=_aio.parse_retry_after(headers.get("Retry-After")),
            )
        if isinstance(status, int) and status >= 500:
            return TransientBackendError(f"{where}: server error (HTTP {status})", kind="server")
        if isinstance(status, int) and 400 <= status < 500:
            return BackendError(f"{where}: HTTP {status} ({_reason(exc)})")
        return _aio.fallback(exc, where)


def _parse_listing(body: bytes, full: str) -> tuple[list[Entry], str | None]:
    """Entries of one List Blobs page under ``full`` (directories first, as the SDK's
    ``walk_blobs`` gives them) and the continuation token."""
    root = ElementTree.fromstring(body)
    dirs: list[Entry] = []
    objects: list[Entry] = []
    blobs = root.find("Blobs")
    for item in () if blobs is None else blobs:
        name = child_name(_xml_name(item.find("Name")), full)
        if not name:
            continue
        if item.tag == "BlobPrefix":
            dirs.append(Entry(name=name, is_dir=True))
        elif item.tag == "Blob":
            props = item.find("Properties")
            if props is None:
                continue
            modified = props.findtext("Last-Modified")
            mtime = parsedate_to_datetime(modified).timestamp() if modified else 0.0
            size = int(props.findtext("Content-Length") or 0)
            etag = props.findtext("Etag")
            objects.append(Entry(name, False, size, mtime, None if etag is None else _etag(etag)))
    return dirs + objects, root.findtext("NextMarker") or None


def _xml_name(element: ElementTree.Element | None) -> str:
    """A listed name; Azure percent-encodes names XML cannot carry (``Encoded="true"``)."""
    if element is None or element.text is None:
        return ""
    return unquote(element.text) if element.get("Encoded") == "true" else element.text


def _etag(value: object) -> str:
    """ETags as the read path keys on them: listings give them bare, properties quoted."""
    return str(value).strip('"')


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or type(exc).__name__)


def _connection_fields(text: str) -> dict[str, str]:
    """The ``Key=value;`` fields of a connection string, keys lowercased."""
    fields = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            fields[key.strip().lower()] = value.strip()
    return fields


def _blob_endpoint(fields: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The blob endpoint and account a connection string connects to, as the SDK derives them
    (None where it names none). The endpoint keeps scheme, host and path only: it is shown."""
    account = fields.get("accountname")
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}", account or AZURITE_ACCOUNT
    if fields.get("blobendpoint"):
        return urlsplit(fields["blobendpoint"])._replace(query="", fragment="").geturl(), account
    if not account:
        return None, None
    scheme = fields.get("defaultendpointsprotocol") or "https"
    suffix = fields.get("endpointsuffix") or "core.windows.net"
    return f"{scheme}://{account}.blob.{suffix}", account


def _endpoint_key(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url.rstrip("/"))
    return parts.scheme.lower(), parts.netloc.lower(), parts.path


def _check_agrees(name: str, opts: AzureBlobOptions, secret: str) -> None:
    """The connection string decides where requests go; a config ``endpoint`` or ``account``
    that says otherwise is a ConfigError naming both (never a silent choice between them).
    Only the endpoint and account name are shown, never the string's keys or tokens."""
    target, account = _blob_endpoint(_connection_fields(secret))
    if opts.endpoint and target and _endpoint_key(opts.endpoint) != _endpoint_key(target):
        raise ConfigError(
            f"backends[{name}].config.endpoint",
            f"{opts.endpoint!r} contradicts the connection string's blob endpoint {target!r} "
            "(auth.method connection_string connects where its string says: make them agree, "
            "or drop endpoint)",
        )
    if opts.account and account and opts.account != account:
        raise ConfigError(
            f"backends[{name}].config.account",
            f"{opts.account!r} contradicts the connection string's AccountName {account!r} "
            "(auth.method connection_string connects as its string says: make them agree)",
        )


def _adlfs_kwargs(
    name: str,
    opts: AzureBlobOptions,
    auth: AuthConfig,
    env: Mapping[str, str],
    metrics: BackendMetrics,
) -> dict[str, Any]:
    """Keyword arguments for AzureBlobFileSystem: how adlfs should connect and authenticate."""
    account, endpoint, method = opts.account, opts.endpoint, auth.method
    where = f"backend {name!r} auth"
    if method == "connection_string":
        secret = read_secret(auth.connection_string_env, auth.connection_string_file, env, where)
        _check_agrees(name, opts, secret)
        return {"connection_string": secret}
    if method == "account_key":
        key = read_secret(auth.account_key_env, auth.account_key_file, env, where)
        if endpoint:
            scheme = urlsplit(endpoint).scheme or "https"
            return {
                "connection_string": f"DefaultEndpointsProtocol={scheme};AccountName={account};"
                f"AccountKey={key};BlobEndpoint={endpoint};"
            }
        return {"account_name": account, "account_key": key}
    if method == "sas":
        sas = read_secret(auth.sas_token_env, auth.sas_token_file, env, where).lstrip("?")
        if endpoint:
            return {"connection_string": f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"}
        return {"account_name": account, "sas_token": sas}
    if method in ("anonymous", "none"):
        if endpoint:
            return {"connection_string": f"BlobEndpoint={endpoint};"}
        return {"account_name": account, "anon": True}
    # Token credentials (managed identity, workload identity, service principal, default chain):
    # bearer tokens need https, so a custom endpoint becomes adlfs's account_host.
    kwargs: dict[str, Any] = {
        "account_name": account,
        "credential": azure_credential(auth, env, metrics),
        "anon": False,
    }
    if endpoint:
        kwargs["account_host"] = endpoint.split("://", 1)[-1]
    return kwargs
