"""Issue 10 item 4 for the backend: idle and slow connections and long-polls cannot starve
/health and ordinary requests. A real ``tinyml-backend serve`` process over a real socket
(the same protection as the bridge's, tests/bridge/test_limits.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.backend.conftest import dataset_entries, make_zip
from tests.sockets import address_of, dribble_header_until_closed, fds

TOKEN = "limits-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class BackendProcess:
    """``tinyml-backend serve --port 0`` as a child process; its log goes to a file (a full
    pipe would stall it)."""

    def __init__(self, tmp: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp / "backend.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend_stub", "serve", "--port", "0", "--database",
             f"sqlite:///{tmp / 'limits.sqlite3'}", "--token", TOKEN, *options],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            self.stop()
            raise AssertionError(f"serve did not start: {line!r}\n{self.log()}")
        self.url = match.group(1)
        self.address = address_of(self.url)

    def get(self, path: str, timeout: float = 10) -> requests.Response:
        return requests.get(self.url + path, headers={**AUTH, "Connection": "close"},
                            timeout=timeout)

    def health(self) -> requests.Response:
        return requests.get(self.url + "/health", headers={"Connection": "close"}, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)
        finally:
            self.proc.stdout.close()
            self._log.close()


def serving(tmp_path: Path, *options: str, env: dict[str, str] | None = None):
    backend = BackendProcess(tmp_path, *options, env=env)
    assert backend.health().status_code == 200
    return backend


# ------------------------------------------------------------- idle connections


def test_idle_connections_do_not_take_health_down(tmp_path):
    """The reproduction: 165 idle TCP connections (1 byte each) took /health down; here
    300, more than the per-client and the total limit."""
    backend = serving(tmp_path)  # the defaults: 256 in total, 64 per client
    try:
        baseline = fds(backend.proc.pid)
        idle = []
        try:
            for _ in range(300):
                sock = socket.create_connection(backend.address, timeout=10)
                sock.sendall(b"G")
                idle.append(sock)
            for _ in range(5):
                resp = backend.health()
                assert resp.status_code == 200 and resp.json()["status"] == "ok"
                assert backend.get("/datasets").status_code == 200
            # Bounded: the per-client limit (64) holds however many the client opens.
            assert fds(backend.proc.pid) <= baseline + 64 + 8, (baseline,
                                                                fds(backend.proc.pid))
        finally:
            for sock in idle:
                sock.close()
        assert "connection limit reached" in backend.log()
    finally:
        assert backend.stop() == 0


def test_total_limit_across_clients(tmp_path):
    # 127.0.0.2 and 127.0.0.3 are different clients on loopback.
    backend = serving(tmp_path, "--max-connections", "40", "--max-connections-per-client",
                      "30", "--header-timeout", "60")
    held = []
    try:
        baseline = fds(backend.proc.pid)
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(30):
                sock = socket.create_connection(backend.address, timeout=10,
                                                source_address=(source, 0))
                sock.sendall(b"GET /health HTTP/1.1\r\n")
                held.append(sock)
        assert backend.health().status_code == 200
        assert fds(backend.proc.pid) <= baseline + 40 + 8, (baseline, fds(backend.proc.pid))
        assert "total connection limit reached" in backend.log()
    finally:
        for sock in held:
            sock.close()
        assert backend.stop() == 0


def test_slow_header_is_cut_off_at_the_header_timeout(tmp_path):
    """The reproduction: a client sending one header byte a second was never cut off."""
    backend = serving(tmp_path, "--header-timeout", "1", "--idle-timeout", "60")
    try:
        # Generous ceiling: the timeout is 1 s, checked every 1 s.
        assert dribble_header_until_closed(backend.address, deadline_s=20)
        assert backend.health().status_code == 200  # an ordinary client is unaffected
    finally:
        assert backend.stop() == 0


# ------------------------------------------------------------------ long-polls


def test_long_polls_are_capped_and_health_stays_up(tmp_path):
    """Long-polls beyond --max-waits get 503 with Retry-After; with every ordinary thread
    (--threads 2) free, /health and other requests keep answering."""
    backend = serving(tmp_path, "--threads", "2", "--max-waits", "4",
                      env={"TINYML_WORKER_FAULT": "hang"})  # the training never ends
    try:
        zipped = make_zip(dataset_entries(per_label=5))
        dataset = requests.post(f"{backend.url}/datasets?name=limits", data=zipped,
                                headers={**AUTH, "Content-Type": "application/zip"},
                                timeout=30)
        assert dataset.status_code == 201, dataset.text
        training = requests.post(f"{backend.url}/trainings", timeout=30, headers=AUTH,
                                 json={"dataset_id": dataset.json()["id"], "epochs": 1})
        assert training.status_code == 202, training.text
        path = f"/trainings/{training.json()['id']}"
        results: list[requests.Response] = []
        lock = threading.Lock()

        def long_poll() -> None:
            resp = requests.get(f"{backend.url}{path}?wait=60", headers=AUTH, timeout=90)
            with lock:
                results.append(resp)

        pollers = [threading.Thread(target=long_poll) for _ in range(10)]
        for t in pollers:
            t.start()
        # Six are refused at once (503, Retry-After); four wait.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with lock:
                if len(results) >= 6:
                    break
            time.sleep(0.05)
        with lock:
            refused = list(results)
        assert len(refused) == 6 and all(r.status_code == 503 for r in refused), refused
        assert all(r.json()["code"] == "unavailable" and int(r.headers["Retry-After"]) > 0
                   for r in refused)
        for _ in range(3):
            assert backend.health().status_code == 200
            assert backend.get("/datasets").status_code == 200
            assert backend.get(path).status_code == 200  # polling without ?wait
        # The waiters answer when the job ends.
        cancel = requests.post(f"{backend.url}{path}/cancel", headers=AUTH, timeout=30)
        assert cancel.status_code == 202, cancel.text
        for t in pollers:
            t.join(60)
        waited = [r for r in results if r.status_code != 503]
        assert len(waited) == 4 and all(r.status_code == 200 for r in waited)
        assert all(r.json()["state"] not in ("queued", "running") for r in waited)
        # The slots are free again.
        assert backend.get(f"{path}?wait=1").status_code == 200
    finally:
        assert backend.stop() == 0
