"""The old TinyMLaaS endpoints: same formats, but failures are failures."""

from __future__ import annotations

import hashlib

import pytest
import requests

from bridge.legacy import parse_c_array
from hal.errors import HalError

MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4


def c_source(data: bytes, per_line: int = 12, name: str = "model_tflite") -> str:
    """The old backend's format: upper-case hex, several per line, a _len constant."""
    rows = [", ".join(f"0x{b:02X}" for b in data[i:i + per_line])
            for i in range(0, len(data), per_line)]
    body = ",\n  ".join(rows)
    return (f'#include "target_model.h"\n\nconst unsigned char {name}[] = {{\n  {body}\n}};\n'
            f"const int {name}_len = {len(data)};\n")


def test_parse_old_backend_format_exactly():
    assert parse_c_array(c_source(MODEL), max_bytes=1 << 20) == MODEL


@pytest.mark.parametrize("source,expected", [
    ("const unsigned char m[] = {0x1c,0X0a, 255, 0 ,7,};", bytes([0x1C, 0x0A, 255, 0, 7])),
    ("/* hdr { } */ alignas(8) const unsigned char g_model[] DATA_ALIGN = { // c\n 1, /* x */ 2 "
     "};", b"\x01\x02"),
    ("unsigned char a[3] = {1,2,3};\nunsigned int a_len = 3;", b"\x01\x02\x03"),
    ("const uint8_t x[] = {};", b""),
])
def test_parse_variants(source, expected):
    assert parse_c_array(source, max_bytes=100) == expected


@pytest.mark.parametrize("source,words", [
    ("", "not C source"),
    ("hello world", "not C source"),
    ("const unsigned char m[] = {0x1C, 0x1FF};", "element 1"),
    ("const unsigned char m[] = {0x1C, 256};", "element 1"),
    ("const unsigned char m[] = {0x1C, -1};", "element 1"),
    ("const unsigned char m[] = {0x1C, 1.5};", "element 1"),
    ("const unsigned char m[] = {0x1C, 'a'};", "element 1"),
    ("const unsigned char m[] = {0x1C,, 2};", "element 1"),
    ("const unsigned char m[] = {0x1C, getenv(\"X\")};", "element 1"),
    ("const unsigned char m[] = {1, 2}; const int m_len = 5;", "m_len = 5"),
    ("const unsigned char m[] = {1, 2\x00};", "NUL"),
    ("const unsigned char m[] = {" + "1," * 200 + "};", "limit"),
    ("x" * 2_000_000, "limit"),
])
def test_parse_rejects_garbage(source, words):
    with pytest.raises(HalError) as err:
        parse_c_array(source, max_bytes=100)
    assert err.value.code in ("bad_request", "payload_too_large")
    assert words in err.value.message


def test_legacy_endpoints_against_a_real_bridge(start_bridge):
    bridge = start_bridge()
    assert requests.get(bridge.url + "/health/", timeout=5).text == "Online"
    devices = bridge.get("/devices/").json()["devices"]
    assert {"manufacturer": "Arduino", "product": devices[0]["product"],
            "serial": "SN0001"} in devices
    assert all(set(d) == {"manufacturer", "product", "serial"} for d in devices)

    resp = bridge.post("/install/", json={"device": {"installer": "Arduino IDE",
                                                     "serial": "SN0001"},
                                          "model": c_source(MODEL)})
    assert resp.status_code == 201 and resp.text == "Success"
    job = bridge.get("/jobs?device=fake1").json()["jobs"][0]
    assert job["state"] == "succeeded"
    assert job["model_sha256"] == hashlib.sha256(MODEL).hexdigest()

    # The old bridge said 201 here; this one reports the failure.
    resp = bridge.post("/install/", json={"device": {"serial": "SN0003"},
                                          "model": c_source(MODEL)})
    assert resp.status_code == 422 and resp.json()["code"] == "alloc_failed"
    assert resp.json()["class"] == "fit" and resp.json()["detail"]["job_state"] == "failed"

    resp = bridge.post("/install/", json={"device": {"serial": "SN0001"},
                                          "model": c_source(b"not a model at all")})
    assert resp.status_code == 400 and resp.json()["code"] == "model_not_tflite"
    resp = bridge.post("/install/", json={"model": c_source(MODEL)})
    assert resp.status_code == 400 and resp.json()["message"] == "No device in request"

    pred = bridge.request("GET", "/prediction/", json={"device": {"serial": "SN0001"}})
    assert pred.status_code == 200 and pred.json() == {"0": 0.25, "1": 0.75}
    missing = bridge.request("GET", "/prediction/", json={"device": {"serial": "nope"}})
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_device"
    # Without a slash too (the old backend always used one, but be forgiving).
    assert bridge.request("GET", "/prediction", json={"device": {"serial": "SN0001"}}
                          ).status_code == 200
