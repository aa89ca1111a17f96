"""Idle connections and long-polls against /health (issue 10 item 4).

    .venv/bin/python bench/bench_exhaustion.py

Measures the latency of ``GET /health`` (50 requests, each on a new connection) on a real
bridge: alone, while 300 idle TCP connections (1 byte each) are held open, and while 40 clients
long-poll a running job (``GET /jobs/ID?wait=40``). For comparison, the same 300 idle
connections against plain waitress with the settings the bridge used before issue 10
(``connection_limit`` 160, no eviction): there ``/health`` gets no answer at all. Prints a
table and one JSON line (``BENCH_JSON {...}``).
"""

from __future__ import annotations

import json
import os
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


def start(argv: list[str], pattern: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_")}
    log = open(workdir / f"{len(os.listdir(workdir))}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log,
                            text=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if sel.select(0.2):
            match = re.search(pattern, proc.stdout.readline())
            if match:
                return proc, match.group(1)
        elif proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{argv} did not start")


def health_ms(url: str, count: int = 50, timeout: float = 10.0) -> dict:
    times, failed = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            ok = requests.get(url + "/health", timeout=timeout,
                              headers={"Connection": "close"}).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            times.append((time.perf_counter() - started) * 1000)
        else:
            failed += 1
            if failed >= 3:
                break
    if not times:
        return {"answered": 0, "failed": failed}
    times.sort()
    return {"answered": len(times), "failed": failed,
            "p50_ms": round(statistics.median(times), 1),
            "p99_ms": round(times[min(len(times) - 1, round(0.99 * (len(times) - 1)))], 1)}


def idle(url: str, count: int = 300) -> list[socket.socket]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"G")
        socks.append(sock)
    return socks


PLAIN_WAITRESS = """
import sys
from waitress import create_server
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
server = create_server(app, host="127.0.0.1", port=0, threads=40, connection_limit=160)
print(f"listening on http://127.0.0.1:{server.effective_port}", flush=True)
server.run()
"""


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tinyml-exhaust-"))
    config = workdir / "bridge.toml"
    config.write_text(f'state_dir = "{workdir / "state"}"\n[server]\nport = 0\n'
                      "[discovery]\ndrivers = []\n[[devices]]\nname = \"vslow\"\n"
                      "driver = \"virtual-nano33ble\"\ncompile_delay_s = 120\n")
    results: dict[str, dict] = {}
    proc, url = start([sys.executable, "-m", "bridge", "serve", "--config", str(config)],
                      r"tinyml-bridge listening on (http://\S+)", workdir)
    try:
        results["bridge alone"] = health_ms(url)
        socks = idle(url)
        results["bridge, 300 idle connections"] = health_ms(url)
        for sock in socks:
            sock.close()
        job = requests.post(url + "/devices/vslow/install", timeout=30,
                            files={"model": ("m.tflite", MODEL.read_bytes())}).json()
        statuses: list[int] = []

        def poll() -> None:
            try:
                statuses.append(requests.get(f"{url}/jobs/{job['id']}?wait=40",
                                             timeout=60).status_code)
            except requests.RequestException:
                statuses.append(0)

        pollers = [threading.Thread(target=poll) for _ in range(40)]
        for t in pollers:
            t.start()
        time.sleep(1)
        results["bridge, 40 long-polls"] = health_ms(url)
        requests.delete(f"{url}/jobs/{job['id']}", timeout=30)
        for t in pollers:
            t.join(60)
        results["bridge, 40 long-polls"]["poll_statuses"] = {
            str(s): statuses.count(s) for s in sorted(set(statuses))}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    plain, purl = start([sys.executable, "-c", PLAIN_WAITRESS], r"listening on (http://\S+)",
                        workdir)
    try:
        socks = idle(purl)
        results["plain waitress (connection_limit 160), 300 idle"] = health_ms(purl, 5)
        for sock in socks:
            sock.close()
    finally:
        plain.kill()
        plain.wait(10)
    print(f"{'case':52} {'answered':>8} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for name, r in results.items():
        print(f"{name:52} {r['answered']:>8} {r['failed']:>6} {r.get('p50_ms', '-'):>7} "
              f"{r.get('p99_ms', '-'):>7}  {r.get('poll_statuses', '')}")
    print("BENCH_JSON " + json.dumps({"exhaustion": results}, separators=(",", ":")))


if __name__ == "__main__":
    main()
