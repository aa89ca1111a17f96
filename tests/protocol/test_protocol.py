"""hal.protocol: formatter/parser round trips and hostile byte streams."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.protocol import (
    MAX_LINE_BYTES,
    MAX_RAW_BYTES,
    PROTOCOL_VERSION,
    BootLine,
    ErrorLine,
    InferenceLine,
    LineSplitter,
    RawLine,
    StatusLine,
    format_line,
    from_dict,
    parse_line,
    running_sha,
    sha_matches,
    to_dict,
)

SHA = "af5285ae154dc240"

LINES = [
    BootLine(sha=SHA, arena_bytes=14448, used_bytes=13120, firmware="1.0.0", board="nano33ble"),
    InferenceLine(seq=7, latency_us=54123, outputs=(0.0, 0.996094, 0.001), top=1, label="square"),
    InferenceLine(seq=0, latency_us=0, outputs=(), top=0),
    ErrorLine(code="alloc_failed", message="arena too small",
              numbers={"need": 15000, "have": 14448}),
    ErrorLine(code="bad_input"),
    StatusLine(sha=SHA, uptime_s=3600, count=42, firmware="1.0.0"),
]


@pytest.mark.parametrize("line", LINES, ids=lambda x: x.kind)
def test_round_trip(line):
    text = format_line(line)
    assert "\n" not in text
    assert len(text.encode()) + 1 <= MAX_LINE_BYTES
    assert parse_line(text) == line
    assert parse_line(text.encode() + b"\r\n") == line
    assert from_dict(json.loads(json.dumps(to_dict(line)))) == line


def test_wire_keys_are_short():
    boot = json.loads(format_line(LINES[0]))
    assert boot == {"t": "boot", "v": PROTOCOL_VERSION, "sha": SHA, "arena": 14448,
                    "used": 13120, "fw": "1.0.0", "board": "nano33ble"}
    inf = json.loads(format_line(LINES[1]))
    assert set(inf) == {"t", "n", "us", "out", "top", "label"}


def test_boot_sha_is_cut_to_prefix():
    full = "ab" * 32
    line = BootLine(sha=full, arena_bytes=1, used_bytes=1, firmware="1", board="b")
    parsed = parse_line(format_line(line))
    assert parsed.sha == full[:16]
    assert running_sha(parsed) == full[:16]
    assert sha_matches(parsed.sha, full)
    assert not sha_matches("abab", full)  # too short to identify a model
    assert not sha_matches("cd" * 8, full)


def test_many_outputs_are_cut_to_fit():
    line = InferenceLine(seq=1, latency_us=5, outputs=tuple(i / 7 for i in range(200)), top=3)
    text = format_line(line)
    assert len(text) + 1 <= MAX_LINE_BYTES
    obj = json.loads(text)
    assert obj["cut"] == 200 - len(obj["out"]) > 0
    parsed = parse_line(text)
    assert isinstance(parsed, InferenceLine) and parsed.top == 3


def test_every_kind_at_most_512_bytes():
    long = "x" * 1000
    for line in (
        BootLine(sha=SHA, arena_bytes=2**40, used_bytes=2**40, firmware="1" * 40, board="b" * 40),
        ErrorLine(code="invoke_failed", message=long),
        InferenceLine(seq=2**40, latency_us=2**40, outputs=(1.0,) * 100, top=99, label=long),
    ):
        assert len(format_line(line).encode()) + 1 <= MAX_LINE_BYTES


def test_format_refuses_too_long_line():
    line = BootLine(sha=SHA, arena_bytes=1, used_bytes=1, firmware="f" * 300, board="b" * 300)
    with pytest.raises(ValueError):
        format_line(line)


def test_error_numbers_cannot_override_keys():
    # fixed in hal/protocol.py: a "t" number used to replace the line type
    line = ErrorLine(code="alloc_failed", message="x", numbers={"t": 5, "code": 1, "need": 3,
                                                                 "nan": float("nan")})
    parsed = parse_line(format_line(line))
    assert parsed == ErrorLine(code="alloc_failed", message="x", numbers={"need": 3})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"t":"inf","n":1,"us":2,"out":[NaN],"top":0}',
        b'{"t":"inf","n":1,"us":2,"out":[1e999],"top":0}',
        b'{"t":"inf","n":-1,"us":2,"out":[],"top":0}',
        b'{"t":"inf","n":true,"us":2,"out":[],"top":0}',
        b'{"t":"inf","n":1,"us":2,"out":[true],"top":0}',
        b'{"t":"boot","v":1,"sha":"XYZ","arena":1,"used":1}',
        b'{"t":"boot","v":1,"sha":"abc","arena":1,"used":1}',
        b'{"t":"status","v":1,"sha":"' + b"a" * 65 + b'","up":1,"n":1}',
        b'{"t":"nope"}',
        b'{"t":"err"}',
        b"{not json",
    ],
)
def test_malformed_protocol_lines_are_raw(raw):
    line = parse_line(raw)
    assert isinstance(line, RawLine)
    assert line.reason == "bad_protocol"
    assert line.text == raw.decode()


@pytest.mark.parametrize("raw", [b"[1,2,3]", b"42", b'"str"', b"null", b"Hello, world!", b""])
def test_non_object_json_and_text_are_raw(raw):
    line = parse_line(raw)
    assert isinstance(line, RawLine)
    assert line.text == raw.decode()


def test_nul_bytes_are_kept_as_raw():
    line = parse_line(b'{"t":"status",\x00"v":1}')
    assert isinstance(line, RawLine)
    assert "\ufffd" in line.text and "status" in line.text


def test_garbage_bytes():
    line = parse_line(bytes(range(128, 256)))
    assert isinstance(line, RawLine)
    assert line.text  # replacement characters, never dropped


def test_over_long_protocol_line_is_raw():
    obj = {"t": "err", "code": "x", "msg": "m" * 600}
    line = parse_line(json.dumps(obj))
    assert isinstance(line, RawLine) and line.reason == "too_long"
    assert line.text == json.dumps(obj)


def test_deep_nesting_does_not_crash():
    assert isinstance(parse_line(b"{" + b'"a":[' * 200 + b"]" * 200 + b"}"), RawLine)


# -------------------------------------------------------------------------- LineSplitter


def test_split_utf8_across_feeds():
    text = '{"t":"err","code":"bad_input","msg":"température ü 🙂"}\n'
    data = text.encode()
    for cut in range(1, len(data)):
        sp = LineSplitter()
        out = sp.feed(data[:cut]) + sp.feed(data[cut:])
        assert out == [ErrorLine(code="bad_input", message="température ü 🙂")], cut


def test_byte_by_byte_feed():
    data = "".join(format_line(x) + "\n" for x in LINES).encode()
    sp = LineSplitter()
    out = []
    for b in data:
        out += sp.feed(bytes([b]))
    assert out == LINES
    assert sp.flush() == []


def test_mixed_text_and_protocol():
    sp = LineSplitter()
    out = sp.feed(b"booting...\r\n" + format_line(LINES[0]).encode() + b"\r\n\xff\xfe junk\n")
    assert [type(x) for x in out] == [RawLine, BootLine, RawLine]
    assert out[0].text == "booting..."


def test_over_long_line_counts_dropped_bytes():
    sp = LineSplitter()
    out = sp.feed(b"x" * 3000)
    out += sp.feed(b"y" * 3000)
    out += sp.feed(b"\n" + format_line(LINES[5]).encode() + b"\n")
    assert len(out) == 2
    raw, status = out
    assert isinstance(raw, RawLine) and raw.reason == "too_long"
    assert len(raw.text) == MAX_RAW_BYTES
    assert raw.dropped_bytes == 6000 - MAX_RAW_BYTES
    assert status == LINES[5]  # the splitter recovered


def test_flush_returns_partial_line():
    sp = LineSplitter()
    assert sp.feed(b'{"t":"status"') == []
    (line,) = sp.flush()
    assert isinstance(line, RawLine) and line.text == '{"t":"status"'
    assert sp.flush() == []


_safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
    max_size=100,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=20))
def test_splitter_never_raises(chunks):
    sp = LineSplitter()
    n = 0
    for c in chunks:
        n += len(sp.feed(c))
    n += len(sp.flush())
    newlines = sum(c.count(b"\n") for c in chunks)
    assert n in (newlines, newlines + 1)  # one line per newline, plus a partial tail


@settings(max_examples=300, deadline=None)
@given(st.lists(_safe_text, min_size=1, max_size=10), st.lists(st.integers(1, 50), max_size=10))
def test_splitter_keeps_short_lines_whole(texts, cuts):
    """Complete short lines come out with every byte, however the stream is chunked."""
    texts = [t for t in texts if not t.strip().startswith("{")]  # plain text lines
    data = "".join(t + "\n" for t in texts).encode()
    sp = LineSplitter()
    out = []
    pos = 0
    for cut in cuts:
        out += sp.feed(data[pos : pos + cut])
        pos += cut
    out += sp.feed(data[pos:])
    assert sp.flush() == []
    assert [x.text for x in out] == texts
    assert all(isinstance(x, RawLine) and x.dropped_bytes == 0 for x in out)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=MAX_LINE_BYTES * 2))
def test_parse_line_never_raises(data):
    line = parse_line(data)
    assert line.kind in {"boot", "inference", "error", "status", "raw"}


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**31), st.integers(0, 2**31),
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=10),
    st.integers(0, 9), _safe_text,
)
def test_inference_round_trip_property(seq, us, outputs, top, label):
    line = InferenceLine(seq=seq, latency_us=us, outputs=tuple(outputs), top=top, label=label)
    text = format_line(line)
    parsed = parse_line(text)
    assert isinstance(parsed, InferenceLine)
    assert parsed.seq == seq and parsed.top == top
    kept = len(parsed.outputs)
    if kept < len(outputs):
        # Only a line that would not fit may shorten its outputs (a long escaped label).
        assert f'"cut":{len(outputs) - kept}' in text
        assert len(text) + 1 + len(f",{outputs[kept]:.6g}") + 8 > MAX_LINE_BYTES
    assert parsed.outputs == pytest.approx(outputs[:kept], rel=1e-5, abs=1e-30)
