"""Hostile and malformed input: bad configurations are InputError("bad_option") naming the
field, labels can never escape their C literal, and a malformed sketch reads like a compiler
error (code compile_failed, with file and line)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hal.arduino import sketch as sk
from hal.arduino.sketch import SKETCH_FILES, render_sketch
from hal.driver import InstallRequest
from hal.errors import InputError
from hal.model.analysis import analyze
from hal.virtual.sketch_reader import read_sketch
from tests.firmware.helpers import EXAMPLES, model_config, syntax_check


@pytest.fixture(scope="module")
def speech():
    return model_config("arduino_micro_speech", vectors=1)


def _bad(config, field_name, sketch_dir=None, code="bad_option"):
    target = sketch_dir
    with pytest.raises(InputError) as err:
        if target is None:
            sk.validate_config(config)
        else:
            render_sketch(config, target)
    assert err.value.code == code, err.value
    if code == "bad_option":
        assert err.value.detail["field"] == field_name, err.value
        assert field_name in err.value.message
    return err.value


# ------------------------------------------------------------------------ bad options


def test_label_too_long(speech, sketch_dir):
    err = _bad(replace(speech, labels=("x" * 49, "b", "c", "d")), "labels", sketch_dir)
    assert err.detail["index"] == 0
    assert not sketch_dir.exists()  # nothing written on a rejected configuration


def test_label_whose_escape_is_too_long(speech):
    # 48 characters, but each is a surrogate pair in JSON: 576 bytes on the wire.
    _bad(replace(speech, labels=("\U0001f600" * 48,)), "labels")
    sk.validate_config(replace(speech, labels=("\U0001f600" * 32,)))  # 384 bytes: fits


def test_label_that_is_not_text(speech):
    _bad(replace(speech, labels=("ok", "\ud800")), "labels")  # lone surrogate
    _bad(replace(speech, labels=("ok", 3)), "labels")
    _bad(replace(speech, labels=["a"]), "labels")


def test_too_many_labels(speech):
    _bad(replace(speech, labels=tuple(str(i) for i in range(sk.MAX_LABELS + 1))), "labels")


def test_more_labels_than_outputs_from_the_request():
    data = (EXAMPLES / "arduino_micro_speech.tflite").read_bytes()
    report = analyze(data)
    request = InstallRequest(model=data, labels=("a", "b", "c", "d", "e"))
    with pytest.raises(InputError) as err:
        sk.config_for(report, data, request, 10000, "nano33ble")
    assert err.value.code == "bad_option" and err.value.detail["field"] == "labels"


def test_vector_of_the_wrong_length(speech):
    err = _bad(replace(speech, input_vectors=((0.0,) * 1959,)), "input_vectors")
    assert err.detail["expected"] == 1960
    _bad(replace(speech, input_vectors=((0.0,) * 1960, (0.0,) * 1961)), "input_vectors")
    _bad(replace(speech, input_vectors=("abc",)), "input_vectors")


def test_vector_values_that_are_not_finite_numbers(speech):
    for bad in (float("nan"), float("inf"), "1", None, True):
        vector = (0.0,) * 1959 + (bad,)
        _bad(replace(speech, input_vectors=(vector,)), "input_vectors")


def test_float_vector_out_of_float32_range():
    config = model_config("hello_world_float", vectors=0)
    _bad(replace(config, input_vectors=((1e39,),)), "input_vectors")


def test_too_many_or_too_large_vectors(speech):
    _bad(replace(speech, input_vectors=((0.0,) * 1960,) * 101), "input_vectors")  # 198 KB
    small = model_config("hello_world_int8", vectors=0)
    _bad(replace(small, input_vectors=((0.0,),) * (sk.MAX_VECTORS + 1)), "input_vectors")


@pytest.mark.parametrize("arena", [0, -1, -(2**40), True, 1.5, None, sk.MAX_ARENA_BYTES + 1])
def test_bad_arena(speech, sketch_dir, arena):
    _bad(replace(speech, arena_bytes=arena), "arena_bytes", sketch_dir)


def test_bad_input_description(speech):
    _bad(replace(speech, input_dtype="int16"), "input_dtype")
    _bad(replace(speech, input_shape=()), "input_shape")
    _bad(replace(speech, input_shape=(1, -1)), "input_shape")
    _bad(replace(speech, input_shape=(1, 2, 3, 4, 5, 6, 7)), "input_shape")
    _bad(replace(speech, input_shape=(4096, 4096)), "input_shape")
    _bad(replace(speech, input_scale=0.0), "input_scale")
    _bad(replace(speech, input_scale=float("nan")), "input_scale")
    _bad(replace(speech, input_scale=None), "input_scale")
    _bad(replace(speech, input_zero_point=200), "input_zero_point")
    _bad(replace(speech, input_zero_point=None), "input_zero_point")
    float_cfg = model_config("hello_world_float", vectors=0)
    _bad(replace(float_cfg, input_scale=0.5), "input_scale")


def test_bad_source_and_camera_settings(speech):
    _bad(replace(speech, input_source="microphone"), "input_source")
    # The camera gives 96x96x1: micro_speech's 1x1960 input cannot take it.
    _bad(replace(speech, input_source="camera", input_vectors=()), "input_source")
    person = model_config("person_detect", source="camera")
    _bad(replace(person, input_vectors=((0.0,) * 9216,)), "input_vectors")
    _bad(replace(person, camera_range=(1.0, 1.0)), "camera_range")
    _bad(replace(person, camera_range=(0.0, float("inf"))), "camera_range")


def test_bad_identity_fields(speech):
    _bad(replace(speech, model=b""), "model")
    _bad(replace(speech, model_sha256="0" * 64), "model_sha256")
    _bad(replace(speech, model_sha256="ZZ"), "model_sha256")
    _bad(replace(speech, board='nano"33'), "board")
    _bad(replace(speech, board=""), "board")
    _bad(replace(speech, template_version="2.0.0"), "template_version")
    _bad(replace(speech, status_period_ms=0), "status_period_ms")
    _bad(replace(speech, inference_period_ms=-5), "inference_period_ms")


def test_op_names_cannot_inject_code(speech):
    _bad(replace(speech, ops=("CONV_2D */ int x; /*",)), "ops")
    _bad(replace(speech, ops=("CONV_2D\n#define X",)), "ops")
    _bad(replace(speech, ops=()), "ops")
    _bad(replace(speech, ops=("CONV_2D", "CONV_2D")), "ops")
    err = _bad(replace(speech, ops=("CUSTOM:ethos-u",)), "ops", code="model_unsupported_ops")
    assert err.detail["unsupported"] == ["CUSTOM:ethos-u"]


def test_config_for_rejects_unsupported_models():
    data = (EXAMPLES / "person_detect_vela.tflite").read_bytes()
    report = analyze(data)
    with pytest.raises(InputError) as err:
        sk.config_for(report, data, InstallRequest(model=data), 200000, "nano33ble")
    assert err.value.code == "model_unsupported_ops"
    data = (EXAMPLES / "audio_preprocessor_int8.tflite").read_bytes()  # int16 input
    with pytest.raises(InputError):
        sk.config_for(analyze(data), data, InstallRequest(model=data), 30000, "nano33ble")


def test_rejected_render_leaves_the_previous_sketch_untouched(speech, sketch_dir):
    render_sketch(speech, sketch_dir)
    before = {n: (sketch_dir / n).read_bytes() for n in SKETCH_FILES}
    with pytest.raises(InputError):
        render_sketch(replace(speech, arena_bytes=0), sketch_dir)
    assert {n: (sketch_dir / n).read_bytes() for n in SKETCH_FILES} == before


# --------------------------------------------------------------- labels in C literals

_LABEL_TEXT = st.lists(
    st.one_of(
        st.sampled_from([*'"\\\n\r\t?\x00\x7f/*\'{}();#', "??=", "\\x41", "*/", "\\u00e9"]),
        st.characters(codec="utf-8"),
    ),
    max_size=24,
).map("".join).filter(lambda s: len(s) <= sk.MAX_LABEL_CHARS
         and len(sk.label_wire_text(s)) <= sk.MAX_LABEL_WIRE_BYTES)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(labels=st.lists(_LABEL_TEXT, min_size=1, max_size=4).map(tuple))
def test_any_label_round_trips_through_the_c_source(labels, tmp_path_factory):
    config = replace(model_config("hello_world_int8", vectors=1), labels=labels)
    sketch_dir = tmp_path_factory.mktemp("labels") / sk.SKETCH_NAME
    render_sketch(config, sketch_dir)
    text = (sketch_dir / "model_config.h").read_text("ascii")  # only ASCII reaches the source
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "kTinymlLabels[] = {" in line)
    end = lines.index("};", start)
    # One literal per line, nothing else on it: no label opened a second line or a comment.
    assert end - start - 1 == len(labels)
    assert all(re.fullmatch(r'    "([^"\\]|\\.)*",', line) for line in lines[start + 1:end])
    assert read_sketch(sketch_dir).labels == labels


@pytest.mark.parametrize("labels", [
    ('"; int injected = 1; //', "\\", "\\\"", "*/ #error broken /*"),
    ("line\nbreak", "tab\tand\rreturn", "nul\x00byte", "??/"),
    ("\u00e9t\u00e9", "\u65e5\u672c", "\U0001f600 smile", "del\x7f"),
])
def test_hostile_labels_still_compile_and_read_back(labels, sketch_dir):
    config = replace(model_config("arduino_micro_speech", vectors=1), labels=labels)
    render_sketch(config, sketch_dir)
    syntax_check(sketch_dir)
    assert read_sketch(sketch_dir).labels == labels
    # The compiler sees exactly the four literals: preprocess and count the strings.
    proc = subprocess.run(
        ["g++", "-std=gnu++17", "-E", "-P", "-x", "c++", str(sketch_dir / "model_config.h")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "injected" not in proc.stdout.replace('"; int injected = 1; //', "")


# ------------------------------------------------------------ malformed sketch sources


def _edit(sketch_dir, name, old, new, count=1):
    path = sketch_dir / name
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def _compile_error(sketch_dir, file_name):
    with pytest.raises(InputError) as err:
        read_sketch(sketch_dir)
    assert err.value.code == "compile_failed"
    assert err.value.detail["file"] == file_name
    assert err.value.message.startswith(f"{file_name}:{err.value.detail['line']}: error:")
    return err.value


@pytest.mark.parametrize(
    ("file_name", "old", "new", "line_of"),
    [
        ("model_data.cpp", "0x", "0xg", "first_byte_line"),
        ("model_data.cpp", "g_model_len = ", "g_model_len = 1", None),
        ("model_data.cpp", "};\n", "", None),
        ("model_config.h", "#define TINYML_ARENA_BYTES ", "#define TINYML_ARENA_BYTES x", None),
        ("model_config.h", "#define TINYML_OP_COUNT 4", "#define TINYML_OP_COUNT 5", None),
        ("model_config.h", "AddSoftmax", "AddReshape", None),
        ("model_config.h", '"yes",', '"yes,', None),
        ("model_config.h", '"yes",', '"y\\es",', None),
        ("model_config.h", "#define TINYML_LABEL_COUNT 4", "#define TINYML_LABEL_COUNT 3", None),
        ("model_config.h", "#define TINYML_MODEL_SHA \"", "#define TINYML_MODEL_SHA \"0", None),
        ("model_config.h", "{-", "{999, -", None),
        ("model_config.h", "typedef int8_t", "typedef uint8_t", None),
        ("model_config.h", "#endif  // TINYML_MODEL_CONFIG_H_", "garbage();", None),
        ("model_config.h", "#define TINYML_BOARD", "#define TINYML_BORD", None),
    ],
)
def test_malformed_sources_fail_like_a_compiler(sketch_dir, file_name, old, new, line_of):
    config = model_config("arduino_micro_speech", vectors=1,
                          labels=("silence", "unknown", "yes", "no"))
    render_sketch(config, sketch_dir)
    _edit(sketch_dir, file_name, old, new)
    err = _compile_error(sketch_dir, file_name)
    assert err.detail["line"] >= 1
    if line_of == "first_byte_line":
        lines = (sketch_dir / file_name).read_text().splitlines()
        assert lines[err.detail["line"] - 1].startswith("    0xg")


def test_missing_or_edited_files_fail_like_a_compiler(sketch_dir):
    config = model_config("hello_world_int8", vectors=1)
    render_sketch(config, sketch_dir)
    (sketch_dir / "model_data.cpp").unlink()
    _compile_error(sketch_dir, "model_data.cpp")
    render_sketch(config, sketch_dir)
    _edit(sketch_dir, "tinyml_sketch.ino", "void loop() {", "void loop() { int x;")
    _compile_error(sketch_dir, "tinyml_sketch.ino")
    render_sketch(config, sketch_dir)
    (sketch_dir / "model_config.h").write_bytes(b"\xff\xfe garbage")
    _compile_error(sketch_dir, "model_config.h")
    render_sketch(config, sketch_dir)
    (sketch_dir / "model_data.h").write_text("")
    _compile_error(sketch_dir, "model_data.h")


def test_comment_changes_in_model_data_are_tolerated(sketch_dir):
    config = model_config("hello_world_int8", vectors=1)
    render_sketch(config, sketch_dir)
    _edit(sketch_dir, "model_data.cpp", "// sha256", "// hand-copied; sha256")
    assert read_sketch(sketch_dir).model == config.model
