"""The default CNN's shapes and sizes, computed without TensorFlow, so the web process can refuse
a training that cannot build before a worker starts (see :func:`training_problems`).

The architecture (built by :func:`backend_stub.training.build_model`)::

    Input(height, width, channels)
    [Conv2D(f, 3x3, same) -> MaxPool2D(2)]  for f in conv_filters
    Flatten -> Dropout -> Dense(num_classes, softmax)

A 3x3 ``same`` convolution keeps height and width; a 2x2 max pool with ``valid`` padding
halves them, rounding down. A side that reaches 0 makes Keras raise ``ValueError`` when the
model is built (8x8 images with four blocks: 8 -> 4 -> 2 -> 1 -> 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Trainable parameters of the float model. The worker holds the weights, their gradients and
# Adam's two moments (4 float32 copies); 10 M parameters is ~160 MB, and far beyond any
# microcontroller (the int8 model is ~1 byte per parameter).
MAX_PARAMETERS = 10_000_000
# The worker preprocesses every image of the dataset into one float32 array.
MAX_INPUT_BYTES = 1 << 30


@dataclass(frozen=True)
class Shapes:
    """What the architecture becomes for given parameters."""

    sides: tuple[tuple[int, int], ...]  # (height, width) after each conv block's pool
    flatten: int  # features entering the Dense layer
    parameters: int  # trainable parameters (conv kernels and biases, dense weights and biases)


def shapes(height: int, width: int, chans: int, conv_filters: Sequence[int],
           num_classes: int) -> Shapes:
    """Sides after each block, the flattened size and the parameter count."""
    h, w, cin, params = height, width, chans, 0
    sides = []
    for f in conv_filters:
        params += (9 * cin + 1) * f
        h, w, cin = h // 2, w // 2, f
        sides.append((h, w))
    flatten = h * w * cin
    params += (flatten + 1) * num_classes
    return Shapes(tuple(sides), flatten, params)


def max_blocks(side: int) -> int:
    """How many conv blocks a side of ``side`` pixels allows (each halves it, at least 1)."""
    n = 0
    while side // 2 >= 1:
        side //= 2
        n += 1
    return n


def training_problems(params: dict[str, Any], num_classes: int,
                      num_images: int) -> list[dict[str, str]]:
    """Every reason the training described by ``params`` (the validated ``TrainingIn``
    fields) cannot build or run, as ``[{"field", "problem"}]``; empty when it can."""
    problems: list[dict[str, str]] = []
    height, width = params["image_height"], params["image_width"]
    filters = list(params["conv_filters"])
    chans = 1 if params["color_mode"] == "grayscale" else 3
    allowed = max_blocks(min(height, width))
    if len(filters) > allowed:
        side = min(height, width)
        trail = [side]
        while trail[-1] > 0 and len(trail) <= len(filters):
            trail.append(trail[-1] // 2)
        problems.append({
            "field": "conv_filters",
            "problem": f"{len(filters)} conv blocks need images of at least "
                       f"{2 ** len(filters)}x{2 ** len(filters)} pixels: each 2x2 pooling halves "
                       f"the image ({' -> '.join(map(str, trail))}); a "
                       f"{width}x{height} image allows at most {allowed} block(s). Use fewer "
                       "conv_filters or a larger image_width/image_height"})
        return problems  # the sizes below are meaningless for a model that does not build
    s = shapes(height, width, chans, filters, num_classes)
    if s.parameters > MAX_PARAMETERS:
        problems.append({
            "field": "conv_filters",
            "problem": f"the model would have {s.parameters:,} parameters (the Dense layer "
                       f"takes {s.flatten:,} features x {num_classes} classes), over the limit "
                       f"of {MAX_PARAMETERS:,}; use smaller images or more conv blocks"})
    data_bytes = num_images * height * width * chans * 4
    if data_bytes > MAX_INPUT_BYTES:
        problems.append({
            "field": "image_width",
            "problem": f"{num_images} images of {width}x{height}x{chans} take "
                       f"{data_bytes / (1 << 20):,.0f} MiB as float32 in the worker, over the "
                       f"limit of {MAX_INPUT_BYTES >> 20} MiB; use smaller images"})
    return problems
