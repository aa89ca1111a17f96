"""Fixtures of the model-analysis tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_MODELS, TFLM_EXAMPLES

# The vela model needs an Ethos-U NPU: TFLM on a host or a Cortex-M4 cannot run it.
NPU_ONLY = {"person_detect_vela"}


def readme_arenas() -> dict[str, tuple[int, int, int]]:
    """model name -> (total, head, tail) from the TFLM examples README table."""
    out = {}
    for line in (TFLM_EXAMPLES / "README.md").read_text().splitlines():
        m = re.match(r"\| (\w+) \|.*\| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|$", line)
        if m:
            out[m.group(1)] = tuple(int(v.replace(",", "")) for v in m.groups()[1:])
    return out


def example_models() -> list[Path]:
    return sorted(TFLM_EXAMPLES.glob("*.tflite"))


def sample_model_paths() -> list[Path]:
    return sorted(SAMPLE_MODELS.glob("*.tflite"))


@pytest.fixture(scope="session")
def hello_int8() -> bytes:
    return (TFLM_EXAMPLES / "hello_world_int8.tflite").read_bytes()
