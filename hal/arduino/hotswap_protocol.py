"""The hot-swap protocol: loading a new model into a flash slot of a running Nano 33 BLE.

Pure and standard-library only: the host (:mod:`hal.arduino.hotswap`), the virtual board
(:mod:`hal.virtual.hotswap_device`), the tests and the benchmark share this one codec. The
C++ side is ``firmware_templates/nano33ble/tinyml_hotswap.cpp``; both follow the tables below.

Host -> board: binary frames (the sketch ignores every other byte until ``SYNC``)::

    A5 5A | type u8 | seq u16 | len u16 | payload (len bytes) | crc32 u32      (little endian)

``crc32`` is zlib's CRC-32 over ``type .. payload``. ``seq`` is chosen by the host and echoed
in the reply; a frame that is sent again (after a timeout or a ``crc`` reply) keeps its seq.

======  ========  ==========================================================================
type    name      payload
======  ========  ==========================================================================
0x01    HELLO     empty -- the board answers with its capabilities (``r":"hello"``)
0x02    BEGIN     total u32, model_len u32, arena_needed u32, sha256 (32 bytes) of the
                  slot payload. The board picks the slot it is not running, checks size and
                  arena, erases the pages the payload needs (or, when the same transfer is
                  already under way, keeps what it has: ``next`` says where to resume)
0x03    CHUNK     offset u32 + data (1..MAX_CHUNK bytes, offset a multiple of 4, written
                  in order: ``offset`` must equal the board's ``next``; a repeated chunk
                  below ``next`` is acknowledged again without writing)
0x04    COMMIT    empty -- the board computes sha256 over the written slot; on a match it
                  writes the slot header (magic last) with a generation above the other slot's
0x05    ACTIVATE  slot u8 (0, 1, or 255 = the compiled-in model) -- stop the interpreter, start
                  the model of that slot; the slot not chosen is marked rejected if it is
                  newer, so a reset boots the same model (this is also the rollback)
0x06    ABORT     empty -- forget the transfer under way (the slot stays invalid)
======  ========  ==========================================================================

Board -> host: lines of the device line protocol (:mod:`hal.protocol`, kind ``hs``)::

    {"t":"hs","r":"ok","op":"chunk","seq":7,"next":6144}
    {"t":"hs","r":"err","op":"chunk","seq":7,"code":"crc","msg":"frame crc mismatch","next":5120}
    {"t":"hs","r":"hello","seq":1,"slot":0,"slots":2,"slot_bytes":131072,"arena":65536,...}

Reply codes (``r":"err"``), see :data:`REPLY_ERRORS`. After ``ACTIVATE`` the board prints a
boot line for the model it now runs -- the new one, or, when the new model fails to allocate,
an ``{"t":"err","code":"slot_rejected",...}`` line followed by the boot line of the model it
fell back to.

Slot layout (each slot page aligned, ``slot_bytes`` a multiple of 4096): a header in the first
:data:`HEADER_AREA` bytes, then the payload (model, then the meta block). The header's magic
is programmed last, so a power cut anywhere leaves a slot without a valid header, which never
boots. Boot attempts, confirmation and rejection are separate words (each programmed once from
0xFFFFFFFF to 0: the nRF52840 allows at most two writes of a word between erases).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------- framing
SYNC = b"\xa5\x5a"
FRAME_HEAD = struct.Struct("<BHH")  # type, seq, len
FRAME_OVERHEAD = len(SYNC) + FRAME_HEAD.size + 4  # + crc32 = 11 bytes
MAX_CHUNK = 1024
CHUNK_HEAD = struct.Struct("<I")  # offset
MAX_PAYLOAD = CHUNK_HEAD.size + MAX_CHUNK
BEGIN = struct.Struct("<III32s")  # total, model_len, arena_needed, sha256

HELLO, BEGIN_T, CHUNK, COMMIT, ACTIVATE, ABORT = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
FRAME_NAMES = {HELLO: "hello", BEGIN_T: "begin", CHUNK: "chunk", COMMIT: "commit",
               ACTIVATE: "activate", ABORT: "abort"}
BUILTIN_SLOT = 255  # ACTIVATE target / boot-line slot meaning "the compiled-in model"

# Reply error codes: code -> (meaning, does the host resend the same frame?)
REPLY_ERRORS: dict[str, tuple[str, bool]] = {
    "crc": ("the frame's CRC did not match (corrupted on the wire)", True),
    "bad_frame": ("unknown type or a length beyond MAX_PAYLOAD", False),
    "no_transfer": ("CHUNK or COMMIT without a BEGIN", False),
    "order": ("CHUNK offset is not the next expected one (``next`` says which)", False),
    "too_big": ("the payload exceeds the slot", False),
    "arena": ("the model needs a bigger arena than the firmware has", False),
    "flash": ("erasing or programming the flash failed", False),
    "sha_mismatch": ("the written slot's sha256 differs from BEGIN's", False),
    "bad_slot": ("ACTIVATE of a slot without a valid, unrejected model", False),
}

# ---------------------------------------------------------------------------- slots
PAGE_BYTES = 4096  # nRF52840 flash page
HEADER_AREA = 256
SLOT_MAGIC = 0x534C4D54  # "TMLS" little endian
HEADER_VERSION = 1
# magic, version, flags, generation, total, model_len, arena_needed, template_version, sha256
HEADER = struct.Struct("<IHHIIII12s32s")
HEADER_CRC_AT = HEADER.size  # crc32 of header bytes 4..HEADER.size, u32
ATTEMPTS_AT = 128  # MAX_BOOT_ATTEMPTS words
MAX_BOOT_ATTEMPTS = 2
CONFIRMED_AT = 144
REJECTED_AT = 148
ERASED_WORD = 0xFFFFFFFF

META_MAGIC = 0x4D4C4D54  # "TMLM"
META_HEAD = struct.Struct("<IHHI")  # magic, label count, vector count, bytes per vector


class ProtocolError(ValueError):
    """Bytes that are not a valid frame, header or payload of this protocol."""


# ---------------------------------------------------------------------------- frames


def encode_frame(kind: int, seq: int, payload: bytes = b"") -> bytes:
    """One host -> board frame."""
    if kind not in FRAME_NAMES:
        raise ProtocolError(f"unknown frame type {kind}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = FRAME_HEAD.pack(kind, seq & 0xFFFF, len(payload)) + payload
    return SYNC + body + struct.pack("<I", zlib.crc32(body))


def begin_payload(total: int, model_len: int, arena_needed: int, sha256: bytes) -> bytes:
    return BEGIN.pack(total, model_len, arena_needed, sha256)


def chunk_payload(offset: int, data: bytes) -> bytes:
    return CHUNK_HEAD.pack(offset) + data


@dataclass(frozen=True)
class Frame:
    """A decoded frame; ``crc_ok`` False means the bytes were damaged on the wire."""

    kind: int
    seq: int
    payload: bytes
    crc_ok: bool = True

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.kind, f"type{self.kind}")


class FrameReader:
    """Board side: turns the byte stream from the host into frames. Bytes before ``SYNC``
    are skipped; a declared length beyond :data:`MAX_PAYLOAD` yields a ``Frame`` with
    ``crc_ok`` False and kind 0 (the board answers ``bad_frame``) and resynchronises."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                del self._buf[: max(0, len(self._buf) - 1)]  # keep a possible half SYNC
                return out
            del self._buf[:start]
            if len(self._buf) < len(SYNC) + FRAME_HEAD.size:
                return out
            kind, seq, length = FRAME_HEAD.unpack_from(self._buf, len(SYNC))
            if length > MAX_PAYLOAD or kind not in FRAME_NAMES:
                out.append(Frame(0, seq, b"", crc_ok=False))
                del self._buf[: len(SYNC)]
                continue
            end = len(SYNC) + FRAME_HEAD.size + length + 4
            if len(self._buf) < end:
                return out
            body = bytes(self._buf[len(SYNC): end - 4])
            (crc,) = struct.unpack_from("<I", self._buf, end - 4)
            out.append(Frame(kind, seq, body[FRAME_HEAD.size:], crc_ok=zlib.crc32(body) == crc))
            del self._buf[:end]


