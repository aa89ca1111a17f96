"""Hypothesis fuzzing of analyze(): random and mutated bytes only ever raise HalError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hal.errors import HalError
from hal.model import analyze
from tests.conftest import SAMPLE_MODELS, TFLM_EXAMPLES

SEEDS = [
    (TFLM_EXAMPLES / "hello_world_int8.tflite").read_bytes(),
    (TFLM_EXAMPLES / "arduino_micro_speech.tflite").read_bytes(),
    (SAMPLE_MODELS / "shapes_int8.tflite").read_bytes(),
]


def _check(data: bytes) -> None:
    try:
        report = analyze(data)
    except HalError as err:
        assert err.code.startswith("model_") or err.code == "bad_request"
        return
    # whatever parses must give a coherent report
    assert report.size_bytes == len(data)
    assert report.arena_estimate_bytes >= report.activation_bytes >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=2048))
def test_random_bytes_with_identifier(data):
    _check(data[:4] + b"TFL3" + data[8:])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=12),
)
def test_mutated_models(seed, edits):
    data = bytearray(SEEDS[seed])
    for pos, value in edits:
        data[pos % len(data)] = value
    _check(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(len(SEEDS))), st.integers(min_value=0), st.integers(0, 2**32 - 1))
def test_mutated_words(seed, pos, word):
    # overwrite a 32-bit word: offsets and vector lengths are the dangerous fields
    data = bytearray(SEEDS[seed])
    pos = (pos % (len(data) - 4)) & ~3
    data[pos : pos + 4] = word.to_bytes(4, "little")
    _check(bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(range(len(SEEDS))), st.integers(min_value=1))
def test_truncations(seed, cut):
    data = SEEDS[seed]
    _check(data[: cut % len(data)])
