"""Benchmarks of the bridge daemon (issue 5), run against real daemon processes on loopback.

    .venv/bin/python bench/bench_bridge.py [--quick] [--json-only]

Measures, and compares with the targets:

* ``start_to_ready_s``  exec of ``tinyml-bridge serve`` to ``/health`` answering (<= 1.5 s),
  median and worst of several starts;
* ``idle_rss_mb``       the daemon's resident memory (VmRSS from /proc) a few seconds after
  start with one virtual board, and again after all the load below (<= 60 MB);
* ``devices_p99_ms``    ``GET /devices`` latency with 50 concurrent keep-alive clients, both
  closed-loop (each client sends its next request as soon as it has the answer: saturation)
  and paced (each client 10 requests/s) (<= 20 ms);
* ``sse_p99_ms``        time from a line written on a device's serial port to each of 100 SSE
  subscribers parsing it, and how many lines subscribers that kept up lost (<= 20 ms, 0).
  The port is a pseudo-terminal the bench writes into, configured as a ``nano33ble`` device
  with ``port = /dev/pts/N``: the line takes the product's own path (the Nano driver's
  observer thread, PortLink, LineSplitter, the bridge's stream hub, waitress). Each line is an
  inference line whose label is CLOCK_MONOTONIC in ns at the write (one clock for every
  process on the machine); each subscriber subtracts it from its own clock on receipt. The
  daemon runs with ``max_streams = 128`` (waitress gives each stream a thread of its own);
  also measured with 1 and 10 subscribers and at 20 and 500 lines/s;
* ``churn``             10,000 requests with clients opening and dropping streams: the
  daemon's thread and open-file counts before and after (no growth).

Every client is on 127.0.0.1. Load generators are raw-socket HTTP/1.1 clients spread over
worker processes, so the measuring side costs little CPU next to the daemon (the machine's
cores are shared with it: the figures include that contention). Prints a table and one JSON
line (``BENCH_JSON {...}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import re
import secrets
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.client import BridgeClient, LocalBridge  # noqa: E402

TARGETS = {
    "start_to_ready_s": 1.5,
    "idle_rss_mb": 60.0,
    "devices_p99_ms": 20.0,
    "sse_p99_ms": 20.0,
}
PTY_DEVICE = "pty-nano"
VIRTUAL_DEVICE = "vnano-1"


# ------------------------------------------------------------------------------ /proc


def proc_stats(pid: int) -> dict[str, Any]:
    """Resident memory, threads and open files of one process."""
    rss_kb = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_streams_released(pid: int, fds: int, timeout: float = 20.0) -> None:
    """Wait until the daemon's open files are back to ``fds`` (its streams noticed their
    clients left), so the next measurement does not hit the stream limit."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc_stats(pid)["fds"] > fds:
        time.sleep(0.2)
    # A stream's thread lets go of its slot when it next looks (about every second) even
    # after waitress closed the socket.
    time.sleep(2.5)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the virtual board and its MCU process, for instance)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += proc_stats(p)["rss_mb"]
    return round(total, 1)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# --------------------------------------------------------------------------- set-up


def write_config(path: Path, work: Path, token: str, *, pty_port: str | None,
                 virtual: bool, server_extra: str = "", observe_extra: str = "") -> Path:
    devices = ""
    if virtual:
        devices += f'\n[[devices]]\nname = "{VIRTUAL_DEVICE}"\ndriver = "virtual-nano33ble"\n'
    if pty_port:
        # The real Nano 33 BLE driver, pointed at the bench's pseudo-terminal: the lines take
        # the product's serial read path (PortLink, LineSplitter, observer thread).
        devices += f'\n[[devices]]\nname = "{PTY_DEVICE}"\ndriver = "nano33ble"\n' \
                   f'port = "{pty_port}"\n'
    path.write_text(f"""state_dir = "{work / 'state'}"

[server]
host = "127.0.0.1"
port = 0
token = "{token}"
{server_extra}

[discovery]
drivers = []

[observe]
{observe_extra}
{devices}""")
    return path


