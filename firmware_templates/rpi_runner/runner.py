"""TinyML runner for a Raspberry Pi (or any Linux target): runs one .tflite model with the
LiteRT interpreter (``ai_edge_litert``) or ``tflite_runtime`` and prints the device line
protocol on stdout.

Runs ON THE TARGET with only the standard library, NumPy and an interpreter. The bridge copies
it into ``<workdir>/models/<sha256>/`` together with:

* ``model.tflite``   -- the model,
* ``protocol.py``    -- hal/protocol.py, unchanged: lines are formatted by the same code the
  host parses them with,
* ``settings.json``  -- see :func:`load_settings`.

Usage: ``python runner.py <deployment dir>``. Exit status: 0 after SIGTERM/SIGINT or when
``max_inferences`` were run; 2 bad settings; 3 runtime missing; 4 model failed to load;
5 tensors do not match the settings.

Boot line: ``arena`` is 0 because LiteRT has no fixed tensor arena (it allocates per tensor),
and ``used`` is the sum of the byte sizes of every tensor the interpreter allocated (a lower
bound of the memory the model needs besides the model file itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time

import protocol  # hal/protocol.py, copied next to this file at deploy time

RUNNER_VERSION = "rpi-runner/1.0.0"
EXIT_BAD_SETTINGS = 2
EXIT_RUNTIME_MISSING = 3
EXIT_LOAD_FAILED = 4
EXIT_SCHEMA = 5
# A 512-byte line holds at most ~120 outputs ("0," each); more are cut by the protocol anyway.
MAX_OUTPUTS = 128

_stop = threading.Event()


def emit(line) -> None:
    """Write one protocol line with a single write(), so a line is never torn in the log."""
    text = protocol.format_line(line) + "\n"
    os.write(1, text.encode("ascii"))


def error(code: str, message: str, **numbers) -> None:
    emit(protocol.ErrorLine(code=code, message=message, numbers=numbers))


def load_settings(deploy_dir: str) -> dict:
    """``settings.json``: ``sha256`` (expected model hash), ``labels``, ``vectors`` (input
    vectors in real units), ``input_source`` (``vectors``, ``stdin`` or ``file:<path>``),
    ``period_s`` (minimum time between inferences), ``status_period_s``, ``max_inferences``
    (0 = forever), ``board``, optional ``inputs`` / ``outputs`` (expected tensors:
    ``shape`` and ``dtype`` as the host analysed them)."""
    with open(os.path.join(deploy_dir, "settings.json"), encoding="utf-8") as fh:
        settings = json.load(fh)
    if not isinstance(settings, dict):
        raise ValueError("settings.json is not an object")
    source = settings.get("input_source", "vectors")
    if not isinstance(source, str) or not (
        source in ("vectors", "stdin") or source.startswith("file:")
    ):
        raise ValueError("input_source must be vectors, stdin or file:<path>")
    vectors = settings.get("vectors", [])
    if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
        raise ValueError("vectors must be a list of lists")
    return settings


def import_interpreter():
    """The Interpreter class: LiteRT first, tflite_runtime as the fallback."""
    problems = []
    try:
        import numpy  # noqa: F401  (the interpreters need it; report its absence clearly)
    except ImportError as exc:
        raise ImportError(f"numpy: {exc}") from exc
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError as exc:
        problems.append(f"ai_edge_litert: {exc}")
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError as exc:
        problems.append(f"tflite_runtime: {exc}")
    raise ImportError("; ".join(problems))


class Quantiser:
    """Real-valued vectors to the input tensor's dtype (scale / zero point), and back."""

    def __init__(self, np, detail: dict) -> None:
        self.np = np
        self.dtype = detail["dtype"]
        self.shape = tuple(int(d) for d in detail["shape"])
        scale, zero = detail.get("quantization", (0.0, 0))
        self.scale = float(scale)
        self.zero = int(zero)
        self.elements = int(np.prod(self.shape)) if self.shape else 1

    def to_tensor(self, values):
        np = self.np
        x = np.asarray(values, dtype=np.float32).reshape(self.shape)
        if np.issubdtype(self.dtype, np.integer):
            if self.scale > 0:
                x = np.round(x / self.scale) + self.zero
            info = np.iinfo(self.dtype)
            return np.clip(x, info.min, info.max).astype(self.dtype)
        return x.astype(self.dtype)

    def from_tensor(self, raw):
        np = self.np
        values = raw.astype(np.float32).reshape(-1)
        if np.issubdtype(raw.dtype, np.integer) and self.scale > 0:
            values = (values - self.zero) * self.scale
        return values


