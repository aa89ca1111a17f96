"""Bridge test fixtures: a real bridge process on a real socket, and in-process apps.

Devices use the test-only ``test-fake`` hal driver (tests/bridge/fake_driver.py) or the
hardware-free ``virtual-nano33ble`` board from hal.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import tests.bridge.fake_driver  # noqa: F401  (registers "test-fake" in this process too)
from bridge.config import parse_config
from bridge.server import LISTENING_PREFIX

REPO = Path(__file__).resolve().parents[2]
# A real TFLM example (int8 sine model, 2.7 KB) for installs on the virtual board.
TFLM_MODEL = REPO / "tests" / "data" / "tflm-examples" / "hello_world_int8.tflite"
TOKEN = "test-token-0123456789abcdef"

FAKE_DEVICES = """
[[devices]]
name = "fake1"
driver = "test-fake"
serial_number = "SN0001"

[[devices]]
name = "fake2"
driver = "test-fake"
serial_number = "SN0002"
install_s = 3.0

[[devices]]
name = "broken"
driver = "test-fake"
serial_number = "SN0003"
fail = "alloc_failed"
"""


def config_text(state_dir: Path, devices: str = FAKE_DEVICES, *, token: str | None = TOKEN,
                extra: str = "") -> str:
    token_line = f'token = "{token}"' if token else ""
    return (f'state_dir = "{state_dir}"\n[server]\nport = 0\n{token_line}\n'
            f"[discovery]\ndrivers = []\n{extra}\n{devices}")


def sse_iter(resp: requests.Response) -> Iterator[dict]:
    """Server-Sent Events of a streaming response, as dicts of their fields (comments and the
    initial ``retry:`` advice skipped)."""
    current: dict = {}
    for raw in resp.iter_lines(decode_unicode=True):
        if raw == "":
            if "event" in current:
                yield current
            current = {}
        elif not raw.startswith(":"):
            field, _, value = raw.partition(": ")
            current[field] = value


class BridgeProcess:
    """``tinyml-bridge serve`` as a subprocess; ``url`` once it printed its listening line."""

    def __init__(self, workdir: Path, text: str, *, token: str | None = TOKEN,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 fake: bool = True) -> None:
        self.workdir = workdir
        self.config = workdir / "bridge.toml"
        self.config.write_text(text)
        self.token = token
        self.args = args
        self.env = env or {}
        self.module = "tests.bridge.run_bridge" if fake else "bridge"
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.stdout_lines: list[str] = []
        self.stderr_path = workdir / f"bridge-{time.monotonic_ns()}.log"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def start(self, timeout: float = 20.0) -> BridgeProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TINYML_") and k != "NOTIFY_SOCKET"}
        env.update(self.env)
        self.stderr_path = self.workdir / f"bridge-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", "--config", str(self.config),
             *self.args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not sel.select(timeout=0.2):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout_lines.append(line)
            if line.startswith(LISTENING_PREFIX):
                self.url = line[len(LISTENING_PREFIX):].strip()
                return self
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        raise RuntimeError(f"bridge did not start (rc={self.proc.returncode}):\n{self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def request(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.session.request(method, self.url + path, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and return its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"bridge ignored signal {sig}:\n{self.log()}") from None
        self.proc.stdout.close()
        self._stderr.close()
        self.session.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator:
    """``start_bridge(text=None, **kw)`` -> a running :class:`BridgeProcess`."""
    started: list[BridgeProcess] = []

    def start(text: str | None = None, **kw) -> BridgeProcess:
        if text is None:
            text = config_text(tmp_path / "state", token=kw.get("token", TOKEN))
        proc = BridgeProcess(tmp_path, text, **kw).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator:
    """``make_app(devices=FAKE_DEVICES, token=TOKEN, extra="")`` -> an in-process Flask app."""
    from bridge.app import create_app

    apps = []

    def make(devices: str = FAKE_DEVICES, token: str | None = TOKEN, extra: str = ""):
        config = parse_config(config_text(tmp_path / f"state{len(apps)}", devices,
                                          token=token, extra=extra), "test.toml")
        app = create_app(config)
        app.testing = False  # keep the real error handlers in charge
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["tinyml_bridge"].close(grace_s=2)


@pytest.fixture
def client(make_app):
    """A test client of an app with the fake devices; sends the token."""
    app = make_app()
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return c
