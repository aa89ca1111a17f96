"""The virtual board's firmware image: what the stand-in ``arduino-cli compile`` writes to
``<build>/tinyml_sketch.ino.bin`` and the virtual board boots.

Layout: ``MAGIC`` (8 bytes), header length (4 bytes, big endian), a JSON header, the model
bytes, the test vectors, then zero padding so the file is as long as a real build (the "Sketch
uses" figure plus 8 bytes, as bossac writes it). The header carries what the sketch has
compiled in::

    {"format": 1, "sha256": "...", "model_len": N, "vectors_len": N, "vector_count": N,
     "config": {...the SketchConfig but the model and the vectors...},
     "text_bytes": N, "data_bytes": N, "board": "nano33ble"}

The vectors are stored as the sketch stores them, the input tensor's bytes one vector after
the other (``hal.arduino.sketch.input_tensor_bytes``): they take the flash the build's ``text``
counts for them, so an image is never longer than the build it stands for (a JSON list of
48 vectors of 2,304 values used to make the image outgrow the flash that the fit check had
approved, issue 13). Images written before ``vectors_len`` existed carry the vectors as real
values in ``config.input_vectors``; they still decode.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"TMLVIMG1"
FORMAT = 1
_MAX_HEADER = 4 * 1024 * 1024


class ImageError(ValueError):
    """The file is not a valid virtual firmware image."""


@dataclass(frozen=True)
class Image:
    """A decoded firmware image."""

    model: bytes
    header: dict[str, Any] = field(default_factory=dict)
    vectors: tuple[bytes, ...] = ()  # input tensor bytes, one per embedded test vector

    @property
    def sha256(self) -> str:
        return str(self.header.get("sha256", ""))

    @property
    def arena_bytes(self) -> int:
        return int(self.header.get("arena_bytes", 0))


def pack(model: bytes, header: dict[str, Any], total_bytes: int | None = None,
         vectors: tuple[bytes, ...] = ()) -> bytes:
    """The image bytes; ``total_bytes`` pads it to a real build's size. Raises ``ValueError``
    when the content would not fit in ``total_bytes`` (the image must never be longer than
    the build whose size the fit check approved)."""
    sizes = {len(v) for v in vectors}
    if len(sizes) > 1:
        raise ValueError("test vectors of different lengths")
    head = {**header, "format": FORMAT, "model_len": len(model),
            "sha256": hashlib.sha256(model).hexdigest(),
            "vectors_len": sum(len(v) for v in vectors), "vector_count": len(vectors)}
    blob = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    data = MAGIC + struct.pack(">I", len(blob)) + blob + model + b"".join(vectors)
    if total_bytes is not None:
        if len(data) > total_bytes:
            raise ValueError(f"image content {len(data)} B exceeds the build's {total_bytes} B")
        data += b"\0" * (total_bytes - len(data))
    return data


def unpack(data: bytes) -> Image:
    """Decode an image; raises :class:`ImageError` when it is not one (or is corrupt)."""
    if len(data) < 12 or not data.startswith(MAGIC):
        raise ImageError("not a virtual firmware image (bad magic)")
    (hlen,) = struct.unpack(">I", data[8:12])
    if hlen > _MAX_HEADER or 12 + hlen > len(data):
        raise ImageError("image header length out of range")
    try:
        header = json.loads(data[12 : 12 + hlen])
    except ValueError as exc:
        raise ImageError(f"image header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ImageError("unsupported image format")
    n = header.get("model_len")
    if not isinstance(n, int) or n < 0 or 12 + hlen + n > len(data):
        raise ImageError("image model length out of range")
    model = data[12 + hlen : 12 + hlen + n]
    if hashlib.sha256(model).hexdigest() != header.get("sha256"):
        raise ImageError("image model bytes do not match their sha256")
    vlen, count = header.get("vectors_len", 0), header.get("vector_count", 0)
    start = 12 + hlen + n
    if (not isinstance(vlen, int) or not isinstance(count, int) or vlen < 0 or count < 0
            or start + vlen > len(data) or (count and vlen % count) or (vlen and not count)):
        raise ImageError("image vector length out of range")
    size = vlen // count if count else 0
    vectors = tuple(data[start + i * size : start + (i + 1) * size] for i in range(count))
    return Image(model=model, header=header, vectors=vectors)


def read(path: Path) -> Image:
    """Read and decode the image at ``path``."""
    return unpack(Path(path).read_bytes())
