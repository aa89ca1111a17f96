"""Time from training start to a verified, agreement-checked deployment of the digits model,
broken down by step (issue 13). Prints a table per round, the medians, and one JSON line.

    .venv/bin/python bench/bench_digits.py [--rounds 3] [--vectors 30] [--epochs 40]

Each round starts a fresh ``tinyml-backend serve`` process (SQLite) and a fresh
``tinyml-bridge serve`` process with one virtual Nano 33 BLE (its own state, so the sketch
build is not cached from an earlier round), uploads scikit-learn's 8x8 digits (the same
held-out fifth as tests/backend/test_digits.py is left out), then times, from the
``POST /trainings`` (with ``compile_board``: training and int8 compiling in one worker):

    queue+start   POST -> the worker marked the training running
    train         the training's started_at -> finished_at (TensorFlow import, data, epochs)
    compile       the chained compilation's started_at -> finished_at (conversion, accuracy,
                  host int8 outputs of the vectors, fit check)
    deploy:<step> each step of the bridge job (validate, fit_check, render, compile, upload,
                  verify_boot), from the job's own timestamps
    agreement     collecting the board's answers for every vector and comparing them
    total         POST /trainings -> the deployment ended succeeded
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend_stub.synthetic import digits_entries  # noqa: E402
from bridge.client import LocalBridge  # noqa: E402

TOKEN = "bench-token-0123456789"
BRIDGE_TOKEN = "bench-bridge-token-0123"
DEVICE = "vnano-1"
PARAMS = {"image_width": 8, "image_height": 8, "conv_filters": [16, 32], "batch_size": 32,
          "learning_rate": 0.005, "dropout": 0.1, "seed": 1}


def _zip(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Backend:
    def __init__(self, work: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend_stub", "serve", "--port", "0", "--database",
             f"sqlite:///{work / 'backend.sqlite3'}", "--token", TOKEN],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        match = re.search(r"listening on (http://\S+)", self.proc.stdout.readline())
        if not match:
            raise RuntimeError("the backend did not start")
        self.url = match.group(1)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {TOKEN}"

    def call(self, method: str, path: str, **kw) -> dict:
        r = self.http.request(method, self.url + path, timeout=120, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def wait(self, path: str, limit: float = 900) -> dict:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            body = self.call("GET", f"{path}?wait=5")
            if body["state"] in ("succeeded", "failed", "cancelled"):
                return body
        raise RuntimeError(f"{path} did not end")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def one_round(args: argparse.Namespace, work: Path, zip_bytes: bytes) -> dict:
    cfg = work / "bridge.toml"
    cfg.write_text(f'state_dir = "{work / "bridge-state"}"\n[server]\nhost = "127.0.0.1"\n'
                   f'port = 0\ntoken = "{BRIDGE_TOKEN}"\n[discovery]\ndrivers = []\n'
                   f'[[devices]]\nname = "{DEVICE}"\ndriver = "virtual-nano33ble"\n',
                   encoding="utf-8")
    bridge = LocalBridge(cfg, log_path=work / "bridge.log")
    bridge_url = bridge.start()
    backend = Backend(work)
    try:
        ds = backend.call("POST", "/datasets?name=digits", data=zip_bytes,
                          headers={"Content-Type": "application/zip"})
        bid = backend.call("POST", "/bridges", json={"name": "lab", "url": bridge_url,
                                                     "token": BRIDGE_TOKEN})["id"]
        end = time.monotonic() + 30
        while time.monotonic() < end:  # the virtual board attaches
            devs = backend.call("GET", f"/bridges/{bid}/devices")["devices"]
            if any(d.get("id") == DEVICE and d.get("connected") for d in devs):
                break
            time.sleep(0.2)

        t0 = time.time()
        t = backend.call("POST", "/trainings", json={
            "dataset_id": ds["id"], "epochs": args.epochs, "compile_board": "nano33ble",
            **PARAMS})
        t = backend.wait(f"/trainings/{t['id']}")
        comp = backend.wait(t["links"]["compilation"])
        if comp["state"] != "succeeded":
            raise RuntimeError(f"compilation {comp['state']}: {comp.get('error')}")
        t_dep = time.time()
        dep = backend.call("POST", "/deployments", json={
            "compilation_id": comp["id"], "bridge_id": bid, "device_id": DEVICE,
            "input_vectors": args.vectors})
        dep = backend.wait(f"/deployments/{dep['id']}")
        t_end = time.time()
        if dep["state"] != "succeeded":
            raise RuntimeError(f"deployment {dep['state']}: {dep.get('error')}")
        steps = {"queue+start": _ts(t["started_at"]) - t0,
                 "train": _ts(t["finished_at"]) - _ts(t["started_at"]),
                 "compile": _ts(comp["finished_at"]) - _ts(comp["started_at"]),
                 "deploy:request": _ts(dep["started_at"]) - t_dep}
        for s in dep["bridge_job"]["steps"]:
            steps[f"deploy:{s['name']}"] = _ts(s["finished_at"]) - _ts(s["started_at"])
        agr = dep["agreement"]
        steps["agreement"] = agr["seconds"]
        steps["total"] = t_end - t0
        acc = comp["report"]["accuracy"]
        return {"steps": {k: round(v, 3) for k, v in steps.items()},
                "epochs": args.epochs, "train_epoch_s": round(sum(
                    e["seconds"] for e in backend.call(
                        "GET", f"/trainings/{t['id']}/metrics")["epochs"]), 3),
                "float": acc["float"], "int8": acc["int8"],
                "validation_samples": acc["validation_samples"],
                "exact_output_match_rate": agr["exact_output_match_rate"],
                "label_match_rate": agr["label_match_rate"],
                "device_accuracy": agr["device_accuracy"], "vectors": agr["vectors"]}
    finally:
        backend.stop()
        bridge.stop(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vectors", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    import numpy as np

    train_idx, _held = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y,
                                        random_state=0)
    zip_bytes = _zip(digits_entries(train_idx))
    rounds = []
    for n in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-digits-") as tmp:
            r = one_round(args, Path(tmp), zip_bytes)
        rounds.append(r)
        print(f"round {n + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["steps"].items()))
        print(f"  float {r['float']:.4f}, int8 {r['int8']:.4f} on {r['validation_samples']} "
              f"validation images; on the board: exact outputs {r['exact_output_match_rate']},"
              f" labels {r['label_match_rate']}, accuracy {r['device_accuracy']} "
              f"({r['vectors']} vectors)")
    names = list(rounds[0]["steps"])
    medians = {k: round(statistics.median(r["steps"][k] for r in rounds), 2) for k in names}
    print("\nstep                     median (s)   min    max")
    for k in names:
        vals = [r["steps"][k] for r in rounds]
        print(f"{k:24s} {medians[k]:9.2f} {min(vals):7.2f} {max(vals):6.2f}")
    print(json.dumps({"bench": "digits_to_agreement", "rounds": rounds, "median_s": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
