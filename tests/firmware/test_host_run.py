"""The rendered sketch, compiled for the host against tiny stubs (stdout serial, a simulated
clock, a stub interpreter), prints exactly the lines hal/protocol.py formats: this proves
the C++ formatter matches the Python one, byte for byte, for every kind of line."""

from __future__ import annotations

import itertools
import os
import random
import struct
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from hal.arduino import sketch as sk
from hal.protocol import (
    BootLine,
    ErrorLine,
    InferenceLine,
    RawLine,
    StatusLine,
    format_line,
    parse_line,
)
from tests.firmware.helpers import gxx, model_config, uint8_config

STUB = Path(__file__).resolve().parent / "host_stub" / "host_main.cpp"


@dataclass
class Run:
    lines: list[str]
    records: list[tuple[str, str]] = field(default_factory=list)

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.records if k == key]

    def parsed(self):
        return [parse_line(line) for line in self.lines]


def build(config: sk.SketchConfig, tmp_path: Path) -> Path:
    sketch_dir = tmp_path / "slot" / sk.SKETCH_NAME
    sk.render_sketch(config, sketch_dir)
    exe = tmp_path / "sketch_host"
    argv = [gxx(), "-std=gnu++17", "-O1", "-Wall", "-Wextra", "-Werror",
            "-Wno-unused-parameter", "-I", str(sk.HOST_HEADERS_DIR), "-I", str(sketch_dir),
            "-o", str(exe), str(STUB), str(sketch_dir / "model_data.cpp")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return exe


def run(exe: Path, **env: object) -> Run:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_STUB_")}
    environ.update({f"TINYML_STUB_{k.upper()}": str(v) for k, v in env.items()})
    proc = subprocess.run([str(exe)], capture_output=True, timeout=60, env=environ)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    out = proc.stdout.decode("ascii")  # the sketch prints ASCII only
    assert out.endswith("\n")
    records = []
    for rec in proc.stderr.decode().splitlines():
        key, _, value = rec.partition(" ")
        records.append((key, value))
    return Run(lines=out[:-1].split("\n"), records=records)


def expected_inference(config: sk.SketchConfig, line: InferenceLine, raw_out: bytes,
                       out_type: str = "int8", scale: float = 0.003906, zp: int = -128):
    if out_type == "float32":
        values = struct.unpack(f"<{len(raw_out) // 4}f", raw_out)
    else:
        values = struct.unpack(f"<{len(raw_out)}b", raw_out)
    outputs = sk.dequantise_outputs(out_type, scale, zp, values)
    return sk.inference_line(config, line.seq, line.latency_us, outputs)


def assert_canonical(lines: list[str]) -> None:
    for text in lines:
        parsed = parse_line(text)
        assert not isinstance(parsed, RawLine), text
        assert format_line(parsed) == text
        assert len(text.encode()) + 1 <= 512


# ------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    labels = ('sil"ence', "unk\\nown", "yes\n\u00e9", "n\u00f6 \U0001f600")
    config = model_config("arduino_micro_speech", vectors=3, labels=labels)
    return config, build(config, tmp_path_factory.mktemp("speech"))


def test_every_line_matches_the_python_formatter(speech):
    config, exe = speech
    result = run(exe, run_ms=12000)
    assert_canonical(result.lines)
    parsed = result.parsed()
    # Boot first, with the interpreter's arena_used_bytes.
    assert format_line(parsed[0]) == format_line(sk.boot_line(config, 4321))
    assert isinstance(parsed[0], BootLine) and parsed[0].sha == config.model_sha256[:16]
    infs = [p for p in parsed if isinstance(p, InferenceLine)]
    outputs = result.values("output")
    assert len(infs) == len(outputs) >= 10
    for line, raw in zip(infs, outputs, strict=True):
        want = expected_inference(config, line, bytes.fromhex(raw))
        assert format_line(want) == format_line(line)
        assert line.latency_us >= 1500  # the stub's Invoke takes 1.5 ms of simulated time
    assert [p.seq for p in infs] == list(range(1, len(infs) + 1))
    # Labels with quotes, backslashes, newlines and non-ASCII come back intact.
    assert {p.label for p in infs} <= set(config.labels) | {""}
    assert any(p.label == "n\u00f6 \U0001f600" or p.label == 'sil"ence' for p in infs)
    statuses = [p for p in parsed if isinstance(p, StatusLine)]
    assert [s.uptime_s for s in statuses] == [5, 10]
    for s in statuses:
        assert format_line(s) == format_line(sk.status_line(config, s.uptime_s, s.count))


def test_the_vectors_are_cycled_into_the_input_tensor(speech):
    config, exe = speech
    result = run(exe, run_ms=8000)
    wanted = sk.input_tensor_bytes(config)
    fed = [bytes.fromhex(v) for v in result.values("input")]
    assert len(fed) >= 6
    assert fed == [wanted[i % len(wanted)] for i in range(len(fed))]


def test_model_ops_and_arena_reach_the_interpreter(speech):
    config, exe = speech
    result = run(exe, run_ms=100)
    assert result.values("get_model") == ["1"]
    assert bytes.fromhex(result.values("model")[0]) == config.model
    assert result.values("op") == [f"{m} 4" for m in
                                   ("AddDepthwiseConv2D", "AddFullyConnected", "AddReshape",
                                    "AddSoftmax")]
    assert result.values("interpreter") == [f"arena {config.arena_bytes} aligned16 1"]


def test_boot_is_reannounced_for_30_seconds(speech):
    _, exe = speech
    result = run(exe, run_ms=40000, invoke_us=100)
    times = [int(t) for t in result.values("line_at_ms")]
    boots = [t for t, p in zip(times, result.parsed(), strict=True) if isinstance(p, BootLine)]
    assert boots[0] < 100 and 14 <= len(boots) <= 16
    assert all(2000 <= b - a <= 2100 for a, b in itertools.pairwise(boots))
    assert boots[-1] < 30000 + 2100


def test_the_sketch_waits_for_the_host_then_gives_up(speech):
    _, exe = speech
    result = run(exe, run_ms=6000, host_at_ms=1500)
    assert int(result.values("line_at_ms")[0]) in range(1500, 1700)
    result = run(exe, run_ms=6000, host_at_ms=999999)  # nobody opens the port
    assert int(result.values("line_at_ms")[0]) in range(4000, 4200)


@pytest.mark.parametrize(
    ("env", "code", "numbers"),
    [
        ({"alloc_fail": 1}, "alloc_failed", None),
        ({"schema": 2}, "model_invalid", {"schema": 2, "expected": 3}),
        ({"op_fail": 1}, "model_invalid", {"ops": 4}),
        ({"input_extra_bytes": 3}, "bad_input", {"bytes": 1963, "expected": 1960}),
    ],
)
def test_setup_failures_print_one_error_line_repeatedly(speech, env, code, numbers):
    config, exe = speech
    result = run(exe, run_ms=7000, **env)
    if numbers is None:
        numbers = {"arena": config.arena_bytes}
    want = format_line(sk.error_line(code, **numbers))
    assert result.lines == [want] * 4  # at once, then every 2 s
    assert isinstance(parse_line(want), ErrorLine)
    assert not result.values("input")  # nothing ran


def test_invoke_failure_is_reported_and_the_loop_goes_on(speech):
    _, exe = speech
    result = run(exe, run_ms=5500, invoke_fail_at=2)
    parsed = [p for p in result.parsed() if not isinstance(p, BootLine)]
    assert format_line(parsed[1]) == format_line(sk.error_line("invoke_failed", n=2))
    assert isinstance(parsed[0], InferenceLine) and parsed[0].seq == 1
    assert isinstance(parsed[2], InferenceLine) and parsed[2].seq == 3


def test_float_formatter_matches_python_across_magnitudes(tmp_path):
    config = model_config("hello_world_int8")
    exe = build(config, tmp_path)
    rng = random.Random(1234)
    values = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-4, 9.99999e-5, 1e-5, 123456.0, 1234567.0,
              999999.5, 0.000123456789, 1e16, 9.999999e15, 1e15, 3.4e38, 1.4e-45, 1e-38,
              0.1, 0.2, 0.3, 100.0, 2.5e-7, 65504.0]
    values += [rng.choice((-1, 1)) * 10 ** rng.uniform(-40, 38) for _ in range(400)]
    values = [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]
    # Sent in batches small enough to print uncut.
    for start in range(0, len(values), 20):
        batch = values[start:start + 20]
        result = run(exe, run_ms=10, out_values=",".join(repr(v) for v in batch))
        inf = next(p for p in result.parsed() if isinstance(p, InferenceLine))
        raw = bytes.fromhex(result.values("output")[0])
        want = expected_inference(config, inf, raw, out_type="float32")
        line = next(t for t in result.lines if t.startswith('{"t":"inf"'))
        assert line == format_line(want), batch


