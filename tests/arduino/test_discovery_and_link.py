"""Discovery through the virtual-port seam and the serial link on real pseudo-terminals."""

from __future__ import annotations

import json
import os
import time

import pytest

from hal.arduino import discovery
from hal.arduino.serial_link import PortLink
from hal.deadline import Deadline
from hal.errors import DeviceError


def write_record(directory, name, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    rec = {"device": f"/dev/tty{name}", "vid": 0x2341, "pid": 0x805A, "serial_number": name,
           "location": "1-1", "owner_pid": os.getpid()}
    rec.update(fields)
    (directory / f"{name}.json").write_text(json.dumps(rec))


def test_records_are_validated_and_filtered(tmp_path):
    d = tmp_path / "ports"
    write_record(d, "GOOD")
    write_record(d, "BOOT", pid=0x005A)
    write_record(d, "UNO", pid=0x0043)  # another Arduino board
    write_record(d, "OTHERVID", vid=0x1234)
    write_record(d, "DEAD", owner_pid=2**22 + 12345)  # no such process
    write_record(d, "BADVID", vid="0x2341")
    write_record(d, "NODEV", device="")
    (d / "garbage.json").write_bytes(b"\x00\xff{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "huge.json").write_text(json.dumps({"device": "x" * 10000}))
    (d / "notes.txt").write_text("ignored")
    boards = discovery.list_boards(d, include_usb=False)
    assert sorted(b.serial_number for b in boards) == ["BOOT", "GOOD"]
    assert {b.serial_number: b.mode for b in boards} == {"BOOT": "bootloader", "GOOD": "sketch"}
    assert discovery.find_board("GOOD", d, include_usb=False).device == "/dev/ttyGOOD"
    assert discovery.find_board("BOOT", d, include_usb=False) is None  # not in sketch mode
    assert discovery.find_board("BOOT", d, mode=None, include_usb=False) is not None
    assert discovery.port_owner("/dev/ttyGOOD", d, include_usb=False).serial_number == "GOOD"
    assert discovery.list_boards(tmp_path / "missing", include_usb=False) == []


def test_env_var_seam_and_usb_listing_do_not_crash(tmp_path, monkeypatch):
    d = tmp_path / "ports"
    write_record(d, "ENV1")
    monkeypatch.setenv(discovery.ENV_VIRTUAL_PORTS, str(d))
    assert [b.serial_number for b in discovery.list_boards()] == ["ENV1"]  # + real USB ones


def test_wait_for_board_sees_a_late_record_and_times_out(tmp_path):
    import threading

    d = tmp_path / "ports"
    d.mkdir()
    threading.Timer(0.2, write_record, args=(d, "LATE")).start()
    assert discovery.wait_for_board("LATE", Deadline(5), d, include_usb=False) is not None
    t0 = time.monotonic()
    assert discovery.wait_for_board("NEVER", Deadline(0.3), d, include_usb=False) is None
    assert time.monotonic() - t0 < 2


def test_serial_link_reads_and_reports_vanish(tmp_path):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    link = PortLink.open(name)
    try:
        os.write(master, b'{"t":"status"}\n')
        data = b""
        end = time.monotonic() + 3
        while b"\n" not in data and time.monotonic() < end:
            data += link.read(0.2)
        assert data == b'{"t":"status"}\n'
        assert link.read(0.05) == b""
        os.close(master)
        with pytest.raises(DeviceError) as ei:
            for _ in range(20):
                link.read(0.1)
        assert ei.value.code == "port_vanished"
    finally:
        link.close()


def test_serial_link_permission_and_missing_port(tmp_path):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    try:
        os.chmod(name, 0)
        with pytest.raises(DeviceError) as ei:
            PortLink.open(name)
        assert ei.value.code == "permission_denied" and "dialout" in ei.value.detail["fix"]
    finally:
        os.close(master)
    with pytest.raises(DeviceError) as ei:
        PortLink.open(str(tmp_path / "ttyACM0"))
    assert ei.value.code == "port_vanished"