class PtyWriter:
    """The bench's end of a pseudo-terminal the bridge reads as a serial port."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.seq = 0

    def write_line(self) -> None:
        """One inference line stamped with CLOCK_MONOTONIC (shared by all processes)."""
        self.seq += 1
        now = time.monotonic_ns()
        line = (f'{{"t":"inf","n":{self.seq},"us":100,"out":[0.1,0.9],"top":1,'
                f'"label":"{now}"}}\n').encode()
        os.write(self.master, line)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


# ------------------------------------------------------------------- raw HTTP client


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 GET client on a raw socket (cheap on the client side)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return sock

    def get(self, path: str) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = self._connect()
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {self.token}\r\n\r\n").encode()
        try:
            self.sock.sendall(req)
            return self._response()
        except (ConnectionError, TimeoutError, OSError):
            self.close()
            self.sock = self._connect()
            self.sock.sendall(req)
            return self._response()

    def _recv(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed")
        self.buf += chunk

    def _response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < length:
            self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# --------------------------------------------------------------- GET /devices load


def _devices_worker(port: int, token: str, threads: int, start_at: float, seconds: float,
                    interval: float | None, out: mp.Queue) -> None:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        conn = RawHTTP(port, token)
        mine, bad = [], 0
        next_at = start_at + (random.random() * interval if interval else 0)
        while time.monotonic() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while True:
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += interval
            t0 = time.perf_counter()
            if t0 > end and time.monotonic() > end:
                break
            status, _ = conn.get("/devices")
            mine.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                bad += 1
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((lat, errors[0]))


def bench_devices(pid: int, port: int, token: str, clients: int, seconds: float,
                  interval: float | None, procs: int = 2) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    start_at = time.monotonic() + 0.5
    cpu0 = cpu_seconds(pid)
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [ctx.Process(target=_devices_worker,
                           args=(port, token, n, start_at, seconds, interval, out))
               for n in per]
    for w in workers:
        w.start()
    lat: list[float] = []
    errors = 0
    for _ in workers:
        got, bad = out.get(timeout=seconds + 60)
        lat += got
        errors += bad
    for w in workers:
        w.join(10)
    daemon_cpu = (cpu_seconds(pid) - cpu0) / (seconds + 0.5)
    return {"clients": clients, "per_client_rps": None if not interval else round(1 / interval),
            "daemon_cpu_cores": round(daemon_cpu, 2), "requests": len(lat), "errors": errors,
            "rps": round(len(lat) / seconds), "p50_ms": round(pct(lat, 50), 2),
            "p90_ms": round(pct(lat, 90), 2), "p99_ms": round(pct(lat, 99), 2),
            "max_ms": round(max(lat), 2) if lat else None}


# ----------------------------------------------------------------------- SSE clients

_LINE_RE = re.compile(rb'"kind":"inference","seq":(\d+),.*?"label":"(\d+)"')


def _sse_worker(port: int, token: str, count: int, device: str, ready: Any, stop: Any,
                out: mp.Queue) -> None:
    """``count`` SSE subscribers multiplexed with a selector; each records the seqs it got,
    the latency of each line and the lines it was told it lost."""
    sel = selectors.DefaultSelector()
    subs = []
    req = (f"GET /devices/{device}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode()
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(req)
        sock.setblocking(False)
        state = {"i": i, "buf": b"", "head": False, "seqs": [], "lat": [], "dropped": 0,
                 "status": None, "ready": False}
        subs.append(state)
        sel.register(sock, selectors.EVENT_READ, state)
    ready_count = 0
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            st = key.data
            try:
                chunk = key.fileobj.recv(262144)
            except BlockingIOError:
                continue
            now = time.monotonic_ns()
            if not chunk:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                st["closed"] = True
                continue
            st["buf"] += chunk
            if not st["head"]:
                if b"\r\n\r\n" not in st["buf"]:
                    continue
                head, st["buf"] = st["buf"].split(b"\r\n\r\n", 1)
                st["status"] = int(head.split()[1])
                st["head"] = True
            *events, st["buf"] = st["buf"].split(b"\n\n")
            for ev in events:
                if not st["ready"]:
                    st["ready"] = True
                    ready_count += 1
                    with ready.get_lock():
                        ready.value += 1
                if b"event: dropped" in ev:
                    st["dropped"] += int(json.loads(ev.split(b"data: ", 1)[1])["count"])
                    continue
                m = _LINE_RE.search(ev)
                if m:
                    st["seqs"].append(int(m.group(1)))
                    st["lat"].append((now - int(m.group(2))) / 1e6)
            # Transfer-encoding chunk sizes between events are harmless noise for the regex.
        if ready_count < count:
            # Waitress answers chunked: the first "retry:" event marks a live subscription.
            for st in subs:
                if not st["ready"] and st["head"] and st["status"] != 200:
                    st["ready"] = True
                    ready_count += 1
                    with ready.get_lock():
                        ready.value += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    out.put([{k: s[k] for k in ("seqs", "lat", "dropped", "status")} for s in subs])


def bench_sse(pid: int, port: int, token: str, writer: PtyWriter, subscribers: int,
              rate: float, seconds: float, procs: int = 4) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    ready = ctx.Value("i", 0)
    stop = ctx.Event()
    per = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    workers = [ctx.Process(target=_sse_worker,
                           args=(port, token, n, PTY_DEVICE, ready, stop, out)) for n in per]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30
    while ready.value < subscribers and time.monotonic() < deadline:
        time.sleep(0.02)
    connected = ready.value
    time.sleep(0.3)
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    first = writer.seq + 1
    interval = 1.0 / rate
    n_lines = int(rate * seconds)
    next_at = time.monotonic()
    for _ in range(n_lines):
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        writer.write_line()
        next_at += interval
    last = writer.seq
    daemon_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    time.sleep(1.5)  # let the last lines arrive
    stop.set()
    results = []
    for _ in workers:
        results += out.get(timeout=60)
    for w in workers:
        w.join(10)
    lat: list[float] = []
    kept_up = lost_by_keepers = complete = 0
    dropped_total = 0
    statuses: dict[str, int] = {}
    expected = set(range(first, last + 1))
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        if r["status"] != 200:
            continue
        mine = [(s, la) for s, la in zip(r["seqs"], r["lat"], strict=True) if s >= first]
        lat += [la for _, la in mine]
        got = {s for s, _ in mine}
        dropped_total += r["dropped"]
        if r["dropped"] == 0:
            kept_up += 1
            lost_by_keepers += len(expected - got)
        if got >= expected:
            complete += 1
    return {"subscribers": subscribers, "connected": connected, "statuses": statuses,
            "rate_lines_s": rate, "lines": len(expected), "deliveries": len(lat),
            "p50_ms": round(pct(lat, 50), 2), "p90_ms": round(pct(lat, 90), 2),
            "p99_ms": round(pct(lat, 99), 2), "max_ms": round(max(lat), 2) if lat else None,
            "kept_up": kept_up, "lost_by_keepers": lost_by_keepers,
            "complete": complete, "dropped_reported": dropped_total,
            "daemon_cpu_cores": round(daemon_cpu, 2)}


# ---------------------------------------------------------------------------- churn


def _churn_worker(port: int, token: str, threads: int, per_thread: int, seed: int,
                  out: mp.Queue) -> None:
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def client(k: int) -> None:
        rnd = random.Random(seed * 1000 + k)
        conn = RawHTTP(port, token)
        mine: dict[str, int] = {}
        for _ in range(per_thread):
            roll = rnd.random()
            try:
                if roll < 0.25:
                    kind = _one_stream(port, token, rnd)
                else:
                    path = rnd.choice(["/devices", "/health", f"/devices/{PTY_DEVICE}",
                                       f"/devices/{PTY_DEVICE}/observe?lines=20",
                                       "/jobs?limit=5", "/devices/no-such-device"])
                    status, _ = conn.get(path)
                    kind = f"GET {status}"
            except OSError as exc:
                kind = f"client error {type(exc).__name__}"
                conn.close()
            mine[kind] = mine.get(kind, 0) + 1
        conn.close()
        with lock:
            for key, value in mine.items():
                counts[key] = counts.get(key, 0) + value

    pool = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(counts)


def _one_stream(port: int, token: str, rnd: random.Random) -> str:
    """Open a stream, read a little of it, and go away -- politely or with a reset."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        resume = f"Last-Event-ID: {rnd.randint(0, 50)}\r\n" if rnd.random() < 0.5 else ""
        sock.sendall((f"GET /devices/{PTY_DEVICE}/stream HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {token}\r\n{resume}\r\n").encode())
        data = b""
        want = rnd.choice([1, 200, 2000])
        while len(data) < want:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "?"
        if rnd.random() < 0.5:  # abortive close: RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00"
                            b"\x00\x00")
        return f"stream {status}"
    finally:
        sock.close()


