"""Load and validate a ``.tflite`` file and describe it: :func:`analyze`.

Checks, in order, each a coded :class:`~hal.errors.InputError` (never a traceback):

``model_empty``            no bytes at all
``model_too_large``        over the size limit (``detail``: ``size_bytes``, ``limit_bytes``)
``model_not_tflite``       no ``TFL3`` identifier at bytes 4..8 (a PNG, a Keras .h5 or a zip
                           is named as such in the message)
``model_corrupt``          the flatbuffer does not parse against the TFLite schema: truncated
                           files, random bytes behind a valid identifier, indices out of range
``model_subgraphs``        not exactly one subgraph (TFLM runs the first only)
``model_unsupported_ops``  a board is given and it cannot run some op (``detail.unsupported``)
``model_not_int8``         the board requires int8 and the model is not fully int8 (without
                           such a board it is a warning in ``report.warnings``)

Parsing is lazy: the pure-Python ``tflite`` schema classes read fields straight out of the
caller's buffer (no copy; weight buffers are never touched beyond their length), so a 300 KB
model is analysed in about a millisecond.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from hal.errors import InputError
from hal.model.ops import resolver_method, unsupported_ops
from hal.model.planner import ArenaEstimate, Graph, PlanOp, PlanTensor, estimate
from hal.model.report import ModelReport, TensorInfo

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # MCU targets; Linux profiles allow more
IDENTIFIER = b"TFL3"
# A subgraph larger than this is not a microcontroller model, and the O(n^2) planner would
# take too long on it.
MAX_TENSORS = 10000
MAX_OPS = 10000

# schema TensorType -> (numpy-style name, element bits; 0 = not an arena tensor)
_TYPES: dict[int, tuple[str, int]] = {
    0: ("float32", 32),
    1: ("float16", 16),
    2: ("int32", 32),
    3: ("uint8", 8),
    4: ("int64", 64),
    5: ("string", 0),
    6: ("bool", 8),
    7: ("int16", 16),
    8: ("complex64", 64),
    9: ("int8", 8),
    10: ("float64", 64),
    11: ("complex128", 128),
    12: ("uint64", 64),
    13: ("resource", 0),
    14: ("variant", 0),
    15: ("uint32", 32),
    16: ("uint16", 16),
    17: ("int4", 4),
    18: ("bfloat16", 16),
}
_FLOAT_TYPES = frozenset({"float32", "float16", "float64", "bfloat16"})
_QUANT_TYPES = frozenset({"int8", "uint8", "int16", "int4"})

# File signatures of things people rename to .tflite by mistake.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"\x89HDF\r\n\x1a\n", "a Keras/HDF5 (.h5) file: convert it to .tflite first"),
    (b"PK\x03\x04", "a zip archive (a .keras model or an Edge Impulse export?)"),
    (b"\x7fELF", "an ELF executable"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"RIFF", "a RIFF (WAV/AVI) file"),
)


def _sniff(data: bytes) -> str | None:
    for magic, what in _SIGNATURES:
        if data.startswith(magic):
            return what
    head = data[:64].lstrip()
    if head[:1] in (b"{", b"["):
        return "JSON text"
    try:
        head.decode("ascii")
    except UnicodeDecodeError:
        return None
    return "text" if head else None


def _op_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {
        v: k
        for k, v in vars(BuiltinOperator).items()
        if not k.startswith("_") and isinstance(v, int)
    }


_OP_NAMES: dict[int, str] | None = None


class _Corrupt(Exception):
    """Raised by our own checks during parsing; becomes ``model_corrupt``."""


def _checked_len(n: int, elem_bytes: int, size: int, what: str) -> int:
    # A vector can never hold more elements than the file has bytes for; checking this first
    # keeps a hostile length (2^32-1) from turning into a near-endless loop.
    if n < 0 or n * elem_bytes > size:
        raise _Corrupt(f"{what} claims {n} entries, more than the file can hold")
    return n


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


class _Parsed:
    """The parts of one subgraph the report and the planner need."""

    __slots__ = ("graph", "inputs", "int8", "not_int8_reasons", "ops", "outputs")


def _parse(data: bytes) -> _Parsed:
    """Walk the flatbuffer. Raises anything on a malformed buffer; the caller classifies."""
    global _OP_NAMES
    from tflite.Model import Model

    if _OP_NAMES is None:
        _OP_NAMES = _op_names()
    size = len(data)
    root = int.from_bytes(data[0:4], "little")
    if root < 8 or root + 4 > size:
        raise _Corrupt(f"root table offset {root} is outside the {size}-byte file")
    model = Model.GetRootAs(data, 0)

    n_sub = _checked_len(model.SubgraphsLength(), 4, size, "subgraph vector")
    if n_sub != 1:
        raise InputError(
            "model_subgraphs",
            f"the model has {n_sub} subgraphs; exactly one is supported (TFLM runs a single "
            "graph: export one signature/function without control flow)",
            subgraphs=n_sub,
        )
    sub = model.Subgraphs(0)
    n_buffers = _checked_len(model.BuffersLength(), 4, size, "buffer vector")
    n_codes = _checked_len(model.OperatorCodesLength(), 4, size, "operator-code vector")
    n_tensors = _checked_len(sub.TensorsLength(), 4, size, "tensor vector")
    n_ops = _checked_len(sub.OperatorsLength(), 4, size, "operator vector")
    if n_tensors > MAX_TENSORS or n_ops > MAX_OPS:
        raise InputError(
            "model_too_large",
            f"the model has {n_tensors} tensors and {n_ops} ops; at most {MAX_TENSORS} and "
            f"{MAX_OPS} are supported",
            tensors=n_tensors,
            ops=n_ops,
            limit_tensors=MAX_TENSORS,
            limit_ops=MAX_OPS,
        )

    # Which buffers hold data (constant tensors). Only lengths are read, never the bytes.
    has_data: dict[int, bool] = {}

    def buffer_has_data(index: int) -> bool:
        if index not in has_data:
            buf = model.Buffers(index)
            # Offset() > 1: data stored after the flatbuffer (models over 2 GB).
            has_data[index] = buf.DataLength() > 0 or buf.Offset() > 1
        return has_data[index]

    codes: list[str] = []
    for i in range(n_codes):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == 32:  # CUSTOM
            codes.append("CUSTOM:" + (_text(oc.CustomCode()) or "?"))
        else:
            name = _OP_NAMES.get(code)
            if name is None:
                raise _Corrupt(f"operator code {code} is not in the TFLite schema")
            codes.append(name)

    tensors: list[PlanTensor] = []
    infos: list[tuple[str, tuple[int, ...], str, float | None, int | None, bool]] = []
    n_scales: list[int] = []
    for i in range(n_tensors):
        t = sub.Tensors(i)
        dims = _checked_len(t.ShapeLength(), 4, size, f"tensor {i} shape")
        shape = tuple(t.Shape(j) for j in range(dims))
        if any(d < 0 for d in shape):
            raise _Corrupt(f"tensor {i} has a negative dimension {shape}")
        type_code = t.Type()
        if type_code not in _TYPES:
            raise _Corrupt(f"tensor {i} has unknown type {type_code}")
        dtype, bits = _TYPES[type_code]
        buf_index = t.Buffer()
        if buf_index >= max(n_buffers, 1) and not (buf_index == 0 and n_buffers == 0):
            raise _Corrupt(f"tensor {i} refers to buffer {buf_index} of {n_buffers}")
        constant = n_buffers > 0 and buffer_has_data(buf_index)
        elements = 1
        for d in shape:
            elements *= d
        nbytes = (elements * bits + 7) // 8
        variable = bool(t.IsVariable())
        scale = zero_point = None
        q = t.Quantization()
        quantized = False
        n_scale = 0
        if q is not None and dtype in _QUANT_TYPES:
            n_scale = _checked_len(q.ScaleLength(), 4, size, f"tensor {i} scales")
            n_zp = _checked_len(q.ZeroPointLength(), 8, size, f"tensor {i} zero points")
            if n_scale:
                scale = float(q.Scale(0))
                quantized = True
            if n_zp:
                zero_point = int(q.ZeroPoint(0))
        tensors.append(PlanTensor(nbytes=nbytes, constant=constant, variable=variable))
        n_scales.append(n_scale)
        infos.append((_text(t.Name()), shape, dtype, scale, zero_point, quantized))

    def tensor_indices(length: int, get, what: str, allow_optional: bool) -> tuple[int, ...]:
        _checked_len(length, 4, size, what)
        out = tuple(get(j) for j in range(length))
        for idx in out:
            if idx >= n_tensors or idx < (-1 if allow_optional else 0):
                raise _Corrupt(f"{what} refers to tensor {idx} of {n_tensors}")
        return out

    ops: list[PlanOp] = []
    for i in range(n_ops):
        op = sub.Operators(i)
        opcode = op.OpcodeIndex()
        if opcode >= n_codes:
            raise _Corrupt(f"operator {i} uses operator code {opcode} of {n_codes}")
        ins = tensor_indices(op.InputsLength(), op.Inputs, f"operator {i} inputs", True)
        outs = tensor_indices(op.OutputsLength(), op.Outputs, f"operator {i} outputs", True)
        first_out = next((o for o in outs if o >= 0), None)
        channels = elements = 0
        quant = False
        if first_out is not None:
            shape = infos[first_out][1]
            channels = shape[-1] if shape else 1
            elements = 1
            for d in shape:
                elements *= d
            quant = infos[first_out][2] in _QUANT_TYPES
        filter_scales = n_scales[ins[1]] if len(ins) > 1 and ins[1] >= 0 else 0
        ops.append(
            PlanOp(
                codes[opcode], ins, outs, out_channels=channels, quantized=quant,
                filter_scales=filter_scales, out_elements=elements,
            )
        )

    g_in = tensor_indices(sub.InputsLength(), sub.Inputs, "subgraph inputs", False)
    g_out = tensor_indices(sub.OutputsLength(), sub.Outputs, "subgraph outputs", False)
    if not g_in or not g_out:
        raise _Corrupt("the subgraph declares no inputs or no outputs")

    def info(idx: int) -> TensorInfo:
        name, shape, dtype, scale, zp, _ = infos[idx]
        return TensorInfo(name=name, shape=shape, dtype=dtype, scale=scale, zero_point=zp)

    parsed = _Parsed()
    parsed.inputs = tuple(info(i) for i in g_in)
    parsed.outputs = tuple(info(i) for i in g_out)
    parsed.ops = tuple(sorted({op.name for op in ops}))
    reasons: list[str] = []
    for label, idxs in (("input", g_in), ("output", g_out)):
        for idx in idxs:
            if infos[idx][2] != "int8":
                reasons.append(f"{label} {infos[idx][0] or idx} is {infos[idx][2]}")
    float_tensors = sum(1 for i in infos if i[2] in _FLOAT_TYPES)
    if float_tensors:
        reasons.append(f"{float_tensors} float tensors")
    acts = {infos[i][2] for i, t in enumerate(tensors) if not t.constant and infos[i][2] != "int8"}
    if acts - _FLOAT_TYPES:
        reasons.append("activations of type " + ", ".join(sorted(acts - _FLOAT_TYPES)))
    parsed.int8 = not reasons
    parsed.not_int8_reasons = reasons
    parsed.graph = Graph(
        tensors=tensors,
        ops=ops,
        inputs=g_in,
        outputs=g_out,
        quantized_io=sum(1 for i in (*g_in, *g_out) if infos[i][5]),
    )
    return parsed


def _as_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InputError(
        "bad_request", f"model data must be bytes, not {type(data).__name__}",
        type=type(data).__name__,
    )


def parse_graph(data: bytes) -> tuple[_Parsed, ArenaEstimate]:
    """Parse ``data`` (already identified as TFLite) and estimate its arena. Internal API for
    tools (bench, calibration); use :func:`analyze`."""
    try:
        parsed = _parse(data)
    except InputError:
        raise
    except RecursionError as exc:  # pragma: no cover - flatbuffer accessors do not recurse
        raise InputError("model_corrupt", "the flatbuffer is malformed", error=str(exc)) from None
    except Exception as exc:
        # Any accessor failure (struct.error, IndexError, TypeError from an out-of-range
        # offset, UnicodeDecodeError, ...) means the bytes do not follow the schema.
        why = str(exc) if isinstance(exc, _Corrupt) else f"{type(exc).__name__}: {exc}"
        raise InputError(
            "model_corrupt",
            f"the file has the TFLite identifier but does not parse against the schema "
            f"(truncated or damaged?): {why}",
            size_bytes=len(data),
            error=why[:300],
        ) from None
    return parsed, estimate(parsed.graph)


def _profile(board: str | None):
    if board is None:
        return None
    from hal.boards import get_profile

    return get_profile(board)


def _limit(max_bytes: int | None, profile) -> int:
    if max_bytes is not None:
        return max_bytes
    return profile.max_model_bytes if profile is not None else DEFAULT_MAX_BYTES


def analyze(
    data: bytes,
    *,
    max_bytes: int | None = None,
    board: str | None = None,
) -> ModelReport:
    """Validate a ``.tflite`` model and describe it (see the module docstring for the checks).

    ``max_bytes`` defaults to 4 MiB, or to the board profile's ``max_model_bytes`` when a
    ``board`` is given. With a board of kind ``mcu`` every op must have a TFLM kernel in the
    Arduino library; with a board that ``requires_int8`` the model must be fully int8.
    Raises :class:`~hal.errors.InputError` (codes ``model_*``, ``unknown_board``).
    """
    data = _as_bytes(data)
    profile = _profile(board)
    limit = _limit(max_bytes, profile)
    size = len(data)
    if size == 0:
        raise InputError("model_empty", "the model file is empty (0 bytes)", size_bytes=0)
    if size > limit:
        raise InputError(
            "model_too_large",
            f"the model is {size} bytes, over the limit of {limit} bytes",
            size_bytes=size,
            limit_bytes=limit,
        )
    if size < 8 or data[4:8] != IDENTIFIER:
        what = _sniff(data)
        found = data[4:8].hex() if size >= 8 else f"only {size} bytes"
        message = "the file is not a TFLite model (no 'TFL3' identifier at byte 4)"
        if what:
            message += f"; it looks like {what}"
        raise InputError(
            "model_not_tflite", message, size_bytes=size, found=found, looks_like=what
        )

    parsed, arena = parse_graph(data)
    warnings: list[str] = []
    if profile is not None:
        missing = unsupported_ops(parsed.ops, profile)
        if missing:
            runtime = "the Arduino TFLM library" if profile.kind == "mcu" else "LiteRT"
            raise InputError(
                "model_unsupported_ops",
                f"{profile.name} cannot run {', '.join(missing)}: {runtime} has no kernel "
                "for them",
                board=profile.name,
                unsupported=missing,
                ops=list(parsed.ops),
            )
    else:
        missing = [op for op in parsed.ops if resolver_method(op) is None]
        if missing:
            warnings.append(
                "ops without a TFLM kernel in the Arduino library (a microcontroller cannot "
                f"run this model): {', '.join(missing)}"
            )
    if not parsed.int8:
        why = "; ".join(parsed.not_int8_reasons)
        if profile is not None and profile.requires_int8:
            raise InputError(
                "model_not_int8",
                f"{profile.name} requires a fully int8 model, but {why}",
                board=profile.name,
                reasons=parsed.not_int8_reasons,
            )
        if profile is None or profile.kind == "mcu":
            warnings.append(
                f"the model is not fully int8 ({why}): on a microcontroller it runs slower "
                "and needs more RAM than an int8 one"
            )
    report = ModelReport(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=size,
        inputs=parsed.inputs,
        outputs=parsed.outputs,
        ops=parsed.ops,
        int8=parsed.int8,
        arena_estimate_bytes=arena.total,
        activation_bytes=arena.head,
        arena_estimate_mcu_bytes=estimate(parsed.graph, "cortex-m").total,
        warnings=tuple(warnings),
    )
    log.debug(
        "analysed model %s: %d bytes, %d ops, arena estimate %d (head %d, tail %d)",
        report.sha_prefix, size, len(parsed.graph.ops), arena.total, arena.head, arena.tail,
    )
    return report


def analyze_file(path: str | os.PathLike, **kw) -> ModelReport:
    """:func:`analyze` the file at ``path``. A missing or unreadable file is an
    ``InputError("bad_request")``; a file over the limit is rejected before it is read."""
    p = Path(path)
    try:
        st = p.stat()
        if not p.is_file():
            raise InputError("bad_request", f"{p} is not a regular file", path=str(p))
        limit = _limit(kw.get("max_bytes"), _profile(kw.get("board")))
        if st.st_size > limit:
            raise InputError(
                "model_too_large",
                f"the model is {st.st_size} bytes, over the limit of {limit} bytes",
                size_bytes=st.st_size,
                limit_bytes=limit,
                path=str(p),
            )
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError("bad_request", f"no such file: {p}", path=str(p)) from None
    except PermissionError:
        raise InputError("bad_request", f"permission denied reading {p}", path=str(p)) from None
    except IsADirectoryError:
        raise InputError("bad_request", f"{p} is a directory", path=str(p)) from None
    except OSError as exc:
        raise InputError("bad_request", f"cannot read {p}: {exc.strerror}", path=str(p)) from None
    return analyze(data, **kw)