def decode_begin(payload: bytes) -> tuple[int, int, int, bytes]:
    if len(payload) != BEGIN.size:
        raise ProtocolError("BEGIN payload has the wrong size")
    return BEGIN.unpack(payload)


def decode_chunk(payload: bytes) -> tuple[int, bytes]:
    if len(payload) <= CHUNK_HEAD.size:
        raise ProtocolError("CHUNK without data")
    (offset,) = CHUNK_HEAD.unpack_from(payload)
    return offset, payload[CHUNK_HEAD.size:]


def reply_line(result: str, op: str, seq: int, **extra: object) -> str:
    """A board -> host reply as the device prints it (compact JSON, protocol key order)."""
    obj = {"t": "hs", "r": result, "op": op, "seq": seq, **extra}
    return json.dumps(obj, separators=(",", ":"))


# ---------------------------------------------------------------------------- payload


@dataclass(frozen=True)
class SlotPayload:
    """What a slot holds after its header: the model flatbuffer, then the meta block with
    the labels (JSON-escaped, as the sketch prints them) and the input vectors exactly as
    they are copied into the input tensor."""

    model: bytes
    labels: tuple[str, ...] = ()
    vectors: tuple[bytes, ...] = ()

    def pack(self) -> bytes:
        vec_len = len(self.vectors[0]) if self.vectors else 0
        if any(len(v) != vec_len for v in self.vectors):
            raise ProtocolError("input vectors differ in size")
        pad = (-len(self.model)) % 4
        labels = b"".join(json.dumps(x, ensure_ascii=True)[1:-1].encode() + b"\0"
                          for x in self.labels)
        labels += b"\0" * ((-len(labels)) % 4)
        meta = META_HEAD.pack(META_MAGIC, len(self.labels), len(self.vectors), vec_len)
        return self.model + b"\0" * pad + meta + labels + b"".join(self.vectors)

    @classmethod
    def unpack(cls, data: bytes, model_len: int) -> SlotPayload:
        if model_len <= 0 or model_len > len(data):
            raise ProtocolError("model length out of range")
        at = model_len + (-model_len) % 4
        if at + META_HEAD.size > len(data):
            raise ProtocolError("meta block missing")
        magic, n_labels, n_vectors, vec_len = META_HEAD.unpack_from(data, at)
        if magic != META_MAGIC:
            raise ProtocolError("meta block has a bad magic")
        at += META_HEAD.size
        labels = []
        for _ in range(n_labels):
            end = data.find(b"\0", at)
            if end < 0:
                raise ProtocolError("label not terminated")
            try:
                labels.append(json.loads('"' + data[at:end].decode("ascii") + '"'))
            except (ValueError, UnicodeDecodeError):
                raise ProtocolError("label is not JSON-escaped ASCII") from None
            at = end + 1
        at += (-at) % 4 if n_labels else 0
        vectors = []
        for _ in range(n_vectors):
            if at + vec_len > len(data):
                raise ProtocolError("input vectors truncated")
            vectors.append(bytes(data[at: at + vec_len]))
            at += vec_len
        return cls(model=bytes(data[:model_len]), labels=tuple(labels), vectors=tuple(vectors))


