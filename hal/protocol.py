"""The device line protocol: the one format every target prints and every host parses.

One JSON object per line, short keys, at most :data:`MAX_LINE_BYTES` bytes including the
newline. Kinds (key ``t``):

==========  ==================================================================================
``boot``    ``{"t":"boot","v":1,"sha":"<model sha256 prefix>","arena":N,"used":N,"fw":"1.0.0",
            "board":"nano33ble"}`` -- printed once the interpreter allocated its tensors.
``inf``     ``{"t":"inf","n":SEQ,"us":LATENCY_US,"out":[floats],"top":I,"label":"yes"}``
``err``     ``{"t":"err","code":"alloc_failed","msg":"...", ...numbers}`` -- codes are
            ``alloc_failed``, ``invoke_failed``, ``bad_input``, ``model_invalid``,
            ``schema_mismatch``, ``camera_failed``, ``runtime_missing``, ``load_failed``,
            ``slot_rejected``.
``status``  ``{"t":"status","v":1,"sha":"...","up":SECONDS,"n":COUNT,"fw":"1.0.0"}`` --
            periodic, so a host that opened the port late still learns what runs.
``hs``      ``{"t":"hs","r":"ok","op":"chunk","seq":7,"next":6144}`` -- a hot-swap firmware's
            reply to a frame of the hot-swap protocol (:mod:`hal.arduino.hotswap_protocol`).
==========  ==================================================================================

A hot-swap firmware's boot line also carries ``"hs":{"v":1,"slot":S,"slots":2,
"slot_bytes":N,"opset":"<16 hex>","ops":[...]}`` (:attr:`BootLine.hotswap`).

Anything else -- text, garbage bytes, split UTF-8, NUL bytes, over-long lines, JSON that is not
a protocol object -- becomes a :class:`RawLine`: kept, never dropped, never a crash.

This module uses only the standard library: it is copied next to the Raspberry Pi runner so
the target prints with the same formatter the host parses with.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Union

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 512
# Raw (non-protocol) text kept per line; the rest is counted in RawLine.dropped_bytes.
MAX_RAW_BYTES = 4096
SHA_PREFIX_LEN = 16

ERROR_CODES = (
    "alloc_failed",
    "invoke_failed",
    "bad_input",
    "model_invalid",
    "schema_mismatch",
    "camera_failed",
    "runtime_missing",
    "load_failed",
    "slot_rejected",  # hot-swap firmware: a slot's model did not start, it fell back
)

_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_ERR_KEYS = frozenset({"t", "code", "msg"})
_HS_KEYS = frozenset({"t", "r", "op", "seq"})
_HS_RESULTS = frozenset({"ok", "err", "hello"})


@dataclass(frozen=True)
class BootLine:
    """The model booted: the interpreter allocated its tensors."""

    sha: str
    arena_bytes: int
    used_bytes: int
    firmware: str
    board: str
    protocol: int = PROTOCOL_VERSION
    # A hot-swap firmware's capability (slot, slot size, op set); None for other firmware.
    hotswap: dict | None = None
    kind: str = field(default="boot", init=False)


@dataclass(frozen=True)
class InferenceLine:
    """One inference: sequence number, latency and dequantised outputs."""

    seq: int
    latency_us: int
    outputs: tuple[float, ...]
    top: int
    label: str = ""
    kind: str = field(default="inference", init=False)


@dataclass(frozen=True)
class ErrorLine:
    """The device reports a failure; ``numbers`` holds any extra numeric keys it sent."""

    code: str
    message: str = ""
    numbers: dict = field(default_factory=dict)
    kind: str = field(default="error", init=False)


@dataclass(frozen=True)
class StatusLine:
    """Periodic heartbeat repeating the running model's hash."""

    sha: str
    uptime_s: int
    count: int
    firmware: str = ""
    protocol: int = PROTOCOL_VERSION
    kind: str = field(default="status", init=False)


@dataclass(frozen=True)
class HotswapReply:
    """A hot-swap firmware's answer to one protocol frame: ``result`` is ``ok``, ``err`` or
    ``hello``; ``fields`` holds every other key (``next``, ``code``, ``slot``, ...)."""

    result: str
    op: str
    seq: int
    fields: dict = field(default_factory=dict)
    kind: str = field(default="hotswap", init=False)


@dataclass(frozen=True)
class RawLine:
    """Anything that is not a protocol line, kept as text."""

    text: str
    reason: str = "not_protocol"
    dropped_bytes: int = 0
    kind: str = field(default="raw", init=False)


