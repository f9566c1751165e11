"""A warpdrive-mount process for tests and benchmarks: started in the foreground, waited for
until it answers, queried over its metrics port, and always cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warpdrive.fuse.mountinfo import find_mount


class MountStartError(RuntimeError):
    """The mount process exited or never answered; the message holds its log's tail."""


@dataclass
class Mount:
    """A running warpdrive-mount process (foreground) and where to find it."""

    proc: subprocess.Popen[bytes]
    point: Path
    config: Path
    metrics_port: int
    log: Path

    def path(self, *parts: str) -> Path:
        return self.point.joinpath(*parts)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` (matching ``labels``) on ``/metrics``."""
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read().decode()
        )
        total = 0.0
        for line in text.splitlines():
            wanted = all(f'{k}="{v}"' in line for k, v in labels.items())
            if line.startswith(name) and line[len(name)] in " {" and wanted:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_released(self, timeout: float = 10) -> None:
        """Until the mount has answered a RELEASE for every OPEN: the kernel sends RELEASE in
        the background after ``close()`` returns, and an open that comes before it finds the
        inode still open in user-space mode, which rules out passthrough for that open."""
        deadline = time.monotonic() + timeout
        while True:
            opens = self.metric("warpdrive_fuse_operations_total", operation="open")
            released = self.metric("warpdrive_fuse_operations_total", operation="release")
            if released >= opens:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{opens - released:.0f} opens not released in {timeout} s")
            time.sleep(0.02)

    def health(self, path: str = "/healthz") -> tuple[int, dict[str, object]]:
        """(HTTP status, JSON body) of ``/healthz`` (liveness) or ``/readyz`` (readiness)."""
        try:
            reply = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}")
            return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        if find_mount(str(self.point)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(self.point)], check=False)


def start_mount(
    config: Path,
    point: Path,
    port: int,
    *extra: str,
    wait: float = 30,
    prefix: Sequence[str] = (),
) -> Mount:
    """Start ``warpdrive-mount -c CONFIG --foreground EXTRA`` (run by ``prefix``, a command that
    ends by exec'ing its arguments, such as :func:`own_network`'s) and wait until it answers."""
    log = config.with_suffix(".log")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "warpdrive.fuse.mount",
                "-c",
                str(config),
                "--foreground",
                *extra,
            ],
            stdout=out,
            stderr=out,
            # `-m` puts the current directory first on sys.path: from a checkout, the mount
            # would import that checkout's code whatever PYTHONPATH names (a benchmark of the
            # code before would measure the code after). Python >= 3.11 honours this.
            env={**os.environ, "PYTHONSAFEPATH": "1"},
        )
    mount = Mount(proc, point, config, port, log)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MountStartError(f"mount exited {proc.returncode}: {log.read_text()[-2000:]}")
        entry = find_mount(str(point))
        if entry is not None and entry.fstype == "fuse.warpdrive" and _answers(point):
            return mount
        time.sleep(0.05)
    mount.cleanup()
    raise MountStartError(f"not mounted after {wait}s: {log.read_text()[-2000:]}")


def _answers(point: Path) -> bool:
    try:
        os.listdir(point)  # a stale mount left by a killed process fails here
    except OSError:
        return False
    return True


# An address for a network namespace's own use (TEST-NET-2, RFC 5737: never routed).
OTHER_ADDRESS = "198.51.100.7"


def own_network(address: str = OTHER_ADDRESS) -> list[str]:
    """A command prefix: run in a network namespace of its own (root), with loopback up and
    ``address`` on it too, an address of that machine that is not loopback. Any port is free
    there, whatever else runs here; :func:`http_status_in` asks from inside."""
    setup = f'ip link set lo up && ip addr add {address}/32 dev lo && exec "$@"'
    return ["unshare", "--net", "sh", "-c", setup, "own-network"]


def http_status_in(pid: int, url: str) -> int | None:
    """The HTTP status of GET ``url`` from ``pid``'s network namespace; None when nothing
    answers there (the connection refused)."""
    done = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "curl", "-s", "-o", "/dev/null", "-w",
         "%{http_code}", "--max-time", "5", url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    code = int(done.stdout or 0)
    return code or None


def listening_in(pid: int) -> list[str]:
    """The TCP addresses listening in ``pid``'s network namespace (``ss``'s ``host:port``)."""
    done = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-ltnH"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return sorted(line.split()[3] for line in done.stdout.splitlines() if line.strip())
