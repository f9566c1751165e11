"""Sample decoders: raw bytes by default; images, labels, text and JSON on request.

``decode=None`` leaves every field as the bytes of its file. ``"pil"`` turns images into RGB
``PIL.Image`` objects, ``"torch"`` into ``uint8`` tensors shaped ``(3, H, W)``; both turn
``cls``/``label``/``index`` fields into ``int``, ``txt`` into ``str`` and ``json`` into objects.
A mapping ``{"jpg": fn, ...}`` applies ``fn(bytes)`` to the fields it names; a callable gets the
whole sample dict and returns the decoded one. Fields whose names start with ``__`` are never
touched.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any

Sample = dict[str, Any]
Decoder = Callable[[Sample], Sample]
DecodeSpec = str | Mapping[str, Callable[[bytes], Any]] | Callable[[Sample], Sample] | None

IMAGE_EXTS = frozenset(
    {"jpg", "jpeg", "png", "ppm", "pgm", "pbm", "bmp", "gif", "webp", "tif", "tiff"}
)
LABEL_EXTS = frozenset({"cls", "cls2", "class", "label", "index", "inx", "id"})
TEXT_EXTS = frozenset({"txt", "text", "transcript"})
JSON_EXTS = frozenset({"json", "jsn"})


def make_decoder(spec: DecodeSpec) -> Decoder | None:
    """The decoder ``spec`` names; ValueError naming a spec that names none."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in _IMAGE_DECODERS:
            raise ValueError(f"decode={spec!r}: expected one of {sorted(_IMAGE_DECODERS)}")
        return _ByExtension(_standard(_IMAGE_DECODERS[spec]))
    if isinstance(spec, Mapping):
        fields = {str(k).lower().lstrip("."): v for k, v in spec.items()}
        for ext, fn in fields.items():
            if not callable(fn):
                raise ValueError(f"decode[{ext!r}] must be callable, got {type(fn).__name__}")
        return _ByExtension(fields)
    if callable(spec):
        return spec
    raise ValueError(f"decode must be None, a name, a mapping or a callable; got {spec!r}")


class _ByExtension:
    """Decodes each field by the last part of its extension (``seg.png`` → ``png``). A class,
    not a closure, so that DataLoader workers can be spawned as well as forked."""

    def __init__(self, fields: Mapping[str, Callable[[bytes], Any]]) -> None:
        self.fields = dict(fields)

    def __call__(self, sample: Sample) -> Sample:
        out: Sample = {}
        for key, value in sample.items():
            fn = None
            if not key.startswith("__") and isinstance(value, bytes | bytearray | memoryview):
                fn = self.fields.get(key) or self.fields.get(key.rsplit(".", 1)[-1])
            out[key] = fn(bytes(value)) if fn is not None else value
        return out


def _standard(image: Callable[[bytes], Any]) -> dict[str, Callable[[bytes], Any]]:
    fields: dict[str, Callable[[bytes], Any]] = dict.fromkeys(IMAGE_EXTS, image)
    fields.update(dict.fromkeys(LABEL_EXTS, decode_int))
    fields.update(dict.fromkeys(TEXT_EXTS, decode_text))
    fields.update(dict.fromkeys(JSON_EXTS, json.loads))
    return fields


def decode_int(data: bytes) -> int:
    return int(data.strip())


def decode_text(data: bytes) -> str:
    return data.decode("utf-8")


def decode_pil(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def decode_tensor(data: bytes) -> Any:
    import numpy as np
    import torch

    array = np.asarray(decode_pil(data), dtype=np.uint8)  # H, W, 3
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


_IMAGE_DECODERS: dict[str, Callable[[bytes], Any]] = {"pil": decode_pil, "torch": decode_tensor}
