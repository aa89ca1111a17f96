"""Benchmark: rendering the Nano 33 BLE sketch (part of every install's driver overhead) and
reading it back (the stand-in arduino-cli's compile), plus the g++ syntax check.

    .venv/bin/python bench/bench_sketch.py [--runs N]

For the real TFLM example models (hello_world, micro_speech, person_detect) it prints the
median milliseconds of: a first render into an empty folder, a re-render of the same
configuration (must rewrite nothing: the repeated-install path), a render after the model
changed (only model_data.cpp and model_config.h rewritten), read_sketch, and one
``g++ -fsyntax-only`` of the rendered sketch. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hal.arduino.sketch import (  # noqa: E402
    HOST_HEADERS_DIR,
    SKETCH_NAME,
    render_sketch,
)
from hal.virtual.sketch_reader import read_sketch  # noqa: E402
from tests.firmware.helpers import model_config  # noqa: E402

MODELS = [("hello_world_int8", 3), ("arduino_micro_speech", 3), ("person_detect", 1)]


def median_ms(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def gxx_ms(sketch_dir: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["g++", "-std=gnu++17", "-fsyntax-only", "-I", str(HOST_HEADERS_DIR),
                    "-I", str(sketch_dir), "-x", "c++", str(sketch_dir / f"{SKETCH_NAME}.ino")],
                   check=True, timeout=120)
    return (time.perf_counter() - t0) * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    other = model_config("hello_world_float", vectors=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, vectors in MODELS:
            config = model_config(name, vectors=vectors)
            sketch_dir = Path(tmp) / name / SKETCH_NAME

            def first(config=config, sketch_dir=sketch_dir):
                shutil.rmtree(sketch_dir, ignore_errors=True)
                render_sketch(config, sketch_dir)

            def changed(config=config, sketch_dir=sketch_dir):
                render_sketch(other, sketch_dir)
                t0 = time.perf_counter()
                render_sketch(config, sketch_dir)
                return (time.perf_counter() - t0) * 1000.0

            first_ms = median_ms(first, args.runs)
            same_ms = median_ms(lambda c=config, d=sketch_dir: render_sketch(c, d), args.runs)
            assert render_sketch(config, sketch_dir) is False
            changed_ms = statistics.median(changed() for _ in range(args.runs))
            read_ms = median_ms(lambda d=sketch_dir: read_sketch(d), args.runs)
            rows.append({
                "model": name,
                "model_bytes": len(config.model),
                "render_first_ms": round(first_ms, 2),
                "render_unchanged_ms": round(same_ms, 2),
                "render_new_model_ms": round(changed_ms, 2),
                "read_ms": round(read_ms, 2),
                "gxx_syntax_ms": round(gxx_ms(sketch_dir), 1),
            })
    header = ("model", "bytes", "first", "unchanged", "new model", "read", "g++ -fsyntax")
    print(f"{header[0]:<22}{header[1]:>9}{header[2]:>9}{header[3]:>11}{header[4]:>11}"
          f"{header[5]:>8}{header[6]:>14}   (ms, median of {args.runs})")
    for r in rows:
        print(f"{r['model']:<22}{r['model_bytes']:>9}{r['render_first_ms']:>9}"
              f"{r['render_unchanged_ms']:>11}{r['render_new_model_ms']:>11}{r['read_ms']:>8}"
              f"{r['gxx_syntax_ms']:>14}")
    print(json.dumps({"bench": "sketch", "runs": args.runs, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