def bench_churn(bridge: LocalBridge, port: int, token: str, writer: PtyWriter, total: int,
                clients: int = 20, procs: int = 2) -> dict[str, Any]:
    pid = bridge.pid
    # Warm up: every worker thread and lazily built structure exists before the baseline.
    warm = RawHTTP(port, token)
    for _ in range(200):
        warm.get("/devices")
    warm.close()
    time.sleep(2)
    before = proc_stats(pid)
    stop = threading.Event()

    def keep_writing() -> None:  # a device that talks, as a board does
        while not stop.is_set():
            writer.write_line()
            stop.wait(0.05)

    feeder = threading.Thread(target=keep_writing, daemon=True)
    feeder.start()
    peak = dict(before)

    def sample() -> None:
        while not stop.is_set():
            try:
                now = proc_stats(pid)
            except OSError:
                return
            peak["threads"] = max(peak["threads"], now["threads"])
            peak["fds"] = max(peak["fds"], now["fds"])
            peak["rss_mb"] = max(peak["rss_mb"], now["rss_mb"])
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    per_thread = total // clients
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    t0 = time.monotonic()
    workers = [ctx.Process(target=_churn_worker, args=(port, token, n, per_thread, i, out))
               for i, n in enumerate(per)]
    for w in workers:
        w.start()
    counts: dict[str, int] = {}
    for _ in workers:
        for k, v in out.get(timeout=600).items():
            counts[k] = counts.get(k, 0) + v
    for w in workers:
        w.join(10)
    took = time.monotonic() - t0
    # Give the daemon time to notice the last dropped clients (it checks about every second).
    settle_until = time.monotonic() + 15
    after = proc_stats(pid)
    while time.monotonic() < settle_until and (after["threads"] > before["threads"]
                                               or after["fds"] > before["fds"]):
        time.sleep(0.5)
        after = proc_stats(pid)
    stop.set()
    feeder.join(2)
    sampler.join(2)
    return {"requests": sum(counts.values()), "seconds": round(took, 1),
            "outcomes": dict(sorted(counts.items())), "before": before, "peak": peak,
            "after": after, "thread_growth": after["threads"] - before["threads"],
            "fd_growth": after["fds"] - before["fds"]}


