"""Hot-swap on the Nano 33 BLE (issue 12): prints a table and one JSON line.

    .venv/bin/python bench/bench_hotswap.py [--repeats 3] [--skip-real] [--measure-code]

Figures:
* install of a new model of the same op family on a virtual board, hot-swap vs compile and
  upload, in the same run, twice: with real-world durations (the stand-in arduino-cli's
  ``timing = "real"``: a warm mbed compile of 20 s and bossac's 25 KB/s; the virtual board's
  slot writes at the nRF52840's page erase and word write times) -- goal: hot-swap at least
  20x faster -- and with the stand-ins' default (fast) timings;
* protocol efficiency: frames (= round trips) and framing overhead per KB of payload, from the
  codec and as measured on the wire in the installs above;
* the computed time of a 30 KB model on a real nRF52840 (goal <= 2 s) from its flash timings
  and USB full-speed CDC;
* the flash the op set costs over the exact-ops resolver, per example model, from the per-op
  kernel sizes measured by real links (issue 11) plus the hot-swap code's own size (measured
  here with the real Cortex-M4 compiler when ``--measure-code`` and arm-none-eabi-gcc exist).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hal.arduino import hotswap_protocol as hp  # noqa: E402
from hal.deadline import Deadline  # noqa: E402
from hal.driver import DriverContext, InstallRequest, build_driver  # noqa: E402

MODELS = REPO / "tests" / "data" / "tflm-examples"
SPEECH = (MODELS / "arduino_micro_speech.tflite").read_bytes()
WAND = (MODELS / "arduino_magic_wand.tflite").read_bytes()
FAST = {"inference_period_ms": 100, "status_period_ms": 500, "host_wait_s": 1.0,
        "boot_deadline_s": 20.0}

# nRF52840 Product Specification v1.7, NVMC electrical specification (maxima):
# t_WRITE (one 32-bit word) 41 us, t_ERASEPAGE (4 KB page) 85 ms.
NRF_WRITE_WORD_S = 41e-6
NRF_ERASE_PAGE_S = 0.085
# USB 2.0 full speed: 12 Mbit/s, 1 ms frames, bulk packets of at most 64 bytes, at most 19
# per frame (USB 2.0 spec, 5.8.4): 1,216,000 B/s raw. A CDC reply is an IN transfer the host
# polls in the next frame: one round trip costs about 1 ms besides the data.
USB_FS_BYTES_S = 19 * 64 * 1000
USB_ROUND_TRIP_S = 0.001
# Cortex-M4 at 64 MHz, software SHA-256 of the firmware (~50 cycles/byte, conservative):
SHA_BYTES_S = 64e6 / 50

# Flash of each kernel on the Nano 33 BLE, measured by issue 11 with real links (its
# hal/boards.toml [nano33ble.sizes].op_flash, bench/bench_sizes.py): the sketch with one op
# registered minus the sketch with none; ops not measured there get its default 9216 B, an
# upper estimate.
OP_FLASH = {"FULLY_CONNECTED": 4000, "CONV_2D": 8000, "DEPTHWISE_CONV_2D": 8000,
            "AVERAGE_POOL_2D": 3000, "RESHAPE": 1000, "SOFTMAX": 3000}
OP_FLASH_DEFAULT = 9216


def _install(driver, data: bytes, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    report = driver.install(InstallRequest(model=data, **kw), Deadline(300))
    return time.perf_counter() - t0, report


def install_pair(timing: str, repeats: int) -> dict:
    """Hot-swap of a new model on one board vs compile+upload of it on another, same run."""
    real = timing == "real"
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-") as tmp:
        ctx = DriverContext(state_dir=Path(tmp))
        settings = {**FAST, "timing": timing}
        hot = build_driver("virtual-nano33ble", "hot", {**settings, "hotswap": True,
                                                        "hotswap_real_timing": real}, ctx)
        cold = build_driver("virtual-nano33ble", "cold", {**settings, "hotswap": False}, ctx)
        try:
            first, _ = _install(hot, SPEECH)  # flashes the hot-swap firmware
            swaps, stats = [], []
            for i in range(repeats):  # alternate: each install is a new model for the board
                secs, report = _install(hot, WAND if i % 2 == 0 else SPEECH)
                assert not report.compiled and report.detail["path"] == "hotswap"
                swaps.append(secs)
                stats.append(report.detail["hotswap"])
            full = []
            for data in (WAND, SPEECH):  # both new to this run's build cache: compiled
                secs, report = _install(cold, data)
                assert report.compiled
                full.append(secs)
        finally:
            hot.close()
            cold.close()
    swap, comp = statistics.median(swaps), statistics.median(full)
    return {"timing": timing, "first_full_install_s": round(first, 3),
            "hotswap_s": round(swap, 3), "hotswap_runs": [round(x, 3) for x in swaps],
            "compile_upload_s": round(comp, 3), "compile_upload_runs": [round(x, 3) for x in full],
            "speedup": round(comp / swap, 1), "wire": stats[0]}


def real_board_estimate(total: int = 30 * 1024) -> dict:
    """Seconds a payload of ``total`` bytes takes on a real Nano 33 BLE."""
    cost = hp.wire_cost(total)
    erase = cost.pages * NRF_ERASE_PAGE_S
    write = (total + 3) // 4 * NRF_WRITE_WORD_S
    usb = cost.wire_bytes / USB_FS_BYTES_S + cost.round_trips * USB_ROUND_TRIP_S
    sha = 2 * total / SHA_BYTES_S  # COMMIT's check and the boot's model hash
    boot = 0.02  # interpreter rebuilt and AllocateTensors() on a 30 KB model (estimate)
    return {"payload_bytes": total, "pages": cost.pages, "erase_s": round(erase, 3),
            "write_s": round(write, 3), "usb_s": round(usb, 3), "sha_s": round(sha, 3),
            "boot_s": boot, "total_s": round(erase + write + usb + sha + boot, 3)}


def efficiency() -> list[dict]:
    out = []
    for kb in (3, 19, 30, 128 - 1):
        c = hp.wire_cost(kb * 1024)
        out.append({"payload_kb": kb, "round_trips": c.round_trips, "wire_bytes": c.wire_bytes,
                    "overhead_bytes_per_kb": round(c.overhead_per_kb, 1)})
    return out


def measure_code() -> dict | None:
    """The hot-swap code's own flash: text+rodata of tinyml_hotswap.cpp plus what the hooks
    add to the .ino's object, compiled by the real arm-none-eabi-g++ (realbuild, sketch-only)."""
    toolchain = _toolchain()
    if not shutil.which("arm-none-eabi-size") or toolchain is None:
        return None
    from dataclasses import replace

    from hal.arduino import hotswap, sketch
    from hal.model.analysis import analyze

    report = analyze(SPEECH, board="nano33ble")
    base = sketch.config_for(report, SPEECH, InstallRequest(model=SPEECH), 20000, "nano33ble")
    ops = tuple(sorted(set(hp.op_set()) | set(report.ops)))
    variants = {"exact": base, "hotswap": hotswap.firmware_config(
        base, hotswap.Plan("compile_upload", "hotswap", "", ops=ops, arena_bytes=65536,
                           slot_bytes=131072))}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-code-") as tmp:
        for name, cfg in variants.items():
            sk = Path(tmp) / name / sketch.SKETCH_NAME
            sketch.render_sketch(replace(cfg), sk)
            build = Path(tmp) / f"build-{name}"
            subprocess.run([sys.executable, str(toolchain / "realbuild.py"), str(sk), "--src",
                            str(toolchain), "--sketch-only", "--build-path", str(build)],
                           check=True, capture_output=True, timeout=300)
            total = {}
            for obj in build.rglob("*.o"):
                out = subprocess.run(["arm-none-eabi-size", "-A", str(obj)], check=True,
                                     capture_output=True, text=True).stdout
                total[obj.name] = sum(int(line.split()[1]) for line in out.splitlines()
                                      if line.startswith((".text", ".rodata")))
            sizes[name] = total
    ino = "tinyml_sketch.ino.cpp.o"
    own = sizes["hotswap"].get("tinyml_hotswap.cpp.o", 0) + sizes["hotswap"][ino] \
        - sizes["exact"][ino]
    return {"hotswap_cpp": sizes["hotswap"].get("tinyml_hotswap.cpp.o", 0),
            "ino_hooks": sizes["hotswap"][ino] - sizes["exact"][ino], "total": own}


