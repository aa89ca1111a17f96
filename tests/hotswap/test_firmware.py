"""The hot-swap variant of the firmware template compiles: with the host g++ against the
project's declaration headers, and for the Cortex-M4 with arm-none-eabi-g++ against the real
ArduinoCore-mbed (FlashIAP, Watchdog) and TFLM sources (shared/toolchains/nano33ble,
realbuild.py --sketch-only --werror)."""

from __future__ import annotations

import pytest

from hal.arduino import hotswap
from hal.arduino import hotswap_protocol as hp
from hal.arduino.sketch import HOTSWAP_FILES, SKETCH_NAME, render_sketch
from hal.model.analysis import analyze
from tests.firmware import realtool
from tests.firmware.conftest import require_real_toolchain
from tests.firmware.helpers import EXAMPLES, model_config, syntax_check


def hotswap_config(name: str, **kw):
    base = model_config(name, **kw)
    report = analyze((EXAMPLES / f"{name}.tflite").read_bytes())
    ops = tuple(sorted(set(hp.op_set()) | set(report.ops)))
    return hotswap.firmware_config(base, hotswap.Plan(
        "compile_upload", "hotswap", "", ops=ops, arena_bytes=max(65536, base.arena_bytes),
        slot_bytes=131072))


VARIANTS = {
    "hotswap_micro_speech": lambda: hotswap_config("arduino_micro_speech"),
    "hotswap_person": lambda: hotswap_config("person_detect", vectors=1),
    "hotswap_hello_float": lambda: hotswap_config("hello_world_float"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rendered_hotswap_variant(tmp_path, name):
    sketch_dir = tmp_path / SKETCH_NAME
    render_sketch(VARIANTS[name](), sketch_dir)
    for file in HOTSWAP_FILES:
        assert (sketch_dir / file).exists()
    text = (sketch_dir / "model_config.h").read_text()
    assert "#define TINYML_HOTSWAP 1" in text and "#define TINYML_SLOT_BYTES 131072" in text
    syntax_check(sketch_dir)


@pytest.mark.firmware
@pytest.mark.parametrize("name", ["hotswap_micro_speech", "hotswap_person"])
def test_hotswap_variant_compiles_for_cortex_m4(tmp_path, name):
    require_real_toolchain()  # fails, never skips: CI installs the toolchain
    sketch_dir = tmp_path / SKETCH_NAME
    render_sketch(VARIANTS[name](), sketch_dir)
    result = realtool.realbuild(sketch_dir, sketch_only=True, werror=True, timeout_s=600)
    assert result["returncode"] == 0, result["output"][-4000:]
    assert "tinyml_hotswap.cpp: OK" in result["output"]
