"""An HTTP proxy that breaks backend traffic on purpose, for reliability tests.

It sits between WarpDrive and an emulator (Azurite, moto), relays HTTP/1.1 requests, one per
connection (each response says ``Connection: close``), and applies the faults it is told to, to
the next requests that match:

* ``status``: answer ``code`` (500, 503) itself, without asking the server;
* ``throttle``: answer 429 with ``Retry-After: retry_after``;
* ``drop``: relay the response head and half its body, then close the connection;
* ``stall``: send nothing back for ``seconds`` (the client's request timeout should fire);
* ``trickle``: relay the response at ``rate`` bytes per second;
* ``reset``: close the client's connection with a TCP reset before answering.

Faults apply to requests whose method and path match (by default: ranged GETs, i.e. block
reads), ``count`` times (``None``: until cleared). It runs in a background thread of the test
process; ``injected`` counts what it did, by kind, and ``by_method`` every request by HTTP method
(a stat is a HEAD on Azure and S3).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass


@dataclass
class Fault:
    kind: str  # status | throttle | drop | stall | trickle | reset
    count: int | None = 1  # how many matching requests it hits (None: all, until cleared)
    code: int = 503
    retry_after: float = 1.0
    seconds: float = 30.0
    rate: float = 64 * 1024
    method: str = "GET"
    ranged_only: bool = True  # only requests with a Range header (block reads)


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.faults: list[Fault] = []
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.by_method: Counter[str] = Counter()  # requests relayed or answered, by HTTP method
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- internals -------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def _take(self, method: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.requests += 1
            self.by_method[method] += 1
            for fault in self.faults:
                ranged = "range" in headers or "x-ms-range" in headers  # Azure sends the latter
                if fault.method != method or (fault.ranged_only and not ranged):
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                self.injected[fault.kind] += 1
                return fault
        return None

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await _read_head(cr)
                if head is None:
                    return
                method, headers = _parse_request(head)
                body = await cr.readexactly(int(headers.get("content-length", "0")))
                fault = self._take(method, headers)
                if fault is not None and fault.kind == "reset":
                    sock = cw.get_extra_info("socket")
                    if sock is not None:  # linger 0: close sends RST, not FIN
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    cw.transport.abort()
                    return
                if fault is not None and fault.kind in ("status", "throttle"):
                    code = 429 if fault.kind == "throttle" else fault.code
                    extra = (
                        f"Retry-After: {fault.retry_after:g}\r\n"
                        if fault.kind == "throttle"
                        else ""
                    )
                    text = b"injected fault"
                    cw.write(
                        f"HTTP/1.1 {code} Injected\r\nContent-Length: {len(text)}\r\n{extra}"
                        "Connection: close\r\n\r\n".encode()
                        + text
                    )
                    await cw.drain()
                    return
                if not await self._relay(head, body, cw, fault):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            with contextlib.suppress(Exception):
                cw.close()

    async def _relay(
        self, head: bytes, body: bytes, cw: asyncio.StreamWriter, fault: Fault | None
    ) -> bool:
        """Forward one request on a fresh upstream connection; False when the client connection
        must close afterwards."""
        ur, uw = await asyncio.open_connection(*self.target)
        try:
            uw.write(_with_connection_close(head) + body)
            await uw.drain()
            resp_head = await _read_head(ur)
            if resp_head is None:
                return False
            resp_body = await ur.read()  # upstream closes after one response
        finally:
            with contextlib.suppress(Exception):
                uw.close()
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
            return False
        if fault is not None and fault.kind == "drop":
            cw.write(resp_head + resp_body[: len(resp_body) // 2])
            await cw.drain()
            return False
        # One response per client connection too: the head says so, so no client reuses it.
        resp_head = _with_connection_close(resp_head)
        if fault is not None and fault.kind == "trickle":
            cw.write(resp_head)
            step = max(1, int(fault.rate / 20))
            for start in range(0, len(resp_body), step):
                cw.write(resp_body[start : start + step])
                await cw.drain()
                await asyncio.sleep(0.05)
            return False
        cw.write(resp_head + resp_body)
        await cw.drain()
        return False


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None


def _parse_request(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return method, headers


def _with_connection_close(head: bytes) -> bytes:
    """``head`` (of a request or a response) saying ``Connection: close``: upstream responses
    end at EOF, and clients open a new connection for their next request."""
    lines = [
        line
        for line in head.split(b"\r\n")
        if line and not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])
