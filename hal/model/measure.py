"""Measured arena: what the real TFLM interpreter allocates for a model on this host.

The ``tflite-micro`` package (optional extra ``[analysis]``, x86_64 wheels only) runs the
reference TFLM interpreter. It has no call that returns the arena use; ``print_allocations()``
writes ``[RecordingMicroAllocator] Arena allocation total N bytes`` (and head / tail) to the
C-level stderr. A model TFLM cannot handle may kill the process (SIGSEGV) rather than raise,
so the interpreter always runs in a child process: ``python -m hal.model.measure`` with the
model on stdin, started through :func:`hal.process.run` (deadline, process-group kill).

The child prints one JSON object on stdout: ``{"total", "head", "tail"}`` or
``{"error": ..., "log": ...}`` (exit 4) or ``{"missing": ...}`` (exit 3).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hal.deadline import Deadline
from hal.errors import InfraError, InputError, make_error
from hal.process import run

log = logging.getLogger(__name__)

_EXIT_MISSING = 3
_EXIT_FAILED = 4
_LINE = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")
# Generous: the arena only has to be big enough, the recording allocator reports real use.
MIN_PROBE_ARENA = 16 * 1024 * 1024


@dataclass(frozen=True)
class ArenaMeasurement:
    """TFLM's own figures (bytes) for one model on this host."""

    total: int
    head: int
    tail: int


def unavailable_reason() -> str | None:
    """Why the measurement cannot run here, or None when it can."""
    if importlib.util.find_spec("tflite_micro") is None:
        machine = platform.machine()
        hint = "" if machine == "x86_64" else f" (it ships x86_64 wheels only; this is {machine})"
        return (
            "the tflite-micro package is not installed"
            f"{hint}; install the [analysis] extra to measure arenas"
        )
    return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the directory holding ``hal``
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def measure_arena_detail(data: bytes, *, deadline: Deadline) -> ArenaMeasurement | None:
    """Run TFLM on ``data`` in a child process and return its head / tail / total.

    Returns None (and logs why) when ``tflite-micro`` is not available. Raises
    ``InputError("model_unsupported_ops")`` when TFLM has no kernel for an op,
    ``DeviceError("model_load_failed")`` when TFLM rejects the model otherwise,
    ``InfraError("tool_failed")`` when the interpreter crashed (signal) and
    ``InfraError("timeout")`` / ``Cancelled`` from the deadline.
    """
    reason = unavailable_reason()
    if reason is not None:
        log.info("arena measurement skipped: %s", reason)
        return None
    result = run(
        [sys.executable, "-m", "hal.model.measure"],
        deadline,
        stdin_data=bytes(data),
        env=_child_env(),
    )
    payload = None
    for line in reversed(result.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                payload = json.loads(line)
            except ValueError:
                payload = None
            break
    if result.returncode == _EXIT_MISSING:
        log.info("arena measurement skipped: %s", (payload or {}).get("missing"))
        return None
    if result.returncode < 0:
        raise InfraError(
            "tool_failed",
            f"the TFLM interpreter crashed with signal {-result.returncode} on this model",
            signal=-result.returncode,
            stderr_tail=result.stderr[-2000:],
        )
    if result.returncode == _EXIT_FAILED and payload and "error" in payload:
        tflm_log = str(payload.get("log", ""))
        if "registration" in tflm_log.lower() or "didn't find op" in tflm_log.lower():
            raise InputError(
                "model_unsupported_ops",
                "TFLM has no kernel for an op of this model: " + _first_line(tflm_log),
                tflm_log=tflm_log[-2000:],
            )
        raise make_error(
            "model_load_failed",
            f"TFLM rejected the model: {payload['error']}",
            tflm_log=tflm_log[-2000:],
        )
    if result.returncode != 0 or not payload or "total" not in payload:
        raise InfraError(
            "tool_failed",
            f"the arena measurement exited with status {result.returncode}",
            returncode=result.returncode,
            stdout_tail=result.stdout[-2000:],
            stderr_tail=result.stderr[-2000:],
        )
    return ArenaMeasurement(
        total=int(payload["total"]), head=int(payload["head"]), tail=int(payload["tail"])
    )


def measure_arena(data: bytes, *, deadline: Deadline) -> int | None:
    """The arena TFLM reports for ``data`` (bytes), or None when tflite-micro is missing
    (the reason is logged; :func:`unavailable_reason` gives it). See
    :func:`measure_arena_detail` for the errors."""
    m = measure_arena_detail(data, deadline=deadline)
    return None if m is None else m.total


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return "(no message)"


# ------------------------------------------------------------------------------ the child


def _child() -> int:
    data = sys.stdin.buffer.read()
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        print(json.dumps({"missing": f"tflite_micro is not importable: {exc}"}), flush=True)
        return _EXIT_MISSING
    # TFLM logs (errors and print_allocations) go to the C-level fd 2: point it at a file.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        error = None
        try:
            interp = runtime.Interpreter.from_bytes(
                data, arena_size=max(MIN_PROBE_ARENA, 8 * len(data))
            )
            interp.print_allocations()
        except Exception as exc:  # TFLM raises RuntimeError/ValueError on bad models
            error = f"{type(exc).__name__}: {exc}"
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    if error is not None:
        print(json.dumps({"error": error, "log": text[-4000:]}), flush=True)
        return _EXIT_FAILED
    figures = {k: int(v) for k, v in _LINE.findall(text)}
    if "total" not in figures:
        print(json.dumps({"error": "no allocation report from TFLM", "log": text[-4000:]}),
              flush=True)
        return _EXIT_FAILED
    figures.setdefault("head", 0)
    figures.setdefault("tail", 0)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child())
