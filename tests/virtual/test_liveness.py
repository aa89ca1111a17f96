"""Liveness of a Nano 33 BLE (hal.arduino.observe): the virtual board's sketch killed (a hard
fault) is noticed after ``silent_periods`` status periods; a blank board is not "crashed";
a board that once ran a verified model of ours and is silent now is, also for a driver that
started after the sketch died (a restarted bridge)."""

from __future__ import annotations

import os
import signal

from hal.deadline import Deadline
from hal.driver import InstallRequest
from tests.virtual.helpers import HELLO_ARENA, child_pids, model, wait_until

HELLO = model("hello_world_int8")


def _observe(driver):
    health, lines, errors = [], [], []
    driver.listen(on_health=health.append)
    driver.start_observing(lines.append, errors.append)
    return health, lines, errors


def _mcu(driver) -> int | None:
    for pid in child_pids(driver.board_pid):
        with open(f"/proc/{pid}/comm") as fh:
            if fh.read().strip() == "virtual-mcu":
                return pid
    return None


def test_a_killed_sketch_is_crashed_and_a_blank_board_is_not(make_driver):
    blank = make_driver("blank")
    health, _, errors = _observe(blank)
    assert wait_until(lambda: health, 10)
    assert health[-1].state == "none" and not errors

    driver = make_driver("dev1")
    driver.install(InstallRequest(model=HELLO, arena_bytes=HELLO_ARENA), Deadline(60))
    health, _, _ = _observe(driver)
    assert wait_until(lambda: health and health[-1].state == "ok", 10)
    os.kill(wait_until(lambda: _mcu(driver), 5), signal.SIGKILL)  # a hard fault
    assert wait_until(lambda: health[-1].state == "crashed", 10)
    assert health[-1].silent_s > 0.5  # silent_periods (3) x status_period_ms (200)


def test_a_silent_board_that_ran_our_model_is_crashed_after_a_restart(make_driver):
    driver = make_driver("dev1")
    driver.install(InstallRequest(model=HELLO, arena_bytes=HELLO_ARENA), Deadline(60))
    driver.close()
    # the same board, its sketch dead from power-up, seen by a new driver (a new bridge)
    again = make_driver("dev1", fault="never_boot")
    health, _, _ = _observe(again)
    assert wait_until(lambda: health, 10)
    assert health[-1].state == "crashed", health
