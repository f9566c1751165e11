"""The WAN emulator the demo and benchmarks put in front of Azurite: byte-exact under many
connections at once, and never faster than the link it emulates (lower bounds only: a busy
machine may add delay, never remove it)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from warpdrive.testing.servers import Server, start_wan_proxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        sender = threading.Thread(target=conn.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        sender.join()
        return bytes(got)


def test_many_connections_stay_byte_exact(echo_port: int) -> None:
    proxy: Server = start_wan_proxy(echo_port, rtt="10ms", bandwidth="400mbit")
    try:
        payloads = [os.urandom(20_000 + i * 997) for i in range(48)]
        results: list[bytes | None] = [None] * len(payloads)

        def run(i: int) -> None:
            results[i] = round_trip(proxy.port, payloads[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == payloads
    finally:
        proxy.stop()


def test_delay_and_bandwidth_are_lower_bounds(echo_port: int) -> None:
    proxy = start_wan_proxy(echo_port, rtt="80ms", bandwidth="16mbit")  # 2 MB/s each way
    try:
        started = time.monotonic()
        assert round_trip(proxy.port, b"ping") == b"ping"
        # Handshake (one rtt) plus there and back (one rtt).
        assert time.monotonic() - started >= 0.15
        payload = os.urandom(1_000_000)
        started = time.monotonic()
        assert round_trip(proxy.port, payload) == payload
        assert time.monotonic() - started >= 0.45  # 1 MB at 2 MB/s, each direction pipelined
    finally:
        proxy.stop()