# ---------------------------------------------------------------------------- header


@dataclass(frozen=True)
class SlotHeader:
    """The header of a committed slot."""

    generation: int
    total: int
    model_len: int
    arena_needed: int
    template_version: str
    sha256: bytes
    attempts: int = 0
    confirmed: bool = False
    rejected: bool = False

    def pack(self) -> bytes:
        """The :data:`HEADER_AREA` bytes as programmed (state words still erased)."""
        head = HEADER.pack(SLOT_MAGIC, HEADER_VERSION, 0, self.generation, self.total,
                           self.model_len, self.arena_needed,
                           self.template_version.encode()[:12], self.sha256)
        crc = zlib.crc32(head[4:])
        area = bytearray(b"\xff" * HEADER_AREA)
        area[: len(head)] = head
        area[HEADER_CRC_AT: HEADER_CRC_AT + 4] = struct.pack("<I", crc)
        return bytes(area)


def parse_header(area: bytes) -> SlotHeader | None:
    """The header in a slot's first :data:`HEADER_AREA` bytes, or None (erased, torn by a
    power cut, or damaged)."""
    if len(area) < HEADER_AREA:
        return None
    magic, version, _flags, gen, total, model_len, arena, tv, sha = HEADER.unpack_from(area)
    if magic != SLOT_MAGIC or version != HEADER_VERSION:
        return None
    (crc,) = struct.unpack_from("<I", area, HEADER_CRC_AT)
    if crc != zlib.crc32(bytes(area[4: HEADER.size])):
        return None
    words = struct.unpack_from(f"<{MAX_BOOT_ATTEMPTS}I", area, ATTEMPTS_AT)
    (confirmed,) = struct.unpack_from("<I", area, CONFIRMED_AT)
    (rejected,) = struct.unpack_from("<I", area, REJECTED_AT)
    return SlotHeader(generation=gen, total=total, model_len=model_len, arena_needed=arena,
                      template_version=tv.rstrip(b"\0").decode("ascii", "replace"),
                      sha256=sha, attempts=sum(1 for w in words if w != ERASED_WORD),
                      confirmed=confirmed != ERASED_WORD, rejected=rejected != ERASED_WORD)


def pages_for(total: int) -> int:
    """Flash pages a payload of ``total`` bytes occupies in a slot (header included)."""
    return (HEADER_AREA + total + PAGE_BYTES - 1) // PAGE_BYTES


