"""Render the Nano 33 BLE firmware template into a sketch folder.

The sketch folder (``<build slot>/tinyml_sketch/``) always holds the same four files, so that
arduino-cli's build cache survives from one install to the next and only what changed is
rebuilt (a new file name in the folder invalidates the whole cache, arduino-cli issue 2780):

``tinyml_sketch.ino``  the template (``firmware_templates/nano33ble/``), copied verbatim; it
                       never changes between installs of one template version.
``model_data.h``       the declarations of ``g_model`` / ``g_model_len`` (never changes).
``model_data.cpp``     the model as an ``alignas(16)`` C array: changes with the model only.
``model_config.h``     everything else that depends on the install: sha prefix, arena size,
                       op registrations, labels, input vectors, input source, periods.

:func:`render_sketch` rewrites only the files whose bytes changed (unchanged files keep their
mtime). Its inverse, the stand-in compiler's parser, is :func:`hal.virtual.sketch_reader.
read_sketch` (only the hardware-free stand-ins read sketches back).

The lines the sketch prints are built here as :mod:`hal.protocol` objects too
(:func:`boot_line`, :func:`status_line`, :func:`inference_line`, :func:`error_line`), so the
virtual board prints exactly what the C++ prints; a test compiles the rendered sketch for the
host and checks the two byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hal.errors import BugError, InputError
from hal.model.ops import resolver_method
from hal.model.report import ModelReport
from hal.vectors import MAX_INPUT_VECTORS, check_input_vectors

if TYPE_CHECKING:  # the stand-in's compile imports this module: keep pydantic out of it
    from hal.driver import InstallRequest

from hal.protocol import (
    PROTOCOL_VERSION,
    SHA_PREFIX_LEN,
    BootLine,
    ErrorLine,
    InferenceLine,
    StatusLine,
)

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "1.0.0"
SKETCH_NAME = "tinyml_sketch"  # the sketch folder name == the .ino name (arduino-cli requires it)

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "firmware_templates" / "nano33ble"
HOST_HEADERS_DIR = TEMPLATE_DIR / "host_headers"

INO_FILE = f"{SKETCH_NAME}.ino"
MODEL_HEADER_FILE = "model_data.h"
MODEL_DATA_FILE = "model_data.cpp"
CONFIG_FILE = "model_config.h"
SKETCH_FILES = (INO_FILE, MODEL_HEADER_FILE, MODEL_DATA_FILE, CONFIG_FILE)
# hot-swap firmware only
HOTSWAP_FILES = ("tinyml_hotswap.h", "tinyml_hotswap.cpp", "tinyml_hotswap_run.h")

INPUT_DTYPES = ("int8", "uint8", "float32")
INPUT_SOURCES = ("vectors", "camera")
CAMERA_SIDE = 96  # the OV7675 frame is cropped and scaled to 96x96 grayscale

# Limits. Labels: the protocol cuts labels at 48 characters, and a label's JSON escape must
# leave room for the rest of an inference line inside MAX_LINE_BYTES (see inference_line).
MAX_LABELS = 1024
MAX_LABEL_CHARS = 48
MAX_LABEL_WIRE_BYTES = 384
MAX_VECTORS = MAX_INPUT_VECTORS
MAX_VECTOR_BYTES = 192 * 1024  # flash the embedded test vectors may take
MAX_INPUT_ELEMENTS = 1 << 20
MAX_INPUT_RANK = 6
MAX_MODEL_BYTES = 4 * 1024 * 1024
MAX_ARENA_BYTES = 16 * 1024 * 1024
MAX_OPS = 128
MAX_PERIOD_MS = 3_600_000
REANNOUNCE_MS = 2000  # the boot line is repeated this often ...
REANNOUNCE_UNTIL_MS = 30000  # ... during the first 30 s, for a host that opened the port late

_DTYPE_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_C_TYPE = {"int8": "int8_t", "uint8": "uint8_t", "float32": "float"}
_TFLITE_TYPE = {"int8": "kTfLiteInt8", "uint8": "kTfLiteUInt8", "float32": "kTfLiteFloat32"}
_BOARD_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,31}$")
_OP_RE = re.compile(r"^(CUSTOM:)?[A-Za-z0-9_.\-]{1,64}$")
_METHOD_RE = re.compile(r"^Add[A-Za-z0-9]{1,64}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


@dataclass(frozen=True)
class SketchConfig:
    """Everything one install puts into the sketch. ``input_vectors`` are in real
    (dequantised) units; the renderer quantises them with ``input_scale``/``input_zero_point``
    (float32 inputs: both None). ``camera_range`` is the real value of a black and a white
    pixel when ``input_source == "camera"`` (default ``(0.0, 1.0)``: pixel / 255)."""

    model: bytes
    model_sha256: str
    ops: tuple[str, ...]  # builtin op names from ModelReport.ops
    arena_bytes: int
    labels: tuple[str, ...]
    input_dtype: str  # "int8" | "uint8" | "float32"
    input_shape: tuple[int, ...]
    input_scale: float | None
    input_zero_point: int | None
    input_vectors: tuple[tuple[float, ...], ...]  # real units; quantised by the renderer
    input_source: str = "vectors"  # or "camera" (OV7675, 96x96 grayscale)
    board: str = "nano33ble"
    status_period_ms: int = 5000
    template_version: str = TEMPLATE_VERSION
    inference_period_ms: int = 1000  # pause between inferences (0: back to back)
    camera_range: tuple[float, float] = (0.0, 1.0)
    # Hot-swap firmware (hal/arduino/hotswap.py): ``ops`` is then its declared op set, the
    # arena its fixed arena, and it keeps two model slots of ``slot_bytes`` each.
    hotswap: bool = False
    slot_bytes: int = 0
    active_slot: int = 255  # the slot whose model runs (255: the compiled-in model)

    @property
    def sha_prefix(self) -> str:
        """The model hash prefix the sketch announces."""
        return self.model_sha256[:SHA_PREFIX_LEN]

    @property
    def input_elements(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @property
    def vector_bytes(self) -> int:
        """Flash the embedded test vectors take (beyond the model array)."""
        size = 4 if self.input_dtype == "float32" else 1
        return len(self.input_vectors) * self.input_elements * size

    @property
    def extra_flash_bytes(self) -> int:
        """Flash the sketch needs beyond the model array and the board baseline: test
        vectors and label strings (for the fit check)."""
        labels = sum(len(label_wire_text(x)) + 1 + 4 for x in self.labels)  # text + NUL + ptr
        return self.vector_bytes + labels

    @property
    def extra_ram_bytes(self) -> int:
        """Static RAM beyond the arena and the board baseline: the camera build keeps a
        176x144 frame and a 256-entry pixel table."""
        if self.input_source != "camera":
            return 0
        return 176 * 144 + 256 * (4 if self.input_dtype == "float32" else 1)

    def __repr__(self) -> str:  # the model bytes would flood logs
        return (
            f"SketchConfig(sha={self.sha_prefix}, model={len(self.model)} B, ops={self.ops}, "
            f"arena={self.arena_bytes}, labels={len(self.labels)}, input={self.input_dtype}"
            f"{list(self.input_shape)}, vectors={len(self.input_vectors)}, "
            f"source={self.input_source}, board={self.board})"
        )


# --------------------------------------------------------------------------- validation


def _bad(field_name: str, message: str, **detail) -> InputError:
    return InputError("bad_option", f"{field_name}: {message}", field=field_name, **detail)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def label_wire_text(label: str) -> str:
    """The label as it appears between the quotes of an inference line (JSON escaped,
    ASCII only): exactly what the sketch stores and prints."""
    return json.dumps(label, ensure_ascii=True)[1:-1]


def validate_config(config: SketchConfig) -> None:
    """Raise ``InputError("bad_option")`` naming the first field of ``config`` that the
    template cannot take. Called by :func:`render_sketch` and :func:`config_for`."""
    c = config
    if not isinstance(c.model, (bytes, bytearray)) or not c.model:
        raise _bad("model", "the model is empty")
    if len(c.model) > MAX_MODEL_BYTES:
        raise _bad("model", f"{len(c.model)} bytes exceed {MAX_MODEL_BYTES}",
                   size_bytes=len(c.model), limit_bytes=MAX_MODEL_BYTES)
    if not isinstance(c.model_sha256, str) or not _SHA_RE.match(c.model_sha256):
        raise _bad("model_sha256", "must be 64 lower-case hex digits")
    actual = hashlib.sha256(c.model).hexdigest()
    if actual != c.model_sha256:
        raise _bad("model_sha256", f"does not match the model bytes (sha256 {actual})",
                   expected=actual)
    if not _VERSION_RE.match(str(c.template_version)) or c.template_version != TEMPLATE_VERSION:
        raise _bad("template_version", f"only template {TEMPLATE_VERSION} exists, "
                   f"not {c.template_version!r}")
    if not isinstance(c.board, str) or not _BOARD_RE.match(c.board):
        raise _bad("board", f"{c.board!r} is not a board profile name")
    _validate_ops(c.ops)
    if not _is_int(c.arena_bytes) or c.arena_bytes <= 0:
        raise _bad("arena_bytes", f"must be a positive number of bytes, not {c.arena_bytes!r}")
    if c.arena_bytes > MAX_ARENA_BYTES:
        raise _bad("arena_bytes", f"{c.arena_bytes} exceeds {MAX_ARENA_BYTES}")
    for name in ("status_period_ms", "inference_period_ms"):
        value = getattr(c, name)
        low = 100 if name == "status_period_ms" else 0
        if not _is_int(value) or not low <= value <= MAX_PERIOD_MS:
            raise _bad(name, f"must be {low}..{MAX_PERIOD_MS} ms, not {value!r}")
    _validate_labels(c.labels)
    _validate_input(c)
    if c.hotswap:
        from hal.arduino.hotswap_protocol import MAX_OPSET, PAGE_BYTES

        if not _is_int(c.slot_bytes) or c.slot_bytes <= 0 or c.slot_bytes % PAGE_BYTES:
            raise _bad("slot_bytes", f"must be a positive multiple of {PAGE_BYTES}, not "
                       f"{c.slot_bytes!r}")
        if len(c.ops) > MAX_OPSET:
            raise _bad("ops", f"a hot-swap op set of {len(c.ops)} ops exceeds {MAX_OPSET}")


def _validate_ops(ops) -> None:
    if not isinstance(ops, tuple) or not ops:
        raise _bad("ops", "the model has no ops")
    if len(ops) > MAX_OPS:
        raise _bad("ops", f"{len(ops)} ops exceed {MAX_OPS}")
    for op in ops:
        # Op names land in a C comment: nothing but a plain identifier may pass.
        if not isinstance(op, str) or not _OP_RE.match(op):
            raise _bad("ops", f"{op!r} is not an op name")
    if len(set(ops)) != len(ops):
        raise _bad("ops", "op names repeat")
    missing = [op for op in ops if resolver_method(op) is None]
    if missing:
        raise InputError(
            "model_unsupported_ops",
            f"the Arduino TFLM library has no kernel for: {', '.join(missing)}",
            unsupported=missing,
            runtime="tflite-micro (Arduino)",
        )


def _validate_labels(labels) -> None:
    if not isinstance(labels, tuple):
        raise _bad("labels", "must be a tuple of strings")
    if len(labels) > MAX_LABELS:
        raise _bad("labels", f"{len(labels)} labels exceed {MAX_LABELS}", count=len(labels),
                   limit=MAX_LABELS)
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise _bad("labels", f"label {i} is not a string", index=i)
        if len(label) > MAX_LABEL_CHARS:
            raise _bad("labels", f"label {i} has {len(label)} characters, over "
                       f"{MAX_LABEL_CHARS}", index=i, limit=MAX_LABEL_CHARS)
        try:
            label.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("labels", f"label {i} is not valid Unicode text", index=i) from None
        wire = len(label_wire_text(label))
        if wire > MAX_LABEL_WIRE_BYTES:
            raise _bad("labels", f"label {i} takes {wire} bytes escaped, over "
                       f"{MAX_LABEL_WIRE_BYTES}", index=i, limit=MAX_LABEL_WIRE_BYTES)


def _validate_input(c: SketchConfig) -> None:
    if c.input_dtype not in INPUT_DTYPES:
        raise _bad("input_dtype", f"the sketch feeds {', '.join(INPUT_DTYPES)} inputs, not "
                   f"{c.input_dtype!r}")
    shape = c.input_shape
    if (not isinstance(shape, tuple) or not 1 <= len(shape) <= MAX_INPUT_RANK
            or not all(_is_int(d) and d >= 1 for d in shape)):
        raise _bad("input_shape", f"must be 1 to {MAX_INPUT_RANK} positive dimensions, not "
                   f"{shape!r}")
    if c.input_elements > MAX_INPUT_ELEMENTS:
        raise _bad("input_shape", f"{c.input_elements} elements exceed {MAX_INPUT_ELEMENTS}")
    if c.input_dtype == "float32":
        if c.input_scale is not None or c.input_zero_point is not None:
            raise _bad("input_scale", "a float32 input has no scale or zero point")
    else:
        if not _is_real(c.input_scale) or not math.isfinite(c.input_scale) \
                or c.input_scale <= 0:
            raise _bad("input_scale", f"a quantised input needs a positive finite scale, not "
                       f"{c.input_scale!r}")
        lo, hi = _DTYPE_RANGE[c.input_dtype]
        if not _is_int(c.input_zero_point) or not lo <= c.input_zero_point <= hi:
            raise _bad("input_zero_point", f"must be an integer in {lo}..{hi} for "
                       f"{c.input_dtype}, not {c.input_zero_point!r}")
    if c.input_source not in INPUT_SOURCES:
        raise _bad("input_source", f"must be one of {', '.join(INPUT_SOURCES)}, not "
                   f"{c.input_source!r}")
    vectors = c.input_vectors
    if not isinstance(vectors, tuple):
        raise _bad("input_vectors", "must be a tuple of vectors")
    if c.input_source == "camera":
        if c.input_elements != CAMERA_SIDE * CAMERA_SIDE:
            raise _bad("input_source", f"the camera gives {CAMERA_SIDE}x{CAMERA_SIDE}x1 "
                       f"grayscale; the model's input is {list(shape)}")
        if vectors:
            raise _bad("input_vectors", "test vectors are not used with the camera input")
        rng = c.camera_range
        if (not isinstance(rng, tuple) or len(rng) != 2 or not all(_is_real(v) and
                math.isfinite(v) for v in rng) or rng[0] == rng[1]):
            raise _bad("camera_range", f"must be two different finite numbers, not {rng!r}")
    if len(vectors) > MAX_VECTORS:
        check_input_vectors(vectors, c.input_elements, shape, c.input_dtype)  # raises
    if c.vector_bytes > MAX_VECTOR_BYTES:  # before touching the values: cheap rejection
        raise _bad("input_vectors", f"the vectors take {c.vector_bytes} bytes of flash, over "
                   f"{MAX_VECTOR_BYTES}", bytes=c.vector_bytes, limit=MAX_VECTOR_BYTES)
    check_input_vectors(vectors, c.input_elements, shape, c.input_dtype)


# ----------------------------------------------------------------------------- building


def config_for(
    report: ModelReport,
    model: bytes,
    request: InstallRequest,
    arena_bytes: int,
    board: str,
) -> SketchConfig:
    """The sketch configuration for installing ``model`` (described by ``report``) as
    ``request`` asks, with an arena of ``arena_bytes``. Raises ``InputError`` (``bad_option``
    naming the field, or ``model_unsupported_ops``) when the template cannot take it."""
    if len(report.inputs) != 1:
        raise _bad("model", f"the sketch feeds exactly one input tensor; the model has "
                   f"{len(report.inputs)}")
    if not report.outputs:
        raise _bad("model", "the model has no output tensor")
    tensor = report.inputs[0]
    if not tensor.shape:
        raise _bad("input_shape", "a scalar input tensor is not supported by the template")
    quantised = tensor.dtype != "float32"
    labels = tuple(request.labels)
    outputs = report.outputs[0].elements
    if len(labels) > outputs:
        raise _bad("labels", f"{len(labels)} labels for {outputs} outputs", count=len(labels),
                   outputs=outputs)
    config = SketchConfig(
        model=bytes(model),
        model_sha256=report.sha256,
        ops=tuple(report.ops),
        arena_bytes=arena_bytes,
        labels=labels,
        input_dtype=tensor.dtype,
        input_shape=tuple(int(d) for d in tensor.shape),
        input_scale=float(tensor.scale) if quantised and tensor.scale is not None else None,
        input_zero_point=int(tensor.zero_point)
        if quantised and tensor.zero_point is not None else None,
        input_vectors=tuple(tuple(v) for v in request.input_vectors),
        input_source=request.input_source,
        board=board,
    )
    validate_config(config)
    return config


def quantise(config: SketchConfig, values) -> list:
    """``values`` (real units) as the input tensor's element values: ints for int8/uint8
    (round half away from zero, like TFLM's ``FloatToQuantizedType``, then clamped), floats
    rounded to float32 for float32 inputs."""
    import numpy as np

    real = np.asarray(values, dtype=np.float64)
    if config.input_dtype == "float32":
        return real.astype(np.float32).astype(np.float64).tolist()
    lo, hi = _DTYPE_RANGE[config.input_dtype]
    scaled = real / config.input_scale
    q = np.copysign(np.floor(np.abs(scaled) + 0.5), scaled) + config.input_zero_point
    return np.clip(q, lo, hi).astype(np.int64).tolist()


def dequantise(config: SketchConfig, values) -> tuple[float, ...]:
    """Inverse of :func:`quantise` (the real value each stored element stands for)."""
    if config.input_dtype == "float32":
        return tuple(float(v) for v in values)
    return tuple((int(q) - config.input_zero_point) * config.input_scale for q in values)


def input_tensor_bytes(config: SketchConfig) -> tuple[bytes, ...]:
    """The exact bytes the sketch copies into the input tensor for each test vector, in the
    order it cycles them (little-endian float32 for float inputs)."""
    fmt = {"int8": "b", "uint8": "B", "float32": "f"}[config.input_dtype]
    return tuple(
        struct.pack(f"<{config.input_elements}{fmt}", *quantise(config, vector))
        for vector in config.input_vectors
    )


def camera_lookup(config: SketchConfig, input_scale: float | None = None,
                  input_zero_point: int | None = None) -> tuple:
    """What the sketch stores for each camera pixel value 0..255: the pixel's real value
    (``camera_range``) quantised with the input tensor's scale and zero point (ints), or the
    float32 real value. The sketch builds the same table at boot from the tensor's own
    parameters; pass them here when they differ from the config's."""
    lo = _f32(config.camera_range[0])
    step = _f32(_f32(_f32(config.camera_range[1]) - lo) / 255.0)
    reals = [_f32(lo + _f32(p * step)) for p in range(256)]  # float math, as the C++ does
    if config.input_dtype == "float32":
        return tuple(reals)
    scale = input_scale if input_scale is not None else config.input_scale
    zp = input_zero_point if input_zero_point is not None else config.input_zero_point
    lo_q, hi_q = _DTYPE_RANGE[config.input_dtype]
    out = []
    for real in reals:
        q = _round_half_away(_f32(real / _f32(scale))) + zp
        out.append(min(hi_q, max(lo_q, q)))
    return tuple(out)


QCIF_WIDTH, QCIF_HEIGHT = 176, 144


def camera_input(config: SketchConfig, frame: bytes, input_scale: float | None = None,
                 input_zero_point: int | None = None) -> bytes:
    """The input tensor bytes the sketch makes of one 176x144 grayscale camera ``frame``:
    the centred 144x144 square scaled to 96x96 (2x2 average at every 1.5th pixel), each
    pixel through :func:`camera_lookup`. For the virtual board's camera option."""
    if len(frame) != QCIF_WIDTH * QCIF_HEIGHT:
        raise _bad("frame", f"a QCIF grayscale frame has {QCIF_WIDTH * QCIF_HEIGHT} bytes, "
                   f"not {len(frame)}")
    table = camera_lookup(config, input_scale, input_zero_point)
    x0 = (QCIF_WIDTH - QCIF_HEIGHT) // 2
    values = []
    for oy in range(CAMERA_SIDE):
        row = (oy * 3) // 2 * QCIF_WIDTH
        for ox in range(CAMERA_SIDE):
            i = row + x0 + (ox * 3) // 2
            total = frame[i] + frame[i + 1] + frame[i + QCIF_WIDTH] + frame[i + QCIF_WIDTH + 1]
            values.append(table[(total + 2) // 4])
    fmt = {"int8": "b", "uint8": "B", "float32": "f"}[config.input_dtype]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def dequantise_outputs(dtype: str, scale: float, zero_point: int, values) -> tuple[float, ...]:
    """Output tensor values as the sketch prints them: ``(q - zero_point) * scale`` computed
    in float32 (as the C++ does), integers without a scale passed through, float32 as is."""
    if dtype == "float32":
        return tuple(_f32(v) for v in values)
    if dtype not in ("int8", "uint8", "int16", "int32"):
        return tuple(0.0 for _ in values)
    scale32 = _f32(scale)
    if scale32 == 0.0:
        return tuple(_f32(int(q)) for q in values)
    return tuple(_f32(_f32(int(q) - zero_point) * scale32) for q in values)


def _round_half_away(x: float) -> int:
    """C's roundf/lroundf: halves away from zero (Python's round() goes to even)."""
    n = math.floor(abs(x) + 0.5)
    return n if x >= 0 else -n


def _f32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", float(v)))[0]


# ------------------------------------------------------------------ lines of the sketch
# The C++ template prints these; the virtual board prints them through hal.protocol.


def boot_line(config: SketchConfig, used_bytes: int) -> BootLine:
    """The line the sketch prints once ``AllocateTensors()`` succeeded (and repeats every
    2 s for the first 30 s)."""
    hotswap = None
    if config.hotswap:
        from hal.arduino.hotswap_protocol import Capability, op_set_digest

        hotswap = Capability(slot=config.active_slot, slot_bytes=config.slot_bytes,
                             arena_bytes=config.arena_bytes, ops=tuple(sorted(config.ops)),
                             digest=op_set_digest(config.ops)).to_wire()
    return BootLine(sha=config.sha_prefix, arena_bytes=config.arena_bytes,
                    used_bytes=used_bytes, firmware=config.template_version,
                    board=config.board, protocol=PROTOCOL_VERSION, hotswap=hotswap)


def status_line(config: SketchConfig, uptime_s: int, count: int) -> StatusLine:
    """The periodic status line (every ``status_period_ms``); ``count`` is the number of
    inferences run so far."""
    return StatusLine(sha=config.sha_prefix, uptime_s=uptime_s, count=count,
                      firmware=config.template_version, protocol=PROTOCOL_VERSION)


def inference_line(config: SketchConfig, seq: int, latency_us: int,
                   outputs) -> InferenceLine:
    """One inference (``seq`` counts from 1): outputs dequantised, ``top`` is the first
    index of the largest output, the label is ``labels[top]`` or empty."""
    outputs = tuple(float(v) for v in outputs)
    top = max(range(len(outputs)), key=lambda i: (outputs[i], -i)) if outputs else 0
    label = config.labels[top] if top < len(config.labels) else ""
    return InferenceLine(seq=seq, latency_us=latency_us, outputs=outputs, top=top,
                         label=label)


# code -> (message, number keys in order); the C++ prints the same text.
ERROR_LINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "alloc_failed": ("AllocateTensors() failed", ("arena",)),
    "model_invalid": ("model schema version mismatch", ("schema", "expected")),
    "bad_input": ("input tensor does not match the sketch", ("bytes", "expected")),
    "invoke_failed": ("Invoke() failed", ("n",)),
    "camera_failed": ("OV7675 camera did not start", ()),
}
OPS_FAILED_MESSAGE = "op registration failed"  # model_invalid with numbers ("ops",)


def error_line(code: str, **numbers: int) -> ErrorLine:
    """An error line exactly as the sketch prints it, e.g.
    ``error_line("alloc_failed", arena=config.arena_bytes)``. Setup failures (every code
    but ``invoke_failed``) are repeated every 2 s, because the sketch cannot run."""
    if code == "model_invalid" and set(numbers) == {"ops"}:
        return ErrorLine(code=code, message=OPS_FAILED_MESSAGE, numbers=dict(numbers))
    message, keys = ERROR_LINES[code]
    if set(numbers) != set(keys):
        raise BugError("internal", f"{code} lines carry {keys}, not {tuple(numbers)}")
    return ErrorLine(code=code, message=message, numbers={k: numbers[k] for k in keys})


# ---------------------------------------------------------------------------- rendering


def _c_string(text: str) -> str:
    """A C string literal holding the ASCII ``text``: quotes, backslashes, ``?`` (trigraphs)
    and anything unprintable are escaped, so no input can end the literal early."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch in '\\"?':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o < 0x100:
            out.append(f"\\{o:03o}")  # fixed 3-digit octal: cannot swallow following digits
        else:
            raise BugError("internal", "only ASCII text goes into C literals")
    out.append('"')
    return "".join(out)


_BYTES_PER_LINE = 16
_LINE_PREFIX = b"    "


# "0x1c, " for every byte value: a table lookup per byte, no numpy. The stand-in arduino-cli
# renders this in a fresh process on every compile, where importing numpy (~120 ms) would cost
# more than the whole lookup (~35 ms for a 300 KB model).
_HEX_CELLS = [f"0x{b:02x}, ".encode() for b in range(256)]
_CELL = len(_HEX_CELLS[0])


def _model_array_body(model: bytes) -> bytes:
    """``    0x1c, 0x00, ..., 0x0f,\n`` lines of 16 bytes."""
    full = len(model) // _BYTES_PER_LINE * _BYTES_PER_LINE
    cells = b"".join(map(_HEX_CELLS.__getitem__, model[:full]))
    step = _CELL * _BYTES_PER_LINE
    # Each line drops the trailing space of its last cell: "0x0f, " ends it as "0x0f,\n".
    body = b"".join(_LINE_PREFIX + cells[i:i + step - 1] + b"\n"
                    for i in range(0, len(cells), step))
    rest = model[full:]
    if rest:
        body += _LINE_PREFIX + ", ".join(f"0x{b:02x}" for b in rest).encode() + b",\n"
    return body


MODEL_HEADER_TEXT = """\
// Generated by hal/arduino/sketch.py: the model array (defined in model_data.cpp).
#ifndef TINYML_MODEL_DATA_H_
#define TINYML_MODEL_DATA_H_

extern const unsigned char g_model[];
extern const unsigned int g_model_len;

#endif  // TINYML_MODEL_DATA_H_
"""


def _model_data_text(model: bytes, sha256: str) -> bytes:
    head = "\n".join([
        "// Generated by hal/arduino/sketch.py: the model flatbuffer. Do not edit.",
        f"// sha256 {sha256}, {len(model)} bytes.",
        '#include "model_data.h"',
        "",
        "// 16-byte alignment: TFLM reads the flatbuffer in place (CMSIS-NN wants it aligned).",
        "alignas(16) const unsigned char g_model[] = {",
        "",
    ]).encode("ascii")
    tail = f"}};\nconst unsigned int g_model_len = {len(model)};\n".encode("ascii")
    return head + _model_array_body(model) + tail


def _float_literal(v: float) -> str:
    """A C float literal for a float32 value (shortest text that reads back the same)."""
    import numpy as np  # lazy: only float32 inputs need it

    text = str(np.float32(v))
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"


def _c_vector(config: SketchConfig, vector) -> str:
    values = quantise(config, vector)
    if config.input_dtype == "float32":
        return "{" + ", ".join(_float_literal(v) for v in values) + "}"
    return "{" + ", ".join(str(v) for v in values) + "}"


def _method_for(op: str) -> str:
    method = resolver_method(op)
    if method is None or not _METHOD_RE.match(method):
        raise BugError("internal", f"no valid resolver method for {op!r}: {method!r}")
    return method


def _config_text(c: SketchConfig) -> str:
    dtype = c.input_dtype
    camera = c.input_source == "camera"
    out = [
        "// Generated by hal/arduino/sketch.py for one install. Do not edit: the next",
        "// install rewrites it. The template tinyml_sketch.ino reads these settings.",
        "#ifndef TINYML_MODEL_CONFIG_H_",
        "#define TINYML_MODEL_CONFIG_H_",
        "",
        "#include <stdint.h>",
        "",
        f"#define TINYML_TEMPLATE_VERSION {_c_string(c.template_version)}",
        f"#define TINYML_MODEL_SHA {_c_string(c.sha_prefix)}",
        f"#define TINYML_BOARD {_c_string(c.board)}",
        f"#define TINYML_ARENA_BYTES {c.arena_bytes}",
        f"#define TINYML_STATUS_PERIOD_MS {c.status_period_ms}",
        f"#define TINYML_INFERENCE_PERIOD_MS {c.inference_period_ms}",
        f"#define TINYML_REANNOUNCE_MS {REANNOUNCE_MS}",
        f"#define TINYML_REANNOUNCE_UNTIL_MS {REANNOUNCE_UNTIL_MS}",
        "",
        "// Exactly the model's ops: a MicroMutableOpResolver<TINYML_OP_COUNT>, never the",
        "// all-ops resolver (about 200 KB more flash). One op per line: method /* op */.",
    ]
    methods = []
    lines = []
    for op in c.ops:
        method = _method_for(op)
        if method in methods:
            continue
        methods.append(method)
        lines.append(f"    ok = ((resolver).{method}() == kTfLiteOk) && ok; /* {op} */ \\")
    out.append(f"#define TINYML_OP_COUNT {len(methods)}")
    out.append("#define TINYML_REGISTER_OPS(resolver, ok) \\")
    out.append("  do { \\")
    out.extend(lines)
    out.append("  } while (0)")
    out.append("")
    out.append("// Input tensor 0 as the model declares it.")
    out.append(f"#define TINYML_INPUT_DTYPE {_c_string(dtype)}")
    out.append(f"typedef {_C_TYPE[dtype]} tinyml_input_t;")
    out.append(f"#define TINYML_INPUT_TFLITE_TYPE {_TFLITE_TYPE[dtype]}")
    out.append(f"#define TINYML_INPUT_RANK {len(c.input_shape)}")
    out.append("#define TINYML_INPUT_SHAPE {" + ", ".join(map(str, c.input_shape)) + "}")
    out.append(f"#define TINYML_INPUT_ELEMENTS {c.input_elements}")
    if dtype == "float32":
        out.append("#define TINYML_INPUT_QUANTISED 0")
    else:
        out.append("#define TINYML_INPUT_QUANTISED 1")
        # repr: the shortest text that reads back to the same double (read_sketch relies on it)
        out.append(f"#define TINYML_INPUT_SCALE {c.input_scale!r}")
        out.append(f"#define TINYML_INPUT_ZERO_POINT {c.input_zero_point}")
    out.append("")
    out.append("// Input source: 1 = OV7675 camera (96x96 grayscale), 0 = the test vectors below.")
    out.append(f"#define TINYML_INPUT_CAMERA {1 if camera else 0}")
    if camera:
        lo, hi = c.camera_range
        out.append("// Real value of a black (0) and a white (255) pixel, before quantisation.")
        out.append(f"#define TINYML_CAMERA_REAL_LO {float(lo)!r}")
        out.append(f"#define TINYML_CAMERA_REAL_HI {float(hi)!r}")
    out.append("")
    out.append("// Labels, stored as their JSON escape (printed as is inside the label string).")
    out.append(f"#define TINYML_LABEL_COUNT {len(c.labels)}")
    out.append("static const char* const kTinymlLabels[] = {")
    for label in c.labels or ("",):  # never an empty array: TINYML_LABEL_COUNT says 0
        out.append(f"    {_c_string(label_wire_text(label))},")
    out.append("};")
    out.append("")
    out.append("// Test vectors, quantised for the input type, cycled one per inference.")
    out.append(f"#define TINYML_INPUT_VECTOR_COUNT {len(c.input_vectors)}")
    if c.input_vectors:
        out.append("alignas(4) static const tinyml_input_t "
                   "kTinymlInputVectors[TINYML_INPUT_VECTOR_COUNT][TINYML_INPUT_ELEMENTS] = {")
        for vector in c.input_vectors:
            out.append(f"    {_c_vector(c, vector)},")
        out.append("};")
    out.append("")
    if c.hotswap:
        from hal.arduino.hotswap_protocol import op_set_digest

        ops = sorted(c.ops)
        out.append("// Hot-swap firmware (tinyml_hotswap.cpp): two model slots, the op set above.")
        out.append("#define TINYML_HOTSWAP 1")
        out.append(f"#define TINYML_SLOT_BYTES {c.slot_bytes}")
        out.append(f"#define TINYML_OPSET_DIGEST {_c_string(op_set_digest(ops))}")
        out.append("#define TINYML_OPSET_JSON "
                   + _c_string(",".join(json.dumps(op) for op in ops)))
        out.append("")
    out.append("#endif  // TINYML_MODEL_CONFIG_H_")
    return "\n".join(out) + "\n"


def template_text() -> bytes:
    """The bytes of the static sketch template (``tinyml_sketch.ino``)."""
    try:
        return (TEMPLATE_DIR / INO_FILE).read_bytes()
    except OSError as exc:
        raise BugError("internal", f"the firmware template is missing: {exc}") from None


def rendered_files(config: SketchConfig) -> dict[str, bytes]:
    """The sketch's files by name, as :func:`render_sketch` writes them (validated)."""
    validate_config(config)
    files = {
        INO_FILE: template_text(),
        MODEL_HEADER_FILE: MODEL_HEADER_TEXT.encode("ascii"),
        MODEL_DATA_FILE: _model_data_text(config.model, config.model_sha256),
        CONFIG_FILE: _config_text(config).encode("ascii"),
    }
    if config.hotswap:  # the slot code, copied verbatim like the .ino
        for name in HOTSWAP_FILES:
            files[name] = (TEMPLATE_DIR / name).read_bytes()
    return files


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    # Write beside and rename: a killed install never leaves half a file. No fsync: after a
    # power loss a damaged file differs from what we render, so the next install rewrites it.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


# Files arduino-cli would compile if they sat in the sketch folder.
_SOURCE_SUFFIXES = (".ino", ".pde", ".c", ".cpp", ".cc", ".cxx", ".h", ".hh", ".hpp", ".S")


def render_sketch(config: SketchConfig, sketch_dir: Path) -> bool:
    """Write the sketch into ``sketch_dir`` (created; its basename must be
    :data:`SKETCH_NAME`). Only files whose content changed are rewritten (so arduino-cli's
    cache sees unchanged mtimes); the model always goes to the fixed file name
    ``model_data.cpp``. Source files that are not ours are removed (arduino-cli would compile
    them). Returns True if anything changed. Raises ``InputError("bad_option")`` for a
    configuration the template cannot take; nothing is written then."""
    sketch_dir = Path(sketch_dir)
    if sketch_dir.name != SKETCH_NAME:
        raise _bad("sketch_dir", f"the sketch folder must be named {SKETCH_NAME!r} (arduino-cli "
                   f"requires folder name == .ino name), not {sketch_dir.name!r}")
    files = rendered_files(config)  # validates before anything touches the disk
    sketch_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, data in files.items():
        if _write_if_changed(sketch_dir / name, data):
            changed.append(name)
    for entry in sketch_dir.iterdir():
        stray_tmp = entry.name.startswith(".") and entry.name.endswith(".tmp")
        if entry.is_file() and entry.name not in files and (
                stray_tmp or entry.suffix in _SOURCE_SUFFIXES):
            entry.unlink()
            changed.append(f"-{entry.name}")
    log.info("rendered sketch %s for model %s: %s", sketch_dir, config.sha_prefix,
             ", ".join(changed) if changed else "unchanged")
    return bool(changed)


__all__ = [
    "SKETCH_NAME",
    "TEMPLATE_VERSION",
    "SketchConfig",
    "boot_line",
    "camera_lookup",
    "config_for",
    "dequantise",
    "error_line",
    "inference_line",
    "input_tensor_bytes",
    "quantise",
    "render_sketch",
    "status_line",
    "validate_config",
]
