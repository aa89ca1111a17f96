"""Rollback after a failed boot: real virtual boards (pty, bootloader, TFLM), the stand-in
arduino-cli and the real nano33ble driver logic. A new firmware that is on the board but does
not run (alloc_failed, boot_silent) is replaced by the last verified one, whose boot is then
verified; the original error is what the install raises."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from hal.deadline import Deadline
from hal.driver import InstallRequest
from hal.errors import Cancelled, DeviceError, FitError
from hal.protocol import BootLine, StatusLine
from hal.virtual import image
from tests.virtual.helpers import HELLO_ARENA, model, wait_until

SPEECH = model("arduino_micro_speech")
HELLO = model("hello_world_int8")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flashed_sha(driver) -> str | None:
    path = driver._board_dir / "flash.bin"
    return image.read(path).sha256 if path.exists() else None


def install_a(driver) -> None:
    """Model A (hello_world), verified on the board."""
    report = driver.install(InstallRequest(model=HELLO, labels=("sine",),
                                           input_vectors=((0.5,),), arena_bytes=HELLO_ARENA),
                            Deadline(60))
    assert report.boot["sha"] == sha(HELLO)[:16]
    record = json.loads((driver.verified_store().dir / "verified.json").read_text())
    assert record["model_sha256"] == sha(HELLO) and record["arena_bytes"] == HELLO_ARENA
    assert record["fqbn"] and record["template_version"]


def observed_model_shas(driver, seconds: float = 5.0) -> set[str]:
    """The model shas the board announces (boot and status lines) while observed."""
    lines: list = []
    driver.start_observing(lines.append)
    try:
        wait_until(lambda: any(isinstance(x, StatusLine) for x in lines), seconds)
    finally:
        driver.stop_observing()
    return {x.sha for x in lines if isinstance(x, (BootLine, StatusLine))}


def recorder(progress: list):
    return lambda step, status, detail: progress.append((step, status, detail))


def test_alloc_failed_rolls_back_to_the_last_verified_model(make_driver):
    driver = make_driver()
    install_a(driver)
    progress: list = []
    with pytest.raises(FitError) as ei:
        # model B with an arena far too small: it flashes, then AllocateTensors() fails
        driver.install(InstallRequest(model=SPEECH, arena_bytes=2048), Deadline(60),
                       recorder(progress))
    err = ei.value
    assert err.code == "alloc_failed" and err.detail["arena_bytes"] == 2048  # the original
    rollback = err.detail["rollback"]
    assert rollback["verified"] is True and rollback["attempted"] is True
    assert rollback["running_sha256"] == sha(HELLO)
    assert rollback["boot"]["sha"] == sha(HELLO)[:16]
    steps = [(s, st) for s, st, _ in progress]
    assert steps[-3:] == [("verify_boot", "failed"), ("rollback", "started"),
                          ("rollback", "done")]
    assert flashed_sha(driver) == sha(HELLO)  # A's image is on the board's flash again
    assert observed_model_shas(driver) == {sha(HELLO)[:16]}
    assert driver.info().detail["running_sha"] == sha(HELLO)[:16]
    # the rollback target is still A: a failed install never becomes "verified"
    assert driver.verified_store().load()[1]["model_sha256"] == sha(HELLO)


def test_boot_silent_rolls_back_and_a_later_good_install_becomes_the_target(make_driver):
    # B's firmware hard-faults at boot on this board; every other image boots
    driver = make_driver(silent_models=[sha(SPEECH)[:16]], boot_deadline_s=3.0)
    install_a(driver)
    progress: list = []
    with pytest.raises(DeviceError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(60), recorder(progress))
    err = ei.value
    assert err.code == "boot_silent"
    assert err.detail["rollback"]["verified"] is True
    assert err.detail["rollback"]["running_sha256"] == sha(HELLO)
    assert ("rollback", "done") in [(s, st) for s, st, _ in progress]
    assert flashed_sha(driver) == sha(HELLO)
    assert observed_model_shas(driver) == {sha(HELLO)[:16]}
    # the same model with a new arena boots: it, not A, is what the next rollback restores
    report = driver.install(InstallRequest(model=HELLO, arena_bytes=HELLO_ARENA + 512),
                            Deadline(60))
    assert report.arena_bytes == HELLO_ARENA + 512
    assert driver.verified_store().load()[1]["arena_bytes"] == HELLO_ARENA + 512


def test_first_install_failing_reports_that_no_rollback_is_possible(make_driver):
    driver = make_driver()
    progress: list = []
    with pytest.raises(FitError) as ei:
        driver.install(InstallRequest(model=HELLO, arena_bytes=1024), Deadline(30),
                       recorder(progress))
    assert ei.value.code == "alloc_failed"
    rollback = ei.value.detail["rollback"]
    assert (rollback["needed"], rollback["attempted"], rollback["verified"],
            rollback["reason"]) == (True, False, False, "no previously verified model")
    assert ("rollback", "skipped") in [(s, st) for s, st, _ in progress]
    assert driver.verified_store().load() is None  # nothing was kept from a failed boot


def test_damaged_verified_image_is_not_uploaded_and_the_original_error_stands(make_driver):
    driver = make_driver()
    install_a(driver)
    bin_path = next(driver.verified_store().dir.glob("*.ino.bin"))
    data = bytearray(bin_path.read_bytes())
    data[100] ^= 0xFF
    bin_path.write_bytes(bytes(data))
    with pytest.raises(FitError) as ei:
        driver.install(InstallRequest(model=SPEECH, arena_bytes=2048), Deadline(60))
    assert ei.value.code == "alloc_failed"
    rollback = ei.value.detail["rollback"]
    assert rollback["verified"] is False and "damaged" in rollback["reason"]
    assert "does not match its recorded sha256" in rollback["reason"]
    assert flashed_sha(driver) == sha(SPEECH)  # B stays; nothing altered was flashed


def test_wrong_model_needs_no_rollback(make_driver):
    driver = make_driver(fault="old_model")
    install_a(driver)
    progress: list = []
    with pytest.raises(DeviceError) as ei:
        driver.install(InstallRequest(model=SPEECH), Deadline(30), recorder(progress))
    assert ei.value.code == "wrong_model"
    rollback = ei.value.detail["rollback"]
    assert rollback["needed"] is False and rollback["running_sha256"] == sha(HELLO)[:16]
    assert rollback["verified"] is True and rollback["attempted"] is False
    assert "still runs its old model" in rollback["reason"]
    assert not any(step == "rollback" for step, _, _ in progress)


def test_cancel_during_an_upload_that_does_not_boot_rolls_back(make_driver):
    driver = make_driver(silent_models=[sha(SPEECH)[:16]], boot_deadline_s=3.0)
    install_a(driver)
    driver.settings.upload_kbps = 120.0  # ~1.3 s of flashing: the cancel lands mid-upload
    deadline = Deadline(60)

    def on_progress(step, status, detail):
        if step == "upload" and status == "started":
            threading.Timer(0.4, deadline.cancel).start()

    t0 = time.monotonic()
    with pytest.raises(Cancelled) as ei:
        driver.install(InstallRequest(model=SPEECH), deadline, on_progress)
    assert time.monotonic() - t0 < 40
    detail = ei.value.detail
    assert detail["error"]["code"] == "boot_silent"
    assert detail["board_state"] == "old_model_verified"
    assert detail["rollback"]["verified"] is True
    assert detail["rollback"]["running_sha256"] == sha(HELLO)
    assert flashed_sha(driver) == sha(HELLO)
