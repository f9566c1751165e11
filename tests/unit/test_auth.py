"""Credentials: secrets from env or files, never from the config; refreshes counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from warpdrive.backends.auth import CountingCredential, read_secret, s3_credentials
from warpdrive.backends.azure import _adlfs_kwargs
from warpdrive.config import AuthConfig, AzureBlobOptions
from warpdrive.errors import ConfigError
from warpdrive.metrics import Metrics


def test_read_secret_prefers_env_then_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("  from-file\n")
    assert read_secret("K", None, {"K": "from-env"}, "where") == "from-env"
    assert read_secret(None, str(secret), {}, "where") == "from-file"
    with pytest.raises(ConfigError, match="environment variable 'K' is not set"):
        read_secret("K", None, {}, "backend 'a' auth")
    with pytest.raises(ConfigError, match="cannot read secret file"):
        read_secret(None, str(tmp_path / "missing"), {}, "where")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(None, str(tmp_path / "empty"), {}, "where")


class FakeToken:
    """Stands in for azure-identity's network call (no AAD endpoint is reachable here)."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: object) -> str:
        self.calls += 1
        if self.fail:
            raise RuntimeError("IMDS unreachable")
        return "token"

    async def close(self) -> None:
        pass


def test_token_fetches_are_counted_by_provider_and_status() -> None:
    metrics = Metrics()
    ok = CountingCredential(FakeToken(False), "azure_managed_identity", metrics.backend("a"))
    bad = CountingCredential(FakeToken(True), "azure_managed_identity", metrics.backend("a"))
    assert asyncio.run(ok.get_token("scope")) == "token"
    assert asyncio.run(ok.get_token("scope")) == "token"
    with pytest.raises(RuntimeError):
        asyncio.run(bad.get_token("scope"))
    value = metrics.registry.get_sample_value
    labels = {"provider": "azure_managed_identity"}
    assert value("warpdrive_auth_refresh_total", {**labels, "status": "success"}) == 2
    assert value("warpdrive_auth_refresh_total", {**labels, "status": "failure"}) == 1


ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"


@pytest.mark.parametrize(
    ("auth", "endpoint", "expected"),
    [
        (
            AuthConfig("account_key", account_key_env="KEY"),
            ENDPOINT,
            {
                "connection_string": "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=s3cr3t;"
                f"BlobEndpoint={ENDPOINT};"
            },
        ),
        (
            AuthConfig("account_key", account_key_env="KEY"),
            None,
            {"account_name": "acct", "account_key": "s3cr3t"},
        ),
        (
            AuthConfig("sas", sas_token_env="KEY"),
            None,
            {"account_name": "acct", "sas_token": "s3cr3t"},
        ),
        (
            AuthConfig("sas", sas_token_env="KEY"),
            ENDPOINT,
            {"connection_string": f"BlobEndpoint={ENDPOINT};SharedAccessSignature=s3cr3t"},
        ),
        (
            AuthConfig("connection_string", connection_string_env="KEY"),
            None,
            {"connection_string": "s3cr3t"},
        ),
        (AuthConfig("anonymous"), None, {"account_name": "acct", "anon": True}),
        (AuthConfig("none"), ENDPOINT, {"connection_string": f"BlobEndpoint={ENDPOINT};"}),
    ],
)
def test_azure_methods_map_to_adlfs_arguments(
    auth: AuthConfig, endpoint: str | None, expected: dict[str, object]
) -> None:
    opts = AzureBlobOptions(account="acct", container="c", endpoint=endpoint)
    assert _adlfs_kwargs("a", opts, auth, {"KEY": "s3cr3t"}, Metrics().backend("a")) == expected


def test_token_methods_get_a_counted_azure_identity_credential() -> None:
    opts = AzureBlobOptions(account="acct", container="c", endpoint="https://acct.blob.example.net")
    auth = AuthConfig("managed_identity", client_id="1111-2222")
    kwargs = _adlfs_kwargs("a", opts, auth, {}, Metrics().backend("a"))
    assert kwargs["account_host"] == "acct.blob.example.net"
    assert isinstance(kwargs["credential"], CountingCredential)
    assert type(kwargs["credential"]._inner).__name__ == "ManagedIdentityCredential"


def test_s3_credentials() -> None:
    env = {"AK": "AKIA1", "SK": "secret1"}
    static = AuthConfig("static", access_key_id_env="AK", secret_access_key_env="SK")
    assert s3_credentials(static, env) == {
        "key": "AKIA1",
        "secret": "secret1",
        "token": None,
        "anon": False,
    }
    assert s3_credentials(AuthConfig("anonymous"), env) == {"anon": True}
    assert s3_credentials(AuthConfig("profile", profile="prod"), env) == {
        "profile": "prod",
        "anon": False,
    }
    with pytest.raises(ConfigError, match="'SK' is not set"):
        s3_credentials(static, {"AK": "AKIA1"})
