"""An HTTP proxy that breaks backend traffic on purpose, for reliability tests.

It sits between WarpDrive and an emulator (Azurite, moto), relays HTTP/1.1 requests, one per
connection (each response says ``Connection: close``), and applies the faults it is told to, to
the next requests that match:

* ``status``: answer ``code`` (500, 503) itself, without asking the server;
* ``throttle``: answer 429 with ``Retry-After: retry_after``;
* ``drop``: relay the response head and half its body, then close the connection;
* ``stall``: send nothing back for ``seconds`` (None: until the client gives up and closes, or
  the proxy closes); the client's request timeout should fire;
* ``trickle``: relay the response at ``rate`` bytes per second;
* ``reset``: close the client's connection with a TCP reset before answering.

A fault's rule sees each request as a :class:`Request` (method, URL-decoded path with the
container or bucket and the object's key, query, headers): by default it hits ranged GETs (block
reads) of every object; ``blob`` narrows it to one object's key, ``match`` to any condition on
the request (``Request.listing``: a page of a listing). It lets the first ``after`` matching
requests through, then hits each with ``probability`` (drawn from the proxy's seeded generator),
``count`` times (``None``: until cleared). It runs in a background thread of the test process;
``injected`` counts what it did, by kind, and ``by_method`` every request by HTTP method (a stat
is a HEAD on Azure and S3).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass(frozen=True)
class Request:
    """One request as a fault's rule sees it."""

    method: str
    path: str  # URL-decoded: /devstoreaccount1/<container>/<key> (Azure), /<bucket>/<key> (S3)
    query: Mapping[str, str]
    headers: Mapping[str, str]  # names lowercased

    @property
    def ranged(self) -> bool:
        """A block read: it asks for a range (Azure sends ``x-ms-range``)."""
        return "range" in self.headers or "x-ms-range" in self.headers

    @property
    def listing(self) -> bool:
        """A page of a listing (Azure's ``comp=list``, S3's ``list-type``)."""
        return self.query.get("comp") == "list" or "list-type" in self.query

    def names(self, key: str) -> bool:
        """Whether it is about the object ``key`` (its key in the container or bucket: the path
        ends in ``/key``)."""
        return self.path.endswith("/" + key.lstrip("/"))


@dataclass
class Fault:
    """What to do, to which requests, how often (see the module docstring)."""

    kind: str  # status | throttle | drop | stall | trickle | reset
    count: int | None = 1  # how many matching requests it hits (None: all, until cleared)
    code: int = 503
    retry_after: float = 1.0
    seconds: float | None = 30.0  # a stall's length (None: until the client gives up)
    rate: float = 64 * 1024
    method: str | None = "GET"  # None: any method
    ranged_only: bool = True  # only requests with a Range header (block reads)
    blob: str | None = None  # only requests for this object (its key in the container/bucket)
    match: Callable[[Request], bool] | None = None  # only requests this says yes to
    after: int = 0  # matching requests let through before it starts hitting
    probability: float = 1.0  # chance of hitting each matching request after those

    def matches(self, request: Request) -> bool:
        return (
            (self.method is None or self.method == request.method)
            and (not self.ranged_only or request.ranged)
            and (self.blob is None or request.names(self.blob))
            and (self.match is None or self.match(request))
        )


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.faults: list[Fault] = []
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.by_method: Counter[str] = Counter()  # requests relayed or answered, by HTTP method
        self._lock = threading.Lock()  # guards faults, the counters and _random
        self._random = random.Random(seed)  # draws for faults with a probability below 1
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()  # connections being served (loop only)
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
        """Stop listening and end every connection (a stall in progress too)."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

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

    def _take(self, request: Request) -> Fault | None:
        with self._lock:
            self.requests += 1
            self.by_method[request.method] += 1
            for fault in self.faults:
                if not fault.matches(request):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if fault.probability < 1.0 and self._random.random() >= fault.probability:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                self.injected[fault.kind] += 1
                return fault
        return None

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await _read_head(cr)
                if head is None:
                    return
                request = _parse_request(head)
                body = await cr.readexactly(int(request.headers.get("content-length", "0")))
                fault = self._take(request)
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
                if not await self._relay(head, body, cr, cw, fault):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return
        except asyncio.CancelledError:  # close(): end quietly (asyncio logs a cancelled one)
            return
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(Exception):
                cw.close()

    async def _relay(
        self,
        head: bytes,
        body: bytes,
        cr: asyncio.StreamReader,
        cw: asyncio.StreamWriter,
        fault: Fault | None,
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
            # Nothing is sent; the stall ends early when the client gives up (EOF).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(cr.read(), fault.seconds)
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


def _parse_request(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = urlsplit(rest.rpartition(" ")[0] or rest)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    query = dict(parse_qsl(target.query, keep_blank_values=True))
    return Request(method, unquote(target.path), query, headers)


def _with_connection_close(head: bytes) -> bytes:
    """``head`` (of a request or a response) saying ``Connection: close``: upstream responses
    end at EOF, and clients open a new connection for their next request."""
    lines = [
        line
        for line in head.split(b"\r\n")
        if line and not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])
