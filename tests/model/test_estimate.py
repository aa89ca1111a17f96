"""Arena estimate vs. what TFLM reports: the README table and the live interpreter."""

from __future__ import annotations

import pytest

from hal.deadline import Deadline
from hal.errors import InputError
from hal.model import analyze
from hal.model.analysis import parse_graph
from hal.model.measure import measure_arena, measure_arena_detail, unavailable_reason
from hal.model.planner import greedy_plan
from tests.model.conftest import NPU_ONLY, example_models, readme_arenas, sample_model_paths

README = readme_arenas()


def _within_target(estimate: int, real: int) -> None:
    err = (estimate - real) / real
    assert -0.05 <= err <= 0.10, f"estimate {estimate} vs TFLM {real}: {100 * err:+.1f}%"


def test_readme_table_is_complete():
    assert len(README) == 11
    assert README["person_detect"] == (85_264, 55_296, 29_968)


@pytest.mark.parametrize("name", sorted(README))
def test_estimate_against_readme(name, tflm_examples):
    total, head, _tail = README[name]
    report = analyze((tflm_examples / f"{name}.tflite").read_bytes())
    _within_target(report.arena_estimate_bytes, total)
    # the greedy plan reproduces TFLM's activation plan exactly on these models
    assert report.activation_bytes == head


def test_vela_estimate_without_board(tflm_examples):
    data = (tflm_examples / "person_detect_vela.tflite").read_bytes()
    report = analyze(data)
    assert report.arena_estimate_bytes > report.activation_bytes > 0
    with pytest.raises(InputError) as info:
        analyze(data, board="nano33ble")
    assert info.value.code == "model_unsupported_ops"


needs_tflm = pytest.mark.skipif(
    unavailable_reason() is not None, reason=str(unavailable_reason())
)


@needs_tflm
@pytest.mark.parametrize(
    "path",
    [p for p in example_models() if p.stem not in NPU_ONLY] + sample_model_paths(),
    ids=lambda p: p.stem,
)
def test_estimate_against_live_tflm(path):
    data = path.read_bytes()
    measured = measure_arena_detail(data, deadline=Deadline(120))
    assert measured is not None
    if path.stem in README:  # the package reproduces the README's figures
        assert (measured.total, measured.head, measured.tail) == README[path.stem]
    report = analyze(data)
    _within_target(report.arena_estimate_bytes, measured.total)
    assert report.activation_bytes == measured.head


def test_sample_models_exist(sample_models):
    names = {p.stem for p in sample_model_paths()}
    assert {"sine_int8", "sine_float", "shapes_int8"} <= names
    for p in sample_model_paths():
        assert p.stat().st_size < 100_000
        assert p.with_suffix(".json").stat().st_size < 100_000


@needs_tflm
def test_measure_vela_fails_with_unsupported_op(tflm_examples):
    data = (tflm_examples / "person_detect_vela.tflite").read_bytes()
    with pytest.raises(InputError) as info:
        measure_arena(data, deadline=Deadline(120))
    assert info.value.code == "model_unsupported_ops"


@needs_tflm
def test_measure_rejects_garbage():
    from hal.errors import HalError

    with pytest.raises(HalError) as info:
        measure_arena(b"\x00\x00\x00\x00TFL3" + bytes(64), deadline=Deadline(120))
    assert info.value.code in {"model_load_failed", "tool_failed"}


def test_measure_without_tflite_micro(monkeypatch):
    import hal.model.measure as m

    monkeypatch.setattr(m.importlib.util, "find_spec", lambda name: None)
    assert m.unavailable_reason() and "tflite-micro" in m.unavailable_reason()
    assert measure_arena(b"whatever", deadline=Deadline(5)) is None


def test_measure_respects_deadline(tflm_examples):
    from hal.errors import InfraError

    if unavailable_reason() is not None:
        pytest.skip(str(unavailable_reason()))
    data = (tflm_examples / "person_detect.tflite").read_bytes()
    with pytest.raises(InfraError) as info:
        measure_arena(data, deadline=Deadline(0.05))
    assert info.value.code == "timeout"


# ------------------------------------------------------------------------ planner unit


def test_greedy_plan_reuses_memory_of_dead_tensors():
    # a -> b -> c chain: a and c never live together, so they share offset 0
    head, offsets = greedy_plan([(64, 0, 0), (32, 0, 1), (64, 1, 1)])
    assert head == 96
    assert offsets[0] == offsets[2] == 0
    assert offsets[1] == 64


def test_greedy_plan_fills_gaps_first_fit():
    # big buffers at both ends of time leave a gap a small one fits into
    head, offsets = greedy_plan([(100, 0, 2), (50, 0, 0), (50, 2, 2), (40, 1, 1)])
    assert head == 150
    assert offsets[3] == 100


def test_estimate_breakdown_sums(hello_int8):
    _, est = parse_graph(hello_int8)
    assert est.total == est.head + est.tail
    assert sum(v for k, v in est.breakdown.items() if k != "head") == est.tail
