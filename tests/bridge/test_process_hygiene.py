"""Issue 10 item 6: a compile started by a bridge that is then killed with SIGKILL does not
keep running as an orphan (it used to run on for minutes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.bridge.conftest import TFLM_MODEL, BridgeProcess, config_text

SLOW_COMPILE = """
[[devices]]
name = "vslow"
driver = "virtual-nano33ble"
compile_delay_s = 120
"""


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in out:
                    out.add(child)
                    todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def test_compile_dies_with_a_killed_bridge(tmp_path):
    bridge = BridgeProcess(tmp_path, config_text(tmp_path / "state", SLOW_COMPILE),
                           fake=False).start()
    compiles: list[int] = []
    try:
        job = bridge.post("/devices/vslow/install",
                          files={"model": ("m.tflite", TFLM_MODEL.read_bytes())}).json()
        end = time.monotonic() + 60
        while time.monotonic() < end and not compiles:
            compiles = [p for p in descendants(bridge.proc.pid) if " compile " in cmdline(p)]
            time.sleep(0.1)
        assert compiles, (job, bridge.log()[-2000:])
    finally:
        bridge.kill()
    # A generous ceiling: the compile would otherwise sleep on for two minutes.
    end = time.monotonic() + 20
    while time.monotonic() < end and any(alive(p) for p in compiles):
        time.sleep(0.1)
    left = [p for p in compiles if alive(p)]
    for pid in left:  # do not leave it behind if the test fails
        os.kill(pid, 9)
    assert not left, [cmdline(p) for p in left]
