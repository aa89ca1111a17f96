"""The 32-bit truth for the arena: the Arduino TFLM library's own objects (compiled for the
Nano 33 BLE by the real build) run under QEMU on a Cortex-M4 (mps2-an386) by our harness
(tests/firmware/qemu), for every TFLM example and sample model the template takes. The
estimate for the board (``arena_estimate_mcu_bytes``) must be within -5 % .. +10 % of TFLM's
``arena_used_bytes()`` there, and the arena the driver compiles in must allocate and run.
Runs in the ``firmware`` pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hal.arduino.sketch import SKETCH_NAME, config_for, render_sketch
from hal.boards import get_profile
from hal.driver import InstallRequest
from hal.errors import HalError
from hal.model.analysis import analyze
from hal.protocol import LineSplitter, RawLine
from tests.firmware import realtool
from tests.firmware.qemu import harness

# The first full build compiles TFLM and the core (about 6 minutes on two idle cores).
pytestmark = [pytest.mark.firmware, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
MODELS = sorted((REPO / "samples" / "models").glob("*.tflite")) + sorted(
    (REPO / "tests" / "data" / "tflm-examples").glob("*.tflite"))


def _driver_config(data: bytes):
    """The config the driver renders: the profile's arena for the (64-bit) estimate."""
    report = analyze(data)
    n = report.inputs[0].elements
    request = InstallRequest(model=data, input_vectors=(tuple(0.1 for _ in range(n)),))
    arena = get_profile("nano33ble").arena_for(report.arena_estimate_bytes)
    return report, config_for(report, data, request, arena, "nano33ble")


@pytest.fixture(scope="module")
def objects(full_build) -> list[str]:
    why = harness.missing()
    if why:
        pytest.fail(f"the QEMU harness cannot run: {why}")
    objs = harness.library_objects(full_build["link_command"])
    assert len(objs) > 150  # the whole library, not a stray object
    return objs


def _run(config, tmp_path: Path, objects: list[str]) -> harness.HarnessResult:
    sketch = tmp_path / SKETCH_NAME
    render_sketch(config, sketch)
    elf = harness.build(sketch, tmp_path / "out", objects, realtool.tflm_source_root())
    return harness.execute(elf)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_estimate_matches_the_32_bit_arena_and_the_compiled_arena_allocates(
        path, tmp_path, objects):
    data = path.read_bytes()
    try:
        report, config = _driver_config(data)
    except HalError as exc:  # custom ops (audio front end, Ethos-U): refused before a build
        assert exc.code == "model_unsupported_ops"
        return
    res = _run(config, tmp_path, objects)
    assert res.sha == report.sha256[:16]
    assert res.compiled_ok, f"the driver's arena {config.arena_bytes} B does not allocate"
    assert res.invoke_ok
    used = res.used_at_compiled
    error = report.arena_estimate_mcu_bytes / used - 1
    assert -0.05 <= error <= 0.10, (report.arena_estimate_mcu_bytes, used)
    # the smallest arena that allocates (bisection) is at most what we compile in
    assert res.min_arena <= config.arena_bytes
    assert res.instructions_per_inference > 0  # emulated instructions, not board cycles


def test_a_too_small_arena_fails_and_tflm_lines_end_in_crlf(tmp_path, objects):
    """Below the smallest arena TFLM's AllocateTensors() fails; its MicroPrintf lines end
    in \\r\\n, and hal.protocol keeps them as raw lines without the \\r."""
    _, config = _driver_config((REPO / "samples" / "models" / "shapes_int8.tflite").read_bytes())
    res = _run(replace(config, arena_bytes=2048), tmp_path, objects)
    assert not res.compiled_ok and res.min_arena > 2048
    raw = res.stderr.encode()
    assert b"\r\n" in raw  # as the board's serial port would carry it
    lines = LineSplitter().feed(raw)
    tflm = [x for x in lines if isinstance(x, RawLine) and "allocate" in x.text]
    assert tflm, res.stderr[:2000]
    assert all("\r" not in x.text and x.reason == "not_protocol" for x in tflm)