@pytest.mark.parametrize("count", [60, 127, 300, 1000])
def test_long_output_lists_are_cut_like_the_python_formatter(tmp_path, count):
    labels = tuple(f"label {i} \u00e9\u00e9\u00e9" for i in range(count))
    config = replace(model_config("hello_world_int8"), labels=labels)
    exe = build(config, tmp_path)
    result = run(exe, run_ms=3500, out_count=count, out_scale_e6=1234, out_zp=3)
    pairs = zip(result.lines, result.parsed(), strict=True)
    infs = [(t, p) for t, p in pairs if isinstance(p, InferenceLine)]
    assert len(infs) == 4
    for (text, line), raw in zip(infs, result.values("output"), strict=True):
        want = expected_inference(config, line, bytes.fromhex(raw), scale=0.001234, zp=3)
        assert text == format_line(want)
        assert len(text) + 1 <= 512
        assert ('"cut":' in text) == (len(line.outputs) < count)


def test_uint8_and_float_inputs_are_fed_as_rendered(tmp_path):
    for config in (uint8_config(), model_config("hello_world_float", vectors=3)):
        exe = build(config, tmp_path / config.input_dtype)
        result = run(exe, run_ms=3500)
        wanted = sk.input_tensor_bytes(config)
        fed = [bytes.fromhex(v) for v in result.values("input")]
        assert fed == [wanted[i % len(wanted)] for i in range(len(fed))]
        assert_canonical(result.lines)


