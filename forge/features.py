"""What the models see: the original's 256 bytes sampled at even intervals from each JPEG's
raw bytes (no decode, so loading, not compute, is the bottleneck), or with ``--decode`` the
image decoded by Pillow and resized."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

FEATURES = 256
CLASSES = 10
DECODED_SIZE = 32


def byte_features(raw: bytes) -> np.ndarray:
    """``FEATURES`` bytes of ``raw`` at stride ``len // FEATURES`` (at least 1), scaled to [0, 1];
    short inputs repeat their last byte, as the original did."""
    if not raw:
        raise ValueError("empty image")
    stride = max(1, len(raw) // FEATURES)
    index = np.minimum(np.arange(FEATURES) * stride, len(raw) - 1)
    return np.frombuffer(raw, dtype=np.uint8)[index].astype(np.float32) / 255.0


def decoded_features(raw: bytes) -> np.ndarray:
    """The image as float32 (3, 32, 32) in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        small = img.convert("RGB").resize((DECODED_SIZE, DECODED_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0


class Collate:
    """Turns a list of samples into (inputs, labels) in the DataLoader worker, so feature
    extraction runs in parallel. A class, not a closure: workers may be spawned."""

    def __init__(self, decode: bool) -> None:
        self.decode = decode

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        extract = decoded_features if self.decode else byte_features
        inputs, labels, keys = [], [], []
        for sample in samples:
            try:
                inputs.append(extract(sample["jpg"]))
            except (ValueError, OSError, KeyError):
                continue  # as the original: an unusable image is left out of the batch
            labels.append(int(sample["cls"]) % CLASSES)
            keys.append(sample["__key__"])
        return {
            "inputs": torch.from_numpy(np.stack(inputs)) if inputs else torch.empty(0),
            "labels": torch.tensor(labels, dtype=torch.long),
            "keys": keys,
        }
