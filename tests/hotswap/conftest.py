"""Fixtures for the hot-swap tests: virtual-nano33ble drivers with the hot-swap firmware."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal.driver import DriverContext, build_driver

FAST = {"inference_period_ms": 50, "status_period_ms": 200, "host_wait_s": 1.0,
        "boot_deadline_s": 8.0, "hotswap": True}


@pytest.fixture
def context(tmp_path: Path) -> DriverContext:
    return DriverContext(state_dir=tmp_path / "state")


@pytest.fixture
def make_driver(context):
    """``make_driver(device_id, **settings)`` -> a virtual driver with hot-swap on, closed
    after the test (closing stops its board process)."""
    made = []

    def make(device_id: str = "dev1", **settings):
        driver = build_driver("virtual-nano33ble", device_id, {**FAST, **settings}, context)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()
