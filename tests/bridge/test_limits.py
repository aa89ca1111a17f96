"""Issue 10 item 4: idle and slow connections and long-polls cannot starve /health and
ordinary requests; waitress's own refusals are JSON too."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.bridge.conftest import TOKEN, BridgeProcess, config_text
from tests.sockets import address_of, dribble_header_until_closed, fds

SLOW_DEVICE = """
[[devices]]
name = "slow"
driver = "test-fake"
serial_number = "SLOW1"
install_s = 120.0
"""

MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4


def with_server(text: str, lines: str) -> str:
    return text.replace("port = 0\n", f"port = 0\n{lines}\n", 1)


def address(bridge: BridgeProcess) -> tuple[str, int]:
    return address_of(bridge.url)


def health(bridge: BridgeProcess, timeout: float = 10) -> requests.Response:
    return requests.get(bridge.url + "/health", timeout=timeout,
                        headers={"Connection": "close"})


# ------------------------------------------------------------- idle connections


def test_idle_connections_do_not_take_health_down(tmp_path, start_bridge):
    """The reproduction: 165 idle TCP connections (1 byte each) took /health down; here
    300, more than the per-client and the total limit."""
    bridge = start_bridge()  # the defaults: 256 in total, 64 per client
    pid = bridge.proc.pid
    assert health(bridge).status_code == 200
    baseline = fds(pid)
    idle = []
    try:
        for _ in range(300):
            sock = socket.create_connection(address(bridge), timeout=10)
            sock.sendall(b"G")
            idle.append(sock)
        for _ in range(5):
            resp = health(bridge)
            assert resp.status_code == 200 and resp.json()["status"] == "ok"
            assert bridge.get("/devices").status_code == 200
        # Bounded: the per-client limit (64) holds however many the client opens.
        assert fds(pid) <= baseline + 64 + 8, (baseline, fds(pid))
    finally:
        for sock in idle:
            sock.close()
    assert "connection limit reached" in bridge.log()


def test_total_limit_across_clients(tmp_path, start_bridge):
    # 127.0.0.2 and 127.0.0.3 are different clients on loopback.
    bridge = start_bridge(with_server(config_text(tmp_path / "state"),
                                      "max_connections = 40\nmax_connections_per_client = 30"
                                      "\nheader_timeout_s = 60"))
    pid = bridge.proc.pid
    baseline = fds(pid)
    held = []
    try:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(30):
                sock = socket.create_connection(address(bridge), timeout=10,
                                                source_address=(source, 0))
                sock.sendall(b"GET / HTTP/1.1\r\n")
                held.append(sock)
        assert health(bridge).status_code == 200
        assert fds(pid) <= baseline + 40 + 8, (baseline, fds(pid))
    finally:
        for sock in held:
            sock.close()


def test_slow_header_is_cut_off_at_the_header_timeout(tmp_path, start_bridge):
    bridge = start_bridge(with_server(config_text(tmp_path / "state"),
                                      "header_timeout_s = 1.0\nidle_timeout_s = 60"))
    # A slowloris: a byte at a time, never finishing the header, always "active".
    # Generous ceiling: the timeout is 1 s, checked every 1 s.
    assert dribble_header_until_closed(address(bridge), deadline_s=20)
    # An ordinary client is unaffected.
    assert health(bridge).status_code == 200


# ------------------------------------------------------------------ long-polls


def test_long_polls_are_capped_and_health_stays_up(tmp_path, start_bridge):
    """The reproduction: 40 x GET /jobs/ID?wait=40 exhausted the worker pool."""
    text = with_server(config_text(tmp_path / "state", devices=SLOW_DEVICE),
                       "threads = 2\nmax_streams = 1")  # max_waits: 16 by default
    bridge = start_bridge(text)
    job = bridge.post("/devices/slow/install",
                      files={"model": ("m.tflite", MODEL, "application/octet-stream")}).json()
    results: list[requests.Response] = []
    lock = threading.Lock()

    def long_poll() -> None:
        resp = requests.get(f"{bridge.url}/jobs/{job['id']}?wait=60", timeout=90,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        with lock:
            results.append(resp)

    threads = [threading.Thread(target=long_poll) for _ in range(20)]
    for t in threads:
        t.start()
    # Four are refused at once (503, Retry-After); sixteen wait.
    end = time.monotonic() + 30
    while time.monotonic() < end:
        with lock:
            if len(results) >= 9:
                break
        time.sleep(0.05)
    with lock:
        refused = list(results)
    assert len(refused) == 4 and all(r.status_code == 503 for r in refused)
    assert all(r.json()["code"] == "unavailable" and r.headers["Retry-After"] for r in refused)
    for _ in range(3):
        assert health(bridge).status_code == 200
        assert bridge.get("/devices").status_code == 200
    # A long-poll install is refused the same way, before any job is created.
    busy = bridge.post("/devices/slow/install?wait=5",
                       files={"model": ("m.tflite", MODEL, "application/octet-stream")})
    assert busy.status_code == 503
    assert [j["id"] for j in bridge.get("/jobs").json()["jobs"]] == [job["id"]]
    # The waiters wake when the job ends.
    assert bridge.delete(f"/jobs/{job['id']}").status_code == 202
    for t in threads:
        t.join(30)
    waited = [r for r in results if r.status_code != 503]
    assert len(waited) == 16 and all(r.json()["state"] == "cancelled" for r in waited)
    assert bridge.get(f"/jobs/{job['id']}?wait=5").status_code == 200  # finished: no slot


def test_waitress_refusals_are_json(start_bridge):
    bridge = start_bridge()
    sock = socket.create_connection(address(bridge), timeout=10)
    sock.sendall(f"POST /devices/fake1/install HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {40 * 1024 * 1024}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:300]
    assert b"Content-Type: application/json" in head
    error = json.loads(body)
    assert error["code"] == "payload_too_large" and error["class"] == "input"


@pytest.mark.parametrize("path", ["/devices", "/jobs/0123456789abcdef"])
def test_405_names_the_allowed_methods(start_bridge, path):
    bridge = start_bridge()
    resp = bridge.request("PUT", path)
    assert resp.status_code == 405 and resp.json()["code"] == "bad_request"
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert "GET" in allowed and "PUT" not in allowed
