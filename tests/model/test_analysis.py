"""hal.model.analyze: validation of bad input, and the report of real models."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest

from hal.errors import HalError, InputError
from hal.model import analyze, analyze_file, resolver_methods, unsupported_ops
from hal.model.analysis import DEFAULT_MAX_BYTES
from hal.model.ops import TFLM_BUILTIN_OPS
from tests.conftest import SAMPLE_MODELS, TFLM_EXAMPLES
from tests.model.builder import FLOAT32, build_model


def _code(data: bytes, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        analyze(data, **kw)
    err = info.value
    # every failure is classified and serialisable, never a traceback
    json.dumps(err.to_dict())
    assert err.to_dict()["class"] == "input"
    return err


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body)
        )

    raw = b"".join(b"\x00" + bytes(3 * 4) for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------- bad input


def test_empty_file():
    err = _code(b"")
    assert err.code == "model_empty"
    assert err.detail["size_bytes"] == 0


@pytest.mark.parametrize("cut", [8, 12, 40, 200, 1000, 2000, 2700])
def test_truncated_file_is_corrupt(hello_int8, cut):
    err = _code(hello_int8[:cut])
    assert err.code == "model_corrupt"
    assert "parse" in err.message


def test_truncated_person_detect_is_corrupt():
    data = (TFLM_EXAMPLES / "person_detect.tflite").read_bytes()
    for cut in (100, 10_000, len(data) // 2):
        assert _code(data[:cut]).code == "model_corrupt"


def test_png_renamed_tflite(tmp_path):
    path = tmp_path / "cat.tflite"
    path.write_bytes(_png())
    with pytest.raises(InputError) as info:
        analyze_file(path)
    assert info.value.code == "model_not_tflite"
    assert "looks like a PNG image" in info.value.message
    assert info.value.detail["looks_like"] == "a PNG image"


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
        (b"PK\x03\x04" + bytes(100), "zip"),
        (b'{"model": 1}', "JSON"),
        (b"hello", None),
        (bytes(64), None),
    ],
)
def test_other_non_tflite_files(data, hint):
    err = _code(data)
    assert err.code == "model_not_tflite"
    if hint:
        assert hint in err.message


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_with_identifier_are_corrupt(seed):
    import random

    rng = random.Random(seed)
    body = bytes(rng.randrange(256) for _ in range(rng.choice([8, 64, 500, 5000])))
    data = body[:4] + b"TFL3" + body[8:]
    err = _code(data)
    assert err.code in {"model_corrupt", "model_subgraphs"}


def test_hostile_vector_length_is_corrupt_not_slow(hello_int8):
    # point the root at a table whose subgraph vector claims 2^32-1 entries
    data = bytearray(hello_int8)
    root = struct.unpack_from("<I", data, 0)[0]
    vtable = root - struct.unpack_from("<i", data, root)[0]
    field = struct.unpack_from("<H", data, vtable + 4 + 2 * 2)[0]  # field 2: subgraphs
    vec = root + field + struct.unpack_from("<I", data, root + field)[0]
    struct.pack_into("<I", data, vec, 0xFFFFFFFF)
    assert _code(bytes(data)).code == "model_corrupt"


def test_two_subgraphs():
    err = _code(build_model(subgraphs=2))
    assert err.code == "model_subgraphs"
    assert err.detail["subgraphs"] == 2


def test_zero_subgraphs():
    assert _code(build_model(subgraphs=0)).code == "model_subgraphs"


def test_over_limit():
    data = (TFLM_EXAMPLES / "person_detect.tflite").read_bytes()
    err = _code(data, max_bytes=100_000)
    assert err.code == "model_too_large"
    assert err.detail == {"size_bytes": 300_568, "limit_bytes": 100_000}


def test_default_limit_is_4_mib():
    assert DEFAULT_MAX_BYTES == 4 * 1024 * 1024
    data = build_model(weight_bytes=DEFAULT_MAX_BYTES // 2, ops=["FULLY_CONNECTED"] * 2)
    assert len(data) > DEFAULT_MAX_BYTES
    err = _code(data)
    assert err.code == "model_too_large"
    assert err.detail["limit_bytes"] == DEFAULT_MAX_BYTES
    # a Linux board allows more
    assert analyze(data, board="rpi64").size_bytes == len(data)


def test_over_limit_file_is_rejected_before_reading(tmp_path):
    path = tmp_path / "big.tflite"
    with path.open("wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: never read
    with pytest.raises(InputError) as info:
        analyze_file(path)
    assert info.value.code == "model_too_large"


def test_float_model_warns_without_int8_board():
    data = (SAMPLE_MODELS / "sine_float.tflite").read_bytes()
    report = analyze(data, board="nano33ble")
    assert report.int8 is False
    assert any("not fully int8" in w for w in report.warnings)
    assert any("not fully int8" in w for w in analyze(data).warnings)


def test_float_model_fails_on_board_requiring_int8(monkeypatch):
    import dataclasses

    from hal import boards

    strict = dataclasses.replace(boards.get_profile("nano33ble"), name="strict-mcu",
                                 requires_int8=True)
    monkeypatch.setitem(boards.profiles(), "strict-mcu", strict)
    data = (SAMPLE_MODELS / "sine_float.tflite").read_bytes()
    err = _code(data, board="strict-mcu")
    assert err.code == "model_not_int8"
    assert err.detail["board"] == "strict-mcu"
    assert err.detail["reasons"]
    # an int8 model passes the same board
    assert analyze((SAMPLE_MODELS / "sine_int8.tflite").read_bytes(), board="strict-mcu").int8


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("person_detect_vela", ["CUSTOM:ethos-u"]),
        ("audio_preprocessor_int8", ["CUSTOM:SignalWindow", "CUSTOM:SignalRfft"]),
        ("audio_preprocessor_float", ["CUSTOM:SignalFilterBank", "CUSTOM:SignalPCAN"]),
    ],
)
def test_ops_the_mcu_cannot_run(name, missing):
    data = (TFLM_EXAMPLES / f"{name}.tflite").read_bytes()
    err = _code(data, board="nano33ble")
    assert err.code == "model_unsupported_ops"
    for op in missing:
        assert op in err.detail["unsupported"]
        assert op in err.message
    # builtin ops of the same model are not reported
    assert "RESHAPE" not in err.detail["unsupported"]
    # without a board the model is analysed, with a warning
    report = analyze(data)
    assert report.arena_estimate_bytes > 0
    assert any("without a TFLM kernel" in w for w in report.warnings)


def test_builtin_op_tflm_lacks():
    data = build_model(["FULLY_CONNECTED", "LSTM"])
    err = _code(data, board="nano33ble")
    assert err.detail["unsupported"] == ["LSTM"]
    # LiteRT on a Pi has every builtin op
    assert analyze(data, board="rpi64").ops == ("FULLY_CONNECTED", "LSTM")


def test_custom_op_on_linux_board():
    err = _code(build_model(["CUSTOM:ethos-u"]), board="rpi64")
    assert err.code == "model_unsupported_ops"


def test_unknown_board():
    with pytest.raises(InputError) as info:
        analyze(build_model(), board="esp32")
    assert info.value.code == "unknown_board"


def test_not_bytes():
    with pytest.raises(InputError) as info:
        analyze("model.tflite")  # type: ignore[arg-type]
    assert info.value.code == "bad_request"


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as info:
        analyze_file(tmp_path / "nope.tflite")
    assert info.value.code == "bad_request"
    with pytest.raises(InputError):
        analyze_file(tmp_path)


# ----------------------------------------------------------------------------- reports


def test_manifest_agrees_with_reports():
    from tflite.BuiltinOperator import BuiltinOperator

    manifest = json.loads((TFLM_EXAMPLES / "models_manifest.json").read_text())
    assert len(manifest) == 12
    for entry in manifest:
        data = (TFLM_EXAMPLES / entry["file"]).read_bytes()
        report = analyze(data)
        assert report.size_bytes == len(data) == entry["bytes"]
        assert report.sha256 == entry["sha256"]
        listed = {
            op if hasattr(BuiltinOperator, op) or op.startswith("CUSTOM:") else f"CUSTOM:{op}"
            for op in entry.get("ops", report.ops)
        }
        # the manifest lists operator codes; the report the ops operators use (what the
        # resolver needs): a model may carry codes no operator uses
        assert set(report.ops) <= listed, entry["file"]
        inp = report.inputs[0]
        assert inp.name == entry["input"]["name"]
        assert list(inp.shape) == entry["input"]["shape"]
        assert inp.dtype == entry["input"]["dtype"]
        if entry["input"].get("scale") is not None:
            assert inp.scale == pytest.approx(entry["input"]["scale"], rel=1e-6)
            assert inp.zero_point == entry["input"]["zero_point"]


def test_hello_world_report(hello_int8):
    report = analyze(hello_int8, board="nano33ble")
    assert report.sha256 == hashlib.sha256(hello_int8).hexdigest()
    assert report.size_bytes == 2704
    assert report.ops == ("FULLY_CONNECTED",)
    assert report.int8 is True
    assert report.warnings == ()
    (inp,) = report.inputs
    (out,) = report.outputs
    assert inp.shape == (1, 1) and inp.dtype == "int8"
    assert out.shape == (1, 1) and out.dtype == "int8"
    assert inp.scale is not None and inp.scale > 0 and isinstance(inp.zero_point, int)
    assert report.activation_bytes == 32
    data = report.to_dict()
    assert json.loads(json.dumps(data))["ops"] == ["FULLY_CONNECTED"]


def test_sample_report_matches_its_json():
    for path in sorted(SAMPLE_MODELS.glob("*.tflite")):
        meta = json.loads(path.with_suffix(".json").read_text())
        report = analyze(path.read_bytes())
        assert report.sha256 == meta["sha256"]
        (inp,) = report.inputs
        assert list(inp.shape) == meta["input"]["shape"]
        assert inp.dtype == meta["input"]["dtype"]
        if meta["input"]["scale"] is not None:
            assert inp.scale == pytest.approx(meta["input"]["scale"])
            assert inp.zero_point == meta["input"]["zero_point"]
        else:
            assert inp.scale is None
        assert report.int8 == path.stem.endswith("int8")


def test_person_detect_report():
    report = analyze((TFLM_EXAMPLES / "person_detect.tflite").read_bytes(), board="nano33ble")
    assert report.ops == ("AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "SOFTMAX")
    assert report.inputs[0].shape == (1, 96, 96, 1)
    assert report.outputs[0].shape == (1, 2)


def test_shapes_cnn_has_no_dynamic_batch_ops():
    report = analyze((SAMPLE_MODELS / "shapes_int8.tflite").read_bytes(), board="nano33ble")
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(report.ops)
    assert report.int8


def test_custom_op_name():
    report = analyze(build_model(["CONV_2D", "CUSTOM:my_op"]))
    assert report.ops == ("CONV_2D", "CUSTOM:my_op")


def test_float_synthetic_model_is_not_int8():
    report = analyze(build_model(dtype=FLOAT32))
    assert report.int8 is False
    assert report.inputs[0].scale is None


# ------------------------------------------------------------------------------- op table


def test_resolver_methods():
    assert resolver_methods(["CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D", "CONV_2D"]) == [
        "AddConv2D", "AddFullyConnected", "AddDepthwiseConv2D",
    ]
    assert resolver_methods(["CUSTOM:TFLite_Detection_PostProcess"]) == [
        "AddDetectionPostprocess"
    ]
    with pytest.raises(InputError) as info:
        resolver_methods(["CONV_2D", "CUSTOM:ethos-u"])
    assert info.value.code == "model_unsupported_ops"
    assert info.value.detail["unsupported"] == ["CUSTOM:ethos-u"]


def test_op_table_names_are_schema_ops():
    from tflite.BuiltinOperator import BuiltinOperator

    for op, method in TFLM_BUILTIN_OPS.items():
        assert hasattr(BuiltinOperator, op), op
        assert method.startswith("Add")


def test_unsupported_ops_by_profile():
    from hal.boards import get_profile

    ops = ["CONV_2D", "LSTM", "CUSTOM:ethos-u", "CUSTOM:TFLite_Detection_PostProcess"]
    assert unsupported_ops(ops, get_profile("nano33ble")) == ["LSTM", "CUSTOM:ethos-u"]
    assert unsupported_ops(ops, "rpi64") == ["CUSTOM:ethos-u"]


def test_errors_are_hal_errors():
    for data in (b"", b"xxxxTFL3", _png()):
        with pytest.raises(HalError):
            analyze(data)
