"""The virtual board's microcontroller: runs a flashed image's model with the real TFLM
interpreter (``tflite-micro``) in an arena of exactly the compiled size, and prints the lines
the real sketch prints (through :func:`hal.protocol.format_line`) on stdout.

It runs as a child process of :mod:`hal.virtual.board` because TFLM may kill its process with
SIGSEGV on a too-small arena: like a hard fault on the real board, the board then goes silent.
The board imports the interpreter once (:func:`preload`) and forks a fresh child for every
boot, so a reset costs a fork rather than a new Python with numpy and tflite_micro to import;
``python -m hal.virtual.mcu IMAGE`` runs one image standalone.

Sketch behaviour reproduced, with the line builders of :mod:`hal.arduino.sketch` (the ones the
C++ template mirrors): ``AllocateTensors()`` in the fixed arena; on failure the ``alloc_failed``
line, repeated every 2 s; on success the ``boot`` line with the arena use (repeated every 2 s
for the first 30 s), then an ``inf`` line per run cycling the embedded input vectors, and a
``status`` line every status period. A camera input fails with ``camera_failed`` (no OV7675).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager

from hal.protocol import format_line
from hal.virtual import image as image_mod

_TOTAL = re.compile(rb"Arena allocation total (\d+) bytes")


@contextmanager
def _captured_fd2():
    """Collect what C code writes to fd 2 (TFLM's MicroPrintf) while the block runs."""
    holder: dict[str, bytes] = {"data": b""}
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield holder
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            holder["data"] = tmp.read()


def _emit(line) -> None:
    sys.stdout.write(format_line(line) + "\n")
    sys.stdout.flush()


def config_from_image(img: image_mod.Image):
    """The :class:`~hal.arduino.sketch.SketchConfig` compiled into ``img``."""
    from hal.arduino.sketch import SketchConfig

    raw = dict(img.header.get("config") or {})
    for key in ("ops", "labels", "input_shape", "camera_range"):
        if key in raw:
            raw[key] = tuple(raw[key])
    raw["input_vectors"] = tuple(tuple(v) for v in raw.get("input_vectors") or ())
    return SketchConfig(model=img.model, **raw)


def _outputs(interp) -> list[float]:
    import numpy as np

    det = interp.get_output_details(0)
    raw = np.asarray(interp.get_output(0)).ravel()
    q = det.get("quantization_parameters") or {}
    scales = q.get("scales")
    zps = q.get("zero_points")
    if scales is not None and len(scales) and np.issubdtype(raw.dtype, np.integer):
        return [float(v) for v in (raw.astype(np.float64) - float(zps[0])) * float(scales[0])]
    return [float(v) for v in raw]


def _repeat_forever(line, every_s: float) -> None:
    while True:  # the real sketch cannot run: it halts, re-announcing the failure
        _emit(line)
        time.sleep(every_s)


def run(image_path: str, flood: bool = False) -> int:
    """Boot the image at ``image_path`` and run it forever (until killed)."""
    import numpy as np

    from hal.arduino import sketch

    img = image_mod.read(image_path)
    config = config_from_image(img)
    started = time.monotonic()
    reannounce_s = sketch.REANNOUNCE_MS / 1000.0

    from tflite_micro.python.tflite_micro import runtime

    with _captured_fd2():
        try:
            interp = runtime.Interpreter.from_bytes(img.model, arena_size=config.arena_bytes)
        except RuntimeError:  # TFLM reports an allocation failure as RuntimeError
            interp = None
    if interp is None:
        _repeat_forever(sketch.error_line("alloc_failed", arena=config.arena_bytes),
                        reannounce_s)
    if config.input_source == "camera":
        _repeat_forever(sketch.error_line("camera_failed"), reannounce_s)  # no OV7675 here

    with _captured_fd2() as cap:
        interp.print_allocations()
    m = _TOTAL.search(cap["data"])
    used = int(m.group(1)) if m else 0
    boot = sketch.boot_line(config, used)
    _emit(boot)
    last_boot = last_status = time.monotonic()

    det = interp.get_input_details(0)
    shape = tuple(int(d) for d in det["shape"])
    # the vectors as the sketch stores them (older images: real values in the config)
    stored = img.vectors or sketch.input_tensor_bytes(config)
    vectors = [np.frombuffer(b, dtype=det["dtype"]).reshape(shape) for b in stored]
    if not vectors:
        vectors = [np.zeros(shape, dtype=det["dtype"])]
    period = 0.0 if flood else config.inference_period_ms / 1000.0
    status_s = config.status_period_ms / 1000.0
    seq = 0
    while True:
        t0 = time.perf_counter()
        interp.set_input(vectors[seq % len(vectors)], 0)
        interp.invoke()
        us = int((time.perf_counter() - t0) * 1e6)
        seq += 1
        _emit(sketch.inference_line(config, seq, us, _outputs(interp)))
        now = time.monotonic()
        if now - started < sketch.REANNOUNCE_UNTIL_MS / 1000.0 and now - last_boot >= reannounce_s:
            last_boot = now
            _emit(boot)
        if now - last_status >= status_s:
            last_status = now
            _emit(sketch.status_line(config, int(now - started), seq))
        if period:
            time.sleep(period)


def preload() -> None:
    """Import everything :func:`run` needs (numpy, the TFLM runtime, the sketch's line
    builders), so that a process forked afterwards boots in milliseconds."""
    # The sketch runs on one core; no BLAS thread pool to start (or to copy across a fork).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy  # noqa: F401
    from tflite_micro.python.tflite_micro import runtime  # noqa: F401

    from hal.arduino import sketch  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Entry point of an MCU run (``python -m hal.virtual.mcu IMAGE``; the board calls it in
    a forked child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--flood", action="store_true")
    args = parser.parse_args(argv)
    try:
        return run(args.image, args.flood)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    except image_mod.ImageError:
        return 3  # an unbootable image: the board stays silent


if __name__ == "__main__":
    sys.exit(main())
