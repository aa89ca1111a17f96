"""The bridge as a real process on a real socket (waitress), driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.bridge.conftest import REPO, TOKEN, BridgeProcess, config_text, sse_iter

MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8


def files(model: bytes = MODEL, **options) -> dict:
    return {"model": ("model.tflite", model, "application/octet-stream"),
            "options": (None, json.dumps(options), "application/json")}


def wait_state(bridge: BridgeProcess, job_id: str, timeout: float = 15) -> dict:
    job = bridge.get(f"/jobs/{job_id}?wait={timeout}").json()
    assert job["state"] not in ("queued", "running"), job
    return job


def read_events(resp: requests.Response, count: int, timeout: float = 10) -> list[dict]:
    """The next ``count`` SSE events (line or dropped) of a streaming response."""
    events = []
    end = time.monotonic() + timeout
    for event in sse_iter(resp):
        events.append(event)
        if len(events) >= count or time.monotonic() > end:
            break
    return events


# ---------------------------------------------------------------------- start / stop


def test_serve_port_zero_health_auth_and_logs(start_bridge):
    bridge = start_bridge()
    assert bridge.url.startswith("http://127.0.0.1:") and not bridge.url.endswith(":0")
    health = requests.get(bridge.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and health["version"] and health["uptime_s"] >= 0
    assert health["drivers"]["test-fake"]["available"] is True
    assert requests.get(bridge.url + "/health/", timeout=5).text == "Online"
    resp = requests.get(bridge.url + "/devices", timeout=5)
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    assert resp.headers["Content-Type"] == "application/json"
    devices = bridge.get("/devices").json()["devices"]
    assert {d["id"] for d in devices} == {"fake1", "fake2", "broken"}
    assert bridge.stop() == 0
    log = bridge.log()
    assert "device=fake1" in log and "listening on" in log and "stopped" in log
    assert TOKEN not in log and "Traceback" not in log


def test_default_usb_discovery_runs_without_boards(tmp_path):
    # The default [discovery] scans for Nano 33 BLE boards every 2 s; with none attached the
    # bridge lists nothing and reports whether the nano33ble tools are there.
    text = f'state_dir = "{tmp_path / "state"}"\n[server]\nport = 0\n'
    bridge = BridgeProcess(tmp_path, text, token=None).start()
    try:
        time.sleep(0.5)
        devices = bridge.get("/devices").json()["devices"]
        assert all(d["driver"] == "nano33ble" for d in devices)  # none, unless one is plugged
        health = bridge.get("/health").json()
        assert isinstance(health["drivers"]["nano33ble"]["available"], bool)
    finally:
        assert bridge.stop() == 0
    assert "Traceback" not in bridge.log()


def test_refuses_public_address_without_token(tmp_path):
    text = config_text(tmp_path / "state", token=None)
    proc = BridgeProcess(tmp_path, text, token=None, args=("--host", "0.0.0.0"))
    with pytest.raises(RuntimeError, match=r"refusing to listen on 0\.0\.0\.0 without a token"):
        proc.start()
    assert proc.proc.returncode == 1
    ok = BridgeProcess(tmp_path, text, token=None,
                       args=("--host", "0.0.0.0", "--insecure")).start()
    try:
        port = ok.url.rsplit(":", 1)[1]
        assert requests.get(f"http://127.0.0.1:{port}/devices", timeout=5).status_code == 200
        assert "WITHOUT a token" in ok.log()
    finally:
        assert ok.stop() == 0


def test_env_and_flag_precedence(tmp_path):
    text = config_text(tmp_path / "state", token=None)
    env = {"TINYML_BRIDGE_TOKEN": TOKEN, "TINYML_BRIDGE_PORT": "1"}
    bridge = BridgeProcess(tmp_path, text, env=env, args=("--port", "0")).start()
    try:
        assert requests.get(bridge.url + "/devices", timeout=5).status_code == 401
        assert bridge.get("/devices").status_code == 200
    finally:
        bridge.stop()


def test_bad_config_exits_1_naming_key_and_line(tmp_path):
    text = config_text(tmp_path / "state") + '\n[[devices]]\nname = "x"\ndriver = "nope"\n'
    proc = BridgeProcess(tmp_path, text)
    with pytest.raises(RuntimeError) as err:
        proc.start()
    assert proc.proc.returncode == 1
    message = str(err.value)
    assert "bad_config" in message and "devices[3].driver" in message
    line = text.splitlines().index('driver = "nope"') + 1
    assert f"line {line}" in message and "Traceback" not in message


def test_systemd_notify_and_sigterm(tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    bridge = BridgeProcess(tmp_path, config_text(tmp_path / "state"),
                           env={"NOTIFY_SOCKET": str(sock_path)}).start()
    ready = sock.recv(4096).decode()
    assert "READY=1" in ready and "STATUS=listening on" in ready
    assert bridge.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in sock.recv(4096).decode()
    sock.close()


def test_port_in_use_is_a_clear_failure(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    proc = BridgeProcess(tmp_path, config_text(tmp_path / "state"), args=("--port", str(port)))
    try:
        with pytest.raises(RuntimeError, match=r"cannot listen on 127\.0\.0\.1"):
            proc.start()
        assert proc.proc.returncode == 1
    finally:
        holder.close()


# ------------------------------------------------------------------------- install


def test_install_observe_stream_end_to_end(start_bridge):
    bridge = start_bridge()
    stream = bridge.get("/devices/fake1/stream", stream=True, timeout=10)
    assert stream.status_code == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    resp = bridge.post("/devices/fake1/install", files=files(labels=["no", "yes"]))
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["Location"] == f"/jobs/{job['id']}"
    done = wait_state(bridge, job["id"])
    assert done["state"] == "succeeded" and done["report"]["model_sha256"] == done["model_sha256"]
    dev = bridge.get("/devices/fake1").json()
    assert dev["state"] == "running" and dev["model"]["sha256"] == done["model_sha256"]
    events = read_events(stream, 5)
    stream.close()
    assert all(e["event"] == "line" for e in events)
    seqs = [int(e["id"]) for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    data = json.loads(events[0]["data"])
    assert set(data) == {"seq", "at", "line"} and data["seq"] == seqs[0]
    observed = bridge.get("/devices/fake1/observe?lines=500").json()
    kinds = {e["line"]["kind"] for e in observed["lines"]}
    assert {"inference", "boot"} <= kinds
    boot = next(e for e in observed["lines"] if e["line"]["kind"] == "boot")
    assert done["model_sha256"].startswith(boot["line"]["sha"])
    # Resume: everything after a sequence number, in order, no gaps.
    after = observed["last_seq"] - 3
    resumed = bridge.get("/devices/fake1/stream", stream=True, timeout=10,
                         headers={"Last-Event-ID": str(after)})
    got = [int(e["id"]) for e in read_events(resumed, 3)]
    resumed.close()
    assert got == [after + 1, after + 2, after + 3]


def test_failure_busy_cancel_and_history(start_bridge):
    bridge = start_bridge()
    failed = bridge.post("/devices/broken/install?wait=15", files=files()).json()
    assert failed["state"] == "failed" and failed["report"] is None
    assert failed["error"]["code"] == "alloc_failed"
    slow = bridge.post("/devices/fake2/install", files=files()).json()
    busy = bridge.post("/devices/fake2/install", files=files())
    assert busy.status_code == 409 and busy.json()["detail"]["running_job"] == slow["id"]
    parallel = bridge.post("/devices/fake1/install?wait=15", files=files())
    assert parallel.status_code == 200 and parallel.json()["state"] == "succeeded"
    live = bridge.get(f"/jobs/{slow['id']}").json()
    assert live["state"] == "running" and live["steps"]
    assert bridge.get("/devices/fake2").json()["state"] == "installing"
    assert bridge.get("/devices/fake2").json()["job_id"] == slow["id"]
    cancel = bridge.delete(f"/jobs/{slow['id']}")
    assert cancel.status_code == 202
    ended = wait_state(bridge, slow["id"])
    assert ended["state"] == "cancelled" and ended["report"] is None
    assert bridge.delete(f"/jobs/{slow['id']}").status_code == 409
    jobs = bridge.get("/jobs").json()["jobs"]
    assert [j["id"] for j in jobs][:3] == [parallel.json()["id"], slow["id"], failed["id"]]
    assert [j["id"] for j in bridge.get("/jobs?device=broken").json()["jobs"]] == [failed["id"]]


def test_restart_marks_cut_off_job_interrupted_and_keeps_history(tmp_path, start_bridge):
    bridge = start_bridge()
    ok = bridge.post("/devices/fake1/install?wait=15", files=files()).json()
    assert ok["state"] == "succeeded"
    running = bridge.post("/devices/fake2/install", files=files()).json()
    time.sleep(0.5)
    bridge.kill()  # a crash: no chance to clean up
    again = start_bridge()
    job = again.get(f"/jobs/{running['id']}").json()
    assert job["state"] == "interrupted" and job["error"]["code"] == "interrupted"
    assert job["report"] is None and job["finished_at"]
    assert again.get(f"/jobs/{ok['id']}").json()["state"] == "succeeded"
    fake1 = again.get("/devices/fake1").json()
    assert fake1["state"] == "running" and fake1["model"]["sha256"] == ok["model_sha256"]
    fake2 = again.get("/devices/fake2").json()
    assert fake2["state"] == "failed" and fake2["last_error"]["code"] == "interrupted"
    assert fake2["job_id"] is None


def test_sigterm_cancels_running_job_and_exits_zero(start_bridge):
    bridge = start_bridge()
    job = bridge.post("/devices/fake2/install", files=files()).json()
    stream = bridge.get("/devices/fake1/stream", stream=True)
    waiter = requests.Session()
    waiter.headers["Authorization"] = f"Bearer {TOKEN}"
    import threading

    waited: dict = {}

    def wait_job() -> None:  # a client blocked in ?wait must not hold the shutdown up
        try:
            waited["resp"] = waiter.get(f"{bridge.url}/jobs/{job['id']}?wait=600", timeout=30)
        except requests.RequestException as exc:
            waited["error"] = exc

    thread = threading.Thread(target=wait_job)
    thread.start()
    time.sleep(0.3)
    assert read_events(stream, 1)
    started = time.monotonic()
    assert bridge.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    thread.join(10)
    assert not thread.is_alive()
    # The stream ended instead of hanging.
    rest = list(sse_iter(stream))
    assert all(e["event"] == "line" for e in rest)
    assert f"job={job['id']} device=fake2 cancelled for shutdown" in bridge.log()
    again = start_bridge()
    state = again.get(f"/jobs/{job['id']}").json()["state"]
    assert state in ("cancelled", "interrupted")


def test_hotplug_discovery(tmp_path, start_bridge):
    state = tmp_path / "state"
    text = config_text(state, devices='[[devices]]\nname = "named"\ndriver = "test-fake"\n'
                       'serial_number = "KNOWN1"\n',
                       extra="").replace('drivers = []',
                                         'drivers = ["test-fake"]\ninterval_s = 0.2')
    bridge = start_bridge(text)
    assert [d["id"] for d in bridge.get("/devices").json()["devices"]] == ["named"]
    usb = state / "fake-usb"
    usb.mkdir(parents=True)
    (usb / "KNOWN1").write_text("")  # the configured board: keeps its configured name
    (usb / "HOTPLUG7").write_text("")
    (usb / "bad id!").write_text("")  # unusable as an id: skipped with a warning
    end = time.monotonic() + 10
    ids: list[str] = []
    while time.monotonic() < end:
        ids = [d["id"] for d in bridge.get("/devices").json()["devices"]]
        if "HOTPLUG7" in ids:
            break
        time.sleep(0.1)
    assert ids == ["HOTPLUG7", "named"]
    dev = bridge.get("/devices/HOTPLUG7").json()
    assert dev["serial_number"] == "HOTPLUG7" and dev["connected"]
    assert "unusable id" in bridge.log()


# ----------------------------------------------------------------------- limits


def test_request_size_limit_over_the_socket(start_bridge):
    bridge = start_bridge()
    big = b"\x00" * (8 * 1024 * 1024 + 10)
    resp = bridge.post("/devices/fake1/install", data=big,
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large"

    def chunks():
        for _ in range(9):
            yield b"\x00" * (1024 * 1024)

    resp = bridge.post("/devices/fake1/install", data=chunks(),
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large"
    assert bridge.get("/jobs").json()["jobs"] == []


def raw_stream_once(bridge: BridgeProcess, since: int, reset: bool) -> None:
    """Open a stream on a plain socket, read one line event, then vanish (RST or FIN)."""
    host, port = bridge.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET /devices/fake1/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                 f"{TOKEN}\r\nLast-Event-ID: {since}\r\n\r\n".encode())
    data = b""
    while b"event: line" not in data:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no line event; got {data[:300]!r}\n{bridge.log()[-3000:]}") \
                from None
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    if reset:  # abort with RST, as a crashed client would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def wait_streams_released(bridge: BridgeProcess, timeout: float = 5.0) -> None:
    """A vanished stream client frees its stream slot (and thread) within ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        active = requests.get(bridge.url + "/health", timeout=5).json()["streams"]["active"]
        if active == 0:
            return
        assert time.monotonic() < end, f"{active} stream(s) still held after {timeout}s"
        time.sleep(0.02)


