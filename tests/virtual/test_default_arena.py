"""The arena the analysis chooses (estimate + board margin, no override) really boots every
model the Nano 33 BLE can run, in the real TFLM interpreter of the virtual board."""

from __future__ import annotations

import hashlib

import pytest

from hal.deadline import Deadline
from hal.driver import InstallRequest
from tests.conftest import SAMPLE_MODELS, TFLM_EXAMPLES

MODELS = [
    TFLM_EXAMPLES / "hello_world_int8.tflite",
    TFLM_EXAMPLES / "hello_world_float.tflite",
    TFLM_EXAMPLES / "hello_world_legacy.tflite",
    TFLM_EXAMPLES / "arduino_magic_wand.tflite",
    SAMPLE_MODELS / "sine_int8.tflite",
    SAMPLE_MODELS / "shapes_int8.tflite",
]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_default_arena_boots(make_driver, path):
    data = path.read_bytes()
    report = make_driver().install(InstallRequest(model=data), Deadline(60))
    assert report.boot["sha"] == hashlib.sha256(data).hexdigest()[:16]
    assert report.boot["used_bytes"] <= report.arena_bytes
