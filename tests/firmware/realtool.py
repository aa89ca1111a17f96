"""The real Nano 33 BLE toolchain for the ``firmware`` test pass and the size bench:
``shared/toolchains/nano33ble/realbuild.py`` (the real ArduinoCore-mbed, ArduinoCore-API,
Arduino_TensorFlowLite and Arduino_OV767X sources, compiled with Debian's arm-none-eabi GCC
exactly as arduino-cli would) and the objects it caches.

``shared/`` is a read-only sibling of the clone (``REPO/../shared``), so the object cache lives
outside it: ``$TINYML_REALBUILD_CACHE``, else ``~/.cache/tinyml-realbuild``. The first full
build compiles the 223 TFLM sources and the core (about 6 minutes on two idle cores); later
builds reuse the objects (8-13 s each), and so does the QEMU arena harness.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hal.deadline import Deadline
from hal.process import run

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("TINYML_SHARED", REPO.parent / "shared"))
TOOLCHAIN = SHARED / "toolchains" / "nano33ble"
REALBUILD = TOOLCHAIN / "realbuild.py"
PUBLISHED = SHARED / "reference" / "arduino-cli.md"


def cache_dir() -> Path:
    """Where realbuild keeps its copied sources and objects (never inside shared/)."""
    text = os.environ.get("TINYML_REALBUILD_CACHE")
    return Path(text) if text else Path.home() / ".cache" / "tinyml-realbuild"


def source_tree() -> Path:
    """The pruned tree to build from. realbuild copies its components into the cache with
    their modes and then writes into the copies; the tree in shared/ is read-only, so for a
    user other than root (whom modes do not stop) a writable copy of it is made once."""
    if os.geteuid() == 0:
        return TOOLCHAIN
    import hashlib

    dest = cache_dir() / "tree"
    sums = TOOLCHAIN / "SHA256SUMS"
    key = hashlib.sha1(sums.read_bytes() if sums.exists() else b"").hexdigest()
    stamp = dest / ".copied-from"
    if stamp.exists() and stamp.read_text() == key:
        return dest
    if dest.exists():
        for root, dirs, _files in os.walk(dest):
            for d in dirs:
                os.chmod(Path(root) / d, 0o755)
        shutil.rmtree(dest)
    shutil.copytree(TOOLCHAIN, dest, symlinks=True)
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(root) / name
            if not path.is_symlink():
                os.chmod(path, path.stat().st_mode | 0o200)
    stamp.write_text(key)
    return dest


def missing() -> str:
    """Why the real toolchain cannot run here ("" when it can)."""
    if not REALBUILD.is_file():
        return f"{REALBUILD} is missing (shared/ must be a sibling of the clone)"
    for tool in ("arm-none-eabi-g++", "arm-none-eabi-gcc", "arm-none-eabi-size"):
        if shutil.which(tool) is None:
            return (f"{tool} is not installed (apt-get install gcc-arm-none-eabi "
                    "libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib)")
    return ""


def realbuild(sketch_dir: Path, *, sketch_only: bool = False, werror: bool = False,
              timeout_s: float = 1800.0, jobs: int | None = None) -> dict:
    """Build the rendered sketch folder; the realbuild JSON result plus ``returncode`` and
    ``output`` (realbuild's report)."""
    with tempfile.TemporaryDirectory(prefix="realbuild-json-") as tmp:
        out = Path(tmp) / "result.json"
        tree = source_tree()
        argv = [sys.executable, str(tree / REALBUILD.name), str(sketch_dir), "--src", str(tree),
                "--cache", str(cache_dir()), "--json", str(out),
                "-j", str(jobs or os.cpu_count() or 2)]
        if sketch_only:
            argv.append("--sketch-only")
        if werror:
            argv.append("--werror")
        proc = run(argv, Deadline(timeout_s, what=f"realbuild {sketch_dir}"))
        result = json.loads(out.read_text()) if out.exists() else {}
    result["returncode"] = proc.returncode
    result["output"] = proc.stdout + proc.stderr
    return result


def tflm_objects(result: dict) -> list[Path]:
    """The Arduino_TensorFlowLite objects of a full build (from its link command)."""
    return [Path(a) for a in result.get("link_command", [])
            if "/libraries/Arduino_TensorFlowLite-" in a and a.endswith(".o")]


def tflm_source_root() -> Path:
    """The library's ``src`` folder as realbuild copied it into the cache."""
    found = sorted((cache_dir() / "src").glob("Arduino_TensorFlowLite-*/src"))
    if not found:
        raise FileNotFoundError("no Arduino_TensorFlowLite copy in the realbuild cache yet")
    return found[-1]


def published_empty_sketch() -> tuple[int, int]:
    """The published ``arduino-cli compile`` figures of an empty nano33ble sketch (flash,
    RAM) from shared/reference/arduino-cli.md."""
    import re

    text = PUBLISHED.read_text()
    m = re.search(r"Sketch uses (\d+) bytes.*?Global variables use (\d+) bytes", text, re.S)
    if not m:
        raise ValueError(f"no empty-sketch figures in {PUBLISHED}")
    return int(m.group(1)), int(m.group(2))
