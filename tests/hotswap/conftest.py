"""Fixtures for the hot-swap tests: virtual-nano33ble drivers with the hot-swap firmware."""

from __future__ import annotations

import pytest

from tests.virtual.conftest import context, make_driver  # noqa: F401 (fixtures)

FAST = {"inference_period_ms": 50, "status_period_ms": 200, "host_wait_s": 1.0,
        "boot_deadline_s": 8.0, "hotswap": True}


@pytest.fixture
def driver_defaults() -> dict:
    """``make_driver`` (from tests/virtual) builds drivers with the hot-swap firmware on."""
    return FAST
