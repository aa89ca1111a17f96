"""Rendering the Nano 33 BLE sketch: valid C++ for every input variant, stable files for the
build cache, and an exact inverse (read_sketch) for the stand-in compiler."""

from __future__ import annotations

import os
import re
from dataclasses import replace

import pytest

from hal.arduino import sketch as sk
from hal.arduino.sketch import (
    SKETCH_FILES,
    render_sketch,
)
from hal.model import ops as model_ops
from hal.virtual.sketch_reader import read_sketch
from tests.firmware.helpers import model_config, syntax_check, uint8_config


def _mtimes(d):
    return {name: (d / name).stat().st_mtime_ns for name in SKETCH_FILES}


# ------------------------------------------------------------------------- valid C++


@pytest.mark.parametrize(
    "variant",
    [
        "hello_int8_vectors",
        "hello_float_vectors",
        "hello_uint8_vectors",
        "micro_speech_labels",
        "person_vectors",
        "person_camera",
        "no_vectors",
        "no_labels",
    ],
)
def test_rendered_sketch_compiles_with_gxx(variant, sketch_dir):
    config = {
        "hello_int8_vectors": lambda: model_config("hello_world_int8"),
        "hello_float_vectors": lambda: model_config("hello_world_float"),
        "hello_uint8_vectors": uint8_config,
        "micro_speech_labels": lambda: model_config(
            "arduino_micro_speech", labels=("silence", "unknown", "yes", "no")),
        "person_vectors": lambda: model_config("person_detect", vectors=1),
        "person_camera": lambda: model_config("person_detect", source="camera"),
        "no_vectors": lambda: model_config("arduino_micro_speech", vectors=0),
        "no_labels": lambda: model_config("arduino_micro_speech", labels=()),
    }[variant]()
    assert render_sketch(config, sketch_dir) is True
    syntax_check(sketch_dir)


def test_camera_variant_is_a_camera_build(sketch_dir):
    render_sketch(model_config("person_detect", source="camera"), sketch_dir)
    text = (sketch_dir / "model_config.h").read_text()
    assert "#define TINYML_INPUT_CAMERA 1" in text
    assert "kTinymlInputVectors" not in text  # no vector array takes flash
    back = read_sketch(sketch_dir)
    assert back.input_source == "camera" and back.camera_range == (0.0, 1.0)


def test_float_camera_variant_compiles(sketch_dir):
    base = model_config("person_detect", source="camera")
    config = replace(base, input_dtype="float32", input_scale=None, input_zero_point=None,
                     camera_range=(-1.0, 1.0))
    render_sketch(config, sketch_dir)
    syntax_check(sketch_dir)
    assert read_sketch(sketch_dir).camera_range == (-1.0, 1.0)


def test_broken_sketch_fails_gxx(sketch_dir):
    """The syntax check can fail: a missing op method is a compile error."""
    render_sketch(model_config("hello_world_int8"), sketch_dir)
    path = sketch_dir / "model_config.h"
    path.write_text(path.read_text().replace("AddFullyConnected", "AddFullyConected"))
    with pytest.raises(AssertionError, match="AddFullyConected"):
        syntax_check(sketch_dir)


