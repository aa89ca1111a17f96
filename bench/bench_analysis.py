"""Benchmark: model analysis time and arena estimate error.

    .venv/bin/python bench/bench_analysis.py [--runs N] [--no-measure]

For every sample model, every TFLM example model and a synthetic ~300 KB model it prints the
median time of ``hal.model.analyze`` over N runs (target: at most 20 ms), the arena estimate,
the arena the real TFLM interpreter reports (``tflite-micro``, child process) and the estimate's
error in percent (target: -5% .. +10%). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hal.deadline import Deadline  # noqa: E402
from hal.errors import HalError  # noqa: E402
from hal.model import analyze  # noqa: E402
from hal.model.measure import measure_arena_detail, unavailable_reason  # noqa: E402

TARGET_MS = 20.0


def synthetic_300k() -> bytes:
    """~300 KB: 150 fully connected ops with 2 KB of weights each (parse-heavy)."""
    from tests.model.builder import build_model

    return build_model(["FULLY_CONNECTED"] * 150, weight_bytes=2000, width=64)


def time_analysis(data: bytes, runs: int) -> float:
    analyze(data)  # warm caches (op-name table, imports)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        analyze(data)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--no-measure", action="store_true", help="skip the TFLM measurement")
    args = ap.parse_args()

    models: list[tuple[str, str, bytes]] = []
    for p in sorted((REPO / "samples" / "models").glob("*.tflite")):
        models.append(("sample", p.stem, p.read_bytes()))
    for p in sorted((REPO / "tests" / "data" / "tflm-examples").glob("*.tflite")):
        models.append(("tflm-example", p.stem, p.read_bytes()))
    models.append(("synthetic", "synthetic_300k", synthetic_300k()))

    measure = not args.no_measure and unavailable_reason() is None
    rows = []
    print(f"{'kind':13s} {'model':26s} {'bytes':>8s} {'ms':>7s} {'estimate':>9s} "
          f"{'measured':>9s} {'error':>7s}")
    for kind, name, data in models:
        ms = time_analysis(data, args.runs)
        est = analyze(data).arena_estimate_bytes
        real = None
        note = ""
        if measure and kind != "synthetic":
            try:
                m = measure_arena_detail(data, deadline=Deadline(120))
                real = None if m is None else m.total
            except HalError as err:
                note = err.code
        err_pct = None if real is None else round(100.0 * (est - real) / real, 2)
        rows.append({"kind": kind, "model": name, "bytes": len(data),
                     "analysis_ms": round(ms, 3), "estimate_bytes": est,
                     "measured_bytes": real, "error_pct": err_pct, "note": note})
        print(f"{kind:13s} {name:26s} {len(data):8d} {ms:7.2f} {est:9d} "
              f"{real if real is not None else '-':>9} "
              f"{(f'{err_pct:+.1f}%' if err_pct is not None else note or '-'):>7s}")
    slowest = max(r["analysis_ms"] for r in rows)
    errors = [r["error_pct"] for r in rows if r["error_pct"] is not None]
    summary = {
        "bench": "analysis",
        "runs": args.runs,
        "target_ms": TARGET_MS,
        "max_analysis_ms": slowest,
        "time_target_met": slowest <= TARGET_MS,
        "min_error_pct": min(errors) if errors else None,
        "max_error_pct": max(errors) if errors else None,
        "accuracy_target_met": all(-5.0 <= e <= 10.0 for e in errors) if errors else None,
        "measured": measure,
        "rows": rows,
    }
    print(f"slowest analysis {slowest:.2f} ms (target <= {TARGET_MS} ms); estimate error "
          f"{summary['min_error_pct']}% .. {summary['max_error_pct']}% (target -5% .. +10%)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
