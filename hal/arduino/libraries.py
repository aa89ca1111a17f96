"""Are the Arduino libraries the sketch template needs installed -- by their API, not their
version strings?

Version strings lie: Arduino_TensorFlowLite's ``library.properties`` says ``2.4.0-ALPHA`` in
every commit of tflite-micro-arduino-examples since 2021, but the four-argument
``MicroInterpreter`` constructor our template calls exists only from commit 0b8e7c1
(2022-09); Arduino_OV767X's only release, 0.0.2, has no ``OV7675`` and no four-argument
``begin`` -- those exist only on its main branch, which still says 0.0.2. So these checks read
the installed headers (``install_dir`` from ``arduino-cli lib list``) for exactly the
declarations the template uses, and name what to install when they are missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal.deadline import Deadline
from hal.errors import HalError

TFLM_NAME = "Arduino_TensorFlowLite"
OV767X_NAME = "Arduino_OV767X"
TFLM_FIX = (
    "install TFLM from tflite-micro-arduino-examples at commit 7948b85 or later (any commit "
    "from 0b8e7c1, 2022-09, has the 4-argument MicroInterpreter): arduino-cli config set "
    "library.enable_unsafe_install true && arduino-cli lib install --git-url "
    "https://github.com/tensorflow/tflite-micro-arduino-examples.git (remove the Library "
    "Manager's Arduino_TensorFlowLite 2.4.0-ALPHA first; its version string is the same)"
)
OV767X_FIX = (
    "only the camera input needs it: install Arduino_OV767X from its main branch (commit "
    "e5dd28f or later; the release 0.0.2 lacks OV7675): arduino-cli lib install --git-url "
    "https://github.com/arduino-libraries/Arduino_OV767X.git"
)
_MAX_HEADER_BYTES = 1 << 20

# MicroInterpreter(const Model*, const MicroOpResolver&, uint8_t* arena, size_t size
# [, only defaulted parameters]) -- the old one wants an ErrorReporter* without a default.
_TFLM_CTOR = re.compile(
    r"MicroInterpreter\s*\(\s*const\s+Model\s*\*\s*\w+\s*,\s*const\s+MicroOpResolver\s*&\s*"
    r"\w+\s*,\s*uint8_t\s*\*\s*\w+\s*,\s*size_t\s+\w+\s*"
    r"((?:,\s*[\w:<>\s\*&]+?=\s*[^,)]+)*)\s*\)")
_OV_BEGIN = re.compile(
    r"\bint\s+begin\s*\(\s*int\s+\w+\s*,\s*int\s+\w+\s*,\s*int\s+\w+\s*,\s*int\s+\w+")
_OV_7675 = re.compile(r"\bOV7675\b")


@dataclass(frozen=True)
class InstalledLibrary:
    """One entry of ``arduino-cli lib list``."""

    name: str
    version: str
    install_dir: str


def installed_libraries(cli: Any, deadline: Deadline) -> list[InstalledLibrary]:
    """``arduino-cli lib list --format json`` with each library's ``install_dir`` (1.x
    ``{"installed_libraries": [...]}`` or 0.x ``[{"library": {...}}]``)."""
    from hal.arduino.cli_output import extract_json

    res = cli._run(["lib", "list", "--format", "json"], deadline)
    value = extract_json(res.stdout, (dict, list))
    items = value.get("installed_libraries") if isinstance(value, dict) else value
    out = []
    for item in items if isinstance(items, list) else []:
        lib = item.get("library") if isinstance(item, dict) else None
        lib = lib if isinstance(lib, dict) else item if isinstance(item, dict) else {}
        name = lib.get("name")
        if isinstance(name, str) and name:
            out.append(InstalledLibrary(name, str(lib.get("version") or ""),
                                        str(lib.get("install_dir") or "")))
    return out


def _header(install_dir: str, *relative: str) -> str | None:
    """The first of ``relative`` found under ``install_dir``/src or ``install_dir``."""
    root = Path(install_dir)
    for rel in relative:
        for base in (root / "src", root):
            path = base / rel
            if path.is_file():
                with path.open("rb") as fh:
                    return fh.read(_MAX_HEADER_BYTES).decode("utf-8", "replace")
    return None


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", text, flags=re.S)


def tflm_api(install_dir: str) -> tuple[bool, str]:
    """Does the TFLM library at ``install_dir`` have what the template calls? (ok, why)."""
    header = _header(install_dir, "tensorflow/lite/micro/micro_interpreter.h")
    if header is None:
        return False, "no tensorflow/lite/micro/micro_interpreter.h (not the " \
            "tflite-micro-arduino-examples layout)"
    text = _strip_comments(header)
    if not _TFLM_CTOR.search(text):
        return False, ("MicroInterpreter has no (model, resolver, arena, size) constructor: "
                       "this checkout predates 0b8e7c1 (it wants an ErrorReporter)")
    if "arena_used_bytes" not in text:
        return False, "MicroInterpreter::arena_used_bytes() is missing"
    if _header(install_dir, "tensorflow/lite/micro/micro_mutable_op_resolver.h") is None:
        return False, "no tensorflow/lite/micro/micro_mutable_op_resolver.h"
    return True, "MicroInterpreter(model, resolver, arena, size), arena_used_bytes(), " \
        "MicroMutableOpResolver"


def ov767x_api(install_dir: str) -> tuple[bool, str]:
    """Does the OV767X library at ``install_dir`` know the OV7675 and the 4-argument
    ``begin``? (ok, why)."""
    text = "".join(_strip_comments(h) for h in (
        _header(install_dir, "Arduino_OV767X.h"), _header(install_dir, "OV767X.h")) if h)
    if not text:
        return False, "no Arduino_OV767X.h"
    if not _OV_7675.search(text):
        return False, "OV7675 is not declared (the 0.0.2 release; OV7675 is on main only)"
    if not _OV_BEGIN.search(text):
        return False, "Camera.begin(resolution, format, fps, camera) is missing"
    return True, "OV7675, begin(resolution, format, fps, camera)"


def library_checks(cli: Any, deadline: Deadline) -> list[dict[str, Any]]:
    """Doctor checks ``tflm_library`` and ``ov767x_library`` (the latter only matters for
    the camera input and is reported as such). Never raises."""
    try:
        libs = installed_libraries(cli, deadline)
    except HalError as exc:
        return [{"check": "tflm_library", "ok": False, "message": exc.message,
                 "fix": TFLM_FIX}]
    checks = []
    tflm = [lib for lib in libs if lib.name.lower() == TFLM_NAME.lower()] or \
        [lib for lib in libs if "tensorflowlite" in lib.name.lower()]
    if not tflm:
        checks.append({"check": "tflm_library", "ok": False,
                       "message": "no TensorFlow Lite Micro library installed",
                       "fix": TFLM_FIX})
    else:
        lib = tflm[0]
        ok, why = tflm_api(lib.install_dir)
        checks.append({"check": "tflm_library", "ok": ok,
                       "message": f"{lib.name} {lib.version} at {lib.install_dir}: {why}",
                       "fix": "" if ok else TFLM_FIX})
    ov = [lib for lib in libs if lib.name.lower() == OV767X_NAME.lower()]
    if not ov:
        checks.append({"check": "ov767x_library", "ok": True,
                       "message": "not installed; " + OV767X_FIX, "fix": ""})
    else:
        lib = ov[0]
        ok, why = ov767x_api(lib.install_dir)
        checks.append({"check": "ov767x_library", "ok": ok,
                       "message": f"{lib.name} {lib.version} at {lib.install_dir}: {why}",
                       "fix": "" if ok else OV767X_FIX})
    return checks
