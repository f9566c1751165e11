"""``/metrics`` (Prometheus text format), ``/healthz`` (liveness) and ``/readyz`` (readiness), both
JSON, over HTTP in one background thread, for the mount.

The port is bound when the server is made and served from :meth:`MetricsServer.start`: the mount
binds before it mounts, so a port already in use stops the start (another process's answers on
that port would otherwise pass for ours).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


class HealthCheck(Protocol):
    """Liveness and readiness: (ok, the JSON body); ok is 200, else 503."""

    def live(self) -> tuple[bool, dict[str, object]]: ...

    def ready(self) -> tuple[bool, dict[str, object]]: ...


def parse_addr(addr: str) -> tuple[str, int]:
    """``":9090"`` (every interface) or ``"127.0.0.1:9090"`` → (host, port)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    def __init__(self, addr: str, registry: CollectorRegistry, health: HealthCheck) -> None:
        registry_, health_ = registry, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry_), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, body = health_.live() if path == "/healthz" else health_.ready()
                    self._reply(200 if ok else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._reply(
                        404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain"
                    )

            def _reply(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per scrape would drown the log

        host, port = parse_addr(addr)
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="warpdrive-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics and health on port %d (/metrics, /healthz, /readyz)", self.port)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()
