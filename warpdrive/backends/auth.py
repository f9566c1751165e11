"""Credentials for the backends: secrets from env vars or files, identities from azure-identity.

Secrets are read here and handed to the SDK; they are never logged, put in an exception message
or used as a metric label. Token fetches and refreshes are counted in
``warpdrive_auth_refresh_total{provider,status}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from warpdrive.config import AuthConfig
from warpdrive.errors import ConfigError
from warpdrive.metrics import BackendMetrics


def read_secret(env_var: str | None, path: str | None, env: Mapping[str, str], where: str) -> str:
    """The secret named by ``env_var`` (preferred) or stored in the file at ``path``."""
    if env_var:
        value = env.get(env_var)
        if not value:
            raise ConfigError(where, f"environment variable '{env_var}' is not set or empty")
        return value.strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise ConfigError(where, f"cannot read secret file {path!r}: {exc.strerror}") from None
        if not value:
            raise ConfigError(where, f"secret file {path!r} is empty")
        return value
    raise ConfigError(where, "no secret configured (set an *_env or *_file key)")


def _optional(env_var: str | None, literal: str | None, env: Mapping[str, str]) -> str | None:
    if env_var:
        return env.get(env_var) or None
    return literal


class CountingCredential:
    """An azure-identity async credential whose every token fetch is counted.

    The SDK asks for a token when it has none or the one it has is about to expire, so each call
    here is one credential refresh."""

    def __init__(self, inner: Any, provider: str, metrics: BackendMetrics) -> None:
        self._inner = inner
        self._provider = provider
        self._metrics = metrics

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return await self._counted(self._inner.get_token(*scopes, **kwargs))

    async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return await self._counted(self._inner.get_token_info(*scopes, options=options))

    async def _counted(self, pending: Any) -> Any:
        try:
            token = await pending
        except Exception:
            self._metrics.auth_refresh(self._provider, ok=False)
            raise
        self._metrics.auth_refresh(self._provider, ok=True)
        return token

    async def close(self) -> None:
        await self._inner.close()

    async def __aenter__(self) -> CountingCredential:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)


def azure_credential(auth: AuthConfig, env: Mapping[str, str], metrics: BackendMetrics) -> Any:
    """The azure-identity async credential for a token-based ``auth.method``, counted."""
    from azure.identity import aio as identity

    client_id = _optional(auth.client_id_env, auth.client_id, env)
    inner: Any
    if auth.method == "managed_identity":
        inner = (
            identity.ManagedIdentityCredential(client_id=client_id)
            if client_id
            else (identity.ManagedIdentityCredential())
        )
    elif auth.method == "workload_identity":
        kwargs = {
            k: v
            for k, v in (
                ("tenant_id", auth.tenant_id),
                ("client_id", client_id),
                ("token_file_path", auth.token_file),
            )
            if v
        }
        inner = identity.WorkloadIdentityCredential(**kwargs)
    elif auth.method == "service_principal":
        where = "auth.client_secret"
        secret = read_secret(auth.client_secret_env, auth.client_secret_file, env, where)
        if not client_id:
            raise ConfigError(
                "auth.client_id_env", f"environment variable {auth.client_id_env!r} is not set"
            )
        inner = identity.ClientSecretCredential(auth.tenant_id or "", client_id, secret)
    elif auth.method == "default":
        inner = identity.DefaultAzureCredential(
            **({"managed_identity_client_id": client_id} if client_id else {})
        )
    else:  # pragma: no cover - config validation keeps other methods out
        raise ConfigError("auth.method", f"{auth.method!r} does not use a token credential")
    return CountingCredential(inner, f"azure_{auth.method}", metrics)


def s3_credentials(auth: AuthConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for s3fs.S3FileSystem selecting the credentials ``auth`` describes."""
    if auth.method in ("anonymous", "none"):
        return {"anon": True}
    if auth.method == "static":
        key = _optional(auth.access_key_id_env, auth.access_key_id, env)
        secret = _optional(auth.secret_access_key_env, auth.secret_access_key, env)
        if not key or not secret:
            missing = auth.access_key_id_env if not key else auth.secret_access_key_env
            raise ConfigError("auth", f"static credentials incomplete: {missing!r} is not set")
        token = _optional(auth.session_token_env, None, env)
        return {"key": key, "secret": secret, "token": token, "anon": False}
    if auth.profile:
        return {"profile": auth.profile, "anon": False}
    return {"anon": False}
