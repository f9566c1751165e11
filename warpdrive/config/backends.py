"""The ``backends:`` list: per-type options and per-method auth, each checked key by key.

Keys of the original WarpDrive's rclone-style configs are accepted where they map onto ours:
``root`` (``container[/prefix]``, or the directory of a local backend), ``list_chunk`` (page
size), ``env_auth``/``use_msi`` (pick the auth method when ``auth:`` is absent) and
``chunk_size``/``provider`` (read and ignored: our block size comes from ``cache.block_size``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from warpdrive.config._reader import Section, as_bool, as_choice, as_int, as_str, one_of
from warpdrive.config.model import (
    AuthConfig,
    AzureBlobOptions,
    BackendConfig,
    BackendOptions,
    GcsOptions,
    LocalOptions,
    S3Options,
)
from warpdrive.errors import ConfigError

BACKEND_TYPES = ("azureblob", "s3", "gcs", "local")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# A file at the top of the mount that the mount serves itself, without a backend (its health
# checks open and read it: docs/mount.md); no backend may be mounted there.
HEALTH_FILE = ".warpdrive-health"
_COMPAT_IGNORED = ("chunk_size", "provider")

# method -> (required key groups: at least one key of each group, optional keys)
_AuthSpec = tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]
AUTH_METHODS: dict[str, dict[str, _AuthSpec]] = {
    "azureblob": {
        "managed_identity": ((), ("client_id", "client_id_env")),
        "workload_identity": ((), ("tenant_id", "client_id", "client_id_env", "token_file")),
        "service_principal": (
            (
                ("tenant_id",),
                ("client_id", "client_id_env"),
                ("client_secret_env", "client_secret_file"),
            ),
            (),
        ),
        "default": ((), ("client_id", "client_id_env")),
        "connection_string": ((("connection_string_env", "connection_string_file"),), ()),
        "account_key": ((("account_key_env", "account_key_file"),), ()),
        "sas": ((("sas_token_env", "sas_token_file"),), ()),
        "anonymous": ((), ()),
        "none": ((), ()),
    },
    "s3": {
        "default": ((), ("profile",)),
        "profile": ((("profile",),), ()),
        "static": (
            (
                ("access_key_id_env", "access_key_id"),
                ("secret_access_key_env", "secret_access_key"),
            ),
            ("session_token_env",),
        ),
        "anonymous": ((), ()),
        "none": ((), ()),
    },
    "gcs": {
        "default": ((), ()),
        "service_account": ((("key_file",),), ()),
        "anonymous": ((), ()),
        "none": ((), ()),
    },
    "local": {"none": ((), ())},
}
_ALL_AUTH_KEYS = {
    key
    for methods in AUTH_METHODS.values()
    for required, optional in methods.values()
    for key in (*(k for group in required for k in group), *optional)
}


def parse_backends(top: Section) -> tuple[BackendConfig, ...]:
    raw = top.raw("backends")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("backends", "expected a list of backends")
    backends = tuple(
        parse_backend(Section(item, f"backends[{i}]", top.env)) for i, item in enumerate(raw)
    )
    _check_unique(backends)
    return backends


def parse_backend(sec: Section) -> BackendConfig:
    name = sec.require("name", as_str, "a name such as 'datasets-cac'")
    if not _NAME_RE.match(name):
        raise ConfigError(
            sec.key_path("name"),
            f"invalid name {name!r} (letters, digits, '.', '_', '-'; at most 63; "
            "no leading punctuation)",
        )
    btype = sec.require("type", as_choice(BACKEND_TYPES, "backend type"), one_of(BACKEND_TYPES))
    mount_path = normalize_mount_path(
        sec.get("mount_path", as_str, "/" + name), sec.key_path("mount_path")
    )
    opts = sec.section("config")
    options = _OPTION_PARSERS[btype](opts)
    auth = parse_auth(sec, btype, opts)
    opts.finish()
    immutable = _immutable(sec.raw("immutable"), sec.key_path("immutable"))
    sec.finish(("name", "type", "mount_path", "config", "auth", "immutable"))
    return BackendConfig(
        name=name,
        type=btype,
        mount_path=mount_path,
        options=options,
        auth=auth,
        immutable=immutable,
    )


def _immutable(raw: object, key_path: str) -> tuple[str, ...]:
    """``true`` (every object), ``false``, or a list of key prefixes."""
    if raw is None or raw is False:
        return ()
    if raw is True:
        return ("",)
    if isinstance(raw, list) and raw and all(isinstance(p, str) and p for p in raw):
        return tuple(p.lstrip("/") for p in raw)
    raise ConfigError(key_path, f"{raw!r}: expected true, false or a list of key prefixes")


def normalize_mount_path(path: str, key_path: str) -> str:
    if not path.startswith("/"):
        raise ConfigError(key_path, f"must be an absolute path such as '/datasets', got {path!r}")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ConfigError(key_path, "must not be '/': each backend needs its own directory")
    for part in parts:
        if part in (".", "..") or "\0" in part:
            raise ConfigError(key_path, f"invalid component {part!r} in {path!r}")
    if parts[0] == HEALTH_FILE:
        raise ConfigError(key_path, f"{path!r}: /{HEALTH_FILE} is the mount's own health file")
    return "/" + "/".join(parts)


def _check_unique(backends: tuple[BackendConfig, ...]) -> None:
    seen_names: dict[str, int] = {}
    for i, backend in enumerate(backends):
        if backend.name in seen_names:
            raise ConfigError(
                f"backends[{i}].name",
                f"duplicate backend name {backend.name!r} "
                f"(also backends[{seen_names[backend.name]}])",
            )
        seen_names[backend.name] = i
    for i, a in enumerate(backends):
        for j, b in enumerate(backends[:i]):
            if a.mount_path == b.mount_path:
                raise ConfigError(
                    f"backends[{i}].mount_path",
                    f"duplicate mount path {a.mount_path!r} (also backends[{j}], {b.name!r})",
                )
            inner, outer = (a, b) if len(a.mount_path) > len(b.mount_path) else (b, a)
            if inner.mount_path.startswith(outer.mount_path + "/"):
                raise ConfigError(
                    f"backends[{i}].mount_path",
                    f"mount path {a.mount_path!r} overlaps {b.mount_path!r} of backends[{j}] "
                    f"({b.name!r}); one backend may not be mounted inside another",
                )


def _split_root(root: str) -> tuple[str, str]:
    container, _, prefix = root.strip("/").partition("/")
    return container, prefix


def _prefix(sec: Section, default: str = "") -> str:
    prefix = sec.get("prefix", as_str, default).strip("/")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ConfigError(sec.key_path("prefix"), f"invalid prefix {prefix!r}")
    return prefix


def _compat_common(sec: Section) -> None:
    for key in _COMPAT_IGNORED:
        sec.raw(key)


def _azure_options(sec: Section) -> AzureBlobOptions:
    _compat_common(sec)
    root_container, root_prefix = _split_root(sec.get("root", as_str, ""))
    container = sec.get("container", as_str, root_container)
    if not container:
        raise ConfigError(sec.key_path("container"), "required: the blob container name")
    account = sec.get("account", as_str, "")
    endpoint = sec.get("endpoint", as_str, None)
    if not account and not endpoint:
        raise ConfigError(sec.key_path("account"), "required: the storage account name")
    page = sec.get("list_page_size", as_int(1, 5000), sec.get("list_chunk", as_int(1, 5000), 5000))
    return AzureBlobOptions(
        account=account,
        container=container,
        prefix=_prefix(sec, root_prefix),
        endpoint=endpoint.rstrip("/") if endpoint else None,
        list_page_size=page,
    )


def _s3_options(sec: Section) -> S3Options:
    _compat_common(sec)
    root_bucket, root_prefix = _split_root(sec.get("root", as_str, ""))
    bucket = sec.get("bucket", as_str, root_bucket)
    if not bucket:
        raise ConfigError(sec.key_path("bucket"), "required: the bucket name")
    endpoint = sec.get("endpoint_url", as_str, sec.get("endpoint", as_str, None))
    page = sec.get("list_page_size", as_int(1, 1000), sec.get("list_chunk", as_int(1, 1000), 1000))
    return S3Options(
        bucket=bucket,
        prefix=_prefix(sec, root_prefix),
        endpoint_url=endpoint,
        region=sec.get("region", as_str, None),
        list_page_size=page,
    )


def _gcs_options(sec: Section) -> GcsOptions:
    root_bucket, root_prefix = _split_root(sec.get("root", as_str, ""))
    bucket = sec.get("bucket", as_str, root_bucket)
    if not bucket:
        raise ConfigError(sec.key_path("bucket"), "required: the bucket name")
    return GcsOptions(
        bucket=bucket,
        prefix=_prefix(sec, root_prefix),
        project=sec.get("project", as_str, None),
        endpoint_url=sec.get("endpoint_url", as_str, None),
        list_page_size=sec.get("list_page_size", as_int(1, 1000), 1000),
    )


def _local_options(sec: Section) -> LocalOptions:
    root = sec.get("root", as_str, sec.get("path", as_str, ""))
    if not root:
        raise ConfigError(sec.key_path("root"), "required: the directory to serve")
    if not root.startswith("/"):
        raise ConfigError(sec.key_path("root"), f"must be an absolute path, got {root!r}")
    page = sec.get("list_page_size", as_int(1, 100_000), 1000)
    return LocalOptions(root=root.rstrip("/") or "/", list_page_size=page)


_OPTION_PARSERS: Mapping[str, Callable[[Section], BackendOptions]] = {
    "azureblob": _azure_options,
    "s3": _s3_options,
    "gcs": _gcs_options,
    "local": _local_options,
}


def _default_method(btype: str, opts: Section) -> str:
    """The method when ``auth:`` is absent: what the original's rclone keys implied."""
    if btype == "local":
        return "none"
    use_msi = opts.get("use_msi", as_bool, False)
    opts.get("env_auth", as_bool, True)
    return "managed_identity" if btype == "azureblob" and use_msi else "default"