def _toolchain() -> Path | None:
    for cand in (REPO.parent / "shared" / "toolchains" / "nano33ble",
                 Path("/work/shared/toolchains/nano33ble")):
        if (cand / "realbuild.py").exists():
            return cand
    return None


def linked_flash_cost(cache: str) -> list[dict]:
    """Real links (realbuild full mode, without libmbed.a as everywhere here): each example
    model's exact-ops sketch against its hot-swap sketch, same model and arena. The difference
    is the op set's extra kernels plus the hot-swap code (mbed's FlashIAP/Watchdog excluded:
    they live in libmbed.a)."""
    from dataclasses import replace

    from hal.arduino import hotswap, sketch
    from hal.boards import get_profile
    from hal.model.analysis import analyze

    toolchain = _toolchain()
    if toolchain is None:
        raise SystemExit("--link needs shared/toolchains/nano33ble")
    profile = get_profile("nano33ble")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-link-") as tmp:
        for name in ("arduino_hello_world", "arduino_micro_speech", "arduino_magic_wand",
                     "magic_wand_tflm_legacy", "person_detect"):
            data = (MODELS / f"{name}.tflite").read_bytes()
            report = analyze(data, board="nano33ble")
            arena = profile.arena_for(report.arena_estimate_bytes)
            base = sketch.config_for(report, data, InstallRequest(model=data), arena,
                                     "nano33ble")
            ops = tuple(sorted(set(hp.op_set()) | set(report.ops)))
            hot = hotswap.firmware_config(base, hotswap.Plan(
                "compile_upload", "hotswap", "", ops=ops, arena_bytes=arena,
                slot_bytes=131072))
            text = {}
            for variant, cfg in (("exact", base), ("hotswap", hot)):
                sk = Path(tmp) / f"{name}-{variant}" / sketch.SKETCH_NAME
                sketch.render_sketch(replace(cfg), sk)
                out = Path(tmp) / f"{name}-{variant}.json"
                subprocess.run([sys.executable, str(toolchain / "realbuild.py"), str(sk),
                                "--src", str(toolchain), "--cache", cache, "-j", "2",
                                "--json", str(out)], check=True, capture_output=True,
                               timeout=3600)
                text[variant] = json.loads(out.read_text())["arduino_text"]
            rows.append({"model": name, "model_ops": len(report.ops), "opset_ops": len(ops),
                         "exact_text": text["exact"], "hotswap_text": text["hotswap"],
                         "extra_bytes": text["hotswap"] - text["exact"]})
            print(f"linked {name}: exact {text['exact']} B, hot-swap {text['hotswap']} B, "
                  f"+{text['hotswap'] - text['exact']} B", flush=True)
    return rows