def check_tensors(settings: dict, inputs: list, outputs: list) -> str | None:
    """A mismatch between the interpreter's tensors and what the host analysed, or None."""
    if len(inputs) != 1 or len(outputs) < 1:
        return f"runner supports one input tensor and at least one output, model has " \
               f"{len(inputs)} inputs and {len(outputs)} outputs"
    for kind, details in (("inputs", inputs), ("outputs", outputs)):
        expected = settings.get(kind)
        if not expected:
            continue
        for want, have in zip(expected, details):  # noqa: B905 - runs on Python 3.8
            shape = [int(d) for d in have["shape"]]
            dtype = have["dtype"].__name__ if hasattr(have["dtype"], "__name__") \
                else str(have["dtype"])
            if list(want.get("shape", shape)) != shape or want.get("dtype", dtype) != dtype:
                return f"{kind}: expected {want.get('shape')} {want.get('dtype')}, " \
                       f"interpreter has {shape} {dtype}"
    return None


def parse_record(text: str) -> list:
    """One input record: a JSON list of numbers, or an object with key ``x``."""
    obj = json.loads(text)
    if isinstance(obj, dict):
        obj = obj.get("x")
    if not isinstance(obj, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj
    ):
        raise ValueError("a record is a JSON list of numbers or {\"x\": [...]}")
    return obj