# Union, not X | Y: this module also runs on targets with Python 3.9 (Raspberry Pi OS Bullseye).
DeviceLine = Union[BootLine, InferenceLine, ErrorLine, StatusLine, HotswapReply,  # noqa: UP007
                   RawLine]


def to_dict(line: DeviceLine) -> dict:
    """JSON-ready form with descriptive keys (``kind`` first), for APIs and logs."""
    data = asdict(line)
    if isinstance(line, InferenceLine):
        data["outputs"] = list(line.outputs)
    return {"kind": data.pop("kind"), **data}


def from_dict(data: dict) -> DeviceLine:
    """Inverse of :func:`to_dict` (for lines stored by the bridge)."""
    body = {k: v for k, v in data.items() if k != "kind"}
    kind = data.get("kind")
    if kind == "boot":
        return BootLine(**body)
    if kind == "inference":
        return InferenceLine(**{**body, "outputs": tuple(body.get("outputs", ()))})
    if kind == "error":
        return ErrorLine(**body)
    if kind == "status":
        return StatusLine(**body)
    if kind == "hotswap":
        return HotswapReply(**body)
    return RawLine(**body)


# ---------------------------------------------------------------------------- formatting


def _dump(obj: dict) -> str:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    if len(text) + 1 > MAX_LINE_BYTES:
        raise ValueError(f"protocol line of {len(text) + 1} bytes exceeds {MAX_LINE_BYTES}")
    return text


def _short(value: float) -> float:
    # 6 significant digits keep lines short while staying exact enough for int8 outputs.
    if not math.isfinite(value):
        return 0.0
    return float(f"{value:.6g}")


def format_line(line: DeviceLine) -> str:
    """The wire text of ``line``, without the newline. Raises ``ValueError`` when a line would
    exceed :data:`MAX_LINE_BYTES` (inference outputs are shortened first: see below)."""
    if isinstance(line, BootLine):
        boot = {
            "t": "boot",
            "v": line.protocol,
            "sha": line.sha[:SHA_PREFIX_LEN],
            "arena": line.arena_bytes,
            "used": line.used_bytes,
            "fw": line.firmware,
            "board": line.board,
        }
        if line.hotswap is not None:
            boot["hs"] = line.hotswap
        return _dump(boot)
    if isinstance(line, HotswapReply):
        return _dump({"t": "hs", "r": line.result, "op": line.op, "seq": line.seq,
                      **{k: v for k, v in line.fields.items() if k not in _HS_KEYS}})
    if isinstance(line, InferenceLine):
        obj = {
            "t": "inf",
            "n": line.seq,
            "us": line.latency_us,
            "out": [_short(v) for v in line.outputs],
            "top": line.top,
            "label": line.label[:48],
        }
        # Many-class models: keep as many leading outputs as fit and say how many were cut.
        # The length grows with every kept output, so a binary search finds the most that fit.
        outputs = obj["out"]

        def fits(kept: int) -> bool:
            trial = {**obj, "out": outputs[:kept]}
            if kept < len(outputs):
                trial["cut"] = len(outputs) - kept
            return len(json.dumps(trial, separators=(",", ":"))) + 1 <= MAX_LINE_BYTES

        if not fits(len(outputs)):
            lo, hi = 0, len(outputs) - 1  # invariant: fits(lo) or lo == 0; not fits(hi + 1)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(mid):
                    lo = mid
                else:
                    hi = mid - 1
            obj["out"] = outputs[:lo]
            obj["cut"] = len(outputs) - lo
        return _dump(obj)
    if isinstance(line, ErrorLine):
        # Extra numbers never override the line's own keys, and non-finite floats (which JSON
        # cannot carry) are left out rather than making the device's formatter raise.
        extra = {
            k: v
            for k, v in line.numbers.items()
            if k not in _ERR_KEYS and not (isinstance(v, float) and not math.isfinite(v))
        }
        return _dump({"t": "err", "code": line.code, "msg": line.message[:200], **extra})
    if isinstance(line, StatusLine):
        return _dump(
            {
                "t": "status",
                "v": line.protocol,
                "sha": line.sha[:SHA_PREFIX_LEN],
                "up": line.uptime_s,
                "n": line.count,
                "fw": line.firmware,
            }
        )
    raise TypeError(f"cannot format {type(line).__name__}")


# ------------------------------------------------------------------------------- parsing


def _int(obj: dict, key: str) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(key)
    return value


def _str(obj: dict, key: str, default: str | None = None, limit: int = 200) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(key)
    return value


def _sha(obj: dict) -> str:
    value = _str(obj, "sha", limit=64)
    if not _HEX.match(value):
        raise ValueError("sha")
    return value


