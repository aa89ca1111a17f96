"""The stand-in compiler's parser: read a rendered sketch folder back into its
:class:`~hal.arduino.sketch.SketchConfig`, the exact inverse of
:func:`hal.arduino.sketch.render_sketch`. The stand-in arduino-cli uses it to "compile" the
sketch into a firmware image for the virtual board, and it fails like a compiler (code
``compile_failed``, with file and line) when the sources are malformed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path

from hal.arduino.sketch import (
    _C_TYPE,
    _DTYPE_RANGE,
    CONFIG_FILE,
    HOTSWAP_FILES,
    INO_FILE,
    MODEL_DATA_FILE,
    MODEL_HEADER_FILE,
    MODEL_HEADER_TEXT,
    SHA_PREFIX_LEN,
    TEMPLATE_DIR,
    TEMPLATE_VERSION,
    SketchConfig,
    _model_data_text,
    dequantise,
    label_wire_text,
    template_text,
    validate_config,
)
from hal.errors import InputError
from hal.model.ops import resolver_method

__all__ = ["read_sketch"]


class _Source:
    """One file being parsed, for compiler-like errors."""

    def __init__(self, sketch_dir: Path, name: str) -> None:
        self.name = name
        path = sketch_dir / name
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise self.error(1, "No such file or directory") from None
        try:
            self.text = self.data.decode("ascii")
        except UnicodeDecodeError as exc:
            line = self.data[: exc.start].count(b"\n") + 1
            raise self.error(line, "stray non-ASCII byte in program") from None

    def error(self, line: int, message: str) -> InputError:
        return InputError("compile_failed", f"{self.name}:{line}: error: {message}",
                          file=self.name, line=line)


_MODEL_START = "alignas(16) const unsigned char g_model[] = {"
_HEX_BYTE = re.compile(r"0x([0-9a-f]{2})")
_MODEL_LINE = re.compile(r"^    (?:0x[0-9a-f]{2}, )*0x[0-9a-f]{2},$")
_MODEL_LEN = re.compile(r"^const unsigned int g_model_len = ([0-9]+);$")


def _read_model(src: _Source) -> bytes:
    # Fast path: decode the byte list, then demand the file be exactly what we render.
    text = src.text
    begin = text.find(_MODEL_START + "\n")
    end = text.rfind("};\n")
    if 0 <= begin < end:
        body = text[begin + len(_MODEL_START) + 1:end]
        try:
            model = bytes.fromhex(body.replace("0x", "").replace(",", "").replace(" ", "")
                                  .replace("\n", ""))
        except ValueError:
            model = None
        if model is not None and src.data == _model_data_text(
                model, hashlib.sha256(model).hexdigest()):
            return model
    # Slow path: check line by line (comments may differ) and name the first bad line.
    lines = text.split("\n")
    state = "head"
    hexes: list[str] = []
    length = None
    for no, line in enumerate(lines, 1):
        if state == "head":
            if line == _MODEL_START:
                state = "body"
            elif not (line.startswith("//") or line == "" or line == '#include "model_data.h"'):
                raise src.error(no, f"expected the g_model array, found {line[:60]!r}")
        elif state == "body":
            if line == "};":
                state = "len"
            elif _MODEL_LINE.match(line):
                hexes.extend(_HEX_BYTE.findall(line))
            else:
                raise src.error(no, f"malformed byte list {line[:60]!r}")
        elif state == "len":
            m = _MODEL_LEN.match(line)
            if not m:
                raise src.error(no, f"expected g_model_len, found {line[:60]!r}")
            length = (no, int(m.group(1)))
            state = "end"
        elif line != "":
            raise src.error(no, f"unexpected text after g_model_len: {line[:60]!r}")
    if state != "end" or length is None:
        raise src.error(len(lines), "expected '}' at end of input (the g_model array)")
    model = bytes.fromhex("".join(hexes))
    if not model:
        raise src.error(length[0], "zero-size array 'g_model'")
    if len(model) != length[1]:
        raise src.error(length[0], f"g_model_len is {length[1]} but g_model holds "
                        f"{len(model)} bytes")
    return model


_DEFINE = re.compile(r"^#define (TINYML_[A-Z_]+)(?: (.*))?$")
_OP_LINE = re.compile(
    r"^    ok = \(\(resolver\)\.(Add[A-Za-z0-9]+)\(\) == kTfLiteOk\) && ok; "
    r"/\* ((?:CUSTOM:)?[A-Za-z0-9_.\-]{1,64}) \*/ \\$"
)
_LABEL_LINE = re.compile(r'^    ("(?:[^"\\]|\\.)*"),$')
_VECTOR_LINE = re.compile(r"^    \{(.*)\},$")
_INT = re.compile(r"^-?[0-9]+$")
_FLOAT_LIT = re.compile(r"^-?(?:[0-9]+\.[0-9]*|[0-9]+)(?:e[+-]?[0-9]+)?f$")
_STATIC_LINES = {
    "#ifndef TINYML_MODEL_CONFIG_H_",
    "#include <stdint.h>",
    "#endif  // TINYML_MODEL_CONFIG_H_",
    "  do { \\",
    "  } while (0)",
    "};",
}


def _c_unescape(src: _Source, no: int, literal: str) -> str:
    """The text of a C string literal in the form :func:`_c_string` writes."""
    body = literal[1:-1]
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == '"':
            raise src.error(no, "stray quote in string literal")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in ("\\", '"', "?"):
            out.append(nxt)
            i += 2
        elif re.match(r"[0-7]{3}", body[i + 1:i + 4]):
            out.append(chr(int(body[i + 1:i + 4], 8)))
            i += 4
        else:
            raise src.error(no, f"unknown escape sequence '\\{nxt}'")
    return "".join(out)


def _read_config(src: _Source) -> dict:
    values: dict[str, tuple[int, str]] = {}
    ops: list[tuple[str, str]] = []
    labels: list[str] = []
    vectors: list[tuple[int, str]] = []
    typedef = None
    block = None
    for no, line in enumerate(src.text.split("\n"), 1):
        if block == "ops":
            if line == "  do { \\" and not ops:
                continue
            m = _OP_LINE.match(line)
            if m:
                ops.append((m.group(1), m.group(2)))
                continue
            if line != "  } while (0)":
                raise src.error(no, f"malformed op registration {line[:60]!r}")
            block = None
            continue
        if block == "labels":
            if line == "};":
                block = None
                continue
            m = _LABEL_LINE.match(line)
            if not m:
                raise src.error(no, f"malformed label literal {line[:60]!r}")
            wire = _c_unescape(src, no, m.group(1))
            try:
                label = json.loads('"' + wire + '"')
            except ValueError:
                raise src.error(no, "label is not a JSON-escaped string") from None
            if not isinstance(label, str) or label_wire_text(label) != wire:
                raise src.error(no, "label is not in canonical JSON escape form")
            labels.append(label)
            continue
        if block == "vectors":
            if line == "};":
                block = None
                continue
            m = _VECTOR_LINE.match(line)
            if not m:
                raise src.error(no, f"malformed vector initialiser {line[:60]!r}")
            vectors.append((no, m.group(1)))
            continue
        if line == "" or line.startswith("//") or line in _STATIC_LINES:
            continue
        if line == "#define TINYML_REGISTER_OPS(resolver, ok) \\":
            block = "ops"
            continue
        if line == "static const char* const kTinymlLabels[] = {":
            block = "labels"
            continue
        if line == ("alignas(4) static const tinyml_input_t "
                    "kTinymlInputVectors[TINYML_INPUT_VECTOR_COUNT][TINYML_INPUT_ELEMENTS] = {"):
            block = "vectors"
            continue
        m = re.match(r"^typedef (int8_t|uint8_t|float) tinyml_input_t;$", line)
        if m:
            typedef = m.group(1)
            continue
        m = _DEFINE.match(line)
        if m and m.group(2) is not None:
            if m.group(1) in values:
                raise src.error(no, f"{m.group(1)} redefined")
            values[m.group(1)] = (no, m.group(2))
            continue
        if line == "#define TINYML_MODEL_CONFIG_H_":
            continue
        raise src.error(no, f"unexpected line {line[:60]!r}")
    if block is not None:
        raise src.error(src.text.count("\n") + 1, f"unexpected end of file in the {block} block")
    return {"values": values, "ops": ops, "labels": labels, "vectors": vectors,
            "typedef": typedef}


def read_sketch(sketch_dir: Path) -> SketchConfig:
    """Inverse of :func:`render_sketch`: parse the generated files back (used by the stand-in
    arduino-cli to build a firmware image for the virtual board). Raises
    ``InputError("compile_failed", ...)`` with ``file`` and ``line`` when the sources are
    malformed (mimicking a compiler error). Quantised vectors come back dequantised, so
    rendering the result again gives the same files."""
    sketch_dir = Path(sketch_dir)
    ino = _Source(sketch_dir, INO_FILE)
    if ino.data != template_text():
        raise ino.error(1, f"{INO_FILE} is not the template {TEMPLATE_VERSION} (edited?)")
    header = _Source(sketch_dir, MODEL_HEADER_FILE)
    if header.text != MODEL_HEADER_TEXT:
        raise header.error(1, "model_data.h is not the generated header")
    model = _read_model(_Source(sketch_dir, MODEL_DATA_FILE))
    src = _Source(sketch_dir, CONFIG_FILE)
    parsed = _read_config(src)
    values = parsed["values"]

    def get(name: str) -> tuple[int, str]:
        if name not in values:
            raise src.error(1, f"'{name}' was not declared in this scope")
        return values[name]

    def get_int(name: str, low: int = 0) -> int:
        no, text = get(name)
        if not _INT.match(text) or int(text) < low:
            raise src.error(no, f"{name} must be an integer >= {low}, not {text!r}")
        return int(text)

    def get_str(name: str) -> str:
        no, text = get(name)
        if not _LABEL_LINE.match("    " + text + ","):
            raise src.error(no, f"{name} must be a string literal")
        return _c_unescape(src, no, text)

    def get_float(name: str) -> float:
        no, text = get(name)
        try:
            value = float(text)
        except ValueError:
            raise src.error(no, f"{name} must be a number, not {text!r}") from None
        if not math.isfinite(value):
            raise src.error(no, f"{name} must be finite")
        return value

    version = get_str("TINYML_TEMPLATE_VERSION")
    sha_prefix = get_str("TINYML_MODEL_SHA")
    sha256 = hashlib.sha256(model).hexdigest()
    if sha_prefix != sha256[:SHA_PREFIX_LEN]:
        no, _ = get("TINYML_MODEL_SHA")
        raise src.error(no, f"TINYML_MODEL_SHA {sha_prefix!r} does not match model_data.cpp "
                        f"({sha256[:SHA_PREFIX_LEN]})")
    dtype = get_str("TINYML_INPUT_DTYPE")
    if dtype not in _C_TYPE or parsed["typedef"] != _C_TYPE[dtype]:
        no, _ = get("TINYML_INPUT_DTYPE")
        raise src.error(no, f"input type {dtype!r} does not match typedef {parsed['typedef']}")
    no, shape_text = get("TINYML_INPUT_SHAPE")
    m = re.match(r"^\{([0-9]+(?:, [0-9]+)*)\}$", shape_text)
    if not m:
        raise src.error(no, f"malformed TINYML_INPUT_SHAPE {shape_text!r}")
    shape = tuple(int(d) for d in m.group(1).split(", "))
    elements = get_int("TINYML_INPUT_ELEMENTS", 1)
    if get_int("TINYML_INPUT_RANK", 1) != len(shape) or math.prod(shape) != elements:
        raise src.error(no, "TINYML_INPUT_SHAPE, _RANK and _ELEMENTS disagree")
    quantised = get_int("TINYML_INPUT_QUANTISED")
    scale = zp = None
    if quantised:
        scale = get_float("TINYML_INPUT_SCALE")
        zp_no, zp_text = get("TINYML_INPUT_ZERO_POINT")
        if not _INT.match(zp_text):
            raise src.error(zp_no, "TINYML_INPUT_ZERO_POINT must be an integer")
        zp = int(zp_text)
    camera = get_int("TINYML_INPUT_CAMERA")
    camera_range = (0.0, 1.0)
    if camera:
        camera_range = (get_float("TINYML_CAMERA_REAL_LO"), get_float("TINYML_CAMERA_REAL_HI"))

    ops = parsed["ops"]
    if get_int("TINYML_OP_COUNT") != len(ops):
        no, _ = get("TINYML_OP_COUNT")
        raise src.error(no, f"TINYML_OP_COUNT is not the {len(ops)} registered ops")
    for method, op in ops:
        if resolver_method(op) != method:
            raise src.error(get("TINYML_OP_COUNT")[0],
                            f"{method}() does not register {op} (expected "
                            f"{resolver_method(op)})")
    labels = tuple(parsed["labels"])
    label_count = get_int("TINYML_LABEL_COUNT")
    if label_count == 0 and labels == ("",):
        labels = ()
    if label_count != len(labels):
        no, _ = get("TINYML_LABEL_COUNT")
        raise src.error(no, f"TINYML_LABEL_COUNT {label_count} but {len(labels)} labels")

    partial = SketchConfig(
        model=model, model_sha256=sha256, ops=tuple(op for _, op in ops), arena_bytes=0,
        labels=labels, input_dtype=dtype, input_shape=shape, input_scale=scale,
        input_zero_point=zp, input_vectors=(),
    )
    vectors = []
    for no, body in parsed["vectors"]:
        items = body.split(", ")
        if len(items) != elements:
            raise src.error(no, f"too {'many' if len(items) > elements else 'few'} "
                            f"initializers: {len(items)} for {elements} elements")
        if dtype == "float32":
            if not all(_FLOAT_LIT.match(t) for t in items):
                raise src.error(no, "malformed float initializer")
            stored = [float(t[:-1]) for t in items]
        else:
            if not all(_INT.match(t) for t in items):
                raise src.error(no, "malformed integer initializer")
            stored = [int(t) for t in items]
            lo, hi = _DTYPE_RANGE[dtype]
            if not all(lo <= q <= hi for q in stored):
                raise src.error(no, f"narrowing conversion: value out of {dtype} range")
        vectors.append(dequantise(partial, stored))
    if get_int("TINYML_INPUT_VECTOR_COUNT") != len(vectors):
        no, _ = get("TINYML_INPUT_VECTOR_COUNT")
        raise src.error(no, f"TINYML_INPUT_VECTOR_COUNT is not the {len(vectors)} vectors")

    hotswap = "TINYML_HOTSWAP" in values and get_int("TINYML_HOTSWAP") == 1
    if hotswap:  # the hot-swap variant: its slot code copied verbatim like the .ino
        for name in HOTSWAP_FILES:
            if _Source(sketch_dir, name).data != (TEMPLATE_DIR / name).read_bytes():
                raise src.error(1, f"{name} is not the template's (edited?)")
    config = replace(
        partial,
        hotswap=hotswap,
        slot_bytes=get_int("TINYML_SLOT_BYTES", 1) if hotswap else 0,
        arena_bytes=get_int("TINYML_ARENA_BYTES", 1),
        input_vectors=tuple(vectors),
        input_source="camera" if camera else "vectors",
        board=get_str("TINYML_BOARD"),
        status_period_ms=get_int("TINYML_STATUS_PERIOD_MS"),
        template_version=version,
        inference_period_ms=get_int("TINYML_INFERENCE_PERIOD_MS"),
        camera_range=camera_range,
    )
    try:
        validate_config(config)
    except InputError as exc:
        raise src.error(1, f"invalid configuration: {exc.message}") from None
    return config


