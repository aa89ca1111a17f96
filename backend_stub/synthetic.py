"""A small learnable image dataset (no downloads): for demos, the end-to-end tests and the
benchmarks, which all need the same images.

Labels: ``blank`` (dim noise), ``square`` (a bright square at a random place) and ``stripes``
(vertical stripes with a random phase). Deterministic for a given seed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SHAPE_LABELS = ("blank", "square", "stripes")


def shape_image(kind: str, size: int, seed: int, mode: str = "L") -> bytes:
    """One ``size`` x ``size`` PNG of label ``kind`` in Pillow ``mode`` ("L" or "RGB")."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 40, (size, size), dtype=np.int32)
    if kind == "square":
        s = size // 3
        x, y = rng.integers(0, size - s, 2)
        arr[y:y + s, x:x + s] += 200
    elif kind == "stripes":
        phase = int(rng.integers(0, 4))
        arr[:, [c for c in range(size) if (c + phase) % 4 < 2]] += 200
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def shapes_entries(per_label: int = 20, size: int = 32, mode: str = "L") -> dict[str, bytes]:
    """``{"<label>/<nnn>.png": png}`` for every label: the layout a dataset zip has."""
    return {f"{kind}/{i:03d}.png": shape_image(kind, size, seed=1000 * k + i, mode=mode)
            for k, kind in enumerate(SHAPE_LABELS) for i in range(per_label)}


def digits_images() -> tuple[list[bytes], np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download) as 8x8
    grayscale PNGs, pixel values 0..16 scaled to 0..255, and their labels 0..9. Needs
    scikit-learn (the ``dev`` extra): harder data than the shapes, for tests and benchmarks."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = []
    for img in digits.images:
        arr = np.clip(np.round(img * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, "PNG")
        pngs.append(buf.getvalue())
    return pngs, digits.target.astype(np.int64)


def digits_entries(indices: list[int] | np.ndarray | None = None) -> dict[str, bytes]:
    """``{"<digit>/<index>.png": png}`` for the given indices of :func:`digits_images`
    (default: all 1,797)."""
    pngs, labels = digits_images()
    chosen = range(len(pngs)) if indices is None else indices
    return {f"{int(labels[i])}/{int(i):04d}.png": pngs[i] for i in chosen}
