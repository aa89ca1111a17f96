"""Benchmark: predicted build sizes against real Cortex-M4 links (issue 11).

    .venv/bin/python bench/bench_sizes.py            # the size table (BENCHMARKS.md)
    .venv/bin/python bench/bench_sizes.py --derive   # re-measure the parts of boards.toml

For every TFLM example and sample model that the template takes, the sketch is rendered as the
driver renders it (arena from the board profile, 2 test vectors, one label per output), linked
for real by ``shared/toolchains/nano33ble/realbuild.py`` (core 4.6.0, TFLM library @7948b85,
GCC 12.2 -- without mbed OS: libmbed.a is not obtainable), and printed next to the size model
of ``hal/boards.toml``: predicted mbed-less text/data (prediction minus the mbed OS share)
against the real link, and the full prediction against the real link plus that share. The last
line is one JSON object with every figure.

``--derive`` makes the measurement builds behind ``[nano33ble.sizes]``: an empty sketch, our
sketch with no op registered, the same with each op alone, and person_detect with and without
the camera; it prints the parts as TOML.

The object cache is ``$TINYML_REALBUILD_CACHE`` or ``~/.cache/tinyml-realbuild``; the first run
compiles TFLM and the core (about 6 minutes on two idle cores).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hal.arduino.sketch import SKETCH_NAME, SketchConfig, config_for, render_sketch  # noqa: E402
from hal.boards import get_profile, label_flash_bytes  # noqa: E402
from hal.driver import InstallRequest  # noqa: E402
from hal.errors import HalError  # noqa: E402
from hal.model.analysis import analyze  # noqa: E402
from tests.firmware import realtool  # noqa: E402

EXAMPLES = REPO / "tests" / "data" / "tflm-examples"
SAMPLES = REPO / "samples" / "models"
# The ops measured one by one for --derive: every op of the examples and samples.
MEASURED_OPS = ("ADD", "AVERAGE_POOL_2D", "CAST", "CONCATENATION", "CONV_2D",
                "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "FULLY_CONNECTED", "LOGISTIC",
                "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "QUANTIZE", "RESHAPE",
                "SOFTMAX", "STRIDED_SLICE", "TANH")


def model_paths() -> list[Path]:
    return sorted(SAMPLES.glob("*.tflite")) + sorted(EXAMPLES.glob("*.tflite"))


def driver_config(data: bytes, vectors: int = 2, source: str = "vectors") -> SketchConfig:
    """The sketch the driver renders for ``data``: profile arena, ``vectors`` test vectors,
    one label per output."""
    report = analyze(data)
    profile = get_profile("nano33ble")
    n = report.inputs[0].elements
    vecs = tuple(tuple(((i + k) % 7) / 7.0 - 0.4 for i in range(n)) for k in range(vectors))
    labels = tuple(f"class {i}" for i in range(min(report.outputs[0].elements, 16)))
    request = InstallRequest(model=data, labels=labels,
                             input_vectors=() if source == "camera" else vecs,
                             input_source=source)
    return config_for(report, data, request, profile.arena_for(report.arena_estimate_bytes),
                      "nano33ble")


def predict(config: SketchConfig):
    """The size model's prediction for a rendered config."""
    sizes = get_profile(config.board).sizes
    assert sizes is not None
    return sizes.predict(model_bytes=len(config.model), ops=config.ops,
                         arena_bytes=config.arena_bytes, vector_bytes=config.vector_bytes,
                         label_bytes=label_flash_bytes(config.labels),
                         camera=config.input_source == "camera",
                         input_dtype=config.input_dtype)


def link(sketch_dir: Path) -> dict:
    result = realtool.realbuild(sketch_dir)
    if not result.get("ok"):
        raise RuntimeError(f"realbuild failed for {sketch_dir}:\n{result['output'][-3000:]}")
    return result


def build_config(config: SketchConfig, root: Path, name: str, patch=None) -> dict:
    sketch_dir = root / name / SKETCH_NAME
    render_sketch(config, sketch_dir)
    if patch is not None:
        path = sketch_dir / "model_config.h"
        path.write_text(patch(path.read_text()))
    return link(sketch_dir)


def _no_ops(text: str) -> str:
    text = re.sub(r"#define TINYML_OP_COUNT \d+", "#define TINYML_OP_COUNT 1", text)
    return re.sub(r"    ok = \(\(resolver\)\.Add\w+\(\) == kTfLiteOk\) && ok; /\* \w+ \*/ \\\n",
                  "", text)


