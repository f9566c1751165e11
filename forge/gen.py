"""The synthetic dataset: WebDataset shards of real JPEGs whose labels a byte-sampling model
can learn.

``shard-NNNNNN.tar`` holds ``XXXXXXXX.jpg`` + ``XXXXXXXX.cls`` (keys numbered across the whole
set). Each image is class-tinted noise (what ``--decode``'s CNN learns from), and carries a
JPEG comment segment (COM, skipped by every decoder) covering about half the file, laid out so
that forge's features — 256 bytes sampled at even intervals — read a class code there: a high
byte where ``feature index % classes == label``, a low one elsewhere. Without that, the raw
bytes of a JPEG say almost nothing about its label and loss could not go down.

Everything is a function of (seed, shard, index): the same flags give the same bytes. Shard
``i`` goes to destination ``i % len(destinations)``: with two, even shards to the first and
odd to the second, as the original demo splits them across regions. A destination is a
directory, ``az://container/prefix`` (``AZURE_STORAGE_CONNECTION_STRING``; Azurite or Azure),
or ``s3://bucket/prefix`` (the usual AWS environment, ``AWS_ENDPOINT_URL`` for emulators).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

from forge.features import FEATURES

HIGH, LOW = 0xC8, 0x32
COM_MAX = 65533  # a COM segment's payload limit


def make_image(rnd: random.Random, label: int, size: int, classes: int) -> bytes:
    """A JPEG of ``size``×``size`` class-tinted noise with the label code in a COM segment."""
    import numpy as np
    from PIL import Image

    gen = np.random.default_rng(rnd.getrandbits(64))
    hue = np.array(_tint(label, classes), dtype=np.int16)
    noise = gen.integers(-60, 61, size=(size, size, 3), dtype=np.int16)
    pixels = np.clip(hue + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=rnd.randrange(70, 91))
    return with_label_code(out.getvalue(), label, classes)


def with_label_code(jpeg: bytes, label: int, classes: int) -> bytes:
    """``jpeg`` with a COM segment right after SOI whose bytes, at the offsets forge samples,
    spell the label: the segment is as long as the image data (capped), so about half of the
    256 features fall in it."""
    import numpy as np

    payload_len = min(len(jpeg), COM_MAX)
    total = len(jpeg) + 4 + payload_len
    stride = max(1, total // FEATURES)
    start = 6  # SOI (2) + COM marker (2) + length (2)
    index = (start + np.arange(payload_len)) // stride  # the feature each byte would feed
    payload = np.where(index % classes == label, HIGH, LOW).astype(np.uint8)
    segment = b"\xff\xfe" + (payload_len + 2).to_bytes(2, "big") + payload.tobytes()
    return jpeg[:2] + segment + jpeg[2:]


def _tint(label: int, classes: int) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(label / classes, 0.8, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def make_shard(
    shard: int, images: int, size: int, classes: int, seed: int
) -> tuple[bytes, list[tuple[str, int]]]:
    """Shard ``shard``'s tar bytes and its (key, label) pairs."""
    buf = io.BytesIO()
    labels = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(images):
            rnd = random.Random(f"{seed}:{shard}:{i}")
            label = rnd.randrange(classes)
            key = f"{shard * images + i:08d}"
            for ext, data in (
                ("jpg", make_image(rnd, label, size, classes)),
                ("cls", str(label).encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                tf.addfile(info, io.BytesIO(data))
            labels.append((key, label))
    return buf.getvalue(), labels


def writer(destination: str) -> Callable[[str, bytes], None]:
    """A function that stores ``name → bytes`` under ``destination``."""
    if destination.startswith("az://"):
        from azure.storage.blob import ContainerClient

        container, _, prefix = destination.removeprefix("az://").partition("/")
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if not conn:
            raise SystemExit(f"{destination}: set AZURE_STORAGE_CONNECTION_STRING to write there")
        client = ContainerClient.from_connection_string(conn, container)
        if not client.exists():
            client.create_container()

        def upload(name: str, data: bytes) -> None:
            client.upload_blob(_join(prefix, name), data, overwrite=True)

        return upload
    if destination.startswith("s3://"):
        import boto3

        bucket, _, prefix = destination.removeprefix("s3://").partition("/")
        s3 = boto3.client("s3")

        def put(name: str, data: bytes) -> None:
            s3.put_object(Bucket=bucket, Key=_join(prefix, name), Body=data)

        return put
    root = Path(destination)
    root.mkdir(parents=True, exist_ok=True)

    def write_file(name: str, data: bytes) -> None:
        tmp = root / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(root / name)

    return write_file


def _join(prefix: str, name: str) -> str:
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


def generate(
    destinations: Sequence[str],
    shards: int,
    images: int,
    size: int = 256,
    classes: int = 10,
    seed: int = 42,
    log: Callable[[str], None] = print,
) -> int:
    """Write the dataset; returns the bytes written."""
    writers = [writer(d) for d in destinations]
    total = 0
    for i in range(shards):
        data, _ = make_shard(i, images, size, classes, seed)
        name = f"shard-{i:06d}.tar"
        writers[i % len(writers)](name, data)
        total += len(data)
        log(f"  {name} → {destinations[i % len(destinations)]} ({len(data) / 2**20:.1f} MiB)")
    return total


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        action="append",
        required=True,
        help="destination: a directory, az://container/prefix or s3://bucket/prefix; give it "
        "twice to put even shards in the first and odd shards in the second",
    )
    p.add_argument("--shards", type=int, default=40)
    p.add_argument("--images-per-shard", type=int, default=100)
    p.add_argument("--image-size", type=int, default=256, help="pixels per side")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)


def run(args: argparse.Namespace) -> int:
    for name in ("shards", "images_per_shard", "image_size", "classes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"forge gen-shards: --{name.replace('_', '-')} must be at least 1")
    total = generate(
        args.out, args.shards, args.images_per_shard, args.image_size, args.classes, args.seed
    )
    print(f"wrote {args.shards} shards, {total / 2**20:.1f} MiB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m forge.gen", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
