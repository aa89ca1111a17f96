"""The virtual board's firmware image: what the stand-in ``arduino-cli compile`` writes to
``<build>/tinyml_sketch.ino.bin`` and the virtual board boots.

Layout: ``MAGIC`` (8 bytes), header length (4 bytes, big endian), a JSON header, the model
bytes, then zero padding so the file is as long as a real build (the "Sketch uses" figure plus
8 bytes, as bossac writes it). The header carries what the sketch has compiled in::

    {"format": 1, "sha256": "...", "model_len": N, "arena_bytes": N, "ops": [...],
     "labels": [...], "inputs": [[...], ...], "template_version": "...", "board": "nano33ble",
     "text_bytes": N, "data_bytes": N}

``inputs`` are the embedded test vectors as the sketch stores them (quantised integers for an
int8/uint8 input tensor, floats for a float tensor).
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

    @property
    def sha256(self) -> str:
        return str(self.header.get("sha256", ""))

    @property
    def arena_bytes(self) -> int:
        return int(self.header.get("arena_bytes", 0))


def pack(model: bytes, header: dict[str, Any], total_bytes: int | None = None) -> bytes:
    """The image bytes; ``total_bytes`` pads it to a real build's size."""
    head = {**header, "format": FORMAT, "model_len": len(model),
            "sha256": hashlib.sha256(model).hexdigest()}
    blob = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    data = MAGIC + struct.pack(">I", len(blob)) + blob + model
    if total_bytes is not None and total_bytes > len(data):
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
    return Image(model=model, header=header)


def read(path: Path) -> Image:
    """Read and decode the image at ``path``."""
    return unpack(Path(path).read_bytes())
