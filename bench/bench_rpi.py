"""Benchmark: Raspberry Pi driver against a real OpenSSH server on loopback (run as root: it
starts the test sshd and its users, see tests/rpi/sshd.py).

    .venv/bin/python bench/bench_rpi.py [--runs N]

1. Deploy of a ~1 MB and a ~10 MB model (valid float32 Dense models made with TensorFlow,
   cached under /tmp) versus OpenSSH ``scp`` of the same file to the same server, side by side:
   the full verified install on a fresh connection (connect, preflight, upload, hash check,
   runner start, boot verification) and its upload step alone (transfer + hash check on the
   target + rename). Target: at most 1.5x scp.
2. Redeploy of an unchanged model (upload skipped, runner restarted and verified). Target:
   at most 0.5 s.
3. Runner overhead: the latency the runner reports (invoke() alone, as printed in its inference
   lines) and its loop throughput (set input, invoke, read, print) versus a bare invoke() loop on
   the same model and interpreter in this process. Target: at most 1.1x.

Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hal.deadline import Deadline  # noqa: E402
from hal.driver import DriverContext, InstallRequest, build_driver  # noqa: E402
from hal.protocol import InferenceLine, parse_line  # noqa: E402
from tests.rpi.sshd import start_sshd  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "tinyml-bench-models"


def big_model(units: int) -> bytes:
    """A float32 Dense(units) over `units` inputs: about 4*units^2 bytes of weights."""
    path = CACHE / f"dense_{units}.tflite"
    if path.exists():
        return path.read_bytes()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    inp = tf.keras.Input(shape=(units,), batch_size=1)
    out = tf.keras.layers.Dense(units)(inp)
    keras_model = tf.keras.Model(inp, out)
    data = tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def scp_seconds(sshd, known_hosts: Path, data: bytes, dest: str) -> float:
    src = CACHE / "scp-src.bin"
    src.write_bytes(data)
    started = time.monotonic()
    subprocess.run(["scp", "-q", "-i", str(sshd.client_key), "-o",
                    f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes",
                    "-P", str(sshd.port), str(src), f"tinyml-pi@{sshd.host}:{dest}"],
                   check=True, timeout=120)
    return time.monotonic() - started


def runner_vs_bare(drv, data: bytes, seconds: float = 3.0) -> tuple[float, float, float,
                                                                    float]:
    """(runner median latency us, runner inferences/s, bare median us, bare inferences/s)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    rep = drv.install(InstallRequest(model=data), Deadline(60))
    time.sleep(seconds)
    drv.stop_runner(Deadline(10))
    log = Path(drv._facts.workdir) / "models" / rep.model_sha256 / "runner.log"
    infs = [x for x in map(parse_line, log.read_text().splitlines())
            if isinstance(x, InferenceLine)]
    runner_us = statistics.median(x.latency_us for x in infs[50:])
    runner_rate = len(infs) / seconds  # approximate: includes the start-up

    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    x = np.zeros(detail["shape"], dtype=detail["dtype"])
    out_index = interp.get_output_details()[0]["index"]
    lat = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        interp.set_tensor(detail["index"], x)
        t0 = time.perf_counter_ns()
        interp.invoke()
        lat.append((time.perf_counter_ns() - t0) // 1000)
        interp.get_tensor(out_index)
    return runner_us, runner_rate, statistics.median(lat[50:]), len(lat) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions per figure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures: dict[str, float] = {}
    sshd = start_sshd()
    drivers = []
    try:
        known_hosts = sshd.write_known_hosts(sshd.root / "known_hosts")

        def driver(name: str, **extra):
            drv = build_driver("rpi", name, sshd.device_settings(
                known_hosts, sshd.workdir(name), **{"period_s": 0.5, **extra}),
                DriverContext(state_dir=sshd.root / "state"))
            drivers.append(drv)
            return drv

        rows = []
        for label, units in (("1MB", 512), ("10MB", 1600)):
            data = big_model(units)
            full, upload, scp = [], [], []
            for i in range(args.runs):
                scp.append(scp_seconds(sshd, known_hosts, data,
                                       f"{sshd.homes['tinyml-pi']}/tests/scp-{label}.bin"))
                drv = driver(f"bench-{label}-{i}")
                started = time.monotonic()
                rep = drv.install(InstallRequest(model=data), Deadline(120))
                full.append(time.monotonic() - started)
                upload.append(rep.steps["upload"])
                drv.stop_runner(Deadline(10))
                drv.close()
            f, u, s = (statistics.median(x) for x in (full, upload, scp))
            figures.update({f"deploy_{label}_s": f, f"upload_{label}_s": u,
                            f"scp_{label}_s": s, f"deploy_{label}_vs_scp": f / s,
                            f"upload_{label}_vs_scp": u / s,
                            f"model_{label}_bytes": len(data)})
            rows.append((f"deploy {label} ({len(data)} B), full install", f, s, f / s))
            rows.append((f"deploy {label}, upload+verify step", u, s, u / s))

        # Redeploy of an unchanged model on a connected driver.
        sine = (REPO / "samples" / "models" / "sine_int8.tflite").read_bytes()
        drv = driver("bench-redeploy")
        drv.install(InstallRequest(model=sine), Deadline(60))
        times = []
        for _ in range(max(5, args.runs)):
            started = time.monotonic()
            rep = drv.install(InstallRequest(model=sine), Deadline(60))
            times.append(time.monotonic() - started)
            assert rep.detail["upload_skipped"]
        figures["redeploy_s"] = statistics.median(times)
        figures["redeploy_max_s"] = max(times)
        drv.stop_runner(Deadline(10))

        # Runner overhead: the sample CNN (shapes_int8) and the 1 MB dense model.
        overhead_rows = []
        for label, data in (("shapes_int8", (REPO / "samples" / "models" /
                                             "shapes_int8.tflite").read_bytes()),
                            ("dense 1MB", big_model(512))):
            r_us, r_rate, b_us, b_rate = runner_vs_bare(driver(f"bench-ovh-{len(data)}",
                                                               period_s=0.0), data)
            key = label.replace(" ", "_")
            figures.update({f"runner_latency_us_{key}": r_us, f"bare_invoke_us_{key}": b_us,
                            f"runner_vs_bare_latency_{key}": r_us / b_us,
                            f"runner_rate_per_s_{key}": r_rate,
                            f"bare_rate_per_s_{key}": b_rate,
                            f"bare_vs_runner_rate_{key}": b_rate / r_rate})
            overhead_rows.append((label, r_us, b_us, r_rate, b_rate))

        print(f"{'figure':52} {'ours s':>8} {'scp s':>8} {'ratio':>6}  target <= 1.5")
        for name, ours, ref, ratio in rows:
            print(f"{name:52} {ours:8.3f} {ref:8.3f} {ratio:6.2f}")
        print(f"{'redeploy unchanged model (median / max)':52} {figures['redeploy_s']:8.3f} "
              f"{figures['redeploy_max_s']:8.3f}  target <= 0.5 s")
        for label, r_us, b_us, r_rate, b_rate in overhead_rows:
            print(f"{'runner vs bare invoke latency (us), ' + label:52} {r_us:8.0f} "
                  f"{b_us:8.0f} {r_us / b_us:6.2f}  target <= 1.1")
            print(f"{'bare vs runner loop (inferences/s), ' + label:52} {b_rate:8.0f} "
                  f"{r_rate:8.0f} {b_rate / r_rate:6.2f}")
        print(json.dumps({"bench": "rpi", **{k: round(v, 4) for k, v in figures.items()}}))
    finally:
        for drv in drivers:
            with contextlib.suppress(Exception):
                drv.stop_runner(Deadline(10))
            drv.close()
        sshd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