# ----------------------------------------------------------------------------- main


def bench_start(work: Path, env: dict[str, str], runs: int) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    times, codes = [], []
    for i in range(runs):
        state = work / f"start{i}"
        state.mkdir()
        config = write_config(work / f"start{i}.toml", state, token, pty_port=None,
                              virtual=True)
        bridge = LocalBridge(config, env=env, log_path=work / f"start{i}.log")
        bridge.start()
        times.append(bridge.ready_s or float("nan"))
        codes.append(bridge.stop(timeout=20))
    return {"runs": runs, "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3), "all_s": [round(t, 3) for t in times],
            "sigterm_exit_codes": codes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (for a smoke test)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", default="start,idle,devices,sse,churn",
                        help="comma-separated sections to run (default: all)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    quick = args.quick
    work = Path(tempfile.mkdtemp(prefix="tinyml-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_BRIDGE_")}
    # Other work on the machine shares its cores with the daemon: record how busy it was.
    results: dict[str, Any] = {"host": {"cpus": os.cpu_count(),
                                        "python": sys.version.split()[0],
                                        "loadavg_start": os.getloadavg()[0]}}
    writer = PtyWriter()
    bridge: LocalBridge | None = None
    try:
        if "start" in only:
            print("start to ready ...", flush=True)
            results["start"] = bench_start(work, env, 3 if quick else 7)

        # One daemon for the rest: a virtual board (as in the demo) and the bench's pty.
        # 100 live streams need max_streams >= 100: waitress runs each stream on a thread
        # of its own (the daemon starts threads + max_streams of them).
        token = secrets.token_urlsafe(24)
        config = write_config(work / "bench.toml", work, token, pty_port=writer.port,
                              virtual=True, server_extra="max_streams = 128",
                              observe_extra="ping_s = 15.0")
        bridge = LocalBridge(config, env=env, log_path=work / "bench.log")
        url = bridge.start()
        port = int(url.rsplit(":", 1)[1])
        client = BridgeClient(url, token)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                d.get("connected") for d in client.devices()):
            time.sleep(0.1)
        time.sleep(3)
        results["idle"] = {"daemon": proc_stats(bridge.pid),
                           "with_children_rss_mb": tree_rss_mb(bridge.pid)}
        if "idle" in only:
            print("idle memory ...", flush=True)
            # Default server settings (8 threads + 32 streams), three device sets.
            results["idle_default_config"] = {}
            for name, pty_port, virtual in (("no devices", None, False),
                                            ("one nano33ble", writer.port, False),
                                            ("one virtual board", None, True)):
                state = work / f"idle-{len(results['idle_default_config'])}"
                state.mkdir()
                cfg = write_config(state / "bridge.toml", state, token, pty_port=pty_port,
                                   virtual=virtual)
                with LocalBridge(cfg, env=env, log_path=state / "bridge.log") as daemon:
                    time.sleep(4)
                    results["idle_default_config"][name] = {
                        **proc_stats(daemon.pid),
                        "with_children_rss_mb": tree_rss_mb(daemon.pid)}

        secs = 3 if quick else 8
        if "devices" in only:
            print("GET /devices, 50 clients ...", flush=True)
            results["devices"] = []
            for interval in (1.0, 0.5, 0.2, 0.1, None):  # 1, 2, 5, 10 req/s each; closed
                results["devices"].append(bench_devices(bridge.pid, port, token, 50, secs,
                                                        interval))

        base_fds = proc_stats(bridge.pid)["fds"]
        if "sse" in only:
            print("SSE subscribers ...", flush=True)
            results["sse"] = []
            for subs, rate, length in ((1, 100.0, secs), (10, 100.0, secs),
                                       (100, 100.0, secs), (100, 20.0, secs),
                                       (100, 500.0, 2 if quick else 4)):
                wait_streams_released(bridge.pid, base_fds)
                results["sse"].append(bench_sse(bridge.pid, port, token, writer, subs, rate,
                                                length, procs=min(4, subs)))
            wait_streams_released(bridge.pid, base_fds)

        if "churn" in only:
            print("churn, 10,000 requests ...", flush=True)
            results["churn"] = bench_churn(bridge, port, token, writer,
                                           2000 if quick else 10000)
        time.sleep(2)
        results["after_load"] = {"daemon": proc_stats(bridge.pid)}
        client.close()
        results["bench_daemon_sigterm_exit"] = bridge.stop(timeout=30)
    finally:
        if bridge is not None and bridge.returncode is None:
            bridge.stop(timeout=10)
        writer.close()
        if args.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["host"]["loadavg_end"] = os.getloadavg()[0]
    report(results)
    return 0


