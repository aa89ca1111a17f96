"""Build and run the 32-bit arena harness under QEMU (``qemu-system-arm -M mps2-an386``).

Where it lives and why: the harness is a test instrument, not firmware for our targets, so it
sits here beside the tests that use it, not in ``firmware_templates/`` (which holds only what
runs on boards). It links

* the **same TFLM objects** the real Nano 33 BLE build uses: the Arduino_TensorFlowLite
  library compiled by ``shared/toolchains/nano33ble/realbuild.py`` with the board's flags
  (Cortex-M4, softfp, -Os, CMSIS-NN kernels), taken from a full build's link command -- minus
  the files that talk to the Arduino core (``system_setup.cpp``'s ``DebugLog`` on ``Serial``,
  ``micro_time.cpp``, the library's ``peripherals/`` and ``test_over_serial/``), which
  ``harness.cpp`` replaces with semihosting stand-ins;
* ``model_config.h`` and ``model_data.cpp`` of a sketch rendered by ``hal.arduino.sketch``:
  the model array, the op registration and ``TINYML_ARENA_BYTES`` exactly as the board gets
  them;
* ``startup.c`` (vector table, FPU on, SysTick) and ``mps2_an386.ld`` (the board's memory
  map), with newlib's semihosting ``librdimon`` for output and exit.

QEMU runs it with ``-icount shift=0`` (one emulated instruction = 1 ns of virtual time), so
SysTick ticks count emulated instructions; ``harness.cpp`` calibrates ticks against a loop of
known length. These counts are **emulated instructions, not cycles** of an nRF52840: QEMU
models neither wait states nor pipeline timing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from hal.deadline import Deadline
from hal.process import run

HERE = Path(__file__).resolve().parent
# The board's code-generation flags (variants/ARDUINO_NANO33BLE/cxxflags.txt) and the Arduino
# defines the library objects were compiled with (compatibility.h reads ARDUINO).
ARCH = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=softfp", "-mfpu=fpv4-sp-d16"]
COMMON = [*ARCH, "-Os", "-ffunction-sections", "-fdata-sections", "-funsigned-char",
          "-fomit-frame-pointer", "-DARDUINO=10607", "-DARDUINO_ARDUINO_NANO33BLE",
          "-DARDUINO_ARCH_NRF52840", "-DARDUINO_ARCH_MBED"]
CXX = ["-std=gnu++14", "-fno-rtti", "-fno-exceptions"]
# Library files that need the Arduino core; harness.cpp provides what TFLM uses of them.
EXCLUDED = ("/peripherals/", "/test_over_serial/", "/system_setup.cpp.", "/micro_time.cpp.")
QEMU = ["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic",
        "-monitor", "none", "-serial", "none", "-semihosting-config", "enable=on,target=native",
        "-icount", "shift=0"]


@dataclass(frozen=True)
class HarnessResult:
    """What the harness printed, plus the emulated instructions per inference."""

    sha: str
    arena_compiled: int
    compiled_ok: bool
    used_at_compiled: int
    min_arena: int
    used_at_min: int
    inferences: int
    invoke_ok: bool
    instructions_per_inference: int
    raw: dict
    stderr: str


def missing() -> str:
    """Why the harness cannot run here ("" when it can)."""
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-g++", "qemu-system-arm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


def _sh(argv: list[str], what: str, timeout_s: float = 300.0) -> str:
    res = run(argv, Deadline(timeout_s, what=what))
    if res.returncode != 0:
        out = (res.stdout + res.stderr)[-4000:]
        raise RuntimeError(f"{what} failed ({res.returncode}):\n{out}")
    return res.stdout


def library_objects(link_command: list[str]) -> list[str]:
    """The TFLM library objects of a realbuild link command the harness links."""
    return [a for a in link_command if "/libraries/Arduino_TensorFlowLite-" in a
            and a.endswith(".o") and not any(x in a for x in EXCLUDED)]


def build(sketch_dir: Path, out_dir: Path, objects: list[str], tflm_src: Path,
          inferences: int = 2, record: bool = False) -> Path:
    """Compile the harness against the rendered sketch and link it with ``objects``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inc = ["-I", str(sketch_dir), "-I", str(tflm_src),
           "-I", str(tflm_src / "third_party" / "flatbuffers" / "include"),
           "-I", str(tflm_src / "third_party" / "gemmlowp"),
           "-I", str(tflm_src / "third_party" / "ruy")]
    startup = out_dir / "startup.o"
    _sh(["arm-none-eabi-gcc", *COMMON, "-c", str(HERE / "startup.c"), "-o", str(startup)],
        "compile startup.c")
    harness = out_dir / "harness.o"
    _sh(["arm-none-eabi-g++", *COMMON, *CXX, f"-DHARNESS_INFERENCES={inferences}",
         *(["-DHARNESS_RECORD"] if record else []), *inc,
         "-c", str(HERE / "harness.cpp"), "-o", str(harness)], "compile harness.cpp")
    model = out_dir / "model_data.o"
    _sh(["arm-none-eabi-g++", *COMMON, *CXX, *inc, "-c", str(sketch_dir / "model_data.cpp"),
         "-o", str(model)], "compile model_data.cpp")
    elf = out_dir / "harness.elf"
    _sh(["arm-none-eabi-g++", *ARCH, "-T", str(HERE / "mps2_an386.ld"), "-nostartfiles",
         "--specs=rdimon.specs", "-Wl,--gc-sections", str(startup), str(harness), str(model),
         *objects, "-lm", "-o", str(elf)], "link the harness")
    return elf


def execute(elf: Path, timeout_s: float = 600.0) -> HarnessResult:
    """Run ``elf`` in QEMU; parse its JSON line."""
    res = run([*QEMU, "-kernel", str(elf)], Deadline(timeout_s, what=f"qemu {elf.name}"))
    line = next((x for x in reversed(res.stdout.splitlines()) if x.startswith("{")), "")
    if res.returncode != 0 or not line:
        raise RuntimeError(f"harness exited {res.returncode}:\n{res.stdout[-2000:]}\n"
                           f"{res.stderr[-2000:]}")
    raw = json.loads(line)
    if "error" in raw:
        raise RuntimeError(f"harness: {raw['error']}")
    per_tick = raw["calibration_instructions"] / max(1, raw["calibration_ticks"])
    return HarnessResult(
        sha=raw["sha"], arena_compiled=raw["arena_compiled"], compiled_ok=raw["compiled_ok"],
        used_at_compiled=raw["used_at_compiled"], min_arena=raw["min_arena"],
        used_at_min=raw["used_at_min"], inferences=raw["inferences"],
        invoke_ok=raw["invoke_ok"],
        instructions_per_inference=round(raw["ticks"] * per_tick / max(1, raw["inferences"])),
        raw=raw, stderr=res.stderr)
