"""Observation over SSH: every line exactly once, in order, across dropped connections; the
driver's start/stop_observing; settings validation; the systemd unit text."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from hal.deadline import Deadline
from hal.driver import InstallRequest
from hal.protocol import BootLine, InferenceLine, parse_line
from hal.rpi.observe import wait_for
from hal.rpi.settings import RpiSettings
from hal.rpi.supervise import Layout, RestartBudget, SystemdSupervisor
from tests.rpi.conftest import model


def test_follow_resumes_after_drops_without_duplicates_or_gaps(make_driver, sshd):
    drv = make_driver(period_s=0.01)
    rep = drv.install(InstallRequest(model=model("sine_int8.tflite")), Deadline(60))
    log = Path(f"{drv._facts.workdir}/models/{rep.model_sha256}/runner.log")
    got: list[tuple[int, object]] = []
    errors = []
    lock = threading.Lock()

    def sink(number, line):
        with lock:
            got.append((number, line))

    follower = drv.follow(sink, start_line=1, on_error=errors.append)
    try:
        for _ in range(2):
            assert wait_for(lambda: len(got) > 30, 10)
            before = len(got)
            assert sshd.cut_connections() > 0
            assert wait_for(lambda b=before: len(got) > b + 30, 15)
        time.sleep(0.3)
    finally:
        follower.stop()
    assert not follower.running
    assert [e.code for e in errors][:2] == ["transport_broken", "transport_broken"]
    numbers = [n for n, _ in got]
    assert numbers == list(range(1, len(got) + 1))  # no gap, no duplicate
    file_lines = log.read_text().splitlines()
    assert len(file_lines) >= len(got)
    for n, line in got:
        assert line == parse_line(file_lines[n - 1])
    assert isinstance(got[0][1], BootLine)


def test_driver_observation_follows_a_new_install(make_driver):
    drv = make_driver()
    drv.install(InstallRequest(model=model("sine_int8.tflite")), Deadline(60))
    lines = []
    drv.start_observing(lines.append)
    drv.start_observing(lines.append)  # idempotent
    assert wait_for(lambda: any(isinstance(x, InferenceLine) for x in lines), 10)
    rep = drv.install(InstallRequest(model=model("hello_world_int8.tflite")), Deadline(60))
    # The new runner's boot line arrives through the same observation.
    assert wait_for(lambda: any(isinstance(x, BootLine) and x.sha == rep.boot["sha"]
                                for x in lines), 10)
    drv.stop_observing()
    drv.stop_observing()
    count = len(lines)
    time.sleep(0.5)
    assert len(lines) == count


def _settings(**kw):
    base = {"host": "pi.local", "user": "pi", "known_hosts": "/tmp/kh"}
    return RpiSettings.model_validate({**base, **kw})


def test_settings_defaults_and_validation():
    s = _settings()
    assert (s.port, s.python, s.workdir, s.keep_deployments) == (22, "python3", "~/tinyml", 3)
    assert s.trust_on_first_use is False and s.install_runtime is False
    for bad in (
        {"host": "pi; rm -rf /"}, {"host": ""}, {"user": "root$(id)"}, {"port": 0},
        {"port": 70000}, {"workdir": "relative/dir"}, {"workdir": "/a\nb"},
        {"input_source": "camera"}, {"input_source": "file:relative"},
        {"keep_deployments": 0}, {"python": ""}, {"unknown_key": 1}, {"boot_deadline_s": -1},
        {"supervisor": "init.d"}, {"min_uptime_s": 0}, {"restart_budget": -1},
        {"restart_budget": 10**6}, {"restart_window_s": 0}, {"restart_pause_s": -1},
        {"health_interval_s": -0.5}, {"health_interval_s": "often"},
    ):
        with pytest.raises(ValidationError):
            _settings(**bad)
    assert _settings(input_source="file:/data/in.jsonl").input_source == "file:/data/in.jsonl"


def test_systemd_unit_is_well_formed():
    # The systemd path is not exercised by the sshd target (no user manager); check its text.
    sup = SystemdSupervisor(Layout("/home/pi/tinyml"), "/usr/bin/python3",
                            RestartBudget(restarts=2, window_s=30, pause_s=0.5))
    unit = sup.unit_text()
    # the restart budget of the settings, as systemd counts it (starts, not restarts)
    assert "StartLimitBurst=3\n" in unit and "StartLimitIntervalSec=30\n" in unit
    assert "RestartSec=0.5\n" in unit
    assert "Restart=on-failure" in unit and "EnvironmentFile=/home/pi/tinyml/run/systemd.env" \
        in unit
    assert sup.layout.unit.startswith("tinyml-runner-")
    script = sup.start_script("ab" * 32, "s1", "null")
    assert "systemctl --user start" in script and "MainPID" in script
