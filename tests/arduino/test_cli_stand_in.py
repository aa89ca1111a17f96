"""The adapter against the stand-in arduino-cli executable: real subprocesses, real deadlines,
hostile tool output, and the JSON formats of 1.x and 0.x."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hal.arduino.cli import ArduinoCli
from hal.arduino.flash import check_build
from hal.boards import get_profile
from hal.deadline import Deadline
from hal.errors import Cancelled, InfraError, InputError
from tests.virtual.helpers import STAND_IN, pid_alive, start_board, stop_board, wait_until

FQBN = "arduino:mbed_nano:nano33ble"


def cli(**env) -> ArduinoCli:
    return ArduinoCli(STAND_IN, env={f"TINYML_FAKE_ARDUINO_CLI_{k}": v for k, v in env.items()})


@pytest.fixture
def sketch_dir(tmp_path: Path) -> Path:
    from hal.arduino import sketch
    from hal.driver import InstallRequest
    from hal.model.analysis import analyze

    data = (Path(__file__).resolve().parents[1] / "data" / "tflm-examples" /
            "hello_world_int8.tflite").read_bytes()
    report = analyze(data, board="nano33ble")
    config = sketch.config_for(report, data, InstallRequest(model=data), 3008, "nano33ble")
    target = tmp_path / sketch.SKETCH_NAME
    sketch.render_sketch(config, target)
    return target


@pytest.mark.parametrize("fmt", ["1.x", "0.35", "0.29"])
def test_compile_in_each_format(sketch_dir, tmp_path, fmt):
    result = cli(FORMAT=fmt).compile(sketch_dir, FQBN, tmp_path / "build", Deadline(30))
    assert result.success and result.sizes_from == "json"
    assert result.text_bytes > 2704 and result.data_bytes > 3008
    assert (tmp_path / "build" / "tinyml_sketch.ino.bin").exists()
    assert check_build(result, get_profile("nano33ble"))["text_max"] == 983040


def test_trailing_text_and_huge_output(sketch_dir, tmp_path):
    r = cli(MISBEHAVE="trailing_text").compile(sketch_dir, FQBN, tmp_path / "b1", Deadline(30))
    assert r.text_bytes is not None
    r = cli(MISBEHAVE="huge_output").compile(sketch_dir, FQBN, tmp_path / "b2", Deadline(30))
    assert r.text_bytes is not None and r.data_max == 262144


def test_garbage_json_gives_no_sizes_and_the_build_is_refused(sketch_dir, tmp_path):
    r = cli(MISBEHAVE="garbage_json").compile(sketch_dir, FQBN, tmp_path / "b", Deadline(30))
    assert r.text_bytes is None
    with pytest.raises(InfraError) as ei:
        check_build(r, get_profile("nano33ble"))
    assert ei.value.code == "tool_failed"
    r = cli(MISBEHAVE="no_sizes").compile(sketch_dir, FQBN, tmp_path / "b", Deadline(30))
    with pytest.raises(InfraError):
        check_build(r, get_profile("nano33ble"))


def test_error_on_stderr_is_a_compile_failure(sketch_dir, tmp_path):
    with pytest.raises(InputError) as ei:
        cli(MISBEHAVE="stderr_error").compile(sketch_dir, FQBN, tmp_path / "b", Deadline(30))
    assert ei.value.code == "compile_failed" and "exit status 1" in ei.value.message


def test_malformed_sketch_fails_like_a_compiler(sketch_dir, tmp_path):
    cfg = sketch_dir / "model_config.h"
    cfg.write_text(cfg.read_text().replace("#define TINYML_ARENA_BYTES", "#define TINYML_ARENA_X"))
    with pytest.raises(InputError) as ei:
        cli().compile(sketch_dir, FQBN, tmp_path / "b", Deadline(30))
    assert ei.value.code == "compile_failed" and "model_config.h" in ei.value.detail["compiler_err"]


def test_unknown_platform_is_tool_missing(sketch_dir, tmp_path):
    with pytest.raises(InfraError) as ei:
        cli().compile(sketch_dir, "arduino:samd:mkrzero", tmp_path / "b", Deadline(30))
    assert ei.value.code == "tool_missing" and "core install arduino:samd" in \
        ei.value.detail["fix"]


def test_hanging_tool_is_killed_with_its_whole_group(sketch_dir, tmp_path):
    pid_file = tmp_path / "pids"
    t0 = time.monotonic()
    with pytest.raises(InfraError) as ei:
        cli(MISBEHAVE="hang", PID_FILE=str(pid_file)).compile(
            sketch_dir, FQBN, tmp_path / "b", Deadline(2.0))
    assert ei.value.code == "timeout" and time.monotonic() - t0 < 8
    tool, child = (int(x) for x in pid_file.read_text().split())
    assert wait_until(lambda: not pid_alive(tool) and not pid_alive(child), 5)


def test_cancel_kills_the_tool(sketch_dir, tmp_path):
    import threading

    deadline = Deadline(60)
    threading.Timer(0.5, deadline.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        cli(COMPILE_DELAY_S="30").compile(sketch_dir, FQBN, tmp_path / "b", deadline)
    assert time.monotonic() - t0 < 8


def test_missing_tool_is_tool_missing(tmp_path):
    with pytest.raises(InfraError) as ei:
        ArduinoCli(str(tmp_path / "no-arduino-cli")).version(Deadline(5))
    assert ei.value.code == "tool_missing"


@pytest.mark.parametrize("fmt", ["1.x", "0.35", "0.18"])
def test_board_list_core_list_lib_list_in_each_format(tmp_path, fmt):
    ports = tmp_path / "ports"
    board = start_board(ports, tmp_path / "state", "SNLIST1")
    try:
        c = ArduinoCli(STAND_IN, env={"TINYML_VIRTUAL_PORTS": str(ports),
                                      "TINYML_FAKE_ARDUINO_CLI_FORMAT": fmt})
        listed = c.board_list(Deadline(20))
        assert [(p.serial_number, p.vid, p.pid) for p in listed] == [("SNLIST1", 0x2341,
                                                                       0x805A)]
        assert listed[0].boards[0][1] == FQBN
        assert c.core_list(Deadline(20)) == {"arduino:mbed_nano": "4.1.5"}
        assert "Arduino_TensorFlowLite" in c.lib_list(Deadline(20))
        assert c.version(Deadline(20))
    finally:
        stop_board(board)


def test_upload_refuses_ports_that_are_not_boards(tmp_path, sketch_dir):
    from hal.errors import DeviceError

    c = cli()
    c.compile(sketch_dir, FQBN, tmp_path / "b", Deadline(30))
    with pytest.raises(DeviceError) as ei:
        c.upload(str(tmp_path / "ttyACM9"), FQBN, tmp_path / "b", Deadline(30))
    assert ei.value.code == "upload_failed" and ei.value.detail["port"].endswith("ttyACM9")
