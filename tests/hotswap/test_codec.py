"""The hot-swap protocol codec (hal.arduino.hotswap_protocol) and its lines in hal.protocol:
framing, CRC, resynchronisation, slot header and payload layout, op sets -- including
malformed, oversized and hostile input."""

from __future__ import annotations

import hashlib
import struct

import pytest

from hal.arduino import hotswap_protocol as hp
from hal.protocol import BootLine, HotswapReply, RawLine, format_line, parse_line


def test_frame_round_trip_through_garbage_and_split_reads():
    frame = hp.encode_frame(hp.CHUNK, 7, hp.chunk_payload(1024, b"\x01" * 100))
    assert len(frame) == hp.FRAME_OVERHEAD + 4 + 100
    reader = hp.FrameReader()
    stream = b"{\"t\":\"noise\"}\n\xa5\x00\xff" + frame + frame
    out = []
    for i in range(0, len(stream), 7):  # arbitrary split points
        out += reader.feed(stream[i:i + 7])
    assert [(f.kind, f.seq, f.crc_ok) for f in out] == [(hp.CHUNK, 7, True)] * 2
    assert hp.decode_chunk(out[0].payload) == (1024, b"\x01" * 100)


def test_damaged_frame_is_reported_not_accepted():
    frame = bytearray(hp.encode_frame(hp.BEGIN_T, 1, hp.begin_payload(10, 10, 0, b"\0" * 32)))
    frame[12] ^= 0x40  # one bit flipped in the payload
    (f,) = hp.FrameReader().feed(bytes(frame))
    assert not f.crc_ok and f.kind == hp.BEGIN_T


def test_oversized_or_unknown_frames_resynchronise():
    reader = hp.FrameReader()
    huge = hp.SYNC + struct.pack("<BHH", hp.CHUNK, 3, 60000)
    unknown = hp.SYNC + struct.pack("<BHH", 0x77, 4, 0)
    good = hp.encode_frame(hp.HELLO, 5)
    frames = reader.feed(huge + unknown + good)
    assert [(f.kind, f.crc_ok) for f in frames[:2]] == [(0, False), (0, False)]
    assert frames[-1].kind == hp.HELLO and frames[-1].crc_ok


@pytest.mark.parametrize("kind,payload", [(0x42, b""), (hp.CHUNK, b"x" * (hp.MAX_PAYLOAD + 1))])
def test_encoder_refuses_what_the_board_would_refuse(kind, payload):
    with pytest.raises(hp.ProtocolError):
        hp.encode_frame(kind, 1, payload)


def test_decoders_refuse_short_payloads():
    with pytest.raises(hp.ProtocolError):
        hp.decode_begin(b"\0" * 10)
    with pytest.raises(hp.ProtocolError):
        hp.decode_chunk(b"\0\0\0\0")


def test_slot_header_round_trip_and_torn_header():
    sha = hashlib.sha256(b"x").digest()
    head = hp.SlotHeader(generation=3, total=100, model_len=90, arena_needed=4096,
                         template_version="1.0.0", sha256=sha)
    area = head.pack()
    assert len(area) == hp.HEADER_AREA
    assert hp.parse_header(area) == head
    torn = b"\xff\xff\xff\xff" + area[4:]  # power cut before the magic was programmed
    assert hp.parse_header(torn) is None
    flipped = bytearray(area)
    flipped[20] ^= 1  # a damaged header fails its CRC
    assert hp.parse_header(bytes(flipped)) is None
    assert hp.parse_header(b"") is None
    state = bytearray(area)
    state[hp.ATTEMPTS_AT:hp.ATTEMPTS_AT + 4] = b"\0" * 4
    state[hp.REJECTED_AT:hp.REJECTED_AT + 4] = b"\0" * 4
    parsed = hp.parse_header(bytes(state))
    assert parsed.attempts == 1 and parsed.rejected and not parsed.confirmed


