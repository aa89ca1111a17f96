"""arduino-cli output parsing: the documented JSON of 0.29-0.35 and 1.x, and hostile output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hal.arduino.cli_output import (
    classify_compile_failure,
    extract_json,
    parse_board_list,
    parse_board_watch,
    parse_compile,
    parse_upload,
)
from hal.errors import DeviceError, FitError, InfraError, InputError

# arduino-cli's own documentation examples (copied from shared/reference into the repo).
DOCS = Path(__file__).resolve().parents[1] / "data" / "arduino-cli-docs-examples"

SIZES_OUT = (
    "Sketch uses 222944 bytes (22%) of program storage space. Maximum is 983040 bytes.\n"
    "Global variables use 105656 bytes (40%) of dynamic memory, leaving 156488 bytes for local "
    "variables. Maximum is 262144 bytes.\n"
)


def compile_1x(**over):
    obj = {
        "compiler_out": "Using board 'nano33ble'\n" + SIZES_OUT,
        "compiler_err": "",
        "builder_result": {
            "build_path": "/tmp/b",
            "used_libraries": [{"name": "Arduino_TensorFlowLite", "version": "1.15.0-ALPHA",
                                "install_dir": "/x", "extra": 1}],
            "executable_sections_size": [
                {"name": "text", "size": 222944, "max_size": 983040},
                {"name": "data", "size": 105656, "max_size": 262144},
            ],
            "board_platform": {"id": "arduino:mbed_nano", "version": "4.1.5"},
            "build_platform": {"id": "arduino:mbed_nano", "version": "4.1.5"},
            "build_properties": ["a=b"] * 50,
        },
        "upload_result": {},
        "success": True,
    }
    obj.update(over)
    return json.dumps(obj, indent=2)


def test_compile_1x_success_sizes_from_json():
    r = parse_compile(compile_1x())
    assert r.success and r.sizes_from == "json"
    assert r.sizes() == {"text_bytes": 222944, "text_max": 983040, "data_bytes": 105656,
                         "data_max": 262144}
    assert r.used_libraries[0] == {"name": "Arduino_TensorFlowLite", "version": "1.15.0-ALPHA",
                                   "install_dir": "/x"}
    assert r.platform == {"id": "arduino:mbed_nano", "version": "4.1.5"}


def test_compile_029_raw_grpc_shape_with_extra_keys_and_no_upload_result():
    obj = json.loads(compile_1x())
    del obj["upload_result"]
    obj["builder_result"]["unknown_future_key"] = {"x": [1, 2]}
    del obj["builder_result"]["build_properties"]
    r = parse_compile(json.dumps(obj))
    assert r.success and r.text_bytes == 222944 and r.data_max == 262144


def test_zero_sized_section_is_omitted_and_missing_keys_are_tolerated():
    obj = {"success": True, "builder_result": {"executable_sections_size": [
        {"name": "text", "size": 100, "max_size": 983040}, {"name": "data", "max_size": 5}]}}
    r = parse_compile(json.dumps(obj))
    assert r.text_bytes == 100 and r.data_bytes == 0 and r.data_max == 5
    assert parse_compile(json.dumps({})).success  # exit 0, nothing else: success w/o sizes
    assert parse_compile(json.dumps({})).text_bytes is None


def test_sizes_fall_back_to_the_sketch_uses_lines():
    obj = json.loads(compile_1x())
    del obj["builder_result"]["executable_sections_size"]
    r = parse_compile(json.dumps(obj))
    assert r.sizes_from == "text"
    assert (r.text_bytes, r.text_max, r.data_bytes, r.data_max) == (222944, 983040, 105656,
                                                                    262144)
    # plain text mode (no JSON at all) and the no-maximum variant
    r = parse_compile("Sketch uses 1000 bytes.\nGlobal variables use 20 bytes of dynamic memory.")
    assert (r.text_bytes, r.text_max, r.data_bytes, r.data_max) == (1000, None, 20, None)


def test_trailing_text_after_json_and_progress_before_it():
    text = "[=====   ] 45% (54/120 pages)\n" + compile_1x() + "\nUsed library X 1.0\n{broken"
    assert parse_compile(text).text_bytes == 222944


def test_error_json_on_stderr_is_read():
    stderr = json.dumps({"error": "Error during build: Platform 'arduino:mbed_nano' not found: "
                                  "platform not installed",
                         "output": {"stdout": "", "stderr": ""}})
    r = parse_compile("", stderr, 1)
    assert not r.success and "not found" in r.error
    err = classify_compile_failure(r)
    assert isinstance(err, InfraError) and err.code == "tool_missing"
    assert err.detail["fix"] == "arduino-cli core install arduino:mbed_nano"


def test_ram_region_overflow_is_a_fit_link_error_with_numbers():
    out = json.dumps({
        "compiler_out": "", "success": False, "error": "Error during build: exit status 1",
        "compiler_err": "/x/ld: a.elf section `.bss' will not fit in region `RAM'\n"
                        "/x/ld: region `RAM' overflowed by 12345 bytes\n"
                        "collect2: error: ld returned 1 exit status\n"})
    r = parse_compile(out, "", 1)
    assert not r.success and r.text_bytes is None  # 1.x: no sizes for a failed build
    err = classify_compile_failure(r)
    assert isinstance(err, FitError) and err.code == "fit_link"
    assert err.detail["region"] == "RAM" and err.detail["overflow_bytes"] == 12345
    assert "overflowed" in err.detail["linker_line"]


def test_flash_overflow_and_unnumbered_ram_overflow_on_stderr_only():
    err = classify_compile_failure(parse_compile(
        "", "ld: region `FLASH' overflowed by 77 bytes\nld: region `RAM' overflowed\n", 1))
    assert err.code == "fit_link" and err.detail["region"] == "FLASH"
    assert err.detail["overflow_bytes"] == 77
    assert {"region": "RAM", "overflow_bytes": None} in err.detail["regions"]


def test_location_counter_backwards_is_fit_link():
    err = classify_compile_failure(parse_compile(json.dumps({
        "success": False, "compiler_err": "ld: cannot move location counter backwards "
        "(from 0000000020040010 to 0000000020040000)"}), "", 1))
    assert err.code == "fit_link" and err.detail["overflow_bytes"] == 16


def test_sizer_errors_are_fit_flash_and_fit_ram():
    obj = json.loads(compile_1x(success=False,
                                error="text section exceeds available space in board"))
    err = classify_compile_failure(parse_compile(json.dumps(obj), "", 1))
    assert err.code == "fit_flash" and err.detail["text_bytes"] == 222944
    obj["error"] = "data section exceeds available space in board"
    err = classify_compile_failure(parse_compile(json.dumps(obj), "", 1))
    assert err.code == "fit_ram" and err.detail["data_max"] == 262144


def test_plain_compile_error_is_compile_failed_and_odd_exit_codes_are_infra():
    out = json.dumps({"success": False, "compiler_err": "a.ino:3:1: error: 'x' was not declared",
                      "error": "Error during build: exit status 1"})
    err = classify_compile_failure(parse_compile(out, "", 1))
    assert isinstance(err, InputError) and err.code == "compile_failed"
    assert "not declared" in err.detail["compiler_err"]
    err = classify_compile_failure(parse_compile("", "unknown flag --bogus", 7))
    assert isinstance(err, InfraError) and err.code == "tool_failed"
    err = classify_compile_failure(parse_compile(json.dumps({"success": False, "compiler_err":
        "fatal error: TensorFlowLite.h: No such file or directory"}), "", 1))
    assert err.code == "tool_missing" and err.detail["header"] == "TensorFlowLite.h"


@pytest.mark.parametrize("stdout", [
    "", "not json", "{", "[1,2", '{"success": "yes", "builder_result": []}', "\x00\xff" * 1000,
    '{"builder_result": {"executable_sections_size": [1, "x", {"name": "text", "size": "big"}]}}',
    "[" * 100_000, '{"a":' * 50_000,
])
def test_garbage_compile_output_never_raises(stdout):
    r = parse_compile(stdout, stdout, 0)
    assert r.success  # exit 0 decides; sizes unknown -> the driver refuses to upload
    r = parse_compile(stdout, stdout, 1)
    assert not r.success
    assert classify_compile_failure(r).code in ("compile_failed", "fit_flash")


def test_extract_json_is_bounded_on_huge_input():
    text = ("{not json\n" * 100_000) + '{"ok": 1}\n'
    assert extract_json(text) is None or extract_json(text) == {"ok": 1}
    assert extract_json("x" * 5_000_000 + '\n{"ok": 2}') == {"ok": 2}


def test_upload_1x_object_string_and_missing_port():
    port = {"address": "/dev/ttyACM1", "label": "/dev/ttyACM1", "protocol": "serial",
            "properties": {"serialNumber": "ABC"}}
    assert parse_upload(json.dumps({"stdout": "x", "stderr": "", "updated_upload_port": port})
                        ).updated_port == "/dev/ttyACM1"
    assert parse_upload(json.dumps({"updated_upload_port": "/dev/ttyACM2"})).updated_port == \
        "/dev/ttyACM2"
    assert parse_upload(json.dumps({"stdout": "Done"})).updated_port is None  # issue 2287
    assert parse_upload(json.dumps({"stdout": "New upload port: /dev/ttyACM3 (serial)\n"})
                        ).updated_port == "/dev/ttyACM3"
    assert parse_upload("").updated_port is None


def test_upload_failures_are_classified():
    with pytest.raises(DeviceError) as ei:
        parse_upload("No device found on ttyACM0\n", json.dumps(
            {"error": "Failed uploading: uploading error: exit status 1"}), 1)
    assert ei.value.code == "upload_failed" and ei.value.detail["port"] == "ttyACM0"
    with pytest.raises(DeviceError) as ei:
        parse_upload("", "Cannot perform port reset: opening port at 1200bps: Permission denied",
                     1)
    assert ei.value.code == "permission_denied" and "dialout" in ei.value.detail["fix"]
    with pytest.raises(InfraError):
        parse_upload("", "bad flag", 7)


def test_board_list_docs_examples():
    ports = parse_board_list((DOCS / "board_list_1.x_mocked_integrationtest.json").read_text())
    assert ports[0].address == "/dev/ttyCIAO" and ports[0].serial_number == "123456"
    assert (ports[0].vid, ports[0].pid) == (0x2341, 0x0041)
    ports = parse_board_list((DOCS / "board_list_0.19_uno_UPGRADING.json").read_text())
    assert ports[0].serial_number == "954323132383515092E1" and ports[0].pid == 0x43
    assert ports[0].boards == (("Arduino Uno", "arduino:avr:uno"),)
    ports = parse_board_list((DOCS / "board_list_0.18_nano33ble_UPGRADING.json").read_text())
    assert ports[0].serial_number == "BECC45F754185EC9" and ports[0].pid == 0x805A
    assert len(ports[0].boards) == 4
    events = parse_board_watch(
        (DOCS / "board_list_watch_0.18_nano33ble_UPGRADING.txt").read_text())
    assert [e[0] for e in events] == ["add", "remove"]
    assert events[0][1].serial_number == "BECC45F754185EC9"


def test_board_list_unknown_board_and_garbage():
    item = {"port": {"address": "/dev/ttyS0", "protocol": "serial"}}  # no matching_boards
    ports = parse_board_list(json.dumps({"detected_ports": [item, 5, {"port": {}}]}))
    assert [p.address for p in ports] == ["/dev/ttyS0"] and ports[0].boards == ()
    assert parse_board_list("garbage") == []
    assert parse_board_list(json.dumps({"detected_ports": "nope"})) == []


def test_shared_build_lock_hands_over_and_honours_deadline_and_cancel(tmp_path):
    """Devices waiting for another device's compile of the same key: a waiter gets the lock
    as soon as it is released, and a waiter's timeout or cancel ends its wait."""
    import threading

    from hal.arduino.build_slot import BuildSlot
    from hal.deadline import Deadline
    from hal.errors import Cancelled, InfraError

    key = {"model_sha256": "ab" * 32, "board": "nano33ble"}
    a = BuildSlot(tmp_path, "nano33ble", "dev-a", "1.0.0", "tinyml_sketch")
    b = BuildSlot(tmp_path, "nano33ble", "dev-b", "1.0.0", "tinyml_sketch")
    order: list[str] = []
    with a.shared_lock(key, Deadline(5)):
        with pytest.raises(InfraError) as ei, b.shared_lock(key, Deadline(0.2)):
            pass
        assert ei.value.code == "timeout"
        cancel = Deadline(30)
        threading.Timer(0.1, cancel.cancel).start()
        with pytest.raises(Cancelled), b.shared_lock(key, cancel):
            pass

        def waiter() -> None:
            with b.shared_lock(key, Deadline(10)):
                order.append("b")

        t = threading.Thread(target=waiter)
        t.start()
        t.join(0.2)
        assert t.is_alive()  # still waiting while a holds the key
        order.append("a")
    t.join(5)
    assert order == ["a", "b"]
    with a.shared_lock(key, Deadline(1)):  # and the lock is free again
        pass