def report(r: dict[str, Any]) -> None:
    rows = []

    def row(name: str, value: Any, target: str, ok: bool | None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        rows.append((name, str(value), target, verdict))

    host = r["host"]
    row("host", f"{host['cpus']} CPUs, load average {host['loadavg_start']:.1f} at start, "
        f"{host.get('loadavg_end', 0):.1f} at end", "", None)
    if "start" in r:
        s = r["start"]
        row(f"start to ready (median / max of {s['runs']})",
            f"{s['median_s']:.3f} / {s['max_s']:.3f} s", "<= 1.5 s",
            s["max_s"] <= TARGETS["start_to_ready_s"])
    for name, idle in r.get("idle_default_config", {}).items():
        row(f"idle RSS, default config, {name}", f"{idle['rss_mb']} MB ({idle['threads']} "
            f"threads; {idle['with_children_rss_mb']} MB with child processes)", "<= 60 MB",
            idle["rss_mb"] <= TARGETS["idle_rss_mb"])
    bench_idle = r["idle"]["daemon"]
    row("idle RSS, bench config (max_streams 128)", f"{bench_idle['rss_mb']} MB "
        f"({bench_idle['threads']} threads)", "<= 60 MB",
        bench_idle["rss_mb"] <= TARGETS["idle_rss_mb"])
    row("RSS after all the load", f"{r['after_load']['daemon']['rss_mb']} MB", "", None)
    for d in r.get("devices", []):
        how = (f"50 clients x {d['per_client_rps']} req/s" if d["per_client_rps"]
               else "50 clients closed loop")
        row(f"GET /devices {how} p50/p99",
            f"{d['p50_ms']} / {d['p99_ms']} ms ({d['rps']} req/s served, daemon "
            f"{d['daemon_cpu_cores']} cores, {d['errors']} errors)", "p99 <= 20 ms",
            d["p99_ms"] <= TARGETS["devices_p99_ms"])
    for d in r.get("sse", []):
        row(f"serial->SSE {d['subscribers']} subs x {d['rate_lines_s']:g} lines/s p50/p99",
            f"{d['p50_ms']} / {d['p99_ms']} ms (max {d['max_ms']}, daemon "
            f"{d['daemon_cpu_cores']} cores)", "p99 <= 20 ms" if d["subscribers"] == 100
            else "", d["p99_ms"] <= TARGETS["sse_p99_ms"] if d["subscribers"] == 100 else None)
        row("  lines lost by subscribers that kept up",
            f"{d['lost_by_keepers']} ({d['kept_up']}/{d['connected']} kept up, "
            f"{d['dropped_reported']} drops reported, statuses {d['statuses']})", "0",
            d["lost_by_keepers"] == 0)
    c = r.get("churn")
    if c:
        churn_rows(row, c)
    width = [max(len(x[i]) for x in rows) for i in range(4)]
    for name, value, target, verdict in rows:
        print(f"{name:<{width[0]}}  {value:<{width[1]}}  {target:<{width[2]}}  {verdict}")
    print("BENCH_JSON " + json.dumps(r, separators=(",", ":")))


def churn_rows(row: Any, c: dict[str, Any]) -> None:
    row(f"churn {c['requests']} requests: threads before/peak/after",
        f"{c['before']['threads']} / {c['peak']['threads']} / {c['after']['threads']}",
        "no growth", c["thread_growth"] <= 0)
    row("  open files before/peak/after",
        f"{c['before']['fds']} / {c['peak']['fds']} / {c['after']['fds']}", "no growth",
        c["fd_growth"] <= 0)


if __name__ == "__main__":
    sys.exit(main())
