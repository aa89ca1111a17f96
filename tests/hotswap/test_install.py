"""Hot-swap installs end to end: the real nano33ble driver logic, the stand-in arduino-cli and
a virtual board on a real pty running the real TFLM interpreter, with the hot-swap firmware's
slots and protocol. Every fault ends classified with the previous model still running."""

from __future__ import annotations

import hashlib

import pytest

from hal.deadline import Deadline
from hal.driver import InstallRequest
from hal.errors import DeviceError, FitError, InfraError
from hal.protocol import BootLine, InferenceLine, StatusLine
from tests.virtual.helpers import HELLO_ARENA, model, wait_until

SPEECH = model("arduino_micro_speech")
WAND = model("arduino_magic_wand")
HELLO = model("hello_world_int8")
WAND_LABELS = tuple(f"digit{i}" for i in range(10))  # magic_wand has 10 outputs


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Lines:
    """Everything the driver observes (the observer and the install's own reads)."""

    def __init__(self, driver) -> None:
        self.lines: list = []
        driver.start_observing(self.lines.append)

    def mark(self) -> int:
        return len(self.lines)

    def runs(self, data: bytes, since: int, timeout_s: float = 8.0) -> bool:
        """A status or boot line of ``data``'s model arrives after ``since``, followed by an
        inference line: that model is running."""
        def seen():
            tail = self.lines[since:]
            for i, line in enumerate(tail):
                if isinstance(line, (BootLine, StatusLine)) and line.sha == sha(data)[:16]:
                    return any(isinstance(x, InferenceLine) for x in tail[i:])
            return False
        return bool(wait_until(seen, timeout_s))


def steps_of(progress) -> list[str]:
    return [s for s, st, _ in progress if st == "done"]


def install(driver, data: bytes, progress=None, **kw):
    progress = progress if progress is not None else []
    return driver.install(InstallRequest(model=data, **kw), Deadline(60),
                          lambda step, status, detail: progress.append((step, status, detail)))


def test_full_install_then_hot_swap_runs_the_new_model(make_driver):
    driver = make_driver()
    lines = Lines(driver)
    first = install(driver, SPEECH)
    assert first.compiled and first.boot["hotswap"]["slot"] == 255  # the hot-swap firmware
    progress = []
    mark = lines.mark()
    report = install(driver, WAND, progress, labels=WAND_LABELS)
    assert steps_of(progress) == ["validate", "fit_check", "hotswap_transfer", "verify_boot"]
    fit = next(d for s, st, d in progress if s == "fit_check" and st == "done")
    assert fit["hotswap"]["path"] == "hotswap" and "ops" in fit["hotswap"]["reason"]
    assert not report.compiled and report.detail["path"] == "hotswap"
    assert report.boot["sha"] == sha(WAND)[:16] and report.boot["hotswap"]["slot"] == 0
    assert report.detail["hotswap"]["payload_bytes"] > len(WAND)
    assert lines.runs(WAND, mark)
    tail = lines.lines[mark:]
    start = next(i for i, x in enumerate(tail)
                 if isinstance(x, BootLine) and x.sha == sha(WAND)[:16])
    labels = {x.label for x in tail[start:] if isinstance(x, InferenceLine)}
    assert labels <= set(WAND_LABELS) and labels  # the slot's labels are printed
    # and back to the first model: into the other slot
    again = install(driver, SPEECH)
    assert not again.compiled and again.boot["hotswap"]["slot"] == 1


@pytest.mark.parametrize("fault,counter", [("drop_chunk:2", "timeouts"),
                                           ("crc_error:1", "crc_errors")])
def test_a_dropped_or_damaged_chunk_is_sent_again(make_driver, fault, counter):
    driver = make_driver(hotswap_faults=[fault])
    install(driver, SPEECH)
    report = install(driver, WAND)
    stats = report.detail["hotswap"]
    # at least once (a loaded host may also time out on another frame: resent harmlessly)
    assert stats[counter] >= 1 and stats["resent"] >= 1
    assert report.boot["sha"] == sha(WAND)[:16]


