"""TFLM's own MicroPrintf lines end in \\r\\n (micro_log.cpp: DebugLog(buffer); DebugLog("\\r\\n"));
they reach the host between our \\n-terminated protocol lines and are kept as raw lines (the
QEMU test in tests/firmware checks this on the real library's output)."""

from __future__ import annotations

from hal.protocol import BootLine, LineSplitter, RawLine, parse_line

TFLM = (b"Failed to allocate tail memory. Requested: 1104, available 816, missing: 288\r\n"
        b"Failed starting model allocation.\r\n")
BOOT = (b'{"t":"boot","v":1,"sha":"505ee4fae7fa46ab","arena":2288,"used":1504,"fw":"1.0.0",'
        b'"board":"nano33ble"}\n')


def test_crlf_lines_are_raw_lines_without_the_carriage_return():
    stream = TFLM + BOOT
    for cut in range(len(stream) + 1):  # every split, including between \r and \n
        splitter = LineSplitter()
        lines = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        assert [type(x) for x in lines] == [RawLine, RawLine, BootLine], cut
        assert lines[0].text.endswith("missing: 288") and lines[0].reason == "not_protocol"
        assert lines[1].text == "Failed starting model allocation."
        assert not any("\r" in x.text for x in lines[:2])


def test_a_protocol_line_ending_in_crlf_still_parses():
    assert isinstance(parse_line(BOOT.rstrip(b"\n") + b"\r\n"), BootLine)
