"""``warpdrive-ctl serve``: run the control plane's API and dashboard with uvicorn."""

from __future__ import annotations

import logging
import os
import socket

from warpdrive.errors import WarpDriveError
from warpdrive.metrics_server import parse_addr

DEFAULT_DATABASE = "sqlite:///warpdrive-control.db"


def split_addr(addr: str) -> tuple[str, int]:
    try:
        host, port = parse_addr(addr)
    except ValueError:
        raise WarpDriveError(f"--addr {addr!r}: expected host:port or :port") from None
    return host or "0.0.0.0", port


def serve(addr: str, database: str | None, token_env: str, private_reads: bool) -> int:
    try:
        import uvicorn

        from warpdrive.control.api import create_app
        from warpdrive.control.db import Store
    except ImportError as exc:
        raise WarpDriveError(f"{exc.name} is missing: pip install 'warpdrive[control]'") from None

    token = os.environ.get(token_env, "")
    if len(token) < 16:
        raise WarpDriveError(
            f"${token_env} must hold the API token for writes (16 characters or more)"
        )
    url = database or os.environ.get("WARPDRIVE_DATABASE_URL") or DEFAULT_DATABASE
    host, port = split_addr(addr)
    sock = listen(host, port)  # before the database: a port in use leaves no file behind
    try:
        try:
            store = Store(url)
        except Exception as exc:  # the driver's own error, without the URL's password
            raise WarpDriveError(f"cannot open the database: {type(exc).__name__}: {exc}") from None
        logging.getLogger("warpdrive").info(
            "control plane on %s:%d, database %s", host, port, store.engine.url.render_as_string()
        )
        app = create_app(store, token, private_reads)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (as uvicorn would make it); WarpDriveError naming
    the address and the reason when it cannot be had (in use, no such address)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise WarpDriveError(f"--addr {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise WarpDriveError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
