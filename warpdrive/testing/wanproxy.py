"""A user-space WAN emulator: a TCP proxy that adds round-trip delay and a bandwidth cap.

The kernel here has no netem, so the far region is emulated in front of the local server:

* delay: every chunk is delivered ``rtt/2`` after it entered the link, in each direction, and a
  new connection waits one ``rtt`` before it carries data (the TCP handshake);
* bandwidth: each direction is one shared link serialising the chunks of every connection at
  ``bandwidth`` bits per second;
* window: a connection has at most ``window`` bytes in flight (sent, not yet acknowledged one
  ``rtt/2`` after delivery), as a TCP window does, so one stream tops out at ``window / rtt`` and
  only parallel streams fill a link with a large bandwidth-delay product.

Run it on its own (``python -m warpdrive.testing.wanproxy --target 127.0.0.1:10000 --rtt 80ms
--bandwidth 800mbit``): it prints ``listening 127.0.0.1:PORT`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from dataclasses import dataclass

from warpdrive.units import parse_duration

CHUNK = 256 * 1024


def parse_bandwidth(text: str) -> float:
    """Bytes per second in ``"800mbit"``, ``"1.5gbit"``, ``"200Mbit/s"``, ``"50MB/s"``."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmg]?)(bit|b|byte|B)?(?:/s|ps)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid bandwidth {text!r} (e.g. '800mbit', '50MB/s')")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    unit = m.group(3) or "bit"
    return value / 8 if unit.lower() == "bit" or unit == "b" else value


@dataclass
class LinkSpec:
    rtt: float  # seconds
    bandwidth: float | None  # bytes per second, None: unlimited
    window: int = 4 << 20  # bytes in flight per connection and direction


class _Link:
    """One direction of the emulated link, shared by every connection (FIFO serialisation)."""

    def __init__(self, spec: LinkSpec) -> None:
        self.delay = spec.rtt / 2
        self.rate = spec.bandwidth
        self.free_at = 0.0

    def arrival(self, nbytes: int, now: float) -> float:
        start = max(now, self.free_at)
        done = start + (nbytes / self.rate if self.rate else 0.0)
        self.free_at = done
        return done + self.delay


async def _pump(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link, spec: LinkSpec
) -> None:
    loop = asyncio.get_running_loop()
    credit = asyncio.Semaphore(max(1, spec.window // CHUNK))
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def deliver() -> None:
        while (item := await queue.get()) is not None:
            at, data = item
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            dst.write(data)
            await dst.drain()
            loop.call_later(link.delay, credit.release)  # the ACK travels back
        with contextlib.suppress(OSError):
            dst.write_eof()

    writer = asyncio.create_task(deliver())
    try:
        while True:
            await credit.acquire()
            data = await src.read(CHUNK)
            if not data:
                break
            await queue.put((link.arrival(len(data), loop.time()), data))
    except (ConnectionError, OSError):
        pass
    finally:
        await queue.put(None)
        with contextlib.suppress(ConnectionError, OSError):
            await writer


class WanProxy:
    def __init__(self, target_host: str, target_port: int, spec: LinkSpec) -> None:
        self.target = (target_host, target_port)
        self.spec = spec
        self.up = _Link(spec)
        self.down = _Link(spec)

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(self.spec.rtt)  # SYN, SYN-ACK
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        try:
            await asyncio.gather(
                _pump(creader, swriter, self.up, self.spec),
                _pump(sreader, cwriter, self.down, self.spec),
            )
        finally:
            for w in (cwriter, swriter):
                w.close()

    async def serve(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self.handle, host, port, limit=CHUNK * 4)
        sock = server.sockets[0].getsockname()
        print(f"listening {sock[0]}:{sock[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (0: any free)")
    p.add_argument("--target", required=True, help="host:port of the real server")
    p.add_argument("--rtt", default="80ms", help="round-trip time, e.g. 30ms")
    p.add_argument("--bandwidth", default="800mbit", help="link rate, e.g. 200mbit; 0: no cap")
    p.add_argument("--window", default="4MB", help="bytes in flight per connection")
    args = p.parse_args(argv)
    from warpdrive.units import parse_size

    host, _, port = args.listen.rpartition(":")
    thost, _, tport = args.target.rpartition(":")
    rate = parse_bandwidth(args.bandwidth)
    spec = LinkSpec(parse_duration(args.rtt), rate or None, parse_size(args.window))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(WanProxy(thost, int(tport), spec).serve(host or "127.0.0.1", int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
