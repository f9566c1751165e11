"""Local stand-ins for the cloud, started on 127.0.0.1 and stopped by PID: Azurite (Azure Blob,
from npm) and moto's S3 server (from PyPI). Used by the tests, the benchmarks and the demo.

Azurite's well-known development account (``devstoreaccount1`` and its published key) is the
emulator's default, documented by Microsoft; it is not a secret. Extra accounts come from
``accounts`` (name → key), passed to Azurite through ``AZURITE_ACCOUNTS``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
MOTO_KEY_ID = "testing"
MOTO_SECRET = "testing"  # moto accepts any credentials


class ServerError(RuntimeError):
    """An emulator would not start; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(
                f"{what} exited with status {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ServerError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s")


@dataclass
class Server:
    """A started emulator process; ``stop()`` ends it (and only it) by PID."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: str | None = None
    accounts: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blob_endpoint(self, account: str = AZURITE_ACCOUNT) -> str:
        return f"{self.endpoint}/{account}"

    def connection_string(self, account: str = AZURITE_ACCOUNT) -> str:
        key = self.accounts.get(account, AZURITE_KEY)
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint={self.blob_endpoint(account)};"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _launch(
    name: str, argv: list[str], port: int, workdir: str | None = None, **popen: Any
) -> Server:
    """Start ``argv`` and wait until it listens on ``port``; stopped again if it never does."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    server = Server(name, proc, port, workdir)
    try:
        wait_for_port(port, proc, name)
    except ServerError:
        server.stop()
        raise
    return server


def _executable(name: str, install: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise ServerError(f"{name} not found on PATH: {install}")
    return exe


def start_azurite(accounts: Mapping[str, str] | None = None, port: int | None = None) -> Server:
    """Azurite's blob service, in memory, on a free port."""
    exe = _executable("azurite-blob", "npm install -g azurite")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="wd-azurite-")
    env = dict(os.environ)
    all_accounts = {AZURITE_ACCOUNT: AZURITE_KEY, **(accounts or {})}
    if accounts:
        env["AZURITE_ACCOUNTS"] = ";".join(f"{a}:{k}" for a, k in all_accounts.items())
    argv = [exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    argv += ["--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]
    server = _launch("azurite-blob", argv, port, workdir, env=env, cwd=workdir)
    server.accounts = all_accounts
    return server


def start_moto(port: int | None = None) -> Server:
    """moto's server (S3 and the rest of AWS, in memory) on a free port."""
    port = port or free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return _launch("moto server", argv, port)


def start_gcs_emulator(port: int | None = None) -> Server:
    """gcp-storage-emulator (the GCS JSON API, in memory, from PyPI) on a free port.

    It serves ranged media downloads but ignores ``generation=`` on them: it cannot show that a
    read of a replaced object is refused (real GCS answers 404)."""
    exe = _executable("gcp-storage-emulator", "pip install gcp-storage-emulator")
    port = port or free_port()
    argv = [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    return _launch("gcp-storage-emulator", argv, port)


def start_wan_proxy(
    target_port: int, rtt: str = "80ms", bandwidth: str = "800mbit", window: str = "4MB"
) -> Server:
    """A :mod:`warpdrive.testing.wanproxy` in front of ``127.0.0.1:target_port``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warpdrive.testing.wanproxy",
            "--target",
            f"127.0.0.1:{target_port}",
            "--rtt",
            rtt,
            "--bandwidth",
            bandwidth,
            "--window",
            window,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("listening "):
        proc.kill()
        raise ServerError(f"wan proxy did not start (said {line!r})")
    port = int(line.rsplit(":", 1)[1])
    return Server("wanproxy", proc, port)
