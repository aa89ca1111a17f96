"""The Pi runner on its own (a real subprocess with the real LiteRT interpreter), laid out as a
deployment directory: outputs, input sources, error lines, SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hal.protocol import BootLine, ErrorLine, InferenceLine, StatusLine, parse_line
from hal.rpi.deploy import runner_files
from tests.rpi.conftest import model, reference


def deployment(tmp_path: Path, model_name: str, **settings) -> Path:
    data = model(model_name)
    import hashlib

    doc = {"sha256": hashlib.sha256(data).hexdigest(), "model": "model.tflite",
           "board": "test", "period_s": 0, **settings}
    d = tmp_path / "dep"
    d.mkdir()
    (d / "model.tflite").write_bytes(data)
    for name, content in runner_files(doc).items():
        (d / name).write_bytes(content)
    return d


def run(d: Path, python: str = sys.executable, stdin: str | None = None,
        timeout: float = 30) -> tuple[int, list]:
    proc = subprocess.run([python, str(d / "runner.py"), str(d)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=d)
    return proc.returncode, [parse_line(x) for x in proc.stdout.splitlines()]


def test_vectors_give_the_reference_outputs(tmp_path):
    ref = reference("sine_int8")
    vectors = [r["input"] for r in ref["reference"]]
    d = deployment(tmp_path, "sine_int8.tflite", vectors=vectors,
                   max_inferences=len(vectors))
    code, lines = run(d)
    assert code == 0
    boot = lines[0]
    assert isinstance(boot, BootLine)
    assert boot.sha == ref["sha256"][:16] and boot.arena_bytes == 0 and boot.used_bytes > 0
    infs = [x for x in lines if isinstance(x, InferenceLine)]
    assert [x.seq for x in infs] == list(range(len(vectors)))
    for line, r in zip(infs, ref["reference"], strict=True):
        assert line.outputs == pytest.approx(r["output"], abs=1e-4)


def test_labels_and_top_class(tmp_path):
    ref = reference("shapes_int8")
    refs = ref["reference"][:3]
    d = deployment(tmp_path, "shapes_int8.tflite", labels=ref["labels"],
                   vectors=[r["input"] for r in refs], max_inferences=3)
    code, lines = run(d)
    assert code == 0
    infs = [x for x in lines if isinstance(x, InferenceLine)]
    assert [x.top for x in infs] == [r["top"] for r in refs]
    assert [x.label for x in infs] == [ref["labels"][r["top"]] for r in refs]


def test_stdin_records_good_and_hostile(tmp_path):
    d = deployment(tmp_path, "sine_int8.tflite", input_source="stdin", max_inferences=2)
    records = "\n".join([
        "[0.5]", "not json", "[1, 2]", '{"x": ["a"]}', "[true]", "[" * 200000, '{"x": [1.5]}',
    ]) + "\n"
    code, lines = run(d, stdin=records)
    assert code == 0
    kinds = [type(x).__name__ for x in lines]
    assert kinds[0] == "BootLine" and kinds[1] == "StatusLine"
    errors = [x for x in lines if isinstance(x, ErrorLine)]
    assert [e.code for e in errors] == ["bad_input"] * 5
    infs = [x for x in lines if isinstance(x, InferenceLine)]
    assert len(infs) == 2 and infs[0].outputs[0] == pytest.approx(0.506, abs=0.01)


def test_file_source_is_followed(tmp_path):
    records = tmp_path / "records.jsonl"
    d = deployment(tmp_path, "sine_int8.tflite", input_source=f"file:{records}",
                   max_inferences=2)
    proc = subprocess.Popen([sys.executable, str(d / "runner.py"), str(d)],
                            stdout=subprocess.PIPE, text=True, cwd=d)
    lines = []
    try:
        # The file does not exist yet: the runner says so and keeps waiting for it.
        for raw in proc.stdout:
            lines.append(parse_line(raw))
            if isinstance(lines[-1], ErrorLine):
                break
        assert "cannot open input file" in lines[-1].message
        records.write_text("[0.0]\n")
        time.sleep(0.3)
        with records.open("a") as fh:
            fh.write("[1.5")  # a writer mid-line ...
            fh.flush()
            time.sleep(0.3)
            fh.write("7]\n")  # ... is waited for
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    lines += [parse_line(x) for x in out.splitlines()]
    assert proc.returncode == 0
    infs = [x for x in lines if isinstance(x, InferenceLine)]
    assert [round(x.outputs[0], 1) for x in infs] == [0.1, 1.0]


def test_sigterm_exits_cleanly_with_status_lines(tmp_path):
    d = deployment(tmp_path, "hello_world_int8.tflite", period_s=0.05, status_period_s=0.5)
    proc = subprocess.Popen([sys.executable, str(d / "runner.py"), str(d)],
                            stdout=subprocess.PIPE, text=True, cwd=d)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = [parse_line(x) for x in out.splitlines()]
    assert isinstance(lines[0], BootLine)
    assert any(isinstance(x, StatusLine) for x in lines)
    assert all(x.kind != "raw" for x in lines)


def test_model_the_interpreter_rejects(tmp_path):
    d = deployment(tmp_path, "person_detect_vela.tflite")
    code, lines = run(d)
    assert code == 4
    assert isinstance(lines[0], ErrorLine) and lines[0].code == "load_failed"
    assert "ethos-u" in lines[0].message


def test_runtime_missing(tmp_path):
    python = shutil.which("python3", path="/usr/bin")
    d = deployment(tmp_path, "sine_int8.tflite")
    code, lines = run(d, python=python)
    assert code == 3
    assert lines[0].code == "runtime_missing" and "numpy" in lines[0].message


def test_vector_of_the_wrong_length_and_bad_settings(tmp_path):
    d = deployment(tmp_path, "sine_int8.tflite", vectors=[[1.0, 2.0]])
    code, lines = run(d)
    assert code == 5 and lines[-1].code == "bad_input"
    (d / "settings.json").write_text(json.dumps({"input_source": "camera"}))
    code, lines = run(d)
    assert code == 2 and lines[0].code == "bad_input"
    (d / "settings.json").write_text("[1, 2")
    code, lines = run(d)
    assert code == 2 and lines[0].code == "bad_input"


def test_tensor_mismatch_with_the_host_analysis(tmp_path):
    d = deployment(tmp_path, "sine_int8.tflite",
                   inputs=[{"shape": [1, 2], "dtype": "int8"}])
    code, lines = run(d)
    assert code == 5 and lines[-1].code == "schema_mismatch"
