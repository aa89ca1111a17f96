"""Fixtures of the CLI tests: a real bridge daemon process with virtual boards and a
pseudo-terminal "board" the test writes lines into, and a runner for the real CLI."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.client import BridgeClient, LocalBridge

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 90


class PtyBoard:
    """A pseudo-terminal the bridge reads as a Nano 33 BLE's serial port (``nano33ble`` driver
    with ``port`` set); the test plays the board by writing protocol lines into it."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.n = 0

    def inference(self, label: str = "yes", outputs=(0.1, 0.9), top: int = 1) -> int:
        self.n += 1
        out = ",".join(str(v) for v in outputs)
        self.write(f'{{"t":"inf","n":{self.n},"us":1500,"out":[{out}],"top":{top},'
                   f'"label":"{label}"}}')
        return self.n

    def write(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        os.write(self.master, data + b"\n")

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class Bridge:
    """A running daemon plus what a test needs to talk to it."""

    def __init__(self, daemon: LocalBridge, token: str, config: Path) -> None:
        self.daemon = daemon
        self.url = daemon.url or ""
        self.token = token
        self.config = config

    def client(self) -> BridgeClient:
        return BridgeClient(self.url, self.token)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_BRIDGE_")}
        env.update(TINYML_BRIDGE_URL=self.url, TINYML_BRIDGE_TOKEN=self.token)
        env.update(extra)
        return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT_S,
            cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run ``tinyml-bridge ARGS`` as a subprocess (the real console entry point)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, state: Path, token: str, devices: str) -> Path:
    path.write_text(f"""state_dir = "{state}"

[server]
host = "127.0.0.1"
port = 0
token = "{token}"

[discovery]
drivers = []
{devices}""")
    return path


def wait_connected(bridge: Bridge, ids: list[str], timeout: float = 20.0) -> None:
    with bridge.client() as client:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            devices = {d["id"]: d for d in client.devices()}
            if all(devices.get(i, {}).get("connected") for i in ids):
                return
            time.sleep(0.1)
    raise AssertionError(f"devices {ids} did not connect: {devices}")


@pytest.fixture(scope="module")
def pty_board() -> Iterator[PtyBoard]:
    board = PtyBoard()
    yield board
    board.close()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, pty_board) -> Iterator[Bridge]:
    """A daemon with two virtual Nano 33 BLE boards (one compiles slowly, for cancel tests)
    and the pty board. Stopped with SIGTERM at the end; it must exit 0."""
    work = tmp_path_factory.mktemp("bridge")
    token = secrets.token_urlsafe(24)
    config = write_config(work / "bridge.toml", work / "state", token, f"""
[[devices]]
name = "vnano-1"
driver = "virtual-nano33ble"

[[devices]]
name = "vnano-slow"
driver = "virtual-nano33ble"
compile_delay_s = 30

[[devices]]
name = "pty-nano"
driver = "nano33ble"
port = "{pty_board.port}"
""")
    daemon = LocalBridge(config, log_path=work / "bridge.log")
    daemon.start()
    b = Bridge(daemon, token, config)
    try:
        wait_connected(b, ["vnano-1", "vnano-slow"])
        yield b
    finally:
        code = daemon.stop(timeout=30)
    assert code == 0, f"daemon exit status {code}; log: {work / 'bridge.log'}"