def derive(root: Path) -> dict:
    """The measurement builds behind [nano33ble.sizes]."""
    empty = root / "empty" / "empty"
    empty.mkdir(parents=True)
    (empty / "empty.ino").write_text("void setup() {}\nvoid loop() {}\n")
    e = link(empty)
    hello = driver_config((EXAMPLES / "hello_world_int8.tflite").read_bytes(), vectors=0)
    hello = replace(hello, labels=())
    base = build_config(hello, root, "noop", _no_ops)
    model_flash = (len(hello.model) + 15) // 16 * 16
    parts = {
        "mbedless_empty_flash": e["arduino_text"],
        "mbedless_empty_ram": e["arduino_data"],
        "sketch_flash": base["arduino_text"] - e["arduino_text"] - model_flash,
        "sketch_ram": base["arduino_data"] - e["arduino_data"]
        - (hello.arena_bytes + 15) // 16 * 16,
    }
    ops = {}
    for op in MEASURED_OPS:
        try:
            r = build_config(replace(hello, ops=(op,)), root, f"op-{op}")
        except (RuntimeError, HalError) as exc:
            print(f"{op}: not measured ({str(exc)[:200]})", file=sys.stderr)
            continue
        ops[op] = r["arduino_text"] - base["arduino_text"]
        print(f"  {op}: {ops[op]} B", file=sys.stderr)
    parts["op_flash"] = ops
    parts["op_flash_default"] = (max(ops.values()) + 1023) // 1024 * 1024
    person = (EXAMPLES / "person_detect.tflite").read_bytes()
    plain = build_config(driver_config(person, vectors=0), root, "person-plain")
    cam_cfg = driver_config(person, source="camera")
    cam = build_config(cam_cfg, root, "person-camera")
    parts["camera_flash"] = cam["arduino_text"] - plain["arduino_text"]
    parts["camera_ram"] = cam["arduino_data"] - plain["arduino_data"] - 256
    return parts


def table(root: Path) -> list[dict]:
    sizes = get_profile("nano33ble").sizes
    assert sizes is not None
    rows = []
    for path in model_paths():
        data = path.read_bytes()
        try:
            config = driver_config(data)
        except HalError as exc:
            rows.append({"model": path.stem, "skipped": exc.code})
            continue
        real = build_config(config, root, path.stem)
        p = predict(config)
        rows.append({
            "model": path.stem, "model_bytes": len(data), "ops": len(config.ops),
            "arena": config.arena_bytes,
            "pred_text_mbedless": p.text_bytes - sizes.mbed_flash_bytes,
            "real_text_mbedless": real["arduino_text"],
            "pred_data_mbedless": p.data_bytes - sizes.mbed_ram_bytes,
            "real_data_mbedless": real["arduino_data"],
            "pred_text": p.text_bytes, "real_text_plus_share": real["arduino_text"]
            + sizes.mbed_flash_bytes,
            "pred_data": p.data_bytes, "real_data_plus_share": real["arduino_data"]
            + sizes.mbed_ram_bytes,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--derive", action="store_true",
                        help="re-measure the size model's parts and print them as TOML")
    args = parser.parse_args(argv)
    why = realtool.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-sizes-") as tmp:
        root = Path(tmp)
        if args.derive:
            parts = derive(root)
            for key, value in parts.items():
                if isinstance(value, dict):
                    inner = ", ".join(f"{k} = {v}" for k, v in sorted(value.items()))
                    print(f"{key} = {{ {inner} }}")
                else:
                    print(f"{key} = {value}")
            print(json.dumps(parts))
            return 0
        rows = table(root)
    sizes = get_profile("nano33ble").sizes
    print(f"mbed OS share (published empty sketch - our mbed-less empty link): "
          f"flash {sizes.mbed_flash_bytes} B, RAM {sizes.mbed_ram_bytes} B")
    print(f"{'model':28} {'pred text':>10} {'real text':>10} {'err':>7}  "
          f"{'pred data':>10} {'real data':>10} {'err':>7}   (mbed-less)")
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:28} skipped: {r['skipped']}")
            continue
        et = 100.0 * (r["pred_text_mbedless"] / r["real_text_mbedless"] - 1)
        ed = 100.0 * (r["pred_data_mbedless"] / r["real_data_mbedless"] - 1)
        print(f"{r['model']:28} {r['pred_text_mbedless']:>10} {r['real_text_mbedless']:>10} "
              f"{et:>+6.1f}%  {r['pred_data_mbedless']:>10} {r['real_data_mbedless']:>10} "
              f"{ed:>+6.1f}%")
    print(json.dumps({"mbed_flash": sizes.mbed_flash_bytes, "mbed_ram": sizes.mbed_ram_bytes,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
