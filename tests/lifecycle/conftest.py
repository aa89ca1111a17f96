"""The lifecycle rig: one bridge (the real app, registry, jobs and state store, in process)
with one device of one driver family, and the faults the truth matrix needs.

Families: ``nano`` (the virtual Nano 33 BLE: a real virtual board process on a real pty, the
stand-in arduino-cli) and ``pi`` (the Raspberry Pi driver against a real OpenSSH server on
loopback, running the real LiteRT runner under supervise.sh). A bridge restart closes the
runtime and builds a new one on the same state directory, as a restarted daemon does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import parse_config
from tests.rpi.sshd import SSHD, USERS, Sshd, start_sshd
from tests.virtual.helpers import child_pids, pid_alive

REPO = Path(__file__).resolve().parents[2]
TFLM = REPO / "tests" / "data" / "tflm-examples"
SAMPLES = REPO / "samples" / "models"
HELLO = (TFLM / "hello_world_int8.tflite").read_bytes()
SINE = (SAMPLES / "sine_int8.tflite").read_bytes()
SPEECH = (TFLM / "micro_speech_quantized.tflite").read_bytes()
VELA = (TFLM / "person_detect_vela.tflite").read_bytes()  # LiteRT cannot load it (ethos-u)
HELLO_ARENA = 3008  # see tests/virtual/helpers.py

# Fast liveness so the matrix runs in seconds; the defaults are for real devices.
NANO_SETTINGS = {"inference_period_ms": 100, "status_period_ms": 200, "host_wait_s": 1.0,
                 "boot_deadline_s": 8.0, "silent_periods": 3}
PI_SETTINGS = {"period_s": 0.1, "status_period_s": 0.5, "health_interval_s": 0.3,
               "min_uptime_s": 1.0, "restart_budget": 2, "restart_window_s": 60.0,
               "restart_pause_s": 0.2, "boot_deadline_s": 20.0}


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0,
               poll_s: float = 0.05) -> Any:
    end = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(poll_s)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _toml_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | bool | int | float) else \
        "[" + ", ".join(_toml_value(v) for v in value) + "]"


class Rig:
    """A bridge with one device ``dev`` of ``family``."""

    device = "dev"

    def __init__(self, family: str, tmp: Path, sshd: Sshd | None, **settings: Any) -> None:
        self.family = family
        self.tmp = tmp
        self.sshd = sshd
        self.state_dir = tmp / "state"
        tmp.mkdir(parents=True, exist_ok=True)
        self.app = None
        self.client = None
        if family == "nano":
            self.models = {"a": (HELLO, {"arena_bytes": HELLO_ARENA}),
                           "b": (SPEECH, {}),
                           "bad": (SPEECH, {"arena_bytes": 2048})}  # alloc_failed on board
            driver, dev_settings = "virtual-nano33ble", {**NANO_SETTINGS, **settings}
        else:
            assert sshd is not None
            self.workdir = sshd.workdir(f"life-{uuid.uuid4().hex[:8]}")
            self.models = {"a": (SINE, {}), "b": (HELLO, {}), "bad": (VELA, {})}
            driver = "rpi"
            dev_settings = sshd.device_settings(tmp / "known_hosts", self.workdir, USERS[0],
                                                **{**PI_SETTINGS, **settings})
            sshd.write_known_hosts(tmp / "known_hosts")
        lines = [f'state_dir = "{self.state_dir}"', "[server]", "port = 0",
                 "[discovery]", "drivers = []", "[[devices]]", f'name = "{self.device}"',
                 f'driver = "{driver}"']
        lines += [f"{k} = {_toml_value(v)}" for k, v in dev_settings.items()]
        self.config_text = "\n".join(lines) + "\n"

    # -- the bridge ------------------------------------------------------------------------

    def start(self) -> Rig:
        from bridge.app import create_app

        self.app = create_app(parse_config(self.config_text, "lifecycle.toml"))
        self.app.testing = False
        self.client = self.app.test_client()
        return self

    @property
    def runtime(self):
        return self.app.extensions["tinyml_bridge"]

    @property
    def driver(self):
        return self.runtime.registry.get(self.device).driver

    def stop(self) -> None:
        if self.app is not None:
            self.runtime.close(grace_s=5)
            self.app = None

    def restart(self) -> Rig:
        self.stop()
        return self.start()

    # -- the API -----------------------------------------------------------------------------

    def dev(self) -> dict[str, Any]:
        resp = self.client.get(f"/devices/{self.device}")
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    def install(self, which: str, wait_s: float = 90, **options: Any) -> dict[str, Any]:
        model, extra = self.models[which]
        body = {"model_b64": base64.b64encode(model).decode(), **extra, **options}
        resp = self.client.post(f"/devices/{self.device}/install?wait={wait_s}", json=body)
        job = resp.get_json()
        assert resp.status_code in (200, 202), job
        assert job["state"] not in ("queued", "running"), job
        return job

    def lines(self, n: int = 2000) -> list[dict[str, Any]]:
        resp = self.client.get(f"/devices/{self.device}/observe?lines={n}")
        assert resp.status_code == 200
        return resp.get_json()["lines"]

    def wait_dev(self, predicate: Callable[[dict], bool], timeout_s: float = 20.0
                 ) -> dict[str, Any]:
        """The device once ``predicate`` holds (the last one seen otherwise)."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            seen.clear()
            seen.update(self.dev())
            return predicate(seen)

        wait_until(check, timeout_s)
        return dict(seen)

    def wait_lines(self, predicate: Callable[[list], bool], timeout_s: float = 20.0
                   ) -> list[dict[str, Any]]:
        return wait_until(lambda: predicate(self.lines()) and self.lines(), timeout_s) or \
            self.lines()

    def sha(self, which: str) -> str:
        import hashlib

        return hashlib.sha256(self.models[which][0]).hexdigest()

    # -- faults ------------------------------------------------------------------------------

    def runner_pid(self) -> int | None:
        """The Pi runner's pid (supervise.sh's child), or the Nano sketch's (the board's
        forked MCU)."""
        if self.family == "pi":
            with contextlib.suppress(OSError, ValueError):
                pid = int(Path(self.workdir, "run", "runner.pid").read_text().strip())
                return pid if pid_alive(pid) else None
            return None
        board = self.driver.board_pid
        kids = [k for k in (child_pids(board) if board else []) if _comm(k) == "virtual-mcu"]
        return kids[0] if kids else None

    def kill_runner(self) -> int:
        """SIGKILL the runner (Pi) or the sketch (Nano: a hard fault, silent until reset)."""
        pid = wait_until(self.runner_pid, 10)
        assert pid, f"no runner to kill; {self.runner_records()}"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 5)
        return pid

    def runner_records(self) -> str:
        """The Pi supervisor's records and the runner's stderr (for failure messages)."""
        if self.family != "pi":
            return ""
        out = []
        for rel in ("run/exit", "run/restarts", "run/supervisor.pid", "current"):
            path = Path(self.workdir, rel)
            with contextlib.suppress(OSError):
                out.append(f"{rel}: {os.readlink(path) if path.is_symlink() else path.read_text()}")
        with contextlib.suppress(OSError):
            err = Path(self.workdir, "current", "runner.err").read_text()[-800:]
            out.append(f"runner.err: {err}")
        return "\n".join(out)

    def board_off(self) -> None:
        """Nano: the board leaves the bus (its port disappears)."""
        proc = self.driver._proc
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)

    def board_on(self) -> None:
        """Nano: the board comes back (power-up boots its flashed image)."""
        self.driver._start_board()

    def link_down(self) -> None:
        """Pi: sshd stops listening and every connection is cut (runners keep running)."""
        assert self.sshd is not None
        # Found through the listener: collect first. Only the sshd processes die, as when
        # a Pi's sshd crashes; the runner lives in its own session and keeps running.
        pids = [p for p in self.sshd.connection_pids() if _comm(p).startswith("sshd")]
        self.sshd.proc.terminate()
        self.sshd.proc.wait(10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def link_up(self) -> None:
        assert self.sshd is not None
        log = open(self.sshd.root / "sshd.log", "ab")  # noqa: SIM115 - lives with sshd
        self.sshd.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.sshd.root / "sshd_config")], stdout=log,
            stderr=log)
        import socket

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.sshd.port), timeout=0.5):
                    return True
            except OSError:
                return False

        assert wait_until(listening, 10)

    def cut_link(self) -> None:
        """The link breaks while observing: SSH connections killed (Pi); the board's port
        vanishes and returns (Nano)."""
        if self.family == "pi":
            assert self.sshd.cut_connections() > 0
        else:
            self.board_off()
            self.wait_dev(lambda d: d["link_error"] is not None, 10)
            self.board_on()

    def close(self) -> None:
        self.stop()
        if self.family == "pi" and self.sshd is not None:
            if self.sshd.proc.poll() is not None:
                self.link_up()
            # stop whatever runner this rig left behind
            with contextlib.suppress(OSError, ValueError):
                pid = int(Path(self.workdir, "run", "supervisor.pid").read_text())
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def life_sshd() -> Iterator[Sshd]:
    """This package's own sshd (the tests stop and restart it)."""
    server = start_sshd()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_rig(tmp_path: Path, request) -> Iterator[Callable[..., Rig]]:
    """``make_rig(family, start=True, **settings)`` -> a :class:`Rig`, closed afterwards."""
    rigs: list[Rig] = []

    def make(family: str, start: bool = True, **settings: Any) -> Rig:
        sshd = request.getfixturevalue("life_sshd") if family == "pi" else None
        rig = Rig(family, tmp_path / f"rig{len(rigs)}", sshd, **settings)
        rigs.append(rig)
        return rig.start() if start else rig

    yield make
    for rig in rigs:
        rig.close()
