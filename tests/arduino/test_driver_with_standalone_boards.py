"""The real ``nano33ble`` driver class, configured like a user would (serial number, port,
arduino-cli path), against standalone virtual boards published through the port seam."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pytest

from hal.deadline import Deadline
from hal.driver import DriverContext, InstallRequest, build_driver, get_driver_class
from hal.protocol import BootLine, StatusLine
from hal.virtual import image
from tests.virtual.helpers import model, start_board, stop_board

SPEECH = model("arduino_micro_speech")


@pytest.fixture
def stand_in(tmp_path: Path) -> str:
    """The stand-in as one executable path (what a user puts in ``arduino_cli``)."""
    script = tmp_path / "arduino-cli"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hal.virtual.arduino_cli "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def rig(tmp_path: Path):
    """Two standalone virtual boards in one port directory."""
    ports = tmp_path / "ports"
    procs = {sn: start_board(ports, tmp_path / sn, sn) for sn in ("BOARDA", "BOARDB")}
    yield ports, procs
    for proc in procs.values():
        stop_board(proc)


def driver_for(tmp_path, stand_in, ports, **settings):
    ctx = DriverContext(state_dir=tmp_path / "state", arduino_cli=stand_in)
    return build_driver("nano33ble", "nano", {"virtual_ports_dir": str(ports),
                                              "inference_period_ms": 50,
                                              "status_period_ms": 200,
                                              "boot_deadline_s": 8, **settings}, ctx)


def flashed(tmp_path, sn):
    path = tmp_path / sn / "flash.bin"
    return image.read(path).sha256 if path.exists() else None


def test_never_uploads_to_another_boards_port(tmp_path, stand_in, rig):
    ports, _ = rig
    port_b = str(ports / "ttyVNANO-BOARDB")
    driver = driver_for(tmp_path, stand_in, ports, serial_number="BOARDA", port=port_b)
    try:
        report = driver.install(InstallRequest(model=SPEECH), Deadline(60))
        assert report.detail["upload_port"] == str(ports / "ttyVNANO-BOARDA")
        assert flashed(tmp_path, "BOARDA") == hashlib.sha256(SPEECH).hexdigest()
        assert flashed(tmp_path, "BOARDB") is None
    finally:
        driver.close()


def test_port_only_configuration_learns_the_serial_number(tmp_path, stand_in, rig):
    ports, _ = rig
    driver = driver_for(tmp_path, stand_in, ports, port=str(ports / "ttyVNANO-BOARDB"),
                        arduino_cli=stand_in)
    try:
        assert driver.serial_number() == "BOARDB"
        info = driver.info()
        assert info.connected and info.serial_number == "BOARDB"
        report = driver.install(InstallRequest(model=SPEECH), Deadline(60))
        assert report.detail["serial_number"] == "BOARDB"
        assert flashed(tmp_path, "BOARDB") == hashlib.sha256(SPEECH).hexdigest()
        checks = driver.diagnose(Deadline(5))
        assert all(c["ok"] for c in checks), checks
    finally:
        driver.close()


def test_absent_board_is_device_not_found(tmp_path, stand_in, rig):
    from hal.errors import DeviceError

    ports, _ = rig
    driver = driver_for(tmp_path, stand_in, ports, serial_number="NOSUCHBOARD")
    try:
        assert not driver.info().connected
        with pytest.raises(DeviceError) as ei:
            driver.install(InstallRequest(model=SPEECH), Deadline(30))
        assert ei.value.code == "device_not_found"
        assert sorted(ei.value.detail["attached"]) == ["BOARDA", "BOARDB"]
        assert not driver.diagnose(Deadline(5))[0]["ok"]
    finally:
        driver.close()


def test_observation_reports_vanish_and_resumes_when_the_board_returns(tmp_path, stand_in,
                                                                         rig):
    ports, procs = rig
    driver = driver_for(tmp_path, stand_in, ports, serial_number="BOARDA")
    try:
        driver.install(InstallRequest(model=SPEECH), Deadline(60))
        lines, errors = [], []
        driver.start_observing(lines.append, errors.append)

        def wait_for(pred, timeout=8.0):
            end = time.monotonic() + timeout
            while time.monotonic() < end and not pred():
                time.sleep(0.05)
            return pred()

        assert wait_for(lambda: any(isinstance(x, StatusLine) for x in lines))
        stop_board(procs["BOARDA"])  # unplugged
        assert wait_for(lambda: any(e.code == "port_vanished" for e in errors))
        n = len(lines)
        procs["BOARDA"] = start_board(ports, tmp_path / "BOARDA", "BOARDA")  # plugged back
        assert wait_for(lambda: any(isinstance(x, (BootLine, StatusLine))
                                    for x in lines[n:]))
        sha = hashlib.sha256(SPEECH).hexdigest()[:16]
        assert {x.sha for x in lines[n:] if isinstance(x, (BootLine, StatusLine))} == {sha}
    finally:
        driver.close()


def test_discover_lists_boards_published_in_the_env_seam(tmp_path, rig, monkeypatch):
    ports, _ = rig
    monkeypatch.setenv("TINYML_VIRTUAL_PORTS", str(ports))
    cls = get_driver_class("nano33ble")
    found = {d.id: d.settings for d in cls.discover(DriverContext(state_dir=tmp_path))}
    assert found["BOARDA"] == {"serial_number": "BOARDA",
                               "port": str(ports / "ttyVNANO-BOARDA")}
    assert "BOARDB" in found
    assert get_driver_class("virtual-nano33ble").discover(DriverContext(state_dir=tmp_path)) \
        == []


def test_check_tools_reports_a_missing_arduino_cli(tmp_path):
    cls = get_driver_class("nano33ble")
    result = cls.check_tools(DriverContext(state_dir=tmp_path,
                                           arduino_cli=str(tmp_path / "missing-cli")))
    assert not result["available"]
    bad = [c for c in result["checks"] if not c["ok"]]
    assert bad[0]["check"] == "arduino-cli" and "install arduino-cli" in bad[0]["fix"]


def test_port_only_device_without_a_listed_serial_is_connected_while_its_tty_exists(tmp_path):
    """A board configured by ``port`` alone whose port lists no serial number (here a bare
    pseudo-terminal, as socat makes): connected while the tty is there, its lines arrive,
    and not connected once it is gone or when the path is not a tty."""
    import os

    master, slave = os.openpty()
    fds = [master, slave]
    link = tmp_path / "ttyBARE"
    link.symlink_to(os.ttyname(slave))
    empty = tmp_path / "no-virtual-boards"
    empty.mkdir()
    ctx = DriverContext(state_dir=tmp_path / "state")
    driver = build_driver("nano33ble", "bare", {"port": str(link),
                                                "virtual_ports_dir": str(empty)}, ctx)
    lines: list = []
    try:
        assert driver.serial_number() is None
        info = driver.info()
        assert info.connected and info.address == str(link)
        driver.start_observing(lines.append)
        end = time.monotonic() + 5
        while time.monotonic() < end and not lines:
            os.write(master, b"hello from a bare port\n")
            time.sleep(0.1)
        assert any(getattr(x, "text", "") == "hello from a bare port" for x in lines)
        driver.stop_observing()
        while fds:  # unplugged
            os.close(fds.pop())
        link.unlink()
        assert not driver.info().connected
        not_a_tty = tmp_path / "plain-file"
        not_a_tty.write_text("")
        other = build_driver("nano33ble", "file", {"port": str(not_a_tty),
                                                   "virtual_ports_dir": str(empty)}, ctx)
        assert not other.info().connected
        other.close()
    finally:
        driver.close()
        for fd in fds:
            os.close(fd)