def slot_capacity(slot_bytes: int) -> int:
    """Largest payload a slot of ``slot_bytes`` takes."""
    return slot_bytes - HEADER_AREA


# ---------------------------------------------------------------------------- op sets
# Op families of the hot-swap firmware's resolver. The default is their union: what the int8
# vision (CNN / MobileNet), audio (keyword spotting) and IMU (gesture) models of the TFLM
# examples and Edge Impulse / Keras int8 exports use.
OP_FAMILIES: dict[str, tuple[str, ...]] = {
    "vision": ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE",
               "SOFTMAX", "FULLY_CONNECTED", "ADD", "PAD", "MEAN", "CONCATENATION",
               "QUANTIZE", "DEQUANTIZE"),
    "audio": ("DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED", "RESHAPE", "SOFTMAX",
              "QUANTIZE", "DEQUANTIZE"),
    "imu": ("CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN", "RESHAPE", "SOFTMAX",
            "LOGISTIC", "TANH", "QUANTIZE", "DEQUANTIZE"),
}
DEFAULT_FAMILIES = ("vision", "audio", "imu")
MAX_OPSET = 24  # the boot line lists them all within the 512-byte line limit


def op_set(names: tuple[str, ...] | list[str] = DEFAULT_FAMILIES) -> tuple[str, ...]:
    """The sorted union of families and/or single op names in ``names``."""
    out: set[str] = set()
    for name in names:
        out.update(OP_FAMILIES.get(name, (name,)))
    if len(out) > MAX_OPSET:
        raise ProtocolError(f"an op set of {len(out)} ops exceeds {MAX_OPSET}")
    return tuple(sorted(out))


def op_set_digest(ops: tuple[str, ...] | list[str]) -> str:
    """16 hex digits identifying an op set (order-independent)."""
    return hashlib.sha256(",".join(sorted(ops)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Capability:
    """What a hot-swap firmware advertises (boot line key ``hs``, HELLO reply)."""

    slot: int  # running slot: 0, 1, or BUILTIN_SLOT
    slot_bytes: int
    arena_bytes: int
    ops: tuple[str, ...]
    digest: str
    slots: int = 2
    version: int = 1
    extra: dict = field(default_factory=dict)

    def to_wire(self) -> dict:
        """The ``hs`` object of the boot line (without the arena: the boot line has it)."""
        return {"v": self.version, "slot": self.slot, "slots": self.slots,
                "slot_bytes": self.slot_bytes, "opset": self.digest, "ops": list(self.ops)}

    @classmethod
    def from_wire(cls, obj: dict, arena_bytes: int) -> Capability:
        """Validate the ``hs`` object of a boot line; raises ``ProtocolError``."""
        try:
            ops = tuple(str(x) for x in obj["ops"])
            cap = cls(slot=int(obj["slot"]), slot_bytes=int(obj["slot_bytes"]),
                      arena_bytes=int(arena_bytes), ops=ops, digest=str(obj["opset"]),
                      slots=int(obj.get("slots", 2)), version=int(obj.get("v", 1)))
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("malformed hot-swap capability") from None
        if cap.slot_bytes <= 0 or cap.slot_bytes % PAGE_BYTES or len(ops) > MAX_OPSET * 4:
            raise ProtocolError("hot-swap capability out of range")
        if op_set_digest(ops) != cap.digest:
            raise ProtocolError("hot-swap op list does not match its digest")
        return cap


# ---------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class WireCost:
    """Frames and bytes one transfer of ``total`` payload bytes takes."""

    frames: int
    round_trips: int
    wire_bytes: int
    overhead_bytes: int
    pages: int

    @property
    def overhead_per_kb(self) -> float:
        return self.overhead_bytes * 1024.0 / max(1, self.wire_bytes - self.overhead_bytes)


def wire_cost(total: int, chunk: int = MAX_CHUNK, reply_bytes: int = 48) -> WireCost:
    """Host -> board frames and their overhead for a payload of ``total`` bytes: HELLO,
    BEGIN, one CHUNK per ``chunk`` bytes, COMMIT, ACTIVATE, each one stop-and-wait round trip;
    replies (about ``reply_bytes`` each) counted as overhead."""
    chunks = (total + chunk - 1) // chunk
    frames = 4 + chunks
    framing = frames * FRAME_OVERHEAD + chunks * CHUNK_HEAD.size + BEGIN.size + 1
    overhead = framing + frames * reply_bytes
    return WireCost(frames=frames, round_trips=frames, wire_bytes=total + overhead,
                    overhead_bytes=overhead, pages=pages_for(total))
