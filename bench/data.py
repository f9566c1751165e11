"""What several benchmarks need: dropping the page cache, WebDataset-shaped shards, a mount's
config."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

from warpdrive.testing.servers import free_port

SAMPLES = 100  # ~114 KB images: ~11.4 MB shards, the size the targets are stated for


def drop_caches() -> None:
    """Write back and drop the page cache (root), so the next read comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def make_shard(index: int, samples: int = SAMPLES) -> bytes:
    """A tar of ``samples`` (``.jpg`` of random bytes, 57–171 KB, and ``.cls``), the same bytes
    for the same ``index``."""
    rnd = random.Random(index)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(samples):
            size = rnd.randrange(57_000, 171_000)
            for ext, data in (("jpg", rnd.randbytes(size)), ("cls", b"%d" % rnd.randrange(10))):
                info = tarfile.TarInfo(f"{index:06d}{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def mount_config(work: Path, cache: str, backends: str) -> tuple[Path, Path, int]:
    """A warpdrive-mount config written in ``work``, mounting at ``work/wd`` (made) with its
    metrics on a free port: (config file, mount point, metrics port). ``cache``: the cache
    mapping's settings after its path (``max_size: 8GB, …``); ``backends``: the YAML list's
    items."""
    port, point = free_port(), work / "wd"
    point.mkdir()
    config = work / "config.yaml"
    config.write_text(
        f"mount_point: {point}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {work / 'cache'}, {cache}}}\nbackends:\n{backends}"
    )
    return config, point, port
