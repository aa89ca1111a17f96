"""Benchmark: the 32-bit arena truth and emulated instruction counts (issue 11).

    .venv/bin/python bench/bench_arena32.py

For every sample and TFLM example model the template takes, the sketch is rendered as the
driver renders it and the QEMU harness (tests/firmware/qemu: the Arduino TFLM library's own
objects from a real Nano 33 BLE build, on an emulated Cortex-M4, mps2-an386) prints TFLM's
``arena_used_bytes()`` in the arena the driver compiles in, the smallest arena that
allocates (bisection) and the emulated instructions per inference (QEMU ``-icount``: not
nRF52840 cycles). Printed next to ``arena_estimate_mcu_bytes`` (hal.model, 32-bit) and the
64-bit host estimate. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_sizes import driver_config, link, model_paths  # noqa: E402

from hal.arduino.sketch import SKETCH_NAME, render_sketch  # noqa: E402
from hal.errors import HalError  # noqa: E402
from hal.model.analysis import analyze  # noqa: E402
from tests.firmware import realtool  # noqa: E402
from tests.firmware.qemu import harness  # noqa: E402


def main() -> int:
    why = realtool.missing() or harness.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-arena32-") as tmp:
        root = Path(tmp)
        first = None
        for path in model_paths():
            data = path.read_bytes()
            try:
                config = driver_config(data, vectors=1)
            except HalError as exc:
                rows.append({"model": path.stem, "skipped": exc.code})
                continue
            sketch = root / path.stem / SKETCH_NAME
            render_sketch(config, sketch)
            if first is None:  # one real build provides the library objects
                first = link(sketch)
            elf = harness.build(sketch, root / path.stem / "qemu",
                                harness.library_objects(first["link_command"]),
                                realtool.tflm_source_root())
            res = harness.execute(elf)
            report = analyze(data)
            rows.append({
                "model": path.stem, "estimate_32": report.arena_estimate_mcu_bytes,
                "estimate_64": report.arena_estimate_bytes, "used_32": res.used_at_compiled,
                "error_pct": round(100 * (report.arena_estimate_mcu_bytes
                                          / res.used_at_compiled - 1), 2),
                "min_arena_32": res.min_arena, "compiled_arena": config.arena_bytes,
                "compiled_allocates": res.compiled_ok, "invoke_ok": res.invoke_ok,
                "emulated_instructions_per_inference": res.instructions_per_inference,
            })
    print(f"{'model':26} {'est32':>7} {'used32':>7} {'err':>6} {'min32':>7} {'arena':>7} "
          f"{'ok':>3} {'emulated instr/inference':>25}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:26} skipped: {r['skipped']}")
            continue
        print(f"{r['model']:26} {r['estimate_32']:>7} {r['used_32']:>7} "
              f"{r['error_pct']:>+5.1f}% {r['min_arena_32']:>7} {r['compiled_arena']:>7} "
              f"{'yes' if r['compiled_allocates'] else 'NO':>3} "
              f"{r['emulated_instructions_per_inference']:>25,}")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
