"""Every sketch variant we render, in one table: the host g++ check (test_render.py), the
real Cortex-M4 compile (test_realbuild.py) and the QEMU arena harness all iterate it.

To add a variant (e.g. a template feature behind an ``#if`` in the .ino), add one entry to
:data:`VARIANTS`: a name and a function returning the :class:`SketchConfig` to render.
``FULL_BUILD`` names the variants CI also compiles with the whole library and links (the size
table's real figures); everything else is compiled sketch-only (the sketch's own files against
the real headers, warnings as errors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hal.arduino.sketch import SketchConfig, config_for
from hal.driver import InstallRequest
from hal.model.analysis import analyze
from tests.firmware.helpers import model_config, uint8_config

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "models"

HOSTILE_LABELS = ('"; int injected = 1; //', "\\", "\\\"", "*/ #error broken /*")


def sample_config(name: str, vectors: int = 2) -> SketchConfig:
    """A config for the sample model ``name`` (samples/models) with its reference inputs."""
    import json

    data = (SAMPLES / f"{name}.tflite").read_bytes()
    meta = json.loads((SAMPLES / f"{name}.json").read_text())
    report = analyze(data)
    n = report.inputs[0].elements
    vecs = tuple(tuple(float(x) for x in _flat(ref["input"]))[:n]
                 for ref in meta["reference"][:vectors])
    request = InstallRequest(model=data, labels=tuple(meta.get("labels") or ()),
                             input_vectors=vecs)
    from hal.boards import get_profile

    arena = get_profile("nano33ble").arena_for(report.arena_estimate_bytes)
    return config_for(report, data, request, arena, "nano33ble")


def _flat(v) -> list:
    out: list = []
    stack = [v]
    while stack:
        x = stack.pop(0)
        if isinstance(x, list | tuple):
            stack[:0] = list(x)
        else:
            out.append(x)
    return out


VARIANTS: dict[str, Callable[[], SketchConfig]] = {
    "hello_int8_vectors": lambda: model_config("hello_world_int8"),
    "hello_float_vectors": lambda: model_config("hello_world_float"),
    "hello_uint8_vectors": uint8_config,
    "micro_speech_labels": lambda: model_config(
        "arduino_micro_speech", labels=("silence", "unknown", "yes", "no")),
    "micro_speech_hostile_labels": lambda: model_config(
        "arduino_micro_speech", vectors=1, labels=HOSTILE_LABELS),
    "magic_wand": lambda: model_config("arduino_magic_wand"),
    "person_vectors": lambda: model_config("person_detect", vectors=1),
    "person_camera": lambda: model_config("person_detect", source="camera"),
    "person_camera_float": lambda: replace(
        model_config("person_detect", source="camera"), input_dtype="float32",
        input_scale=None, input_zero_point=None, camera_range=(-1.0, 1.0)),
    "no_vectors": lambda: model_config("arduino_micro_speech", vectors=0),
    "no_labels": lambda: model_config("arduino_micro_speech", labels=()),
    "sample_shapes_int8": lambda: sample_config("shapes_int8"),
    "sample_sine_float": lambda: sample_config("sine_float"),
}

# Linked in full by the firmware pass: the fewest ops (FULLY_CONNECTED only) and the most
# (five ops, 300 KB model) plus the camera build, which adds the OV767X library.
FULL_BUILD = ("hello_int8_vectors", "person_vectors", "person_camera")