def _parse_object(obj: dict) -> DeviceLine:
    kind = obj.get("t")
    if kind == "boot":
        hotswap = obj.get("hs")
        if hotswap is not None and not isinstance(hotswap, dict):
            raise ValueError("hs")
        return BootLine(
            sha=_sha(obj),
            arena_bytes=_int(obj, "arena"),
            used_bytes=_int(obj, "used"),
            firmware=_str(obj, "fw", ""),
            board=_str(obj, "board", ""),
            protocol=_int(obj, "v"),
            hotswap=hotswap,
        )
    if kind == "hs":
        result = _str(obj, "r", limit=16)
        if result not in _HS_RESULTS:
            raise ValueError("r")
        fields = {k: v for k, v in obj.items() if k not in _HS_KEYS}
        return HotswapReply(result=result, op=_str(obj, "op", "", limit=16), seq=_int(obj, "seq"),
                            fields=fields)
    if kind == "inf":
        outputs = obj.get("out", [])
        if not isinstance(outputs, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in outputs
        ):
            raise ValueError("out")
        return InferenceLine(
            seq=_int(obj, "n"),
            latency_us=_int(obj, "us"),
            outputs=tuple(float(v) for v in outputs),
            top=_int(obj, "top"),
            label=_str(obj, "label", ""),
        )
    if kind == "err":
        numbers = {
            k: v
            for k, v in obj.items()
            if k not in _ERR_KEYS
            and isinstance(v, (int, float, str))
            and not isinstance(v, bool)
            and not (isinstance(v, float) and not math.isfinite(v))
        }
        return ErrorLine(code=_str(obj, "code", limit=64), message=_str(obj, "msg", ""),
                         numbers=numbers)
    if kind == "status":
        return StatusLine(
            sha=_sha(obj),
            uptime_s=_int(obj, "up"),
            count=_int(obj, "n"),
            firmware=_str(obj, "fw", ""),
            protocol=_int(obj, "v"),
        )
    raise ValueError("t")


def _raw(data: bytes, reason: str, dropped: int = 0) -> RawLine:
    text = data[:MAX_RAW_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd")
    kept_out = max(0, len(data) - MAX_RAW_BYTES)
    return RawLine(text=text, reason=reason, dropped_bytes=dropped + kept_out)


def parse_line(data: bytes | str) -> DeviceLine:
    """Parse one line (without its newline). Never raises: non-protocol input is a RawLine."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    data = data.rstrip(b"\r\n")
    if len(data) + 1 > MAX_LINE_BYTES:
        return _raw(data, "too_long")
    stripped = data.strip()
    if not stripped.startswith(b"{") or b"\x00" in stripped:
        return _raw(data, "not_protocol")
    try:
        obj = json.loads(stripped.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        return _parse_object(obj)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return _raw(data, "bad_protocol")


class LineSplitter:
    """Turns a byte stream (serial reads, SSH channel reads) into parsed lines.

    Lines end at ``\\n``; bytes are joined before decoding, so a UTF-8 sequence split between
    two reads is decoded whole. Of a line longer than :data:`MAX_RAW_BYTES` only the head is
    buffered; the rest is counted and reported in ``RawLine.dropped_bytes`` when the line ends.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = 0  # bytes discarded from the current over-long line

    def _take(self, line: bytes) -> DeviceLine:
        if self._overflow:
            dropped, self._overflow = self._overflow, 0
            return _raw(line, "too_long", dropped)
        return parse_line(line)

    def feed(self, chunk: bytes) -> list[DeviceLine]:
        """Add bytes; return every line they completed."""
        out: list[DeviceLine] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            self._append(chunk[start:nl])
            out.append(self._take(bytes(self._buf)))
            self._buf.clear()
            start = nl + 1
        self._append(chunk[start:])
        return out

    def _append(self, data: bytes) -> None:
        room = MAX_RAW_BYTES - len(self._buf)
        if len(data) > room:
            self._overflow += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._buf += data

    def flush(self) -> list[DeviceLine]:
        """Emit whatever is buffered (at end of stream)."""
        if not self._buf and not self._overflow:
            return []
        line = self._take(bytes(self._buf))
        self._buf.clear()
        return [line]


def running_sha(line: DeviceLine) -> str | None:
    """The model hash a boot or status line announces, else None."""
    if isinstance(line, (BootLine, StatusLine)):
        return line.sha
    return None


def sha_matches(announced: str, full_sha256: str) -> bool:
    """True when a device's announced prefix identifies ``full_sha256``."""
    announced = announced.lower()
    return len(announced) >= 8 and full_sha256.lower().startswith(announced)
