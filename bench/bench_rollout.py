"""Rollout benchmark: one artifact to 24 virtual Nano 33 BLE boards behind 3 bridges, through a
real ``tinyml-backend serve`` process and real ``tinyml-bridge serve`` processes on loopback.

    .venv/bin/python bench/bench_rollout.py [--bridges 3] [--boards 8] [--max-parallel 8]
                                            [--wave-size 8] [--canary 1]

Measures the wall time of one deployment (one board, the same artifact) and of the rollout to
every board (canary, then waves), and, sampled every 0.2 s during the rollout, the CPU and the
memory of the backend process and of each bridge daemon; the virtual boards (processes standing
in for USB hardware) and the stand-in arduino-cli runs are reported separately, as the
"hardware" side. Prints a table and one JSON line. Bounded: every wait has a deadline; all
processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend_stub.storage import Compilation, Store, Training  # noqa: E402
from bridge.client import LocalBridge  # noqa: E402
from hal.boards import fit_check, get_profile  # noqa: E402
from hal.model.analysis import analyze  # noqa: E402

TOKEN = "bench-rollout-token"
BRIDGE_TOKEN = "bench-bridge-token-0123"
MODEL = REPO / "samples" / "models" / "shapes_int8.tflite"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ /proc


def _stat(pid: int) -> tuple[float, float, int] | None:
    """(own CPU s, CPU s of reaped children, RSS bytes) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / TICK
    reaped = (int(fields[13]) + int(fields[14])) / TICK
    return own, reaped, int(fields[21]) * PAGE


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(x) for x in text]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Sampler:
    """CPU and RSS of a daemon (the root pid) and, apart, of its descendants."""

    def __init__(self, name: str, pid: int) -> None:
        self.name, self.pid = name, pid
        self.start = self._cpu()
        self.peak_rss = 0
        self.peak_tree_rss = 0
        self.desc_cpu: dict[int, float] = {}
        self.desc_start: dict[int, float] = {}

    def _cpu(self) -> tuple[float, float]:
        s = _stat(self.pid)
        return (s[0], s[1]) if s else (0.0, 0.0)

    def sample(self) -> None:
        s = _stat(self.pid)
        if s:
            self.peak_rss = max(self.peak_rss, s[2])
        tree_rss = s[2] if s else 0
        for p in _tree(self.pid)[1:]:
            st = _stat(p)
            if st is None:
                continue
            self.desc_start.setdefault(p, st[0])
            self.desc_cpu[p] = st[0]
            tree_rss += st[2]
        self.peak_tree_rss = max(self.peak_tree_rss, tree_rss)

    def result(self, wall: float) -> dict:
        own0, reaped0 = self.start
        own1, reaped1 = self._cpu()
        daemon_cpu = own1 - own0
        # Children that ended during the run (compiles, uploads) are in the reaped figures;
        # long-lived ones (virtual boards) are sampled.
        helpers = (reaped1 - reaped0) + sum(self.desc_cpu[p] - self.desc_start[p]
                                            for p in self.desc_cpu)
        return {"daemon_cpu_s": round(daemon_cpu, 2),
                "daemon_cpu_pct": round(100 * daemon_cpu / wall, 1),
                "daemon_peak_rss_mb": round(self.peak_rss / 2**20, 1),
                "children_cpu_s": round(helpers, 2),
                "tree_peak_rss_mb": round(self.peak_tree_rss / 2**20, 1)}


# ------------------------------------------------------------------------------ set-up


def start_bridge(work: Path, name: str, boards: int) -> LocalBridge:
    work.mkdir(parents=True)
    tables = "".join(f'[[devices]]\nname = "{name}-{i}"\ndriver = "virtual-nano33ble"\n'
                     for i in range(boards))
    (work / "bridge.toml").write_text(
        f'state_dir = "{work / "state"}"\n[server]\nhost = "127.0.0.1"\nport = 0\n'
        f'token = "{BRIDGE_TOKEN}"\nthreads = 16\n[discovery]\ndrivers = []\n' + tables)
    bridge = LocalBridge(work / "bridge.toml", log_path=work / "bridge.log")
    bridge.start()
    end = time.monotonic() + 60
    h = {"Authorization": f"Bearer {BRIDGE_TOKEN}"}
    while time.monotonic() < end:
        devs = requests.get(f"{bridge.url}/devices", headers=h, timeout=10).json()["devices"]
        if len(devs) == boards and all(d.get("connected") for d in devs):
            return bridge
        time.sleep(0.2)
    raise RuntimeError(f"bridge {name}: boards did not connect")


def start_backend(work: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend_stub", "serve", "--port", "0", "--threads", "16",
         "--database", f"sqlite:///{work / 'backend.sqlite3'}", "--token", TOKEN],
        stdout=subprocess.PIPE, stderr=open(work / "backend.log", "wb"),  # noqa: SIM115
        text=True, start_new_session=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        raise RuntimeError(f"backend did not start: {line!r}")
    return proc, m.group(1)


