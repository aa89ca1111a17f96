"""Helpers for tests that drive virtual boards and the stand-in arduino-cli."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hal.arduino import discovery
from hal.deadline import Deadline

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "data" / "tflm-examples"
STAND_IN = [sys.executable, "-m", "hal.virtual.arduino_cli"]
# hello_world's real TFLM arena need (~1.94 KB with the planner's scratch) is above the
# analysis estimate + 10 %, so installs of it pass the example's declared arena.
HELLO_ARENA = 3008


def model(name: str) -> bytes:
    return (MODELS / f"{name}.tflite").read_bytes()


def start_board(ports: Path, state: Path, serial: str, *extra: str,
                wait_s: float = 15.0) -> subprocess.Popen:
    """Start ``tinyml-virtual-board`` and wait until it has published its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal.virtual.board", "--serial-number", serial,
         "--ports-dir", str(ports), "--state-dir", str(state), "--host-wait-s", "1",
         "--exit-with-parent", *extra],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    port = discovery.wait_for_board(serial, Deadline(wait_s), ports, mode=None,
                                    include_usb=False)
    if port is None:
        stop_board(proc)
        raise AssertionError(f"virtual board {serial} did not come up")
    return proc


def stop_board(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate, timeout_s: float = 10.0, poll_s: float = 0.02):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    return predicate()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """Live (non-zombie) children of process ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)
