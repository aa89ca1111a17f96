"""The driver registry and the step recorder (the parts of hal.driver that are not a driver)."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from hal.deadline import Deadline
from hal.driver import (
    DeviceInfo,
    Driver,
    DriverContext,
    DriverSettings,
    InstallReport,
    StepRecorder,
    build_driver,
    driver_names,
    get_driver_class,
    register_driver,
)
from hal.errors import FitError, InputError


class _Settings(DriverSettings):
    speed: int = 1


@register_driver("test-registry-driver")
class _GateDriver(Driver):
    """Blocks in install until released, to exercise the per-device lock."""

    board = "nano33ble"
    Settings = _Settings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    def info(self) -> DeviceInfo:
        return DeviceInfo(self.device_id, self.name, self.board, "nowhere", connected=True)

    def _install(self, request, deadline, steps):
        with steps.step("validate"):
            self.entered.set()
            self.release.wait(5)
        return InstallReport(self.device_id, "00" * 32, {}, 0, compiled=False)

    def start_observing(self, sink, on_error=None):
        pass

    def stop_observing(self):
        pass


def test_registered_driver_is_built_from_settings(tmp_path):
    drv = build_driver("test-registry-driver", "d1", {"speed": 3}, DriverContext(tmp_path))
    assert isinstance(drv, _GateDriver) and drv.settings.speed == 3
    assert "test-registry-driver" in driver_names()
    assert {"nano33ble", "rpi", "virtual-nano33ble"} <= set(driver_names())


def test_unknown_settings_key_is_rejected(tmp_path):
    with pytest.raises(ValidationError):
        build_driver("test-registry-driver", "d1", {"sped": 3}, DriverContext(tmp_path))


def test_unknown_driver_is_an_input_error():
    with pytest.raises(InputError) as info:
        get_driver_class("no-such-driver")
    assert info.value.code == "unknown_driver"


def test_second_install_is_refused_naming_the_running_job(tmp_path):
    from hal.driver import InstallRequest

    drv = build_driver("test-registry-driver", "d1", {}, DriverContext(tmp_path))
    first = threading.Thread(
        target=drv.install, args=(InstallRequest(b"x", job_id="job-1"), Deadline(10))
    )
    first.start()
    assert drv.entered.wait(5)
    with pytest.raises(InputError) as info:
        drv.install(InstallRequest(b"y", job_id="job-2"), Deadline(10))
    assert info.value.code == "device_busy" and info.value.detail["running_job"] == "job-1"
    drv.release.set()
    first.join(5)
    # The lock is free again once the first install ended.
    drv.release.set()
    drv.install(InstallRequest(b"z", job_id="job-3"), Deadline(10))


def test_step_recorder_reports_started_done_failed_and_skipped():
    events = []
    rec = StepRecorder("d1", lambda step, status, detail: events.append((step, status, detail)))
    with rec.step("compile") as info:
        info["text"] = 123
    rec.skip("upload", "cached")
    with pytest.raises(FitError), rec.step("fit_check"):
        raise FitError("fit_ram", "too big", ram_needed_bytes=1)
    statuses = [(s, st) for s, st, _ in events]
    assert statuses == [
        ("compile", "started"), ("compile", "done"), ("upload", "skipped"),
        ("fit_check", "started"), ("fit_check", "failed"),
    ]
    assert events[1][2]["text"] == 123 and events[1][2]["seconds"] >= 0
    assert events[4][2]["error"]["code"] == "fit_ram"
    assert set(rec.durations) == {"compile", "upload", "fit_check"}


def test_broken_progress_sink_does_not_break_the_step():
    def sink(*_):
        raise RuntimeError("sink exploded")

    rec = StepRecorder("d1", sink)
    with rec.step("validate"):
        pass
    assert "validate" in rec.durations
