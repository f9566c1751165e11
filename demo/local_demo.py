#!/usr/bin/env python3
"""The two-region cold/warm demo on one machine, no cloud account: ``make demo``.

Sets up two emulated regions — two containers of one Azurite (Azure Blob's emulator, from npm),
each reached through its own WAN emulator (a user-space TCP proxy adding round-trip delay and a
bandwidth cap: the kernel here has no netem) — writes forge's dataset into them (even shards to
region A, odd to B), writes a WarpDrive config for them, and runs the showcase's four phases
(``demo/showcase.py``). Everything it started (Azurite, both proxies, the mount) is stopped, by
PID, on success, failure or Ctrl-C.

Tunable from the environment (defaults in brackets):
  REGION_A_RTT [30ms]  REGION_A_BANDWIDTH [200mbit]   "canadacentral"
  REGION_B_RTT [70ms]  REGION_B_BANDWIDTH [150mbit]   "westus3"
  DEMO_SHARDS [40]  DEMO_IMAGES_PER_SHARD [100]  DEMO_IMAGE_SIZE [256]
  TRAIN_STEPS [300]  TRAIN_BATCH [32]  TRAIN_WORKERS [4]  TRAIN_LOG_EVERY [50]
  DEMO_WORKDIR [a new /tmp/warpdrive-demo-*: cache, mount point, config; removed at the end
  unless DEMO_KEEP=1]
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

DEMO_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(DEMO_DIR.parent))

from demo import showcase  # noqa: E402
from forge.gen import generate  # noqa: E402
from warpdrive.testing.servers import (  # noqa: E402
    AZURITE_KEY,
    Server,
    free_port,
    start_azurite,
    start_wan_proxy,
)

REGIONS = {
    "datasets-cac": ("canadacentral", "REGION_A", "30ms", "200mbit"),
    "datasets-wus3": ("westus3", "REGION_B", "70ms", "150mbit"),
}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"local_demo: {name}={value!r} is not an integer") from None


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks: everything is stopped


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    work = Path(os.environ.get("DEMO_WORKDIR") or tempfile.mkdtemp(prefix="warpdrive-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    try:
        showcase.banner("WarpDrive showcase — two emulated regions on this machine")
        azurite = start_azurite()
        servers.append(azurite)
        showcase.info(
            f"Azurite (Azure Blob emulator) on 127.0.0.1:{azurite.port}, PID {azurite.proc.pid}"
        )
        endpoints = {}
        for backend, (region, var, rtt, bandwidth) in REGIONS.items():
            rtt = os.environ.get(f"{var}_RTT", rtt)
            bandwidth = os.environ.get(f"{var}_BANDWIDTH", bandwidth)
            proxy = start_wan_proxy(azurite.port, rtt, bandwidth)
            servers.append(proxy)
            endpoints[backend] = f"http://127.0.0.1:{proxy.port}/devstoreaccount1"
            showcase.info(
                f'{backend}: "{region}" behind a WAN emulator, {rtt} round trip, {bandwidth} '
                f"(127.0.0.1:{proxy.port}, PID {proxy.proc.pid})"
            )
        shards = env_int("DEMO_SHARDS", 40)
        images = env_int("DEMO_IMAGES_PER_SHARD", 100)
        size = env_int("DEMO_IMAGE_SIZE", 256)
        showcase.info(
            f"Writing the dataset: {shards} shards × {images} JPEGs ({size}px), even → A, odd → B"
        )
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string()
        written = generate(
            [f"az://{backend}/train" for backend in REGIONS],
            shards,
            images,
            size,
            log=lambda _: None,
        )
        showcase.info(f"{written / 2**20:.0f} MiB uploaded")
        os.environ["WD_DEMO_AZURE_KEY"] = AZURITE_KEY  # the config names the variable, not the key
        config = work / "warpdrive.yaml"
        config.write_text(
            f"mount_point: {work / 'wd'}\n"
            f"metrics: {{addr: '127.0.0.1:{env_int('DEMO_METRICS_PORT', free_port())}'}}\n"
            f"cache: {{path: {work / 'cache'}, max_size: 8GB, block_size: 4MB}}\n"
            "backends:\n"
            + "".join(
                f"  - name: {backend}\n    type: azureblob\n"
                f"    config: {{account: devstoreaccount1, container: {backend}, "
                f"endpoint: '{endpoint}'}}\n"
                "    auth: {method: account_key, account_key_env: WD_DEMO_AZURE_KEY}\n"
                for backend, endpoint in endpoints.items()
            )
        )
        showcase.run(
            config,
            steps=env_int("TRAIN_STEPS", 300),
            batch_size=env_int("TRAIN_BATCH", 32),
            workers=env_int("TRAIN_WORKERS", 4),
            log_every=env_int("TRAIN_LOG_EVERY", 50),
        )
        showcase.info(f"Demo finished in {time.monotonic() - started:.0f} s")
        return 0
    except KeyboardInterrupt:
        print("\nlocal_demo: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for server in reversed(servers):
            server.stop()
        if os.environ.get("DEMO_KEEP") != "1" and not os.environ.get("DEMO_WORKDIR"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
