"""WebDataset shards for tests, written with the standard library's tarfile (an independent
writer, so the reader under test is checked against another implementation)."""

from __future__ import annotations

import io
import random
import tarfile

Fields = dict[str, bytes]


def sample_fields(key: str, jpeg: bool = False) -> Fields:
    """The fields of sample ``key``: a payload whose bytes and size depend on the key, a label."""
    rnd = random.Random(key)
    label = rnd.randrange(10)
    image = _jpeg(rnd, label) if jpeg else rnd.randbytes(rnd.randrange(500, 9000))
    return {"jpg": image, "cls": str(label).encode()}


def make_shard(
    shard: int, samples: int, jpeg: bool = False, fmt: int = tarfile.USTAR_FORMAT
) -> tuple[bytes, dict[str, Fields]]:
    """A tar of ``samples`` samples keyed ``SSSSSSIIII``, and what each sample holds."""
    content = {
        f"{shard:06d}{i:04d}": sample_fields(f"{shard:06d}{i:04d}", jpeg) for i in range(samples)
    }
    return tar_of(content, fmt), content


def tar_of(content: dict[str, Fields], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for key, fields in content.items():
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 1_700_000_000
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _jpeg(rnd: random.Random, label: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (16, 12), (label * 25, rnd.randrange(256), 128))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()
