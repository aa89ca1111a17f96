"""Fixtures shared by every test package. Area fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TFLM_EXAMPLES = REPO / "tests" / "data" / "tflm-examples"
SAMPLE_MODELS = REPO / "samples" / "models"


@pytest.fixture(scope="session")
def tflm_examples() -> Path:
    """The real TFLM example models (copied from the shared reference set)."""
    return TFLM_EXAMPLES


@pytest.fixture(scope="session")
def sample_models() -> Path:
    """The project's own sample models (made by samples/make_samples.py)."""
    return SAMPLE_MODELS