@pytest.mark.parametrize("fault,code,protocol_code", [
    ("drop_chunks:3", "transport_broken", "no_answer"),
    ("crc_errors:0", "transport_broken", "crc"),
])
def test_a_lost_link_ends_classified_with_the_old_model_running(make_driver, fault, code,
                                                                 protocol_code):
    driver = make_driver(hotswap_faults=[fault])
    lines = Lines(driver)
    install(driver, SPEECH)
    mark = lines.mark()
    with pytest.raises(InfraError) as info:
        install(driver, WAND)
    err = info.value
    assert err.code == code and err.detail["protocol_code"] == protocol_code
    rollback = err.detail["rollback"]
    assert rollback["verified"] and rollback["running_sha256"] == sha(SPEECH)[:16]
    assert not rollback["attempted"]
    assert lines.runs(SPEECH, mark)


def test_power_cut_mid_write_ends_classified_with_the_old_model_running(make_driver):
    driver = make_driver(hotswap_faults=["power_cut:5"])
    lines = Lines(driver)
    install(driver, SPEECH)
    mark = lines.mark()
    with pytest.raises(DeviceError) as info:
        install(driver, WAND)
    assert info.value.code == "port_vanished"
    rollback = info.value.detail["rollback"]
    assert rollback["verified"] and rollback["running_sha256"] == sha(SPEECH)[:16]
    assert lines.runs(SPEECH, mark, timeout_s=10)
    # the half-written slot is never booted; the next hot-swap starts over and succeeds
    report = install(driver, WAND)
    assert report.boot["sha"] == sha(WAND)[:16] and not report.compiled


def test_model_that_fails_to_allocate_falls_back_by_itself(make_driver):
    driver = make_driver(hotswap_faults=[f"alloc_fail:{sha(WAND)[:12]}"])
    lines = Lines(driver)
    install(driver, SPEECH)
    mark = lines.mark()
    with pytest.raises(FitError) as info:
        install(driver, WAND)
    assert info.value.code == "alloc_failed"
    rollback = info.value.detail["rollback"]
    assert "firmware" in rollback["reason"] and rollback["verified"] and rollback["attempted"]
    assert rollback["running_sha256"] == sha(SPEECH)[:16]
    assert lines.runs(SPEECH, mark)


def test_model_that_faults_at_boot_falls_back_after_its_boot_attempts(make_driver):
    driver = make_driver(silent_models=[sha(WAND)[:12]])
    lines = Lines(driver)
    install(driver, SPEECH)
    mark = lines.mark()
    with pytest.raises(DeviceError) as info:
        install(driver, WAND)
    assert info.value.code == "boot_silent"
    rollback = info.value.detail["rollback"]
    assert "firmware" in rollback["reason"] and rollback["running_sha256"] == sha(SPEECH)[:16]
    assert lines.runs(SPEECH, mark)


def test_hot_swap_survives_bridge_restart_and_board_reset(make_driver):
    driver = make_driver()
    install(driver, SPEECH)
    install(driver, WAND, labels=WAND_LABELS)
    driver.close()  # the bridge stops; with it the board process (a power cycle)
    again = make_driver()
    lines = Lines(again)
    assert lines.runs(WAND, 0, timeout_s=15)
    boot = next(x for x in lines.lines if isinstance(x, BootLine))
    assert boot.sha == sha(WAND)[:16] and boot.hotswap["slot"] == 0
    # the restarted bridge learns the capability again and hot-swaps the next model
    report = install(again, HELLO, arena_bytes=HELLO_ARENA)
    assert not report.compiled and report.boot["hotswap"]["slot"] == 1


def test_op_outside_the_set_falls_back_to_compile_and_upload(make_driver):
    driver = make_driver(hotswap_ops=["audio"])
    install(driver, SPEECH)
    progress = []
    report = install(driver, WAND, progress)  # MEAN is no audio op
    fit = next(d for s, st, d in progress if s == "fit_check" and st == "done")["hotswap"]
    assert fit["path"] == "compile_upload" and fit["reason"] == (
        "ops not in the board's op set: MEAN")
    assert fit["numbers"]["missing_ops"] == ["MEAN"]
    assert report.compiled and "upload" in steps_of(progress)
    assert "MEAN" in report.boot["hotswap"]["ops"]  # the new firmware has it: next is fast
    assert not install(driver, SPEECH).compiled