def test_host_header_declares_every_resolver_method():
    text = (sk.HOST_HEADERS_DIR / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    declared = set(re.findall(r"X\((Add\w+)\)", text))
    wanted = set(model_ops.TFLM_BUILTIN_OPS.values()) | set(model_ops.TFLM_CUSTOM_OPS.values())
    assert wanted <= declared, sorted(wanted - declared)


def test_resolver_registers_exactly_the_model_ops(sketch_dir):
    config = model_config("person_detect", vectors=1)
    render_sketch(config, sketch_dir)
    text = (sketch_dir / "model_config.h").read_text()
    calls = re.findall(r"\(resolver\)\.(Add\w+)\(\)", text)
    assert calls == ["AddAveragePool2D", "AddConv2D", "AddDepthwiseConv2D", "AddReshape",
                     "AddSoftmax"]
    assert "#define TINYML_OP_COUNT 5" in text
    ino = (sketch_dir / "tinyml_sketch.ino").read_text()
    assert "MicroMutableOpResolver<TINYML_OP_COUNT>" in ino
    assert "AllOpsResolver" not in ino.replace("never the all-ops", "")


def test_model_array_is_aligned_and_exact(sketch_dir):
    config = model_config("arduino_micro_speech")
    render_sketch(config, sketch_dir)
    text = (sketch_dir / "model_data.cpp").read_text()
    assert "alignas(16) const unsigned char g_model[] = {" in text
    assert f"const unsigned int g_model_len = {len(config.model)};" in text
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", text)) == config.model
    header = (sketch_dir / "model_config.h").read_text()
    assert f'#define TINYML_MODEL_SHA "{config.model_sha256[:16]}"' in header
    assert f"#define TINYML_ARENA_BYTES {config.arena_bytes}" in header
    assert '#define TINYML_TEMPLATE_VERSION "1.0.0"' in header


# ------------------------------------------------------------------ build cache stability


def test_render_twice_rewrites_nothing(sketch_dir):
    config = model_config("arduino_micro_speech")
    assert render_sketch(config, sketch_dir) is True
    before = _mtimes(sketch_dir)
    os.utime(sketch_dir / "model_data.cpp", ns=(1, 1))  # an old mtime must survive too
    before["model_data.cpp"] = 1
    assert render_sketch(config, sketch_dir) is False
    assert _mtimes(sketch_dir) == before
    assert sorted(p.name for p in sketch_dir.iterdir()) == sorted(SKETCH_FILES)


def test_new_model_changes_only_model_files(sketch_dir):
    render_sketch(model_config("hello_world_int8"), sketch_dir)
    for name in SKETCH_FILES:
        os.utime(sketch_dir / name, ns=(1, 1))
    ino = (sketch_dir / "tinyml_sketch.ino").read_bytes()
    assert render_sketch(model_config("arduino_micro_speech"), sketch_dir) is True
    after = _mtimes(sketch_dir)
    assert after["tinyml_sketch.ino"] == 1 and after["model_data.h"] == 1
    assert after["model_data.cpp"] != 1 and after["model_config.h"] != 1
    assert (sketch_dir / "tinyml_sketch.ino").read_bytes() == ino
    assert sorted(p.name for p in sketch_dir.iterdir()) == sorted(SKETCH_FILES)


def test_only_labels_changed_keeps_the_model_file(sketch_dir):
    config = model_config("arduino_micro_speech")
    render_sketch(config, sketch_dir)
    os.utime(sketch_dir / "model_data.cpp", ns=(1, 1))
    assert render_sketch(replace(config, labels=("a", "b", "c", "d")), sketch_dir) is True
    assert (sketch_dir / "model_data.cpp").stat().st_mtime_ns == 1


def test_stray_sources_are_removed(sketch_dir):
    config = model_config("hello_world_int8")
    render_sketch(config, sketch_dir)
    (sketch_dir / "old_model.cpp").write_text("int x;\n")
    (sketch_dir / ".model_data.cpp.tmp").write_text("half")
    (sketch_dir / "notes.txt").write_text("kept: not a source file")
    assert render_sketch(config, sketch_dir) is True
    names = sorted(p.name for p in sketch_dir.iterdir())
    assert names == sorted([*SKETCH_FILES, "notes.txt"])


def test_sketch_folder_must_be_named_like_the_ino(tmp_path):
    with pytest.raises(sk.InputError) as err:
        render_sketch(model_config("hello_world_int8"), tmp_path / "other")
    assert err.value.code == "bad_option" and err.value.detail["field"] == "sketch_dir"
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ["hello_world_int8", "hello_world_float",
                                  "arduino_micro_speech", "person_detect"])
def test_read_is_the_inverse_of_render(name, sketch_dir, tmp_path):
    config = model_config(name, vectors=1 if name == "person_detect" else 3)
    render_sketch(config, sketch_dir)
    back = read_sketch(sketch_dir)
    for field_name in ("model", "model_sha256", "ops", "arena_bytes", "labels", "input_dtype",
                       "input_shape", "input_scale", "input_zero_point", "input_source",
                       "board", "status_period_ms", "template_version",
                       "inference_period_ms"):
        assert getattr(back, field_name) == getattr(config, field_name), field_name
    # Vectors come back as the real values the stored elements stand for.
    assert sk.input_tensor_bytes(back) == sk.input_tensor_bytes(config)
    again = tmp_path / "again" / sk.SKETCH_NAME
    render_sketch(back, again)
    for file_name in SKETCH_FILES:
        assert (again / file_name).read_bytes() == (sketch_dir / file_name).read_bytes()


def test_uint8_round_trip(sketch_dir):
    config = uint8_config()
    render_sketch(config, sketch_dir)
    back = read_sketch(sketch_dir)
    assert back.input_dtype == "uint8"
    assert sk.input_tensor_bytes(back) == sk.input_tensor_bytes(config)
    # 0.0 -> the zero point; -3.0 clamps at 0.
    assert [b[0] for b in sk.input_tensor_bytes(config)] == [128, 189, 5]


def test_quantisation_uses_scale_and_zero_point():
    config = model_config("hello_world_int8", vectors=0)
    config = replace(config, input_vectors=((0.0,), (1.0,), (100.0,), (-100.0,)))
    scale = config.input_scale
    zp = config.input_zero_point
    got = [int.from_bytes(b, "little", signed=True) for b in sk.input_tensor_bytes(config)]
    assert got == [zp, zp + round(1.0 / scale), 127, -128]


def test_extra_memory_figures_for_the_fit_check():
    speech = model_config("arduino_micro_speech", vectors=2, labels=("a", "bb", "c", "d"))
    assert speech.vector_bytes == 2 * 1960
    assert speech.extra_flash_bytes == 2 * 1960 + (1 + 2 + 1 + 1) + 4 * 5
    assert speech.extra_ram_bytes == 0
    camera = model_config("person_detect", source="camera")
    assert camera.extra_ram_bytes == 176 * 144 + 256
    assert camera.vector_bytes == 0