def _threads_and_fds(pid: int) -> tuple[int, int]:
    return (len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd")))


def oneshot(bridge: BridgeProcess, path: str, **kw) -> requests.Response:
    """A request on its own connection (closed afterwards), so pooled keep-alive
    connections do not blur the server's file-descriptor count."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
    return requests.get(bridge.url + path, headers=headers, timeout=10, **kw)


def test_streams_do_not_leak_threads_or_fds_and_are_limited(tmp_path, start_bridge):
    text = config_text(tmp_path / "state", extra="[observe]\nping_s = 0.5\n").replace(
        "port = 0\n", "port = 0\nmax_streams = 4\n")
    bridge = start_bridge(text)
    pid = bridge.proc.pid
    for _ in range(3):  # warm up the pools
        r = oneshot(bridge, "/devices/fake1/stream", stream=True)
        read_events(r, 1)
        r.close()
    wait_streams_released(bridge)
    before = _threads_and_fds(pid)
    for n in range(40):
        raw_stream_once(bridge, since=max(0, n - 2), reset=n % 2 == 0)
        wait_streams_released(bridge)
        if n % 10 == 0:
            assert oneshot(bridge, "/devices").status_code == 200
    # Four open streams fill the limit; a fifth is refused instead of taking a thread.
    held = [oneshot(bridge, "/devices/fake1/stream", stream=True) for _ in range(4)]
    assert [r.status_code for r in held] == [200] * 4
    extra = oneshot(bridge, "/devices/fake1/stream", stream=True)
    assert extra.status_code == 503 and extra.json()["code"] == "unavailable"
    extra.close()
    assert oneshot(bridge, "/devices").status_code == 200  # the API still answers
    for r in held:
        r.close()
    wait_streams_released(bridge)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        after = _threads_and_fds(pid)
        if after[0] <= before[0] and after[1] <= before[1]:
            break
        time.sleep(0.1)
    assert after[0] <= before[0], (before, after)
    assert after[1] <= before[1], (before, after)
    r = oneshot(bridge, "/devices/fake1/stream", stream=True)
    assert r.status_code == 200
    r.close()


def test_python_dash_m_bridge_entry_point():
    out = subprocess.run([sys.executable, "-m", "bridge", "serve", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--insecure" in out.stdout and "--port" in out.stdout


def test_unit_file_is_valid(tmp_path):
    """Required keys present, and systemd itself accepts the unit (with ExecStart pointed at
    this checkout's entry point, since /opt/tinyml-bridge does not exist here)."""
    unit = (Path(REPO) / "bridge.service").read_text()
    exe = Path(sys.executable).with_name("tinyml-bridge")
    assert exe.exists(), exe
    copy = tmp_path / "tinyml-bridge.service"
    copy.write_text(unit.replace("/opt/tinyml-bridge/venv/bin/tinyml-bridge", str(exe)))
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "tinyml-bridge.service" not in out.stderr, out.stderr
    for needed in ("User=tinyml-bridge", "SupplementaryGroups=dialout", "Type=notify",
                   "StateDirectory=tinyml-bridge", "Restart=on-failure",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "DevicePolicy=closed", "DeviceAllow=char-ttyACM rw",
                   "DeviceAllow=char-ttyUSB rw",
                   "ExecStart=/opt/tinyml-bridge/venv/bin/tinyml-bridge serve --config "
                   "/etc/tinyml-bridge/bridge.toml"):
        assert needed in unit.splitlines(), needed
