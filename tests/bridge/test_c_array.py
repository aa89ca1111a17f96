"""Issue 10 item 1: the legacy C source is parsed in linear time with C's integer literal
rules, and a hostile body never freezes the bridge."""

from __future__ import annotations

import threading

import pytest
import requests

from bridge.c_array import int_literal, parse_c_array, strip_comments
from hal.errors import HalError

MIB = 1024 * 1024


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("7", 7), ("255", 255), ("010", 8), ("0377", 255), ("00", 0), ("0x1C", 28),
    ("0X1c", 28), ("0xff", 255), ("0x00FF", 255), ("1u", 1), ("1U", 1), ("1l", 1),
    ("1L", 1), ("1ul", 1), ("1UL", 1), ("1lu", 1), ("1LU", 1), ("1ll", 1), ("1LL", 1),
    ("1ull", 1), ("1LLU", 1), ("0x1Cu", 28), ("010L", 8), ("0xffULL", 255),
])
def test_c_integer_literals(text, value):
    assert int_literal(text) == value


@pytest.mark.parametrize("text", [
    "", "08", "09", "0x", "0xg", "1uu", "1lL", "1Ll", "1lul", "1.0", "-1", "+1", "'a'", "1e2",
    "0b1", "1 2", "x1", "1_0", "0x1p3",
])
def test_not_c_integer_literals(text):
    assert int_literal(text) is None


def test_octal_array_elements_follow_c():
    # The old parser read 010 as 10; C says 8.
    assert parse_c_array("const unsigned char m[] = {010, 0x10, 10, 0};",
                         max_bytes=16) == bytes([8, 16, 10, 0])
    with pytest.raises(HalError, match="element 0"):
        parse_c_array("const unsigned char m[] = {0400};", max_bytes=16)  # 256


def test_len_constant_may_carry_a_suffix():
    src = "const unsigned char m[] = {1,2,3};\nconst unsigned int m_len = 3u;\n"
    assert parse_c_array(src, max_bytes=16) == b"\x01\x02\x03"
    with pytest.raises(HalError, match="m_len = 4"):
        parse_c_array(src.replace("3u", "04"), max_bytes=16)


def test_comments_are_stripped_in_one_pass():
    assert strip_comments("a/* x */b// y\nc") == "a b \nc"
    assert strip_comments("a /* never closed { 1, 2 }") == "a  "
    assert strip_comments("a/b*c") == "a/b*c"


# Bodies that made the old backtracking patterns quadratic or worse. Each is 4 MiB.
HOSTILE = {
    "repeated declaration heads": "char a[] " * (4 * MIB // 9),
    "heads with equals": "char a[] = " * (4 * MIB // 11),
    "heads with open braces": "char a[] = {" * (4 * MIB // 12),
    "unclosed comments": "/*" * (2 * MIB),
    "line comments": "//" * (2 * MIB),
    "open braces": "{" * (4 * MIB),
    "one long blank": "unsigned " + " " * (4 * MIB),
    "len lookalikes": "int a" * (4 * MIB // 5),
    "long identifier": "unsigned char " + "a" * (4 * MIB) + "[]",
    "long number": "const unsigned char m[] = {" + "0" * (4 * MIB) + "};",
}


# A generous ceiling (pytest-timeout) so a regression fails instead of hanging CI for hours:
# the quadratic parser needed 78 s for 360 KB and these bodies are 4 MiB. Not a performance
# assertion; the figures are in BENCHMARKS.md (bench/bench_c_array.py).
CEILING = pytest.mark.timeout(60, method="signal")


@CEILING
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_sources_are_refused_promptly(name):
    with pytest.raises(HalError) as err:
        parse_c_array(HOSTILE[name], max_bytes=4 * MIB)
    assert err.value.code == "bad_request"


@CEILING
def test_a_4_mib_model_parses():
    data = bytes(range(256)) * (4 * MIB // 6 // 256)
    src = "const unsigned char m[] = {" + ", ".join(f"0x{b:02X}" for b in data) + "};"
    assert parse_c_array(src, max_bytes=4 * MIB) == data


def test_hostile_legacy_body_does_not_freeze_the_bridge(start_bridge):
    """The reproduction: a 4 MiB `char a[] ...` body while other clients ask /health."""
    bridge = start_bridge(token=None)
    body = {"device": {"serial": "SN0001"}, "model": HOSTILE["repeated declaration heads"]}
    results: dict = {}

    def hostile() -> None:
        results["install"] = requests.post(bridge.url + "/install/", json=body, timeout=60)

    threads = [threading.Thread(target=hostile) for _ in range(2)]
    for t in threads:
        t.start()
    healths = [requests.get(bridge.url + "/health", timeout=30) for _ in range(5)]
    for t in threads:
        t.join(90)
    assert all(h.status_code == 200 for h in healths)
    resp = results["install"]
    assert resp.status_code == 400 and resp.json()["code"] == "bad_request"
    assert "Traceback" not in bridge.log()