def stream_records(source: str):
    """Yield records (lists) or ``(None, message)`` problems from stdin or a followed file.
    Stops when the runner is told to stop; a file is followed like ``tail -f``."""
    if source == "stdin":
        fh = sys.stdin
        follow = False
    else:
        path = source[len("file:"):]
        while not _stop.is_set():
            try:
                fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                break
            except OSError as exc:
                yield None, f"cannot open input file {path}: {exc.strerror}"
                _stop.wait(2.0)
        else:
            return
        follow = True
    pending = ""
    while not _stop.is_set():
        chunk = fh.readline()
        if not chunk:
            if not follow:
                _stop.wait(1.0)  # stdin closed: stay up (status lines) until told to stop
                continue
            _stop.wait(0.2)
            continue
        pending += chunk
        if not pending.endswith("\n"):
            continue  # a writer is mid-line; wait for the rest
        line, pending = pending.strip(), ""
        if not line:
            continue
        try:
            yield parse_record(line), None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            yield None, f"bad input record: {exc}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: runner.py <deployment dir>\n")
        return EXIT_BAD_SETTINGS
    deploy_dir = argv[1]
    signal.signal(signal.SIGTERM, lambda *_: _stop.set())
    signal.signal(signal.SIGINT, lambda *_: _stop.set())
    try:
        settings = load_settings(deploy_dir)
    except (OSError, ValueError) as exc:
        error("bad_input", f"settings.json: {exc}")
        return EXIT_BAD_SETTINGS
    board = str(settings.get("board", "linux"))[:32]
    model_path = os.path.join(deploy_dir, settings.get("model", "model.tflite"))
    try:
        with open(model_path, "rb") as fh:
            model = fh.read()
    except OSError as exc:
        error("model_invalid", f"cannot read {model_path}: {exc.strerror}")
        return EXIT_LOAD_FAILED
    sha = hashlib.sha256(model).hexdigest()

    try:
        interpreter_class, runtime = import_interpreter()
        import numpy as np
    except ImportError as exc:
        error("runtime_missing", str(exc), python=sys.version_info[1])
        return EXIT_RUNTIME_MISSING

    try:
        interpreter = interpreter_class(model_content=model, num_threads=1)
        interpreter.allocate_tensors()
    except Exception as exc:  # the interpreter raises RuntimeError/ValueError with its reason
        error("load_failed", f"{type(exc).__name__}: {exc}".replace("\n", " "),
              bytes=len(model))
        return EXIT_LOAD_FAILED

    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    mismatch = check_tensors(settings, inputs, outputs)
    if mismatch:
        error("schema_mismatch", mismatch)
        return EXIT_SCHEMA
    quant_in = Quantiser(np, inputs[0])
    quant_out = Quantiser(np, outputs[0])
    labels = [str(x) for x in settings.get("labels", [])]
    vectors = settings.get("vectors", [])
    for i, vec in enumerate(vectors):
        if len(vec) != quant_in.elements:
            error("bad_input", f"vector {i} has {len(vec)} values, input needs "
                  f"{quant_in.elements}", index=i, expected=quant_in.elements, got=len(vec))
            return EXIT_SCHEMA

    used = 0
    for t in interpreter.get_tensor_details():
        with contextlib.suppress(TypeError, ValueError):
            used += int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize
    emit(protocol.BootLine(sha=sha, arena_bytes=0, used_bytes=used,
                           firmware=f"{RUNNER_VERSION} {runtime}"[:48], board=board))

    source = settings.get("input_source", "vectors")
    period = max(0.0, float(settings.get("period_s", 1.0)))
    status_period = max(0.5, float(settings.get("status_period_s", 10.0)))
    max_inferences = int(settings.get("max_inferences", 0))
    started = time.monotonic()
    count = 0
    next_status = started if source != "vectors" else started + status_period

    def status() -> None:
        emit(protocol.StatusLine(sha=sha, uptime_s=int(time.monotonic() - started),
                                 count=count, firmware=RUNNER_VERSION))

    def infer(values) -> None:
        nonlocal count
        try:
            interpreter.set_tensor(inputs[0]["index"], quant_in.to_tensor(values))
            t0 = time.perf_counter_ns()
            interpreter.invoke()
            latency_us = (time.perf_counter_ns() - t0) // 1000
            raw = interpreter.get_tensor(outputs[0]["index"])
        except Exception as exc:
            error("invoke_failed", f"{type(exc).__name__}: {exc}".replace("\n", " "), n=count)
            return
        out = quant_out.from_tensor(raw)
        top = int(np.argmax(out)) if out.size else 0
        label = labels[top] if top < len(labels) else ""
        # protocol.format_line drops trailing outputs one by one until the line fits; hand it
        # at most what can fit so that a model with thousands of outputs stays cheap.
        emit(protocol.InferenceLine(seq=count, latency_us=int(latency_us),
                                    outputs=tuple(float(v) for v in out[:MAX_OUTPUTS]),
                                    top=top, label=label))
        count += 1

    if source == "vectors":
        if not vectors:
            vectors = [[0.0] * quant_in.elements]
        i = 0
        while not _stop.is_set():
            infer(vectors[i % len(vectors)])
            i += 1
            if max_inferences and count >= max_inferences:
                break
            now = time.monotonic()
            if now >= next_status:
                status()
                next_status = now + status_period
            if period:
                _stop.wait(period)
    else:
        status()  # stream sources may stay idle: say at once that the model runs
        next_status = time.monotonic() + status_period
        ticker = threading.Thread(target=_status_ticker, args=(status, status_period),
                                  daemon=True)
        ticker.start()
        for values, problem in stream_records(source):
            if problem:
                error("bad_input", problem[:190])
                continue
            if len(values) != quant_in.elements:
                error("bad_input", f"record has {len(values)} values, input needs "
                      f"{quant_in.elements}", expected=quant_in.elements, got=len(values))
                continue
            infer(values)
            if max_inferences and count >= max_inferences:
                break
    return 0


def _status_ticker(status, period: float) -> None:
    while not _stop.wait(period):
        status()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
