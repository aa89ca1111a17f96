"""End to end with the hardware-free Nano 33 BLE: a real bridge process, the real
``nano33ble`` driver code, the stand-in arduino-cli and a virtual board running real TFLM."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.bridge.conftest import TFLM_MODEL, BridgeProcess, config_text, sse_iter
from tests.bridge.test_legacy import c_source

DEVICES = """
[[devices]]
name = "vnano"
driver = "virtual-nano33ble"
inference_period_ms = 50

[[devices]]
name = "vslow"
driver = "virtual-nano33ble"
compile_delay_s = 30

[[devices]]
name = "vsilent"
driver = "virtual-nano33ble"
serial_number = "SILENT01"
fault = "never_boot"
boot_deadline_s = 2
"""


def upload(model: bytes, **options) -> dict:
    return {"model": ("model.tflite", model, "application/octet-stream"),
            "options": (None, json.dumps(options), "application/json")}


@pytest.fixture(scope="module")
def vbridge(tmp_path_factory) -> BridgeProcess:
    workdir = tmp_path_factory.mktemp("virtual")
    bridge = BridgeProcess(workdir, config_text(workdir / "state", DEVICES), fake=False).start()
    yield bridge
    assert bridge.stop() == 0
    log = bridge.log()
    assert "Traceback" not in log, log


def test_install_verified_then_observe_and_stream(vbridge):
    model = TFLM_MODEL.read_bytes()
    stream = vbridge.get("/devices/vnano/stream", stream=True, timeout=30)
    resp = vbridge.post("/devices/vnano/install?wait=60",
                        files=upload(model, arena_bytes=8192, labels=["sine"]))
    job = resp.json()
    assert resp.status_code == 200 and job["state"] == "succeeded", job
    assert [s["name"] for s in job["steps"]][:2] == ["validate", "fit_check"]
    assert job["steps"][-1]["name"] == "verify_boot" and job["steps"][-1]["status"] == "done"
    boot = job["report"]["boot"]
    assert job["model_sha256"].startswith(boot["sha"]) and boot["arena_bytes"] == 8192
    dev = vbridge.get("/devices/vnano").json()
    assert dev["state"] == "running" and dev["model"]["sha256"] == job["model_sha256"]
    assert dev["connected"] and dev["serial_number"]
    # Live lines reach the stream subscriber, then /observe shows them too.
    lines: list[dict] = []
    inferences: list[dict] = []
    for event in sse_iter(stream):
        if event["event"] == "line":
            lines.append(json.loads(event["data"])["line"])
        inferences = [ln for ln in lines if ln["kind"] == "inference" and ln["label"] == "sine"]
        if len(inferences) >= 3:
            break
    stream.close()
    assert len(inferences) >= 3, lines[-5:]
    assert all(len(ln["outputs"]) == 1 for ln in inferences)
    observed = vbridge.get("/devices/vnano/observe?lines=2000").json()["lines"]
    assert any(e["line"]["kind"] == "boot" and e["line"]["sha"] == boot["sha"]
               for e in observed)


def test_alloc_failure_is_a_failure_never_a_success(vbridge):
    model = TFLM_MODEL.read_bytes()
    job = vbridge.post("/devices/vnano/install?wait=60",
                       files=upload(model, arena_bytes=1024)).json()
    assert job["state"] == "failed" and job["report"] is None, job
    assert job["error"]["code"] == "alloc_failed" and job["error"]["class"] == "fit"
    assert job["error"]["detail"]["arena_bytes"] == 1024
    dev = vbridge.get("/devices/vnano").json()
    assert dev["last_error"]["code"] == "alloc_failed"
    rollback = job["error"]["detail"]["rollback"]
    if dev["model"] is None:  # nothing verified before: nothing to go back to
        assert rollback["verified"] is False and dev["state"] == "failed"
    else:  # the verified model was flashed back and booted: the device runs it again
        assert rollback["verified"] is True and dev["state"] == "running"
        assert dev["model"]["sha256"].startswith(rollback["running_sha256"])


def test_legacy_install_reports_a_silent_board_as_failure(vbridge):
    resp = vbridge.post("/install/", json={"device": {"serial": "SILENT01"},
                                           "model": c_source(TFLM_MODEL.read_bytes())})
    assert resp.status_code != 201 and resp.status_code >= 400, resp.text
    body = resp.json()
    assert body["code"] == "boot_silent" and body["class"] == "device"
    assert resp.status_code == 503


def test_busy_and_cancel_kill_the_compile(vbridge):
    model = TFLM_MODEL.read_bytes()
    # Labels no other test uses: a cached build (shared between boards) would skip the compile.
    first = vbridge.post("/devices/vslow/install",
                         files=upload(model, arena_bytes=8192, labels=["cancel-me"]))
    assert first.status_code == 202
    job = first.json()
    busy = vbridge.post("/devices/vslow/install", files=upload(model))
    assert busy.status_code == 409 and busy.json()["detail"]["running_job"] == job["id"]
    end = time.monotonic() + 20
    while time.monotonic() < end:  # wait until the (30 s) compile is running
        live = vbridge.get(f"/jobs/{job['id']}").json()
        if any(s["name"] == "compile" and s["status"] == "started" for s in live["steps"]):
            break
        time.sleep(0.05)
    assert live["state"] == "running", live
    started = time.monotonic()
    assert vbridge.delete(f"/jobs/{job['id']}").status_code == 202
    ended = vbridge.get(f"/jobs/{job['id']}?wait=20").json()
    assert time.monotonic() - started < 15
    assert ended["state"] == "cancelled" and ended["report"] is None
    assert vbridge.get("/devices/vslow").json()["job_id"] is None


def test_restart_during_install_shows_interrupted(tmp_path):
    devices = '[[devices]]\nname = "vslow"\ndriver = "virtual-nano33ble"\ncompile_delay_s = 30\n'
    text = config_text(tmp_path / "state", devices)
    bridge = BridgeProcess(tmp_path, text, fake=False).start()
    job = bridge.post("/devices/vslow/install",
                      files=upload(TFLM_MODEL.read_bytes(), arena_bytes=8192,
                                   labels=["restart-me"])).json()
    time.sleep(1.0)
    bridge.kill()
    again = BridgeProcess(tmp_path, text, fake=False).start()
    try:
        got = again.get(f"/jobs/{job['id']}").json()
        assert got["state"] == "interrupted" and got["error"]["code"] == "interrupted"
        dev = again.get("/devices/vslow").json()
        assert dev["state"] == "failed" and dev["job_id"] is None
        assert requests.get(again.url + "/health", timeout=5).json()["drivers"][
            "virtual-nano33ble"]["available"] in (True, False)
    finally:
        assert again.stop() == 0
