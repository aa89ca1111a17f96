"""Installs through the real nano33ble driver logic, the stand-in arduino-cli and virtual
boards on real pseudo-terminals running the real TFLM interpreter."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest

from hal.deadline import Deadline
from hal.driver import InstallRequest
from hal.errors import Cancelled, DeviceError, FitError, InfraError, InputError
from hal.protocol import BootLine, InferenceLine, StatusLine
from hal.virtual import image
from tests.virtual.helpers import HELLO_ARENA, child_pids, model, wait_until

SPEECH = model("arduino_micro_speech")
HELLO = model("hello_world_int8")
PERSON = model("person_detect")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flashed_sha(driver) -> str | None:
    path = driver._board_dir / "flash.bin"
    return image.read(path).sha256 if path.exists() else None


def hello_request(**kw) -> InstallRequest:
    return InstallRequest(model=HELLO, labels=("sine",), input_vectors=((0.5,), (1.5,)),
                          arena_bytes=HELLO_ARENA, **kw)


def test_install_verifies_then_repeat_install_compiles_nothing(make_driver, compiles):
    driver = make_driver()
    progress = []
    report = driver.install(InstallRequest(model=SPEECH, job_id="j1"), Deadline(60),
                            lambda step, status, detail: progress.append((step, status)))
    assert report.model_sha256 == sha(SPEECH)
    assert report.boot["kind"] == "boot" and SPEECH and report.boot["sha"] == sha(SPEECH)[:16]
    assert report.boot["used_bytes"] > 0 and report.compiled
    assert report.detail["build"]["text_bytes"] > len(SPEECH)
    assert [s for s, st in progress if st == "done"] == [
        "validate", "fit_check", "render", "compile", "fit_check_build", "upload", "verify_boot"]
    assert compiles() == 1
    assert flashed_sha(driver) == sha(SPEECH)

    again = driver.install(InstallRequest(model=SPEECH, job_id="j2"), Deadline(60),
                           lambda step, status, detail: progress.append((step, status)))
    assert not again.compiled and again.boot["sha"] == sha(SPEECH)[:16]
    assert ("compile", "skipped") in progress
    assert compiles() == 1  # zero compiles for the identical model, board and template

    # another model compiles once, in the same persistent build slot
    third = driver.install(hello_request(), Deadline(60))
    assert third.compiled and compiles() == 2 and flashed_sha(driver) == sha(HELLO)
    info = driver.info()
    assert info.connected and info.detail["running_sha"] == sha(HELLO)[:16]


def test_model_that_cannot_fit_is_rejected_before_any_compile(make_driver, compiles):
    driver = make_driver()
    progress = []
    t0 = time.monotonic()
    with pytest.raises(FitError) as ei:
        driver.install(InstallRequest(model=PERSON, arena_bytes=250_000), Deadline(30),
                       lambda step, status, detail: progress.append((step, status)))
    assert time.monotonic() - t0 < 5
    err = ei.value
    assert err.code == "fit_ram"
    assert err.detail["arena_bytes"] == 250_000 and err.detail["ram_limit_bytes"] == 262144
    assert err.detail["ram_needed_bytes"] > 262144 and err.detail["ram_margin_bytes"] < 0
    assert ("fit_check", "failed") in progress
    assert not any(step == "compile" for step, _ in progress)
    assert compiles() == 0 and flashed_sha(driver) is None


def test_build_that_does_not_fit_is_never_uploaded(make_driver, compiles, monkeypatch):
    # a heavier core: the build links, but leaves less than the stack/heap reserve
    monkeypatch.setenv("TINYML_FAKE_ARDUINO_CLI_EXTRA_RAM", "190000")
    driver = make_driver()
    progress = []
    with pytest.raises(FitError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30),
                       lambda step, status, detail: progress.append((step, status)))
    err = ei.value
    assert err.code == "fit_ram"
    assert err.detail["data_bytes"] <= err.detail["data_max"] == 262144
    assert err.detail["data_bytes"] + err.detail["ram_reserve_bytes"] > 262144
    assert ("fit_check_build", "failed") in progress
    assert not any(step == "upload" for step, _ in progress)
    assert compiles() == 1 and flashed_sha(driver) is None


def test_link_error_is_classified_as_fit_link(make_driver, monkeypatch):
    monkeypatch.setenv("TINYML_FAKE_ARDUINO_CLI_EXTRA_RAM", "260000")
    driver = make_driver()
    with pytest.raises(FitError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert ei.value.code == "fit_link" and ei.value.detail["region"] == "RAM"
    assert ei.value.detail["overflow_bytes"] > 0
    assert flashed_sha(driver) is None


def test_sizer_failure_in_0x_format_is_fit_flash(make_driver, monkeypatch):
    monkeypatch.setenv("TINYML_FAKE_ARDUINO_CLI_EXTRA_FLASH", "900000")
    monkeypatch.setenv("TINYML_FAKE_ARDUINO_CLI_SIZER", "1")
    driver = make_driver(cli_format="0.35")
    with pytest.raises(FitError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert ei.value.code == "fit_flash" and ei.value.detail["text_bytes"] > 983040


def test_alloc_failed_on_the_board_is_a_fit_error_with_numbers(make_driver):
    driver = make_driver()
    with pytest.raises(FitError) as ei:
        driver.install(InstallRequest(model=HELLO, arena_bytes=1024), Deadline(30))
    err = ei.value
    assert err.code == "alloc_failed" and err.detail["arena_bytes"] == 1024
    assert err.detail["arena_estimate_bytes"] > 1024


def test_wrong_model_when_the_board_keeps_its_old_firmware(make_driver):
    driver = make_driver(fault="old_model")
    driver.install(hello_request(), Deadline(30))  # a blank board takes its first image
    with pytest.raises(DeviceError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30))
    err = ei.value
    assert err.code == "wrong_model"
    assert err.detail["running_sha"] == sha(HELLO)[:16]
    assert err.detail["expected_sha"] == sha(SPEECH)[:16]


def test_boot_silent_when_the_sketch_never_prints(make_driver):
    driver = make_driver(fault="never_boot", boot_deadline_s=2.0)
    with pytest.raises(DeviceError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert ei.value.code == "boot_silent" and ei.value.detail["raw_lines"] == 0
    # a first install has nothing to roll back to, and says so
    rollback = ei.value.detail["rollback"]
    assert (rollback["needed"], rollback["attempted"], rollback["verified"],
            rollback["reason"]) == (True, False, False, "no previously verified model")


def test_hard_fault_silences_the_board_until_the_next_reset(make_driver):
    """Every boot runs in its own MCU process: a hard fault (SIGSEGV, as TFLM dies on a bad
    arena) ends that run -- the board stays attached but prints nothing -- and the next
    upload boots a fresh process."""
    driver = make_driver()
    driver.install(hello_request(), Deadline(30))
    first = child_pids(driver.board_pid)
    assert len(first) == 1
    os.kill(first[0], signal.SIGSEGV)
    assert wait_until(lambda: not child_pids(driver.board_pid), 5.0)
    assert wait_until(lambda: "sketch stopped (signal 11): silent" in driver._log_tail(), 5.0)
    time.sleep(0.3)  # lines already in flight before the fault
    lines = []
    driver.start_observing(lines.append)
    time.sleep(1.5)  # 30 inference periods, 7 status periods of the FAST settings
    driver.stop_observing()
    assert not [x for x in lines if isinstance(x, (BootLine, StatusLine, InferenceLine))]
    assert driver.info().connected  # silent, not gone
    report = driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert report.boot["sha"] == sha(SPEECH)[:16]
    second = child_pids(driver.board_pid)
    assert len(second) == 1 and second != first


def test_boot_line_reaches_a_host_that_opens_the_port_after_it_was_printed(make_driver):
    """The sketch prints its boot line the moment the host opens the port (it waits for the
    host): not with its next line, which here is minutes away."""
    driver = make_driver(inference_period_ms=600_000, status_period_ms=600_000,
                         host_wait_s=30.0, boot_deadline_s=10.0)
    report = driver.install(hello_request(), Deadline(30))
    assert report.boot["kind"] == "boot" and report.boot["sha"] == sha(HELLO)[:16]


def test_board_vanishing_during_upload_is_port_vanished_and_keeps_old_model(make_driver):
    driver = make_driver(fault="vanish_on_upload")
    with pytest.raises(DeviceError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert ei.value.code == "port_vanished"
    assert ei.value.detail["upload_error"]["code"] == "upload_failed"
    assert flashed_sha(driver) is None  # nothing half-flashed was kept


def test_port_that_never_returns_after_upload_is_port_vanished(make_driver):
    driver = make_driver(boot_deadline_s=2.0)

    def kill_board(step, status, detail):
        if step == "verify_boot" and status == "started":
            os.kill(driver.board_pid, 9)  # the board dies: its port never comes back

    with pytest.raises(DeviceError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30), kill_board)
    assert ei.value.code == "port_vanished"


def test_permission_denied_names_the_fix(make_driver):
    driver = make_driver(fault="permission_denied")
    errors = []
    driver.start_observing(lambda line: None, errors.append)
    with pytest.raises(DeviceError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert ei.value.code == "permission_denied" and "dialout" in ei.value.detail["fix"]
    deadline = time.monotonic() + 5
    while not any(e.code == "permission_denied" for e in errors) and time.monotonic() < deadline:
        time.sleep(0.05)
    denied = [e for e in errors if e.code == "permission_denied"]
    assert denied and "udev" in denied[0].detail["fix"]


def test_garbage_between_lines_is_kept_raw_and_install_still_verifies(make_driver):
    driver = make_driver(fault="garbage")
    lines = []
    driver.start_observing(lines.append)
    report = driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert report.boot["sha"] == sha(SPEECH)[:16]
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        raws = [x for x in lines if x.kind == "raw"]
        if any("\u2603" in r.text for r in raws) and any(
                isinstance(x, InferenceLine) for x in lines):
            break
        time.sleep(0.05)
    raws = [x for x in lines if x.kind == "raw"]
    assert any("\u2603" in r.text for r in raws)  # the split UTF-8 sequence decoded whole
    assert any("\ufffd" in r.text for r in raws)  # garbage bytes kept, replaced
    assert any(isinstance(x, InferenceLine) for x in lines)


def test_flooding_board_still_verifies_and_is_observed(make_driver):
    driver = make_driver(fault="flood")
    lines = []
    driver.start_observing(lines.append)
    report = driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert report.boot["sha"] == sha(SPEECH)[:16]
    time.sleep(1.0)
    infs = [x for x in lines if isinstance(x, InferenceLine)]
    assert len(infs) > 100
    assert any(isinstance(x, StatusLine) for x in lines)


def test_port_renamed_on_re_enumeration_is_found_by_serial_number(make_driver):
    driver = make_driver(rename_on_touch=True)
    before = driver.locate(mode=None)
    if before is None:
        driver.ensure_board(Deadline(10))
        before = driver.locate(mode=None)
    report = driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert report.detail["port"] != before.device
    assert report.detail["updated_upload_port"] == report.detail["port"]
    assert driver.info().address == report.detail["port"]


def test_0x_json_without_updated_upload_port(make_driver, monkeypatch):
    # 0.29 has no updated_upload_port (and 1.x may omit it, issue 2287): the adapter falls
    # back to the "New upload port" line, and the driver finds the board by serial anyway
    monkeypatch.setenv("TINYML_FAKE_ARDUINO_CLI_NO_UPDATED_PORT", "1")
    driver = make_driver(cli_format="0.29")
    report = driver.install(InstallRequest(model=SPEECH), Deadline(30))
    assert report.detail["updated_upload_port"] == report.detail["port"]
    assert report.boot["kind"] == "boot"


def test_two_boards_in_parallel_do_not_disturb_each_other(make_driver):
    a, b = make_driver("board-a"), make_driver("board-b")
    results: dict = {}

    def run(driver, request):
        try:
            results[driver.device_id] = driver.install(request, Deadline(60))
        except Exception as exc:  # surfaced by the asserts below
            results[driver.device_id] = exc

    threads = [threading.Thread(target=run, args=(a, InstallRequest(model=SPEECH))),
               threading.Thread(target=run, args=(b, hello_request()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["board-a"].model_sha256 == sha(SPEECH), results
    assert results["board-b"].model_sha256 == sha(HELLO), results
    assert flashed_sha(a) == sha(SPEECH) and flashed_sha(b) == sha(HELLO)
    assert a.serial_number() != b.serial_number()


def test_second_install_on_the_same_board_is_refused_naming_the_running_job(make_driver):
    driver = make_driver(compile_delay_s=3.0)
    first: dict = {}
    t = threading.Thread(target=lambda: first.setdefault(
        "r", driver.install(InstallRequest(model=SPEECH, job_id="job-A"), Deadline(60))))
    t.start()
    time.sleep(0.5)
    with pytest.raises(InputError) as ei:
        driver.install(InstallRequest(model=HELLO, job_id="job-B"), Deadline(60))
    assert ei.value.code == "device_busy" and ei.value.detail["running_job"] == "job-A"
    assert "job-A" in ei.value.message
    t.join(60)
    assert first["r"].model_sha256 == sha(SPEECH)


def test_cancel_during_compile_kills_the_tool_and_leaves_the_old_model(make_driver):
    driver = make_driver()
    driver.install(InstallRequest(model=SPEECH), Deadline(60))
    slow = driver
    slow.settings.compile_delay_s = 20.0
    deadline = Deadline(60)
    progress = []

    def on_progress(step, status, detail):
        progress.append((step, status))
        if step == "compile" and status == "started":
            threading.Timer(0.5, deadline.cancel).start()

    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        slow.install(hello_request(), deadline, on_progress)
    assert time.monotonic() - t0 < 10  # the 20 s compile was killed, not waited for
    assert ("compile", "failed") in progress
    assert not any(step == "upload" for step, _ in progress)
    assert flashed_sha(driver) == sha(SPEECH)  # the board keeps its old model
    # and a later install of the same model is not mistaken for built
    slow.settings.compile_delay_s = 0.0
    report = slow.install(hello_request(), Deadline(60))
    assert report.compiled and report.model_sha256 == sha(HELLO)


def test_cancel_during_upload_finishes_and_verifies_then_reports_cancelled(make_driver):
    driver = make_driver(upload_kbps=120.0)  # ~1.3 s of flashing
    deadline = Deadline(60)

    def on_progress(step, status, detail):
        if step == "upload" and status == "started":
            threading.Timer(0.4, deadline.cancel).start()

    with pytest.raises(Cancelled) as ei:
        driver.install(InstallRequest(model=SPEECH), deadline, on_progress)
    assert ei.value.detail["board_state"] == "new_model_verified"
    assert ei.value.detail["boot"]["sha"] == sha(SPEECH)[:16]
    assert flashed_sha(driver) == sha(SPEECH)


def test_observation_delivers_lines_and_pauses_only_for_upload(make_driver):
    driver = make_driver()
    driver.install(hello_request(), Deadline(30))
    lines, errors = [], []
    driver.start_observing(lines.append, errors.append)
    driver.start_observing(lines.append, errors.append)  # idempotent
    deadline = time.monotonic() + 5
    while not any(isinstance(x, StatusLine) for x in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(isinstance(x, InferenceLine) and x.label == "sine" for x in lines)
    n = len(lines)
    report = driver.install(InstallRequest(model=SPEECH), Deadline(30))
    # the verify step fed the boot line it read to the sink
    boots = [x for x in lines[n:] if isinstance(x, BootLine)]
    assert boots and boots[0].sha == report.boot["sha"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
            isinstance(x, StatusLine) and x.sha == sha(SPEECH)[:16] for x in lines):
        time.sleep(0.05)
    assert any(isinstance(x, StatusLine) and x.sha == sha(SPEECH)[:16] for x in lines)
    driver.stop_observing()
    driver.stop_observing()
    assert not any(e.code == "permission_denied" for e in errors)


def test_virtual_board_without_tflm_alloc_margin_settings_are_validated(context):
    from pydantic import ValidationError

    from hal.driver import build_driver

    with pytest.raises(ValidationError):
        build_driver("virtual-nano33ble", "x", {"fault": "explode"}, context)
    with pytest.raises(ValidationError):
        build_driver("virtual-nano33ble", "x", {"bogus": 1}, context)
    with pytest.raises(ValidationError):
        build_driver("nano33ble", "x", {}, context)  # needs serial_number or port
    for hostile in (["xyz"], ["1234567"], ["0" * 65], ["abcd1234; rm -rf /"], ["a" * 8] * 17):
        with pytest.raises(ValidationError):
            build_driver("virtual-nano33ble", "x", {"silent_models": hostile}, context)


def test_board_restart_boots_the_last_flashed_model(make_driver):
    driver = make_driver()
    driver.install(InstallRequest(model=SPEECH), Deadline(30))
    os.kill(driver.board_pid, 15)
    time.sleep(0.3)
    driver.ensure_board(Deadline(15))  # restarts the process on the same state dir
    lines = []
    driver.start_observing(lines.append)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not any(
            isinstance(x, (BootLine, StatusLine)) for x in lines):
        time.sleep(0.05)
    shas = {x.sha for x in lines if isinstance(x, (BootLine, StatusLine))}
    assert shas == {sha(SPEECH)[:16]}


def test_tools_check_of_the_virtual_driver(context):
    from hal.driver import get_driver_class

    result = get_driver_class("virtual-nano33ble").check_tools(context)
    assert result["available"], result
    assert {c["check"] for c in result["checks"]} >= {"arduino-cli", "core", "tflm_library",
                                                      "tflite_micro"}


def test_unavailable_board_is_infra_error(make_driver, monkeypatch):
    driver = make_driver()
    driver.close()  # board process stopped
    monkeypatch.setattr("hal.virtual.driver._BOARD_START_S", 0.3)
    monkeypatch.setattr(driver, "_start_board", lambda: None)
    with pytest.raises((InfraError, DeviceError)):
        driver.install(InstallRequest(model=SPEECH), Deadline(30))


def test_identical_model_on_two_boards_compiles_once(make_driver, compiles):
    a, b = make_driver("fleet-a"), make_driver("fleet-b")
    progress = []
    first = a.install(InstallRequest(model=SPEECH), Deadline(60))
    second = b.install(InstallRequest(model=SPEECH), Deadline(60),
                       lambda step, status, detail: progress.append((step, status, detail)))
    assert first.compiled and not second.compiled
    assert compiles() == 1
    skipped = [d for s, st, d in progress if s == "compile" and st == "skipped"]
    assert "another board" in skipped[0]["reason"]
    assert flashed_sha(b) == sha(SPEECH)


def test_tools_check_finds_tflite_micro_without_importing_it(tmp_path):
    """The daemon only locates the interpreter (an import costs ~17 MB and numpy); a
    missing one is reported with the fix."""
    import json
    import subprocess
    import sys

    from tests.virtual.helpers import REPO

    probe = (
        "import json, sys\n"
        "{block}"
        "from hal.driver import DriverContext, get_driver_class\n"
        "cls = get_driver_class('virtual-nano33ble')\n"
        "r = cls.check_tools(DriverContext(state_dir=sys.argv[1]))\n"
        "c = [c for c in r['checks'] if c['check'] == 'tflite_micro'][0]\n"
        "mods = [m for m in ('tflite_micro', 'numpy') if m in sys.modules]\n"
        "print(json.dumps({'check': c, 'available': r['available'], 'imported': mods}))\n"
    )

    def run(block: str) -> dict:
        out = subprocess.run([sys.executable, "-c", probe.replace("{block}", block), str(tmp_path)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.splitlines()[-1])

    present = run("")
    assert present["check"]["ok"] and present["imported"] == [] and present["available"]
    # an import blocked the standard way: sys.modules[name] = None
    absent = run("sys.modules['tflite_micro'] = None\n")
    assert not absent["check"]["ok"] and "pip install" in absent["check"]["fix"]
    assert not absent["available"]
