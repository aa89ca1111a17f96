"""Hot-swap through a real bridge process (HTTP API, jobs, observation): the job shows the
steps hotswap_transfer and verify_boot and the fit report's path; a failed hot-swap leaves the
device running its previous model; after a bridge restart (which restarts the virtual board:
a power cycle) the hot-swapped model runs again."""

from __future__ import annotations

import hashlib
import json
import time

from tests.bridge.conftest import BridgeProcess, config_text
from tests.virtual.helpers import model

SPEECH = model("arduino_micro_speech")
WAND = model("arduino_magic_wand")
HELLO = model("hello_world_int8")

DEVICES = f"""
[[devices]]
name = "vhot"
driver = "virtual-nano33ble"
hotswap = true
inference_period_ms = 50
status_period_ms = 200
silent_models = ["{hashlib.sha256(HELLO).hexdigest()[:12]}"]
"""


def upload(data: bytes, **options) -> dict:
    return {"model": ("model.tflite", data, "application/octet-stream"),
            "options": (None, json.dumps(options), "application/json")}


def install(bridge: BridgeProcess, data: bytes, **options) -> dict:
    resp = bridge.post("/devices/vhot/install?wait=60", files=upload(data, **options),
                       timeout=90)
    assert resp.status_code == 200, resp.text
    return resp.json()


def runs(bridge: BridgeProcess, data: bytes, timeout_s: float = 15.0) -> bool:
    sha = hashlib.sha256(data).hexdigest()[:16]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        lines = [e["line"] for e in bridge.get("/devices/vhot/observe?lines=50").json()["lines"]]
        for i, line in enumerate(lines):
            if line["kind"] in ("boot", "status") and line["sha"] == sha and any(
                    x["kind"] == "inference" for x in lines[i:]):
                return True
        time.sleep(0.1)
    return False


def test_hot_swap_through_the_bridge_failure_and_restart(tmp_path):
    text = config_text(tmp_path / "state", DEVICES)
    bridge = BridgeProcess(tmp_path, text, fake=False).start()
    try:
        first = install(bridge, SPEECH)
        assert first["state"] == "succeeded", first
        job = install(bridge, WAND)
        assert job["state"] == "succeeded", job
        names = [s["name"] for s in job["steps"] if s["status"] == "done"]
        assert names == ["validate", "fit_check", "hotswap_transfer", "verify_boot"]
        fit = next(s for s in job["steps"] if s["name"] == "fit_check")["detail"]["hotswap"]
        assert fit["path"] == "hotswap"
        assert runs(bridge, WAND)
        # a model that hard-faults at boot: the firmware falls back, the device keeps running
        failed = install(bridge, HELLO, arena_bytes=3008)
        assert failed["state"] == "failed" and failed["error"]["code"] == "boot_silent"
        dev = bridge.get("/devices/vhot").json()
        assert dev["state"] == "running" and dev["model"]["sha256"] == hashlib.sha256(
            WAND).hexdigest()
        assert runs(bridge, WAND)
    finally:
        assert bridge.stop() == 0
    again = BridgeProcess(tmp_path, text, fake=False).start()
    try:
        assert runs(again, WAND, timeout_s=20)
        dev = again.get("/devices/vhot").json()
        assert dev["state"] == "running"
    finally:
        assert again.stop() == 0
    assert "Traceback" not in again.log()