def parse_auth(backend: Section, btype: str, opts: Section) -> AuthConfig:
    methods = AUTH_METHODS[btype]
    if not backend.has("auth"):
        backend.raw("auth")
        return AuthConfig(method=_default_method(btype, opts))
    if btype != "local":
        opts.raw("use_msi")
        opts.raw("env_auth")
    sec = backend.section("auth")
    method = sec.require("method", as_choice(methods, "method"), one_of(methods))
    sec.unset = []  # credentials: an unset ${VAR} matters only to whoever uses the backend
    required, optional = methods[method]
    allowed = {key for group in required for key in group} | set(optional)
    for key in sec.data:
        if key != "method" and key not in allowed and key in _ALL_AUTH_KEYS:
            takes = ", ".join(sorted(allowed)) or "no other keys"
            raise ConfigError(
                sec.key_path(key), f"not used by method '{method}' (it takes: {takes})"
            )
    values: dict[str, Any] = {key: sec.get(key, as_str, None) for key in sorted(allowed)}
    sec.finish(sorted(allowed | {"method"}))
    for group in required:
        if not any(values.get(key) for key in group):
            raise ConfigError(
                sec.key_path(group[0]),
                f"required for method '{method}'"
                + (f" (or {', '.join(group[1:])})" if len(group) > 1 else ""),
            )
    return AuthConfig(method=method, unresolved=sec.unset[0] if sec.unset else None, **values)
