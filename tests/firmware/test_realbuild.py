"""Every rendered sketch variant compiled for the Cortex-M4 against the real sources
(ArduinoCore-mbed 4.6.0, ArduinoCore-API 1.5.2, Arduino_TensorFlowLite @7948b85,
Arduino_OV767X @e5dd28f) with Debian's arm-none-eabi GCC, exactly as arduino-cli would, with
warnings as errors on our files; the full builds' sizes against the board profile's size
model. Runs in the ``firmware`` pass (``pytest -m firmware``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hal.arduino.sketch import render_sketch
from hal.boards import get_profile, label_flash_bytes
from tests.firmware import realtool
from tests.firmware.conftest import require_real_toolchain
from tests.firmware.variants import FULL_BUILD, VARIANTS

# The first full build compiles TFLM and the core (about 6 minutes on two idle cores).
pytestmark = [pytest.mark.firmware, pytest.mark.timeout(2400)]


def _sketch_report(result: dict) -> str:
    files = result.get("files", {})
    return "\n".join(f"{name}: rc {f['rc']}\n{f['output']}" for name, f in files.items())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_compiles_for_cortex_m4_without_warnings(variant, sketch_dir):
    require_real_toolchain()
    render_sketch(VARIANTS[variant](), sketch_dir)
    result = realtool.realbuild(sketch_dir, sketch_only=True, werror=True)
    assert result["returncode"] == 0, _sketch_report(result) + result["output"][-3000:]
    assert result["compiled"] is True
    assert set(result["files"]) >= {"tinyml_sketch.ino.cpp", "model_data.cpp"}
    for name, f in result["files"].items():
        assert f["rc"] == 0 and "warning" not in f["output"], (name, f["output"])
    libs = set(result["libraries"])
    assert "Arduino_TensorFlowLite" in libs
    assert ("Arduino_OV767X" in libs) == (VARIANTS[variant]().input_source == "camera")


def test_the_werror_check_fails_on_a_warning(sketch_dir):
    """The check can fail: an unused variable in the sketch is an error with --werror."""
    require_real_toolchain()
    render_sketch(VARIANTS["hello_int8_vectors"](), sketch_dir)
    ino = sketch_dir / "tinyml_sketch.ino"
    ino.write_text(ino.read_text().replace("void loop() {", "void loop() {\n  int unused = 1;"))
    result = realtool.realbuild(sketch_dir, sketch_only=True, werror=True)
    assert result["returncode"] == 1
    assert "unused" in _sketch_report(result)


def test_a_wrong_tflm_call_fails_against_the_real_headers(sketch_dir):
    """What the host headers cannot catch: the real TFLM API. The pre-0b8e7c1 constructor
    (with an ErrorReporter) does not exist in the library we build against."""
    require_real_toolchain()
    render_sketch(VARIANTS["hello_int8_vectors"](), sketch_dir)
    ino = sketch_dir / "tinyml_sketch.ino"
    ino.write_text(ino.read_text().replace(
        "interpreter(model, resolver, g_arena, TINYML_ARENA_BYTES)",
        "interpreter(model, resolver, g_arena, TINYML_ARENA_BYTES, nullptr, nullptr, 1)"))
    result = realtool.realbuild(sketch_dir, sketch_only=True, werror=True)
    assert result["returncode"] == 1
    assert "MicroInterpreter" in _sketch_report(result)


def _predicted(config):
    sizes = get_profile("nano33ble").sizes
    p = sizes.predict(model_bytes=len(config.model), ops=config.ops,
                      arena_bytes=config.arena_bytes, vector_bytes=config.vector_bytes,
                      label_bytes=label_flash_bytes(config.labels),
                      camera=config.input_source == "camera", input_dtype=config.input_dtype)
    return p.text_bytes - sizes.mbed_flash_bytes, p.data_bytes - sizes.mbed_ram_bytes


@pytest.mark.parametrize("variant", FULL_BUILD)
def test_full_build_links_and_the_size_model_predicts_it(variant, sketch_dir, full_build):
    """The real mbed-less link against the size model without its mbed OS share: text
    within 1.5 % (never under by more than 1 KB: the fit check must not pass a build
    that is bigger than predicted by more than noise), data within 0.5 %."""
    config = VARIANTS[variant]()
    render_sketch(config, sketch_dir)
    result = realtool.realbuild(sketch_dir)
    assert result.get("ok"), result["output"][-4000:]
    text, data = _predicted(config)
    real_text, real_data = result["arduino_text"], result["arduino_data"]
    assert abs(text - real_text) <= 0.015 * real_text, (text, real_text)
    assert text >= real_text - 1024, (text, real_text)
    assert abs(data - real_data) <= 0.005 * real_data, (data, real_data)
    # and the link is what the size model assumes: no mbed OS, nothing else missing
    assert result["missing_static_libs"] and all(
        lib.endswith("libmbed.a") for lib in result["missing_static_libs"])


def test_vectors_and_labels_cost_exactly_their_bytes(sketch_dir, full_build):
    """The parts the model adds 1:1 are measured 1:1: 40 more int8 vectors of the hello
    model and their labels move text by the predicted amount (within alignment)."""
    base = VARIANTS["hello_int8_vectors"]()
    more = replace(base, input_vectors=base.input_vectors * 21,
                   labels=("a much longer label than before",))
    render_sketch(more, sketch_dir)
    result = realtool.realbuild(sketch_dir)
    assert result.get("ok"), result["output"][-3000:]
    grew = result["arduino_text"] - full_build["arduino_text"]
    want = (more.vector_bytes - base.vector_bytes) + (
        label_flash_bytes(more.labels) - label_flash_bytes(base.labels))
    assert abs(grew - want) <= 16, (grew, want)