def test_payload_round_trip_and_hostile_meta():
    payload = hp.SlotPayload(model=b"TFL3" * 5 + b"x", labels=("yes", 'q"\u00e9'),
                             vectors=(b"\x01\x02", b"\x03\x04"))
    data = payload.pack()
    assert hp.SlotPayload.unpack(data, 21) == payload
    with pytest.raises(hp.ProtocolError):
        hp.SlotPayload.unpack(data, len(data) + 1)
    with pytest.raises(hp.ProtocolError):
        hp.SlotPayload.unpack(data[:24], 21)  # meta block cut off
    bad = bytearray(data)
    bad[24:28] = b"XXXX"
    with pytest.raises(hp.ProtocolError):
        hp.SlotPayload.unpack(bytes(bad), 21)
    lying = data[:24] + struct.pack("<IHHI", hp.META_MAGIC, 0, 1000, 1000)
    with pytest.raises(hp.ProtocolError):
        hp.SlotPayload.unpack(lying, 21)
    with pytest.raises(hp.ProtocolError):
        hp.SlotPayload(model=b"m", vectors=(b"1", b"22")).pack()


def test_op_set_families_digest_and_capability():
    ops = hp.op_set()
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "MEAN"} <= set(ops)
    assert len(ops) <= hp.MAX_OPSET and list(ops) == sorted(ops)
    assert hp.op_set_digest(ops) == hp.op_set_digest(tuple(reversed(ops)))
    assert hp.op_set(("audio", "TANH")) == tuple(sorted(set(hp.OP_FAMILIES["audio"]) | {"TANH"}))
    with pytest.raises(hp.ProtocolError):
        hp.op_set(tuple(f"OP{i}" for i in range(hp.MAX_OPSET + 1)))
    cap = hp.Capability(slot=0, slot_bytes=131072, arena_bytes=65536, ops=ops,
                        digest=hp.op_set_digest(ops))
    assert hp.Capability.from_wire(cap.to_wire(), 65536) == cap
    lie = {**cap.to_wire(), "ops": ["CONV_2D"]}
    with pytest.raises(hp.ProtocolError):
        hp.Capability.from_wire(lie, 65536)
    for broken in ({}, {**cap.to_wire(), "slot_bytes": 1000}, {**cap.to_wire(), "ops": 5}):
        with pytest.raises(hp.ProtocolError):
            hp.Capability.from_wire(broken, 65536)


def test_reply_and_boot_lines_parse_and_format_back():
    text = hp.reply_line("err", "chunk", 9, code="crc", msg="x", next=2048)
    line = parse_line(text)
    assert isinstance(line, HotswapReply)
    assert (line.result, line.op, line.seq, line.fields["next"]) == ("err", "chunk", 9, 2048)
    assert format_line(line) == text
    boot = BootLine(sha="3cacd1c032aea537", arena_bytes=65536, used_bytes=1, firmware="1.0.0",
                    board="nano33ble", hotswap={"v": 1, "slot": 0, "ops": ["CONV_2D"]})
    assert parse_line(format_line(boot)) == boot
    plain = BootLine(sha="3cacd1c032aea537", arena_bytes=1, used_bytes=1, firmware="1.0.0",
                     board="nano33ble")
    assert '"hs"' not in format_line(plain)


@pytest.mark.parametrize("text", [
    '{"t":"hs","r":"maybe","op":"chunk","seq":1}',
    '{"t":"hs","r":"ok","op":"chunk","seq":-1}',
    '{"t":"hs","r":"ok","op":"chunk"}',
    '{"t":"hs","r":"ok","op":"' + "x" * 40 + '","seq":1}',
    '{"t":"boot","v":1,"sha":"3cacd1c032aea537","arena":1,"used":1,"hs":[1,2]}',
])
def test_hostile_hotswap_lines_stay_raw(text):
    assert isinstance(parse_line(text), RawLine)


def test_wire_cost_counts_framing_and_round_trips():
    cost = hp.wire_cost(30 * 1024)
    assert cost.frames == 4 + 30 and cost.round_trips == cost.frames
    assert cost.pages == 8  # 256-byte header + 30 KB in 4 KB pages
    assert 0 < cost.overhead_per_kb < 100