def insert_artifact(db_url: str) -> int:
    data = MODEL.read_bytes()
    report = analyze(data, board="nano33ble")
    store = Store(db_url)
    try:
        with store.session() as s:
            t = Training(state="succeeded", labels=["blank", "square", "stripes"],
                         params={"image_width": 32, "image_height": 32,
                                 "color_mode": "grayscale"},
                         split={"train": [], "validation": []})
            s.add(t)
            s.flush()
            c = Compilation(training_id=t.id, board="nano33ble", state="succeeded",
                            artifact=data, sha256=hashlib.sha256(data).hexdigest(),
                            report={"model": report.to_dict(), "fit": fit_check(
                                report, get_profile("nano33ble")).to_dict()})
            s.add(c)
            s.flush()
            return c.id
    finally:
        store.dispose()


def wait_end(url: str, path: str, deadline_s: float, on_tick=None) -> dict:
    h = {"Authorization": f"Bearer {TOKEN}"}
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        body = requests.get(f"{url}{path}", headers=h, timeout=30).json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return body
        if on_tick:
            on_tick()
        time.sleep(0.2)
    raise RuntimeError(f"{path} did not end within {deadline_s} s")


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bridges", type=int, default=3)
    ap.add_argument("--boards", type=int, default=8, help="boards per bridge")
    ap.add_argument("--max-parallel", type=int, default=8)
    ap.add_argument("--wave-size", type=int, default=8)
    ap.add_argument("--canary", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds for the rollout")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    bridges: list[LocalBridge] = []
    backend = None
    h = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for b in range(args.bridges):
            bridges.append(start_bridge(work / f"bridge-{b}", f"b{b}", args.boards))
        backend, url = start_backend(work)
        comp = insert_artifact(f"sqlite:///{work / 'backend.sqlite3'}")
        ids = []
        for b, bridge in enumerate(bridges):
            r = requests.post(f"{url}/bridges", headers=h, timeout=10, json={
                "name": f"b{b}", "url": bridge.url, "token": BRIDGE_TOKEN})
            ids.append(r.json()["id"])

        # One deployment (a board that the rollout deploys again later).
        t0 = time.monotonic()
        dep = requests.post(f"{url}/deployments", headers=h, timeout=30, json={
            "compilation_id": comp, "bridge_id": ids[0], "device_id": "b0-0",
            "input_vectors": 0}).json()
        dep = wait_end(url, f"/deployments/{dep['id']}", 120)
        single = time.monotonic() - t0
        assert dep["state"] == "succeeded", dep

        samplers = [Sampler("backend", backend.pid)] + [
            Sampler(f"bridge-{b}", br.pid) for b, br in enumerate(bridges)]
        targets = [{"bridge_id": ids[b], "device_id": f"b{b}-{i}"}
                   for i in range(args.boards) for b in range(args.bridges)]
        t0 = time.monotonic()
        ro = requests.post(f"{url}/rollouts", headers=h, timeout=60, json={
            "compilation_id": comp, "targets": targets, "canary": args.canary,
            "wave_size": args.wave_size, "max_parallel": args.max_parallel,
            "input_vectors": 0}).json()

        def tick() -> None:
            for s in samplers:
                s.sample()

        ro = wait_end(url, f"/rollouts/{ro['id']}", args.deadline, tick)
        wall = time.monotonic() - t0
        tick()
        assert ro["state"] == "succeeded", ro.get("error")
        from datetime import datetime

        per_device = sorted(round((datetime.fromisoformat(t["finished_at"])
                                   - datetime.fromisoformat(t["started_at"])).total_seconds(), 2)
                            for t in ro["targets"])
        usage = {s.name: s.result(wall) for s in samplers}
        result = {
            "machine": f"{os.cpu_count()} CPU, {platform.processor() or platform.machine()}, "
                       f"Python {platform.python_version()}",
            "boards": len(targets), "bridges": args.bridges, "canary": args.canary,
            "wave_size": args.wave_size, "max_parallel": args.max_parallel,
            "waves": ro["params"]["waves"], "one_deployment_s": round(single, 2),
            "rollout_s": round(wall, 2), "ratio": round(wall / single, 2),
            "per_device_median_s": per_device[len(per_device) // 2],
            "per_device_max_s": per_device[-1],
            "usage": usage,
        }
        print(f"one deployment: {single:.2f} s; rollout to {len(targets)} boards behind "
              f"{args.bridges} bridges ({ro['params']['waves']} waves, max {args.max_parallel} "
              f"at once): {wall:.2f} s = {wall / single:.1f} x one deployment")
        print(f"{'process':10} {'cpu s':>7} {'cpu %':>6} {'rss MB':>7} {'children cpu s':>15} "
              f"{'tree rss MB':>12}")
        for name, u in usage.items():
            print(f"{name:10} {u['daemon_cpu_s']:7} {u['daemon_cpu_pct']:6} "
                  f"{u['daemon_peak_rss_mb']:7} {u['children_cpu_s']:15} "
                  f"{u['tree_peak_rss_mb']:12}")
        print(json.dumps(result))
        return 0
    finally:
        if backend is not None:
            backend.send_signal(signal.SIGTERM)
            try:
                backend.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(backend.pid, signal.SIGKILL)
        for br in bridges:
            br.stop()


if __name__ == "__main__":
    sys.exit(main())
