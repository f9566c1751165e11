"""``warpdrive-ctl serve``: run the control plane's API and dashboard with uvicorn.

Once its socket listens, and not before, it prints one line on stdout saying where and with
which database (the password hidden):
``serving on http://127.0.0.1:8080 (database sqlite:///warpdrive-control.db)``. An address it
cannot listen on (a port already taken) is an error instead: exit 2, nothing on stdout, and no
database file made (the socket is bound before the database is opened).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from warpdrive.errors import WarpDriveError
from warpdrive.metrics_server import parse_addr

DEFAULT_DATABASE = "sqlite:///warpdrive-control.db"


def split_addr(addr: str) -> tuple[str, int]:
    try:
        host, port = parse_addr(addr)
    except ValueError:
        raise WarpDriveError(f"--addr {addr!r}: expected host:port or :port") from None
    return host or "0.0.0.0", port


def http_url(sockname: tuple[str, int]) -> str:
    """``http://host:port`` of a listening socket's address (IPv6 hosts in brackets)."""
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(addr: str, database: str | None, token_env: str, private_reads: bool) -> int:
    try:
        import uvicorn

        from warpdrive.control.api import create_app
        from warpdrive.control.db import Store
    except ImportError as exc:
        raise WarpDriveError(f"{exc.name} is missing: pip install 'warpdrive[control]'") from None

    class Server(uvicorn.Server):
        """uvicorn's server, calling ``listening`` with its address once the socket listens."""

        def __init__(self, config: uvicorn.Config, listening: Callable[[str], None]) -> None:
            super().__init__(config)
            self.listening = listening

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)  # binds, or logs why not and raises SystemExit
            if self.started and not self.should_exit:
                self.listening(http_url(self.servers[0].sockets[0].getsockname()))

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
        shown = store.engine.url.render_as_string()  # the password as ***

        def listening(where: str) -> None:
            print(f"serving on {where} (database {shown})", flush=True)

        app = create_app(store, token, private_reads)
        server = Server(uvicorn.Config(app, log_level="warning"), listening)
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
