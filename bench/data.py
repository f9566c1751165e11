"""What several benchmarks need: dropping the page cache, and WebDataset-shaped shards."""

from __future__ import annotations

import io
import os
import random
import tarfile

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
