"""Soak test of both daemons (issue 10 item 8): a bounded mixed load for a fixed time.

    .venv/bin/python bench/soak.py [--duration 600] [--json-only]

Starts a real bridge (``python -m bridge serve``, one virtual Nano 33 BLE running the real
TFLM interpreter, a token) and a real backend (``python -m backend_stub serve``, SQLite, a
token) on loopback, then for ``--duration`` seconds keeps up, against each:

* a ``/health`` prober (one request every 0.2 s on a keep-alive connection): its latencies
  give the p50/p99/max of ``/health`` *during* the load;
* ordinary reads (bridge: devices, jobs, observe; backend: datasets, bridges, deployments,
  the bridge's devices and lines relayed by the backend);
* bridge installs of a real TFLM model (multipart with ``?wait``, JSON without, and the
  legacy ``POST /install/`` with C source), one at a time on the one board;
* live streams (SSE) that read for a few seconds then close, half of them with a TCP reset;
* long-polls (``GET /jobs/ID?wait=5``);
* slow clients (a header byte a second: cut off by the header timeout), vanishing clients
  (half a request, then gone) and uploads abandoned mid-body.

Every second it samples each daemon's threads, open file descriptors and resident memory
(``/proc/PID``): "before" is after a warm-up (first install done), "peak" the maximum during
the load, "after" ten seconds after the load stopped. Prints a table and one JSON line
(``SOAK_JSON {...}``). Bounded: about 20 client threads, loopback only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "data" / "tflm-examples" / "hello_world_int8.tflite"
TOKEN = "soak-token-0123456789abcdef"


# ------------------------------------------------------------------------- daemons


class Daemon:
    """A daemon process started from this checkout; ``url`` once it printed its address."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path,
                 pattern: str) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + 60
        self.url = ""
        while time.monotonic() < end and not self.url:
            if not sel.select(0.2):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            match = re.search(pattern, line)
            if match:
                self.url = match.group(1)
        if not self.url:
            self.stop()
            raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text()[-3000:]}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def sample(self) -> dict[str, float]:
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        return {"threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "rss_mb": round(rss, 1)}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def start_bridge(workdir: Path) -> Daemon:
    config = workdir / "bridge.toml"
    config.write_text(f"""
state_dir = "{workdir / 'bridge-state'}"
[server]
port = 0
token = "{TOKEN}"
[discovery]
drivers = []
[[devices]]
name = "vnano"
driver = "virtual-nano33ble"
serial_number = "SOAK0001"
inference_period_ms = 200
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_")}
    return Daemon("bridge", [sys.executable, "-m", "bridge", "serve", "--config", str(config)],
                  env, workdir, r"tinyml-bridge listening on (http://\S+)")


def start_backend(workdir: Path) -> Daemon:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_")}
    env["TINYML_BACKEND_DATA"] = str(workdir / "backend-data")
    env["TINYML_BACKEND_TOKEN"] = TOKEN
    return Daemon("backend", [sys.executable, "-m", "backend_stub", "serve", "--port", "0"],
                  env, workdir, r"listening on (http://\S+)")


# -------------------------------------------------------------------------- load


class Load:
    """The client threads; each loops until ``stop`` is set and counts what it saw."""

    def __init__(self, bridge: Daemon, backend: Daemon) -> None:
        self.bridge = bridge
        self.backend = backend
        self.stop = threading.Event()
        self.latencies: dict[str, list[float]] = {"bridge": [], "backend": []}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.model = MODEL.read_bytes()
        self.last_job = ""

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def _loop(self, fn, period: float) -> None:
        while not self.stop.is_set():
            try:
                fn()
            except (requests.RequestException, OSError) as exc:
                self.count(f"client error {type(exc).__name__}")
            self.stop.wait(period * random.uniform(0.7, 1.3))

    # ------------------------------------------------------------------ probes

    def health(self, daemon: Daemon) -> None:
        session = requests.Session()  # its own keep-alive connection
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                resp = session.get(daemon.url + "/health", timeout=30)
                ok = resp.status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            self.latencies[daemon.name].append(elapsed)
            self.count(f"{daemon.name} health {'ok' if ok else 'FAILED'}")
            self.stop.wait(0.2)

    def reads(self, daemon: Daemon, paths: list[str]) -> None:
        def once() -> None:
            resp = daemon.session.get(daemon.url + random.choice(paths), timeout=30)
            self.count(f"{daemon.name} read {resp.status_code}")
        self._loop(once, 0.2)

    # ------------------------------------------------------------------ bridge

    def installs(self) -> None:
        kinds = ["multipart", "json", "legacy"]

        def once() -> None:
            kind = random.choice(kinds)
            url = self.bridge.url
            if kind == "multipart":
                resp = self.bridge.session.post(
                    url + "/devices/vnano/install?wait=120", timeout=150,
                    files={"model": ("m.tflite", self.model, "application/octet-stream")})
                if resp.ok:
                    self.last_job = resp.json()["id"]
            elif kind == "json":
                resp = self.bridge.session.post(
                    url + "/devices/vnano/install", timeout=30,
                    json={"model_b64": base64.b64encode(self.model).decode()})
                if resp.ok:
                    self.last_job = resp.json()["id"]
                    self.bridge.session.get(f"{url}/jobs/{self.last_job}?wait=120", timeout=150)
            else:
                rows = ", ".join(f"0x{b:02X}" for b in self.model)
                source = f"const unsigned char model_tflite[] = {{{rows}}};\n"
                resp = self.bridge.session.post(url + "/install/", timeout=150, json={
                    "device": {"serial": "SOAK0001"}, "model": source})
            self.count(f"bridge install {kind} {resp.status_code}")
        self._loop(once, 10.0)

    def streams(self) -> None:
        def once() -> None:
            host, port = self.bridge.url.removeprefix("http://").rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(f"GET /devices/vnano/stream HTTP/1.1\r\nHost: {host}\r\n"
                         f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            end = time.monotonic() + random.uniform(2, 8)
            got = 0
            with contextlib.suppress(OSError):
                while time.monotonic() < end:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk.count(b"event: line")
            if random.random() < 0.5:  # vanish with a reset, as a crashed client would
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
            self.count("bridge stream " + ("with lines" if got else "no lines"))
        self._loop(once, 1.0)

    def long_polls(self) -> None:
        def once() -> None:
            if not self.last_job:
                return
            resp = self.bridge.session.get(f"{self.bridge.url}/jobs/{self.last_job}?wait=5",
                                           timeout=30)
            self.count(f"bridge long-poll {resp.status_code}")
        self._loop(once, 0.5)

    # ------------------------------------------------------------------ hostile

    def slow_client(self, daemon: Daemon) -> None:
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)

        def once() -> None:
            sock = socket.create_connection((host, int(port)), timeout=5)
            header = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000
            try:
                for byte in header:
                    if self.stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    self.stop.wait(1.0)
                    # The server closing shows as EOF (or a reset on the next send).
                    sock.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        if sock.recv(1) == b"":
                            raise ConnectionResetError
                    sock.setblocking(True)
                self.count(f"{daemon.name} slow client not cut off")
            except OSError:
                self.count(f"{daemon.name} slow client cut off")
            finally:
                sock.close()
        self._loop(once, 0.1)

    def vanishing(self, daemon: Daemon, upload_path: str) -> None:
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)

        def once() -> None:
            sock = socket.create_connection((host, int(port)), timeout=5)
            if random.random() < 0.5:  # half a request line, then gone
                sock.sendall(b"GET /health HT")
                self.count(f"{daemon.name} vanished mid-header")
            else:  # an upload abandoned after 100 KB of 2 MB
                sock.sendall(f"POST {upload_path} HTTP/1.1\r\nHost: {host}\r\n"
                             f"Authorization: Bearer {TOKEN}\r\nContent-Type: multipart/"
                             f"form-data; boundary=x\r\nContent-Length: {2 << 20}\r\n\r\n"
                             .encode() + b"--x\r\n" + b"\0" * 100_000)
                self.count(f"{daemon.name} vanished mid-upload")
            sock.close()
        self._loop(once, 0.3)

    def threads(self) -> list[threading.Thread]:
        b, k = self.bridge, self.backend
        bridge_id = k.session.post(k.url + "/bridges", timeout=30, json={
            "name": "soak", "url": b.url, "token": TOKEN}).json()["id"]
        jobs = [
            (self.health, b), (self.health, k),
            (self.reads, b, ["/devices", "/jobs?limit=20", "/devices/vnano/observe?lines=50",
                             "/devices/vnano"]),
            (self.reads, k, ["/datasets", "/bridges", "/deployments", "/trainings",
                             f"/bridges/{bridge_id}/devices",
                             f"/bridges/{bridge_id}/devices/vnano/observe?lines=20"]),
            (self.installs,), (self.streams,), (self.streams,), (self.long_polls,),
            (self.long_polls,), (self.slow_client, b), (self.slow_client, b),
            (self.slow_client, k), (self.slow_client, k),
            (self.vanishing, b, "/devices/vnano/install"), (self.vanishing, k, "/datasets"),
        ]
        return [threading.Thread(target=job[0], args=job[1:], daemon=True) for job in jobs]


# -------------------------------------------------------------------------- main


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(duration: float, quiet: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="tinyml-soak-"))
    bridge = start_bridge(workdir)
    backend = start_backend(workdir)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    try:
        # Warm-up: the first install compiles; both daemons answer once.
        warm = bridge.session.post(
            bridge.url + "/devices/vnano/install?wait=180", timeout=200,
            files={"model": ("m.tflite", MODEL.read_bytes(), "application/octet-stream")})
        say(f"warm-up install: {warm.status_code} {warm.json().get('state')}")
        backend.session.get(backend.url + "/datasets", timeout=30)
        time.sleep(3)
        before = {d.name: d.sample() for d in (bridge, backend)}
        peak = {name: dict(v) for name, v in before.items()}
        load = Load(bridge, backend)
        threads = load.threads()
        for t in threads:
            t.start()
        end = time.monotonic() + duration
        next_report = time.monotonic() + 60
        while time.monotonic() < end:
            time.sleep(1)
            for d in (bridge, backend):
                now = d.sample()
                for key, value in now.items():
                    peak[d.name][key] = max(peak[d.name][key], value)
            if time.monotonic() >= next_report:
                next_report += 60
                say(f"  {int(duration - (end - time.monotonic()))} s: " + ", ".join(
                    f"{n} {v}" for n, v in ((d.name, d.sample()) for d in (bridge, backend))))
        load.stop.set()
        for t in threads:
            t.join(60)
        for d in (bridge, backend):
            d.session.close()
        time.sleep(10)
        after = {d.name: d.sample() for d in (bridge, backend)}
        result = {"duration_s": duration, "counts": dict(sorted(load.counts.items()))}
        for d in (bridge, backend):
            lat = load.latencies[d.name]
            result[d.name] = {
                "before": before[d.name], "peak": peak[d.name], "after": after[d.name],
                "health_requests": len(lat),
                "health_p50_ms": round(percentile(lat, 50), 1),
                "health_p99_ms": round(percentile(lat, 99), 1),
                "health_max_ms": round(max(lat), 1) if lat else None,
                "health_mean_ms": round(statistics.fmean(lat), 1) if lat else None,
            }
    finally:
        codes = {d.name: d.stop() for d in (bridge, backend)}
    result["exit_codes"] = codes
    for d in (bridge, backend):
        text = d.log_path.read_text(errors="replace")
        result[d.name]["tracebacks_in_log"] = text.count("Traceback")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds of load (default 600; the tests use 10)")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    result = run(args.duration, args.json_only)
    if not args.json_only:
        print(f"\nsoak {args.duration:g} s")
        print(f"{'daemon':8} {'':7} {'threads':>8} {'fds':>6} {'RSS MB':>8}")
        for name in ("bridge", "backend"):
            for phase in ("before", "peak", "after"):
                s = result[name][phase]
                print(f"{name:8} {phase:7} {s['threads']:>8} {s['fds']:>6} {s['rss_mb']:>8}")
            r = result[name]
            print(f"{name:8} /health during the load: {r['health_requests']} requests, p50 "
                  f"{r['health_p50_ms']} ms, p99 {r['health_p99_ms']} ms, max "
                  f"{r['health_max_ms']} ms")
        for what, n in result["counts"].items():
            print(f"  {what}: {n}")
    print("SOAK_JSON " + json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
