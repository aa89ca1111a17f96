"""Fixtures for the firmware template tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal.arduino.sketch import SKETCH_NAME


@pytest.fixture
def sketch_dir(tmp_path: Path) -> Path:
    """Where a sketch is rendered: ``<tmp>/slot/tinyml_sketch``."""
    return tmp_path / "slot" / SKETCH_NAME
