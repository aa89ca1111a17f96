"""``tinyml-bridge model inspect`` through the real console script in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hal.model.measure import unavailable_reason
from tests.conftest import REPO, SAMPLE_MODELS, TFLM_EXAMPLES
from tests.model.builder import build_model


def _script() -> list[str]:
    exe = Path(sys.executable).with_name("tinyml-bridge")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tinyml-bridge")
    assert found, "tinyml-bridge is not installed: run .venv/bin/pip install -e . --no-deps"
    return [found]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_script(), "model", "inspect", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


def test_json_report_with_fit():
    proc = run(str(SAMPLE_MODELS / "shapes_int8.tflite"), "--board", "nano33ble", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("sha256", "size_bytes", "inputs", "outputs", "ops", "int8",
                "arena_estimate_bytes"):
        assert key in data
    assert data["int8"] is True
    assert data["inputs"][0]["shape"] == [1, 32, 32, 1]
    assert data["resolver_methods"] == [
        "AddConv2D", "AddFullyConnected", "AddMaxPool2D", "AddReshape", "AddSoftmax"
    ]
    fit = data["fit"]
    assert fit["fits"] is True
    for key in ("model_flash_bytes", "arena_bytes", "baseline_flash_bytes", "baseline_ram_bytes",
                "flash_needed_bytes", "flash_limit_bytes", "ram_needed_bytes", "ram_limit_bytes",
                "flash_margin_bytes", "ram_margin_bytes"):
        assert isinstance(fit[key], int), key
    assert fit["flash_limit_bytes"] == 983_040 and fit["ram_limit_bytes"] == 262_144


def test_json_without_board_has_no_fit():
    proc = run(str(TFLM_EXAMPLES / "hello_world_int8.tflite"), "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert "fit" not in data
    assert data["ops"] == ["FULLY_CONNECTED"]


def test_human_output():
    proc = run(str(TFLM_EXAMPLES / "person_detect.tflite"), "--board", "nano33ble")
    assert proc.returncode == 0
    assert "CONV_2D" in proc.stdout
    assert "MicroMutableOpResolver<5>" in proc.stdout
    assert "fits" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: b"", "model_empty"),
        (lambda: b"\x89PNG\r\n\x1a\n" + bytes(100), "model_not_tflite"),
        (lambda: (TFLM_EXAMPLES / "hello_world_int8.tflite").read_bytes()[:500],
         "model_corrupt"),
        (lambda: build_model(subgraphs=2), "model_subgraphs"),
        (lambda: (TFLM_EXAMPLES / "person_detect_vela.tflite").read_bytes(),
         "model_unsupported_ops"),
    ],
)
def test_failures_print_error_json_and_exit_1(tmp_path, make, code):
    path = tmp_path / "m.tflite"
    path.write_bytes(make())
    proc = run(str(path), "--board", "nano33ble", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["code"] == code
    assert set(data) >= {"code", "message", "detail"}
    assert "Traceback" not in proc.stderr


def test_human_failure_goes_to_stderr(tmp_path):
    path = tmp_path / "cat.tflite"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    proc = run(str(path))
    assert proc.returncode == 1
    assert "PNG" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_over_limit_option():
    proc = run(str(TFLM_EXAMPLES / "person_detect.tflite"), "--max-bytes", "1000", "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["code"] == "model_too_large"
    assert data["detail"]["limit_bytes"] == 1000


def test_does_not_fit_exits_1(tmp_path):
    # ~1.2 MB of weights: over the Nano's 983,040-byte flash with the baseline
    path = tmp_path / "big.tflite"
    path.write_bytes(build_model(["FULLY_CONNECTED"] * 4, weight_bytes=300_000))
    proc = run(str(path), "--board", "nano33ble", "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["code"] == "fit_flash"
    assert data["detail"]["fits"] is False
    assert data["detail"]["flash_margin_bytes"] < 0
    assert data["detail"]["report"]["size_bytes"] > 983_040


@pytest.mark.parametrize(
    "args",
    [
        ["missing.tflite"],
        ["--board", "esp32", "samples/models/sine_int8.tflite"],
        ["--max-bytes", "-5", "samples/models/sine_int8.tflite"],
        ["--bogus", "samples/models/sine_int8.tflite"],
        [],
    ],
)
def test_usage_errors_exit_2(args):
    proc = run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_measure_flag():
    proc = run(str(SAMPLE_MODELS / "sine_int8.tflite"), "--measure", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    if unavailable_reason() is None:
        assert data["arena_measured_bytes"] == 1760
        err = (data["arena_estimate_bytes"] - 1760) / 1760
        assert -0.05 <= err <= 0.10
    else:
        assert data["arena_measured_bytes"] is None
        assert data["measure_skipped"]


def test_help():
    proc = subprocess.run([*_script(), "model", "inspect", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "--board" in proc.stdout and "Exit status" in proc.stdout
