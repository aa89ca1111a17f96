"""Helpers for the firmware template tests: sketch configurations built from the real TFLM
example models, and a g++ syntax check against the project's host declaration headers."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from hal.arduino.sketch import HOST_HEADERS_DIR, SKETCH_NAME, SketchConfig, config_for
from hal.driver import InstallRequest
from hal.model.analysis import analyze

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "tflm-examples"


def model_config(name: str, *, vectors: int = 2, labels: tuple[str, ...] | None = None,
                 source: str = "vectors", arena: int | None = None) -> SketchConfig:
    """A config for the example model ``name`` as the driver builds it (analyze + config_for)."""
    data = (EXAMPLES / f"{name}.tflite").read_bytes()
    report = analyze(data)
    n = report.inputs[0].elements
    outs = report.outputs[0].elements
    if labels is None:
        labels = tuple(f"class {i}" for i in range(outs))
    vecs = tuple(tuple(((i + k) % 7) / 7.0 - 0.4 for i in range(n)) for k in range(vectors))
    request = InstallRequest(model=data, labels=labels,
                             input_vectors=() if source == "camera" else vecs,
                             input_source=source)
    return config_for(report, data, request, arena or report.arena_estimate_bytes + 4096,
                      "nano33ble")


def uint8_config() -> SketchConfig:
    """No example model has a uint8 input: the hello_world graph declared as uint8."""
    base = model_config("hello_world_int8")
    return replace(base, input_dtype="uint8", input_zero_point=128,
                   input_vectors=((0.0,), (1.5,), (-3.0,)))


def gxx() -> str:
    path = shutil.which("g++")
    assert path, "g++ is required for the firmware tests (apt-get install g++)"
    return path


def syntax_check(sketch_dir: Path) -> None:
    """``g++ -fsyntax-only`` on the rendered .ino and model_data.cpp; fails with g++'s text."""
    for argv in (
        [gxx(), "-std=gnu++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
         "-I", str(HOST_HEADERS_DIR), "-I", str(sketch_dir), "-x", "c++",
         str(sketch_dir / f"{SKETCH_NAME}.ino")],
        [gxx(), "-std=gnu++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
         "-I", str(sketch_dir), str(sketch_dir / "model_data.cpp")],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stderr}"
