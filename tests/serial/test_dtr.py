"""Serial as the real core behaves (issue 11, item 6): the Nano 33 BLE's USBSerial sends
nothing while the host's DTR is low and blocks loop() while the host holds the port open
without reading. The virtual board (hal/virtual/board.py) does the same on its pty, where DTR
is emulated (hal/arduino/serial_link.py), so a host that gets it wrong fails here."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import serial

from hal.arduino import discovery
from hal.arduino.serial_link import PortLink, emulated_dtr
from hal.arduino.sketch import render_sketch
from hal.protocol import InferenceLine, LineSplitter
from hal.virtual.board import STALLS_FILE
from tests.firmware.helpers import model_config
from tests.virtual.helpers import STAND_IN, start_board, stop_board


def _flash_image(tmp_path: Path, state: Path, period_ms: int) -> None:
    """Compile hello_world with the stand-in (a real subprocess) into the board's flash."""
    sketch = tmp_path / "slot" / "tinyml_sketch"
    config = replace(model_config("hello_world_int8"), inference_period_ms=period_ms,
                     status_period_ms=60_000)
    render_sketch(config, sketch)
    build = tmp_path / "build"
    proc = subprocess.run([*STAND_IN, "compile", "--fqbn", "arduino:mbed_nano:nano33ble",
                           "--build-path", str(build), "--format", "json", str(sketch)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    state.mkdir(parents=True, exist_ok=True)
    (state / "flash.bin").write_bytes((build / "tinyml_sketch.ino.bin").read_bytes())


@pytest.fixture
def board(tmp_path):
    ports, state = tmp_path / "ports", tmp_path / "state"
    boards = []

    def start(period_ms: int = 20, *extra: str) -> tuple[str, Path]:
        _flash_image(tmp_path, state, period_ms)
        boards.append(start_board(ports, state, "DTRTEST1", *extra))
        port = discovery.find_board("DTRTEST1", ports, mode="sketch", include_usb=False)
        assert port is not None
        return port.device, state

    yield start
    for proc in boards:
        stop_board(proc)


def _read_for(fd: int, seconds: float) -> bytes:
    import select

    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([fd], [], [], 0.05)[0]:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out


def test_a_host_that_does_not_assert_dtr_receives_nothing(board):
    """pyserial on a pty cannot raise DTR (no modem lines, the ioctl fails silently): the
    board keeps quiet, like USBSerial with DTR low. Our PortLink gets the lines."""
    device, _ = board(period_ms=20)
    time.sleep(1.2)  # past the sketch's wait for the host
    plain = serial.Serial(device, 115200, timeout=0)
    try:
        assert _read_for(plain.fileno(), 1.5) == b""
    finally:
        plain.close()
    with PortLink.open(device) as link:
        assert link.dtr == "emulated"
        got = b""
        end = time.monotonic() + 5
        while b'"t":"inf"' not in got and time.monotonic() < end:
            got += link.read(0.1)
    assert b'"t":"inf"' in got


def test_portlink_raises_dtr_on_every_open_and_drops_it_on_close(board):
    device, _ = board(period_ms=200)
    for _ in range(3):
        link = PortLink.open(device)
        assert emulated_dtr(link._fd)
        link.close()
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
        try:
            assert not emulated_dtr(fd)  # closing dropped it, as HUPCL would
        finally:
            os.close(fd)


def test_a_host_holding_the_port_without_reading_stalls_the_loop(board):
    """Back-to-back inferences; the host opens (DTR up) and does not read for 3 s. The
    board's loop stops when the buffer is full and resumes where it was: the inference
    numbers the host then reads have no gap (nothing was dropped while DTR was up), and
    the stall is counted."""
    device, state = board(20, "--fault", "flood")
    link = PortLink.open(device)
    try:
        time.sleep(3.0)  # holding the port open without reading
        splitter = LineSplitter()
        seqs: list[int] = []
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            for line in splitter.feed(link.read(0.05)):
                if isinstance(line, InferenceLine):
                    seqs.append(line.seq)
    finally:
        link.close()
    assert int((state / STALLS_FILE).read_text()) >= 1
    assert len(seqs) > 100
    first = seqs[0]
    assert seqs == list(range(first, first + len(seqs))), "lines were dropped, not held"


def test_writes_while_dtr_is_low_are_dropped_not_queued(board):
    """Lines printed while no host has DTR up are lost (USBSerial drops them): after a
    pause without a host, the next inference numbers jump."""
    device, _ = board(period_ms=20)

    def seqs_for(seconds: float) -> list[int]:
        out: list[int] = []
        with PortLink.open(device) as link:
            splitter = LineSplitter()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                out += [x.seq for x in splitter.feed(link.read(0.05))
                        if isinstance(x, InferenceLine)]
        return out

    before = seqs_for(1.5)
    time.sleep(2.0)  # ~100 inferences with nobody listening
    after = seqs_for(1.5)
    assert before and after
    assert after[0] - before[-1] > 20, (before, after)
