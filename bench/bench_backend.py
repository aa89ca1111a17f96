"""Backend benchmarks. Prints a small table per part and one JSON line at the end.

    .venv/bin/python bench/bench_backend.py [--part train|upload|all] [options]

train:  training + int8 conversion of the default model on a generated dataset, through the
        backend (API -> worker processes -> database), versus bench/keras_baseline.py doing
        the same work in one plain Keras process. Target: ratio <= 1.15.
upload: upload + validation + storage of a ~50 MB and a ~200 MB zip of images, each into a
        fresh ``tinyml-backend serve`` process: throughput (MB/s) and the server's peak RSS
        (VmHWM from /proc/<pid>/status). Target: the two peaks differ by <= 20 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend_stub.synthetic import shape_image  # noqa: E402

TOKEN = "bench-token"


# ------------------------------------------------------------------------------ training


def bench_train(args: argparse.Namespace, work: Path) -> dict:
    from backend_stub.app import create_app
    from backend_stub.config import BackendConfig, DatasetLimits

    data_dir = work / "shapes"
    entries = {}
    for k, kind in enumerate(("blank", "square", "stripes")):
        (data_dir / kind).mkdir(parents=True)
        for i in range(args.per_label):
            png = shape_image(kind, args.size, 1000 * k + i)
            (data_dir / kind / f"{i:04d}.png").write_bytes(png)
            entries[f"{kind}/{i:04d}.png"] = png
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)

    params = {"epochs": args.epochs, "image_width": args.size, "image_height": args.size,
              "batch_size": args.batch_size, "learning_rate": args.lr}
    # Baseline first (warms the page cache for TensorFlow's files, as it does for the backend
    # run after it; the order is swapped for the second round).
    rounds = []
    for n in range(args.rounds):
        # Alternate the order, so neither side always runs on a warmer machine.
        order = ("baseline", "backend") if n % 2 == 0 else ("backend", "baseline")
        result: dict = {}
        for which in order:
            if which == "baseline":
                t0 = time.monotonic()
                out = subprocess.run(
                    [sys.executable, str(REPO / "bench" / "keras_baseline.py"), str(data_dir),
                     "--epochs", str(args.epochs), "--size", str(args.size), "--batch-size",
                     str(args.batch_size), "--lr", str(args.lr)],
                    capture_output=True, text=True, check=True)
                result["baseline_s"] = round(time.monotonic() - t0, 3)
                result["baseline"] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                db = work / f"bench-{len(rounds)}.sqlite3"
                app = create_app(BackendConfig(database_url=f"sqlite:///{db}", token=TOKEN,
                                               limits=DatasetLimits()))
                c = app.test_client()
                c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
                ds = c.post(f"/datasets?name=b{len(rounds)}", data=buf.getvalue(),
                            content_type="application/zip").get_json()["id"]
                t0 = time.monotonic()
                # One request: train, then compile in the same worker (one TensorFlow start).
                t = c.post("/trainings", json={"dataset_id": ds, "compile_board": "nano33ble",
                                               **params}).get_json()
                tid, cid = t["id"], int(t["links"]["compilation"].rsplit("/", 1)[1])
                t = _wait(c, f"/trainings/{tid}")
                t_train = time.monotonic() - t0
                comp = _wait(c, f"/compilations/{cid}")
                result["backend_s"] = round(time.monotonic() - t0, 3)
                result["backend_train_s"] = round(t_train, 3)
                assert t["state"] == "succeeded" and comp["state"] == "succeeded", (t, comp)
                result["backend_accuracy"] = comp["report"]["accuracy"]
                result["backend_tflite_bytes"] = comp["size_bytes"]
                app.extensions["tinyml_backend"].close()
        result["ratio"] = round(result["backend_s"] / result["baseline_s"], 3)
        rounds.append(result)
    best = min(rounds, key=lambda r: r["ratio"])
    ratios = [r["ratio"] for r in rounds]
    total_backend = sum(r["backend_s"] for r in rounds)
    total_baseline = sum(r["baseline_s"] for r in rounds)
    print(f"\ntraining + int8 conversion, {3 * args.per_label} images {args.size}x{args.size} "
          f"grayscale, {args.epochs} epochs, batch {args.batch_size}")
    print(f"{'round':>5} {'backend s':>10} {'plain keras s':>14} {'ratio':>6} "
          f"{'float acc':>9} {'int8 acc':>8}")
    for i, r in enumerate(rounds):
        a = r["backend_accuracy"]
        print(f"{i + 1:>5} {r['backend_s']:>10.2f} {r['baseline_s']:>14.2f} {r['ratio']:>6.3f} "
              f"{a['float']:>9.4f} {a['int8']:>8.4f}")
    overall = round(total_backend / total_baseline, 3)
    print(f"overall ratio (sum of backend / sum of plain Keras): {overall} (target <= 1.15)")
    return {"rounds": rounds, "ratios": ratios, "ratio_overall": overall,
            "best": best, "target_ratio": 1.15, "images": 3 * args.per_label,
            "epochs": args.epochs, "size": args.size}


def _wait(c, path: str, timeout: float = 3600) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = c.get(f"{path}?wait=1").get_json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return body
    raise TimeoutError(path)


# ------------------------------------------------------------------------------ upload


def make_big_zip(path: Path, target_mb: int, image_size: int) -> tuple[int, int]:
    """Noise PNGs (incompressible) in two labels until the zip reaches ``target_mb``."""
    rng = np.random.default_rng(0)
    n = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        # Reuse a pool of distinct images so generation stays fast.
        pool = []
        for _ in range(64):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), np.uint8)).save(
                buf, "PNG", compress_level=1)
            pool.append(buf.getvalue())
        while path.stat().st_size < target_mb * 1_000_000:
            zf.writestr(f"{'ab'[n % 2]}/{n:06d}.png", pool[n % len(pool)])
            n += 1
            if n % 64 == 0:
                zf.fp.flush()
    return path.stat().st_size, n


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def bench_upload(args: argparse.Namespace, work: Path) -> dict:
    import requests

    results = []
    for mb in args.upload_mb:
        zpath = work / f"upload-{mb}.zip"
        size, count = make_big_zip(zpath, mb, args.upload_image_size)
        db = work / f"upload-{mb}.sqlite3"
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend_stub", "serve", "--port", "0", "--database",
             f"sqlite:///{db}", "--token", TOKEN, "--min-images-per-label", "1",
             "--max-upload-mb", "4096"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
            start_new_session=True)
        try:
            url = re.search(r"(http://\S+)", proc.stdout.readline()).group(1)
            idle_hwm = _status_kb(proc.pid, "VmHWM")
            t0 = time.monotonic()
            with zpath.open("rb") as f:
                r = requests.post(f"{url}/datasets", params={"name": f"d{mb}"}, data=f,
                                  headers={"Authorization": f"Bearer {TOKEN}",
                                           "Content-Type": "application/zip"}, timeout=3600)
            took = time.monotonic() - t0
            assert r.status_code == 201, r.text[:500]
            assert r.json()["images"] == count
            hwm = _status_kb(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        results.append({"zip_mb": round(size / 1e6, 1), "images": count,
                        "seconds": round(took, 2), "mb_per_s": round(size / 1e6 / took, 1),
                        "idle_hwm_mb": round(idle_hwm / 1024, 1),
                        "peak_hwm_mb": round(hwm / 1024, 1)})
        zpath.unlink()
    print("\ndataset upload + validation + storage (fresh server per size, SQLite)")
    print(f"{'zip MB':>7} {'images':>7} {'seconds':>8} {'MB/s':>6} {'idle RSS MB':>11} "
          f"{'peak RSS MB':>11}")
    for r in results:
        print(f"{r['zip_mb']:>7} {r['images']:>7} {r['seconds']:>8} {r['mb_per_s']:>6} "
              f"{r['idle_hwm_mb']:>11} {r['peak_hwm_mb']:>11}")
    peaks = [r["peak_hwm_mb"] for r in results]
    spread = round(max(peaks) - min(peaks), 1)
    print(f"peak RSS spread: {spread} MB (target <= 20 MB)")
    return {"sizes": results, "peak_spread_mb": spread, "target_spread_mb": 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["train", "upload", "all"], default="all")
    ap.add_argument("--per-label", type=int, default=400, help="training images per label")
    ap.add_argument("--size", type=int, default=48, help="image size (the default model's)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--rounds", type=int, default=4,
                    help="measurement rounds (the order alternates each round)")
    ap.add_argument("--upload-mb", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--upload-image-size", type=int, default=128)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tinyml-bench-"))
    out: dict = {"bench": "backend"}
    try:
        if args.part in ("train", "all"):
            out["train"] = bench_train(args, work)
        if args.part in ("upload", "all"):
            out["upload"] = bench_upload(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