def flash_cost(code_bytes: int) -> list[dict]:
    from hal.model.analysis import analyze

    opset = set(hp.op_set())
    rows = []
    for name in ("arduino_hello_world", "arduino_micro_speech", "arduino_magic_wand",
                 "magic_wand_tflm_legacy", "person_detect"):
        report = analyze((MODELS / f"{name}.tflite").read_bytes(), board="nano33ble")
        exact = set(report.ops)
        extra = sorted((opset | exact) - exact)
        measured = sum(OP_FLASH[o] for o in extra if o in OP_FLASH)
        estimated = sum(OP_FLASH_DEFAULT for o in extra if o not in OP_FLASH)
        rows.append({"model": name, "model_ops": len(exact), "opset_ops": len(opset | exact),
                     "extra_kernels": len(extra), "extra_measured_bytes": measured,
                     "extra_estimated_bytes": estimated, "hotswap_code_bytes": code_bytes,
                     "total_extra_bytes": measured + estimated + code_bytes})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true",
                        help="only the fast-timing comparison (the real one takes ~1.5 min)")
    parser.add_argument("--measure-code", action="store_true",
                        help="compile both variants with the real arm gcc (~20 s)")
    parser.add_argument("--link", metavar="CACHE",
                        help="also link every example model's exact-ops and hot-swap sketches "
                        "for real (realbuild full mode, object cache CACHE: ~6 min the first "
                        "time, then ~15 s per link)")
    parser.add_argument("--only-link", action="store_true",
                        help="with --link: skip the install and protocol figures")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    result: dict = {"machine": "2 vCPU AMD EPYC, Python " + sys.version.split()[0]}
    if args.link:
        result["linked"] = linked_flash_cost(args.link)
        if args.only_link:
            print(json.dumps(result))
            return 0
    result["fast"] = install_pair("fast", args.repeats)
    if not args.skip_real:
        result["real"] = install_pair("real", args.repeats)
    result["efficiency"] = efficiency()
    result["real_board_30kb"] = real_board_estimate()
    code = measure_code() if args.measure_code else None
    result["code"] = code
    result["flash_cost"] = flash_cost(code["total"] if code else 6300)

    for key in ("fast", "real"):
        if key in result:
            r = result[key]
            print(f"{key:5} timings: hot-swap {r['hotswap_s']:.3f} s (runs {r['hotswap_runs']})"
                  f"  compile+upload {r['compile_upload_s']:.3f} s  -> {r['speedup']}x  "
                  f"(first full install {r['first_full_install_s']} s)")
    for e in result["efficiency"]:
        print(f"payload {e['payload_kb']:>3} KB: {e['round_trips']:>3} round trips, "
              f"{e['overhead_bytes_per_kb']} B overhead per KB")
    print("real nRF52840, 30 KB:", result["real_board_30kb"])
    if code:
        print("hot-swap code (arm gcc, text+rodata):", code)
    for row in result["flash_cost"]:
        print(f"{row['model']:24} ops {row['model_ops']} -> {row['opset_ops']}: +"
              f"{row['extra_measured_bytes']} B measured kernels, +{row['extra_estimated_bytes']}"
              f" B estimated kernels, +{row['hotswap_code_bytes']} B hot-swap code")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
