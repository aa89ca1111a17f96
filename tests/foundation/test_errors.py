"""hal.errors: every code maps to one class; the wire form round-trips."""

from __future__ import annotations

import json

import pytest

from hal.errors import (
    CODES,
    BugError,
    Cancelled,
    DeviceError,
    ErrorClass,
    FitError,
    HalError,
    InfraError,
    InputError,
    as_hal_error,
    from_dict,
    make_error,
)

CLASSES = {
    ErrorClass.INPUT: InputError,
    ErrorClass.FIT: FitError,
    ErrorClass.DEVICE: DeviceError,
    ErrorClass.INFRA: InfraError,
    ErrorClass.BUG: BugError,
}


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_code_maps_to_its_class(code):
    cls, meaning = CODES[code]
    assert meaning and code == code.lower() and " " not in code
    err = make_error(code, "msg", n=1)
    assert isinstance(err, CLASSES[cls])
    assert err.error_class is cls
    assert err.code == code
    assert err.retryable is (cls is ErrorClass.INFRA)
    if code == "cancelled":
        assert isinstance(err, Cancelled)


@pytest.mark.parametrize("code", sorted(CODES))
def test_wire_round_trip(code):
    err = make_error(code, f"{code} happened", value=3, items=["a", "b"], nested={"x": 1.5})
    wire = json.loads(json.dumps(err.to_dict()))
    assert wire == {
        "code": code,
        "message": f"{code} happened",
        "detail": {"value": 3, "items": ["a", "b"], "nested": {"x": 1.5}},
        "class": CODES[code][0].value,
    }
    back = from_dict(wire)
    assert type(back) is type(err)
    assert (back.code, back.message, back.detail) == (err.code, err.message, err.detail)
    assert str(back) == f"{code}: {code} happened"


def test_unknown_code_is_refused():
    with pytest.raises(ValueError):
        InputError("no_such_code", "x")


def test_from_dict_unknown_code_becomes_bug():
    err = from_dict({"code": "martian", "message": "??", "detail": {"a": 1}})
    assert isinstance(err, BugError)
    assert err.code == "internal"
    assert err.detail == {"original_code": "martian", "a": 1}


def test_from_dict_tolerates_missing_fields():
    err = from_dict({})
    assert isinstance(err, BugError) and err.code == "internal"
    err = from_dict({"code": "timeout", "detail": None})
    assert isinstance(err, InfraError) and err.detail == {}


def test_as_hal_error():
    err = InputError("bad_option", "x")
    assert as_hal_error(err) is err
    bug = as_hal_error(KeyError("k"))
    assert isinstance(bug, BugError) and "KeyError" in bug.message


def test_cancelled_defaults():
    err = Cancelled()
    assert err.code == "cancelled" and isinstance(err, InputError) and err.message
    assert isinstance(err, HalError)
