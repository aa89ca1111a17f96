"""doctor checks the libraries' APIs, not their version strings (issue 11, item 5): the
installed headers (``install_dir`` from ``arduino-cli lib list``) must declare what the
template calls; otherwise the check says exactly what to install. Run through the stand-in
arduino-cli (a real subprocess), against the real library trees in ../shared and against
headers with the old APIs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hal.arduino.tools import run_tool_checks
from tests.firmware import realtool
from tests.virtual.helpers import STAND_IN

ENV = "TINYML_FAKE_ARDUINO_CLI_LIBRARIES"
OLD_INTERPRETER_H = """
namespace tflite {
class MicroInterpreter {
 public:
  // The constructor of tflite-micro-arduino-examples before 0b8e7c1 (2022-09).
  MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver,
                   uint8_t* tensor_arena, size_t tensor_arena_size,
                   ErrorReporter* error_reporter,
                   MicroResourceVariables* resource_variables = nullptr,
                   MicroProfiler* profiler = nullptr);
  size_t arena_used_bytes() const;
};
}
"""
OV_002_H = """
enum { OV7670 = 0 };
class OV767X {
 public:
  int begin(int resolution, int format, int fps); // Supported FPS: 1, 5, 10, 15, 30
};
"""


def _checks(env: dict[str, str]) -> dict[str, dict]:
    result = run_tool_checks(STAND_IN, env)
    return {c["check"]: c for c in result["checks"]}


def _library(root: Path, name: str, version: str, files: dict[str, str]) -> None:
    folder = root / name
    (folder / "src").mkdir(parents=True)
    (folder / "library.properties").write_text(f"name={name}\nversion={version}\n")
    for rel, text in files.items():
        path = folder / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_stand_in_reports_the_versions_our_readme_names_and_passes():
    checks = _checks({})
    assert checks["core"]["ok"] and "4.6.0" in checks["core"]["message"]
    tflm = checks["tflm_library"]
    assert tflm["ok"] and "Arduino_TensorFlowLite 2.4.0-ALPHA" in tflm["message"]
    assert checks["ov767x_library"]["ok"]
    readme = (Path(__file__).resolve().parents[2] / "firmware_templates" / "nano33ble"
              / "README.md").read_text()
    assert "2.4.0-ALPHA" in readme and "4.6.0" in readme and "e5dd28f" in readme


def test_the_real_library_trees_have_the_api(tmp_path):
    if realtool.missing().startswith(str(realtool.REALBUILD)):
        pytest.fail(realtool.missing())
    libs = tmp_path / "libraries"
    libs.mkdir()
    for folder in realtool.TOOLCHAIN.glob("Arduino_*-*"):
        (libs / folder.name).symlink_to(folder)
    checks = _checks({ENV: str(libs)})
    assert checks["tflm_library"]["ok"], checks["tflm_library"]
    assert checks["ov767x_library"]["ok"], checks["ov767x_library"]
    # the version strings alone could not tell: the same as the old releases'
    assert "2.4.0-ALPHA" in checks["tflm_library"]["message"]
    assert "0.0.2" in checks["ov767x_library"]["message"]


def test_an_old_tflm_checkout_with_the_same_version_string_fails_with_the_fix(tmp_path):
    real = realtool.TOOLCHAIN / "Arduino_TensorFlowLite-7948b85e0204" / "src"
    libs = tmp_path / "libraries"
    _library(libs, "Arduino_TensorFlowLite", "2.4.0-ALPHA", {
        "tensorflow/lite/micro/micro_interpreter.h": OLD_INTERPRETER_H,
        "tensorflow/lite/micro/micro_mutable_op_resolver.h": "// present\n"})
    if real.is_dir():  # the rest of the tree as it is: only the constructor differs
        shutil.copy(real / "TensorFlowLite.h", libs / "Arduino_TensorFlowLite" / "src")
    checks = _checks({ENV: str(libs)})
    tflm = checks["tflm_library"]
    assert not tflm["ok"]
    assert "ErrorReporter" in tflm["message"] and "0b8e7c1" in tflm["message"]
    assert "tflite-micro-arduino-examples" in tflm["fix"] and "--git-url" in tflm["fix"]
    assert "7948b85" in tflm["fix"]


def test_the_ov767x_release_without_ov7675_fails_with_the_fix(tmp_path):
    libs = tmp_path / "libraries"
    _library(libs, "Arduino_OV767X", "0.0.2", {"Arduino_OV767X.h": '#include "OV767X.h"\n',
                                               "OV767X.h": OV_002_H})
    checks = _checks({ENV: str(libs)})
    ov = checks["ov767x_library"]
    assert not ov["ok"] and "OV7675" in ov["message"]
    assert "Arduino_OV767X.git" in ov["fix"] and "e5dd28f" in ov["fix"]
    # no TFLM at all: said plainly, with what to install
    tflm = checks["tflm_library"]
    assert not tflm["ok"] and "no TensorFlow Lite Micro library" in tflm["message"]
    assert "tflite-micro-arduino-examples" in tflm["fix"]


def test_hostile_library_listing_is_a_failed_check_not_a_crash(tmp_path):
    libs = tmp_path / "libraries"
    _library(libs, "Arduino_TensorFlowLite", "x" * 5000, {
        "tensorflow/lite/micro/micro_interpreter.h": "\x00\xff" * 100_000})
    (libs / "not-a-library").mkdir()
    checks = _checks({ENV: str(libs)})
    assert not checks["tflm_library"]["ok"]