def test_no_vectors_feeds_the_zero_point(tmp_path):
    config = model_config("arduino_micro_speech", vectors=0)
    exe = build(config, tmp_path)
    fed = run(exe, run_ms=2500).values("input")
    assert fed and all(bytes.fromhex(v) == bytes([0x80]) * 1960 for v in fed)


@pytest.mark.parametrize("camera_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_camera_frames_are_scaled_and_quantised_with_the_model_parameters(tmp_path,
                                                                           camera_range):
    config = replace(model_config("person_detect", source="camera"), camera_range=camera_range)
    exe = build(config, tmp_path)
    result = run(exe, run_ms=2500)
    assert result.values("camera_begin") == ["3 4 5 1"]  # QCIF, GRAYSCALE, 5 fps, OV7675
    frames = [bytes.fromhex(v) for v in result.values("frame")]
    fed = [bytes.fromhex(v) for v in result.values("input")]
    assert len(frames) == len(fed) >= 2
    for frame, tensor in zip(frames, fed, strict=True):
        assert tensor == sk.camera_input(config, frame)
    # Not a hard-coded offset: the model's scale (2/255) and zero point (-1) are used.
    table = sk.camera_lookup(config)
    if camera_range == (0.0, 1.0):
        assert table[0] == -1 and table[255] == 126 and table[128] == 63  # 1.0 / (2/255) - 1
    else:
        assert table[0] == -128 and table[255] == 126  # not pixel - 128, which gives 127
    assert_canonical(result.lines)


def test_camera_failure_is_an_error_line(tmp_path):
    config = model_config("person_detect", source="camera")
    exe = build(config, tmp_path)
    result = run(exe, run_ms=2500, camera_fail=1)
    assert result.lines == [format_line(sk.error_line("camera_failed"))] * 2
