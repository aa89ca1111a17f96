"""Fixtures: virtual-nano33ble drivers (each with its own virtual board process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal.driver import DriverContext, build_driver

FAST = {"inference_period_ms": 50, "status_period_ms": 200, "host_wait_s": 1.0,
        "boot_deadline_s": 8.0}


@pytest.fixture
def context(tmp_path: Path) -> DriverContext:
    return DriverContext(state_dir=tmp_path / "state")


@pytest.fixture
def driver_defaults() -> dict:
    """The settings every ``make_driver`` driver starts from (tests/hotswap overrides it)."""
    return FAST


@pytest.fixture
def make_driver(context, driver_defaults):
    """``make_driver(device_id, **settings)`` -> a virtual driver, closed after the test."""
    made = []

    def make(device_id: str = "dev1", **settings):
        driver = build_driver("virtual-nano33ble", device_id, {**driver_defaults, **settings},
                              context)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.fixture
def compiles(tmp_path: Path, monkeypatch):
    """Counts the stand-in's compile runs (every call appends one line to a file)."""
    path = tmp_path / "compiles.txt"
    monkeypatch.setenv("TINYML_FAKE_ARDUINO_CLI_COUNT_FILE", str(path))

    def count() -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    return count
