"""Fixtures for the firmware template tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal.arduino.sketch import SKETCH_NAME


@pytest.fixture
def sketch_dir(tmp_path: Path) -> Path:
    """Where a sketch is rendered: ``<tmp>/slot/tinyml_sketch``."""
    return tmp_path / "slot" / SKETCH_NAME


def require_real_toolchain() -> None:
    """The ``firmware`` pass needs the real toolchain; without it the pass fails (a check
    that silently skips in CI would prove nothing)."""
    from tests.firmware import realtool

    why = realtool.missing()
    if why:
        pytest.fail(f"the real Nano 33 BLE toolchain is not usable: {why}")


@pytest.fixture(scope="session")
def full_build(tmp_path_factory) -> dict:
    """One full real build (library, core, link) of the smallest variant: the TFLM objects
    every later build and the QEMU harness reuse (cached across runs, see realtool)."""
    require_real_toolchain()
    from hal.arduino.sketch import render_sketch
    from tests.firmware import realtool
    from tests.firmware.variants import VARIANTS

    sketch = tmp_path_factory.mktemp("full") / SKETCH_NAME
    render_sketch(VARIANTS["hello_int8_vectors"](), sketch)
    result = realtool.realbuild(sketch)
    assert result.get("ok"), result["output"][-4000:]
    return result
