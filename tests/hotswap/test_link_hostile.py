"""The host end of the hot-swap protocol against a board that misbehaves: a real pty and the
real PortLink, the board played by a thread that answers frames with hostile lines. Every
case ends as a classified error within its deadline, never a hang or a traceback."""

from __future__ import annotations

import os
import threading
import time
import tty

import pytest

from hal.arduino import hotswap_protocol as hp
from hal.arduino.hotswap_link import HotswapSession, capability_from_hello
from hal.arduino.serial_link import PortLink
from hal.deadline import Deadline
from hal.errors import Cancelled, DeviceError, FitError, InfraError
from hal.protocol import HotswapReply

PAYLOAD = bytes(range(256)) * 12  # 3 KB


class Board(threading.Thread):
    """Reads frames from the pty master and answers each with ``answer(frame)`` (bytes)."""

    def __init__(self, answer) -> None:
        super().__init__(daemon=True)
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        self.answer = answer
        self.reader = hp.FrameReader()
        self.frames: list[hp.Frame] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = os.read(self.master, 4096)
            except OSError:
                time.sleep(0.01)
                continue
            for frame in self.reader.feed(data):
                self.frames.append(frame)
                out = self.answer(frame)
                if out:
                    os.write(self.master, out)


@pytest.fixture
def board_with():
    boards = []

    def make(answer) -> tuple[Board, PortLink]:
        board = Board(answer)
        board.start()
        boards.append(board)
        return board, PortLink.open(board.path)

    yield make
    for board in boards:
        board.stop.set()


def ok(frame: hp.Frame, **extra) -> bytes:
    return (hp.reply_line("ok", frame.name, frame.seq, **extra) + "\n").encode()


def test_lying_next_is_a_device_error(board_with):
    def answer(frame):
        if frame.kind == hp.BEGIN_T:
            return ok(frame, slot=0, next=0)
        return ok(frame, next=10**9)  # claims more than was sent

    _, link = board_with(answer)
    with pytest.raises(DeviceError) as info, link:
        HotswapSession(link, lambda line: None, Deadline(5)).send(PAYLOAD, 3000, 100)
    assert info.value.code == "device_error"


def test_garbage_wrong_seq_and_long_lines_then_silence_is_transport_broken(board_with):
    def answer(frame):
        junk = b"\x00\xff garbage \xe2\x98\n" + b"x" * 5000 + b"\n"
        stale = (hp.reply_line("ok", frame.name, (frame.seq + 7) % 65535) + "\n").encode()
        return junk + stale + b'{"t":"hs","r":"ok","op":"begin","seq":"1"}\n'

    board, link = board_with(answer)
    seen = []
    t0 = time.monotonic()
    with pytest.raises(InfraError) as info, link:
        HotswapSession(link, seen.append, Deadline(10), frame_timeout_s=0.2,
                       tries=3).send(PAYLOAD, 3000, 100)
    assert info.value.code == "transport_broken"
    assert info.value.detail["protocol_code"] == "no_answer"
    assert len(board.frames) == 3 and time.monotonic() - t0 < 5
    assert seen and not any(isinstance(x, HotswapReply) for x in seen)


def test_refusals_are_classified(board_with):
    for code, cls, expect in (("too_big", FitError, "fit_flash"), ("arena", FitError, "fit_ram"),
                              ("flash", DeviceError, "device_error")):
        def answer(frame, code=code):
            return (hp.reply_line("err", frame.name, frame.seq, code=code, msg="no") + "\n"
                    ).encode()

        _, link = board_with(answer)
        with pytest.raises(cls) as info, link:
            HotswapSession(link, lambda line: None, Deadline(5)).send(PAYLOAD, 3000, 100)
        assert info.value.code == expect and info.value.detail["protocol_code"] == code


def test_a_silent_board_is_bounded_by_the_deadline_and_cancel(board_with):
    _, link = board_with(lambda frame: b"")
    t0 = time.monotonic()
    with pytest.raises(InfraError) as info, link:
        HotswapSession(link, lambda line: None, Deadline(0.4, what="hot-swap"),
                       frame_timeout_s=5.0).send(PAYLOAD, 3000, 100)
    assert info.value.code == "timeout" and time.monotonic() - t0 < 2
    _, link = board_with(lambda frame: b"")
    deadline = Deadline(30)
    threading.Timer(0.3, deadline.cancel).start()
    with pytest.raises(Cancelled), link:
        HotswapSession(link, lambda line: None, deadline, frame_timeout_s=5.0).send(
            PAYLOAD, 3000, 100)


@pytest.mark.parametrize("fields", [
    {},
    {"slot": "x", "slot_bytes": 131072, "opset": "0" * 16, "ops": []},
    {"slot": 0, "slot_bytes": 131072, "opset": "0" * 16, "ops": ["CONV_2D"]},  # digest lies
    {"slot": 0, "slot_bytes": 100, "opset": hp.op_set_digest(["A"]), "ops": ["A"]},
])
def test_malformed_hello_is_no_capability(fields):
    with pytest.raises(hp.ProtocolError):
        capability_from_hello(HotswapReply(result="hello", op="hello", seq=1,
                                           fields={"arena": 65536, **fields}))