def test_arena_too_small_falls_back_to_compile_and_upload(make_driver):
    driver = make_driver(hotswap_arena_bytes=1024)
    install(driver, HELLO, arena_bytes=HELLO_ARENA)  # the firmware's arena: the model's
    progress = []
    report = install(driver, SPEECH, progress)
    fit = next(d for s, st, d in progress if s == "fit_check" and st == "done")["hotswap"]
    assert fit["path"] == "compile_upload" and "arena" in fit["reason"]
    assert fit["numbers"]["arena_bytes"] == HELLO_ARENA
    assert report.compiled and report.boot["sha"] == sha(SPEECH)[:16]


def test_setting_off_keeps_the_exact_ops_firmware(make_driver):
    driver = make_driver(hotswap=False)
    first = install(driver, SPEECH)
    second = install(driver, WAND)
    assert first.boot.get("hotswap") is None and second.compiled


def test_interrupted_transfer_resumes_where_the_board_stopped(make_driver):
    from hal.arduino import hotswap_protocol as hp
    from hal.arduino.hotswap_link import HotswapSession
    from hal.arduino.serial_link import PortLink

    driver = make_driver()
    install(driver, SPEECH)
    payload = hp.SlotPayload(model=WAND).pack()
    port = driver.locate("sketch")
    assert driver.pause_observation(3.0)
    try:
        with PortLink.open(port.device) as link:
            first = HotswapSession(link, driver.deliver_line, Deadline(20))
            sha256 = hashlib.sha256(payload).digest()
            first.exchange(hp.BEGIN_T, hp.begin_payload(len(payload), len(WAND), 12000, sha256))
            for off in range(0, 3 * hp.MAX_CHUNK, hp.MAX_CHUNK):
                first.exchange(hp.CHUNK, hp.chunk_payload(off, payload[off:off + hp.MAX_CHUNK]))
            # the host goes away (a bridge restart); a new session sends the same payload
            second = HotswapSession(link, driver.deliver_line, Deadline(20))
            slot = second.send(payload, len(WAND), 12000)
            assert second.stats.resumed_at == 3 * hp.MAX_CHUNK
            assert second.stats.frames == 2 + (len(payload) - 3 * hp.MAX_CHUNK + 1023) // 1024
            second.activate(slot)
            boot = second.wait_boot(sha(WAND), Deadline(8))
            assert boot.sha == sha(WAND)[:16]
    finally:
        driver.resume_observation()


def test_no_boot_line_in_time_is_undone_by_a_slot_switch(make_driver):
    # the new model hard-faults and the boot deadline ends before the firmware's own fall-back
    first = make_driver(silent_models=[sha(WAND)[:12]])
    install(first, SPEECH)
    first.close()  # the technician shortens the boot deadline and restarts the bridge
    driver = make_driver(silent_models=[sha(WAND)[:12]], boot_deadline_s=0.3)
    lines = Lines(driver)
    assert lines.runs(SPEECH, 0, timeout_s=15)
    mark = lines.mark()
    progress = []
    with pytest.raises(DeviceError) as info:
        install(driver, WAND, progress)
    assert info.value.code == "boot_silent"
    rollback = info.value.detail["rollback"]
    assert rollback["attempted"] and rollback["verified"] and "slot" in rollback["reason"]
    assert rollback["running_sha256"] == sha(SPEECH)[:16]
    done = [s for s, st, _ in progress if st == "done"]
    assert "rollback" in done and "upload" not in done  # a slot switch, not a reflash
    assert lines.runs(SPEECH, mark)


@pytest.mark.parametrize("settings,camera,firmware,reason", [
    ({"hotswap": False}, False, "exact_ops", "the device setting hotswap is false"),
    ({}, True, "exact_ops", "the camera input"),
    ({"hotswap_ops": [f"OP{i}" for i in range(30)]}, False, "exact_ops", "op set"),
    ({}, False, "hotswap", "does not advertise hot-swap"),  # a blank board: nothing answers
])
def test_plan_reasons(make_driver, settings, camera, firmware, reason):
    from hal.arduino import hotswap
    from hal.boards import fit_check
    from hal.model.analysis import analyze

    driver = make_driver(**settings)
    report = analyze(SPEECH, board="nano33ble")
    fit = fit_check(report, driver.profile)
    plan = hotswap.plan(driver, report, fit, 20000, Deadline(5), camera=camera)
    assert plan.path == "compile_upload" and plan.firmware == firmware
    assert reason in plan.reason
