"""The one image preprocessing, shared by training, the representative dataset of the int8
conversion, accuracy evaluation and the input vectors sent with a deployment.

Pillow and numpy only (no TensorFlow), so the web process can use it for input vectors.
An image becomes ``float32`` of shape ``(height, width, channels)`` with values in [0, 1]:
converted to ``L`` (grayscale) or ``RGB``, resized with bilinear filtering, divided by 255.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image


def channels(color_mode: str) -> int:
    return 1 if color_mode == "grayscale" else 3


def preprocess(data: bytes, width: int, height: int, color_mode: str) -> np.ndarray:
    """One encoded image -> ``float32[height, width, channels]`` in [0, 1]."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if color_mode == "grayscale" else "RGB")
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def preprocess_many(blobs: Sequence[bytes], width: int, height: int,
                    color_mode: str) -> np.ndarray:
    out = np.empty((len(blobs), height, width, channels(color_mode)), dtype=np.float32)
    for i, data in enumerate(blobs):
        out[i] = preprocess(data, width, height, color_mode)
    return out


def split_ids(index: dict[str, list[int]], validation_split: float,
              seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """A stratified split: per label, a seeded shuffle, then ``round(n * split)`` (at least
    one) images for validation and the rest (at least one) for training. Returns lists of
    ``(image_id, class_index)`` with classes numbered by sorted label name."""
    rng = random.Random(seed)
    train: list[tuple[int, int]] = []
    val: list[tuple[int, int]] = []
    for cls, label in enumerate(sorted(index)):
        ids = list(index[label])
        rng.shuffle(ids)
        n_val = min(max(1, round(len(ids) * validation_split)), len(ids) - 1)
        val += [(i, cls) for i in ids[:n_val]]
        train += [(i, cls) for i in ids[n_val:]]
    return train, val
