"""The board side of the hot-swap protocol for the virtual Nano 33 BLE.

:class:`HotswapRuntime` is what the hot-swap firmware does besides running the model: it reads
frames from the host (:class:`hal.arduino.hotswap_protocol.FrameReader`), writes slots
(:mod:`hal.virtual.flash_slots`), answers with ``hs`` lines, chooses the model to boot at
reset, and falls back to the other slot (or the compiled-in model) when a slot's model fails
to allocate or faults at boot. The board process (:mod:`hal.virtual.board`) calls it at four
points: which image to boot, bytes from the host, lines from the running model, and the
model's run ending silently (a hard fault: the watchdog resets the board).

The model of a slot runs in the real TFLM interpreter like any other: the runtime writes a
firmware image (:mod:`hal.virtual.image`) holding the slot's model with the firmware's op set,
arena and the slot's labels and input vectors, and the board boots that image.

Fault injection (``--hotswap-fault``, repeatable), chunk numbers counting from 0:

``drop_chunk:N``   the chunk frame N is lost once (no answer: the host times out and resends)
``drop_chunks:N``  every chunk frame from N on is lost (the host gives up)
``crc_error:N``    chunk frame N arrives damaged once (``crc`` reply: the host resends)
``crc_errors:N``   every chunk frame from N on arrives damaged
``power_cut:N``    the power fails while chunk N is programmed (the board vanishes, comes back
                   on its previous model; the half-written slot has no header)
``alloc_fail:SHA`` the model whose sha256 starts with SHA fails ``AllocateTensors()`` (the real
                   interpreter runs it in an arena far below its need)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from hal.arduino import hotswap_protocol as hp
from hal.protocol import ErrorLine, format_line, parse_line
from hal.virtual import image as image_mod
from hal.virtual.flash_slots import FLASH_FILE, Flash, PowerCut, Slots

__all__ = ["FLASH_FILE", "HotswapRuntime", "PowerCut", "is_hotswap_image", "parse_fault"]

log = logging.getLogger("hal.virtual.hotswap")

BUILTIN = hp.BUILTIN_SLOT
FAULT_KINDS = ("drop_chunk", "drop_chunks", "crc_error", "crc_errors", "power_cut",
               "alloc_fail")
SLOT_IMAGE = "slot-run.bin"
# The firmware's watchdog: a model that hard-faults is reset after this long (the real
# firmware uses 4 s; shorter here so tests do not wait).
WATCHDOG_S = 0.5
# Simulated flash timing (nRF52840 datasheet maxima): page erase 85 ms, word write 41 us.
# Off by default (tests); the board's --hotswap-real-timing turns it on.
ERASE_PAGE_S = 0.085
WRITE_WORD_S = 41e-6


def parse_fault(spec: str) -> tuple[str, str]:
    """``"drop_chunk:3"`` -> ``("drop_chunk", "3")``; raises ValueError when malformed."""
    kind, _, arg = spec.partition(":")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown hot-swap fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
    if kind == "alloc_fail":
        if not (8 <= len(arg) <= 64 and all(c in "0123456789abcdef" for c in arg.lower())):
            raise ValueError("alloc_fail needs a sha256 prefix of 8-64 hex digits")
    elif not arg.isdigit():
        raise ValueError(f"{kind} needs a chunk number")
    return kind, arg.lower()


def is_hotswap_image(img: image_mod.Image) -> bool:
    return bool((img.header.get("config") or {}).get("hotswap"))


class HotswapRuntime:
    """The hot-swap part of one board's firmware (one instance per sketch run)."""

    def __init__(self, state_dir: Path, firmware: image_mod.Image,
                 faults: tuple[str, ...] | list[tuple[str, str]] = (),
                 real_timing: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.firmware = firmware
        self.config = dict(firmware.header.get("config") or {})
        self.ops = tuple(self.config.get("ops") or ())
        self.arena = int(self.config.get("arena_bytes") or 0)
        self.slot_bytes = int(self.config.get("slot_bytes") or 0)
        flash = Flash(self.state_dir / FLASH_FILE, self.slot_bytes)
        self.slots = Slots(flash, str(self.config.get("template_version", "")))
        # Parsed faults are shared with the board: a one-shot fault fires once per board
        # process, not once per sketch run.
        self.faults = faults if isinstance(faults, list) else [parse_fault(f) for f in faults]
        self.real_timing = real_timing
        self.reader = hp.FrameReader()
        self.running = hp.BUILTIN_SLOT
        self.booting_slot: int | None = None  # a slot whose model has not printed boot yet
        self.confirm_pending: int | None = None
        self._xfer: dict | None = None
        self._chunk_no = 0
        self._sleep = None

    # -- boot ---------------------------------------------------------------------------

    def boot_image(self, reset: bool = True) -> tuple[Path, list[str]]:
        """At reset: the image to boot and the lines the firmware prints before it (one
        ``slot_rejected`` per slot given up). ``reset`` False: boot ``self.running``
        (after ACTIVATE, which burnt its boot attempt, or a fall-back) without the reset's
        selection."""
        lines: list[str] = []
        if reset:
            slot, rejected = self.slots.select_boot()
            for r in rejected:
                lines.append(self._rejected_line(r, "faulted", slot))
            self.running = slot
        return self._image_for(self.running), lines

    def _image_for(self, slot: int) -> Path:
        if slot == hp.BUILTIN_SLOT:
            self.booting_slot = None
            self.confirm_pending = None
            cfg = {**self.config, "active_slot": hp.BUILTIN_SLOT}
            path = self.state_dir / "builtin-run.bin"
            path.write_bytes(image_mod.pack(self.firmware.model, {**self.firmware.header,
                                                                   "config": cfg}))
            return path
        payload = self.slots.payload(slot)
        self.booting_slot = slot
        self.confirm_pending = slot
        cfg = self._slot_config(payload, slot)
        path = self.state_dir / SLOT_IMAGE
        path.write_bytes(image_mod.pack(payload.model, {"config": cfg, "board": "nano33ble"}))
        log.info("hot-swap: booting slot %d (model %s)", slot, cfg["model_sha256"][:16])
        return path

    def _slot_config(self, payload: hp.SlotPayload, slot: int) -> dict:
        """The firmware's config with the slot's model: what the real firmware derives at
        run time from the interpreter's input tensor and the slot's meta block."""
        from hal.arduino import sketch
        from hal.model.analysis import analyze

        sha = hashlib.sha256(payload.model).hexdigest()
        arena = self.arena
        report = analyze(payload.model)
        # An arena far below the model's need makes the real interpreter fail
        # AllocateTensors() (a few bytes would make TFLM crash instead, like a hard fault).
        starved = 2048 if report.arena_estimate_bytes > 4096 else report.arena_estimate_bytes // 2
        if any(sha.startswith(p) for k, p in self.faults if k == "alloc_fail"):
            arena = starved
        missing = sorted(set(report.ops) - set(self.ops))
        if missing:  # the resolver lacks a kernel: AllocateTensors() fails on the board
            arena = starved
        tensor = report.inputs[0]
        quantised = tensor.dtype != "float32"
        base = sketch.SketchConfig(
            model=payload.model, model_sha256=sha, ops=self.ops, arena_bytes=arena,
            labels=payload.labels, input_dtype=tensor.dtype,
            input_shape=tuple(int(d) for d in tensor.shape),
            input_scale=float(tensor.scale) if quantised else None,
            input_zero_point=int(tensor.zero_point) if quantised else None,
            input_vectors=(),
        )
        fmt = {"int8": "b", "uint8": "B", "float32": "f"}[tensor.dtype]
        import struct

        vectors = tuple(sketch.dequantise(base, struct.unpack(f"<{base.input_elements}{fmt}",
                                                               v)) for v in payload.vectors)
        cfg = {k: v for k, v in asdict(base).items() if k != "model"}
        cfg.update(input_vectors=[list(v) for v in vectors], hotswap=True,
                   slot_bytes=self.slot_bytes, active_slot=slot,
                   inference_period_ms=self.config.get("inference_period_ms", 1000),
                   status_period_ms=self.config.get("status_period_ms", 5000),
                   template_version=self.config.get("template_version"),
                   board=self.config.get("board", "nano33ble"), ops=list(self.ops))
        return cfg

    def _rejected_line(self, slot: int, reason: str, now: int) -> str:
        return format_line(ErrorLine(
            code="slot_rejected",
            message=f"the model in slot {slot} did not start ({reason}); falling back",
            numbers={"slot": slot, "reason": reason, "now": now}))

    def on_line(self, raw: bytes) -> tuple[bool, list[str]]:
        """A line the running model printed. Returns (pass it to the host?, extra lines) and
        sets :attr:`fallback_needed` when the slot's model failed to allocate."""
        if self.booting_slot is None and self.confirm_pending is None:
            return True, []
        line = parse_line(raw)
        kind = getattr(line, "kind", "")
        if kind == "boot":
            self.booting_slot = None
            return True, []
        if kind == "inference" and self.confirm_pending is not None:
            self.slots.confirm(self.confirm_pending)
            self.confirm_pending = None
            return True, []
        if kind == "error" and self.booting_slot is not None:
            slot = self.booting_slot
            self.slots.reject(slot)
            nxt = self._fallback_slot()
            self.running = nxt
            self.fallback_needed = True
            return False, [self._rejected_line(slot, line.code, nxt)]
        return True, []

    fallback_needed = False

    def _fallback_slot(self) -> int:
        for slot, _head in self.slots.bootable():
            if slot != self.running:
                return slot
        return hp.BUILTIN_SLOT

    def on_silent_fault(self) -> None:
        """The model's run ended without a word (hard fault): the watchdog resets the board;
        the next :meth:`boot_image` (reset) counts the attempt."""
        log.info("hot-swap: slot %s faulted; watchdog reset in %.1f s", self.running, WATCHDOG_S)

    # -- protocol -----------------------------------------------------------------------

    def feed(self, data: bytes) -> tuple[list[str], int | None]:
        """Bytes from the host. Returns the reply lines and a slot to activate (or None).
        Raises :class:`PowerCut` when a ``power_cut`` fault fires."""
        replies: list[str] = []
        activate: int | None = None
        for frame in self.reader.feed(data):
            reply, act = self._handle(frame)
            if reply is not None:
                replies.append(reply)
            if act is not None:
                activate = act
        return replies, activate

    def _fault(self, kind: str, chunk_no: int) -> bool:
        for k, arg in self.faults:
            if k == kind and int(arg) == chunk_no:
                self.faults.remove((k, arg))
                return True
            if k == kind + "s" and chunk_no >= int(arg):
                return True
        return False

    def _err(self, op: str, seq: int, code: str, **extra) -> str:
        return hp.reply_line("err", op, seq, code=code, msg=hp.REPLY_ERRORS[code][0][:80],
                             **extra)

    def _handle(self, f: hp.Frame) -> tuple[str | None, int | None]:
        if not f.crc_ok:
            if f.kind == 0:
                return self._err("?", f.seq, "bad_frame"), None
            return self._err(f.name, f.seq, "crc", next=self._next()), None
        if f.kind == hp.HELLO:
            return self.hello_line(f.seq), None
        if f.kind == hp.BEGIN_T:
            return self._begin(f), None
        if f.kind == hp.CHUNK:
            return self._chunk(f), None
        if f.kind == hp.COMMIT:
            return self._commit(f), None
        if f.kind == hp.ACTIVATE:
            return self._activate(f)
        if f.kind == hp.ABORT:
            self._xfer = None
            return hp.reply_line("ok", "abort", f.seq), None
        return self._err(f.name, f.seq, "bad_frame"), None

    def _next(self) -> int:
        return self._xfer["next"] if self._xfer else 0

    def capability(self) -> hp.Capability:
        return hp.Capability(slot=self.running, slot_bytes=self.slot_bytes,
                             arena_bytes=self.arena, ops=self.ops,
                             digest=hp.op_set_digest(self.ops))

    def hello_line(self, seq: int) -> str:
        cap = self.capability()
        return hp.reply_line("hello", "hello", seq, arena=self.arena,
                             max_chunk=hp.MAX_CHUNK, fw=self.config.get("template_version"),
                             sha=self.running_sha()[:16], **cap.to_wire())

    def running_sha(self) -> str:
        """sha256 of the model the firmware runs (or is starting)."""
        if self.running == hp.BUILTIN_SLOT:
            return self.firmware.sha256
        head = self.slots.header(self.running)
        if head is None:
            return ""
        return hashlib.sha256(self.slots.payload(self.running).model).hexdigest()

    def _begin(self, f: hp.Frame) -> str:
        try:
            total, model_len, arena, sha = hp.decode_begin(f.payload)
        except hp.ProtocolError:
            return self._err("begin", f.seq, "bad_frame")
        if total > hp.slot_capacity(self.slot_bytes) or not 0 < model_len <= total:
            return self._err("begin", f.seq, "too_big", capacity=hp.slot_capacity(
                self.slot_bytes))
        if arena > self.arena:
            return self._err("begin", f.seq, "arena", arena=self.arena)
        x = self._xfer
        if x and x["sha"] == sha and x["total"] == total:  # the same transfer: resume
            return hp.reply_line("ok", "begin", f.seq, slot=x["slot"], next=x["next"],
                                 resumed=1)
        slot = self.slots.target_for_transfer(self.running)
        pages = self.slots.erase_for(slot, total)
        if self.real_timing:
            self._pause(pages * ERASE_PAGE_S)
        self._xfer = {"slot": slot, "total": total, "model_len": model_len, "arena": arena,
                      "sha": sha, "next": 0, "committed": False}
        self._chunk_no = 0
        return hp.reply_line("ok", "begin", f.seq, slot=slot, next=0, pages=pages)

    def _pause(self, seconds: float) -> None:
        import time

        time.sleep(seconds)

    def _chunk(self, f: hp.Frame) -> str | None:
        x = self._xfer
        chunk_no = self._chunk_no
        if self._fault("drop_chunk", chunk_no):
            log.info("hot-swap fault: chunk %d dropped", chunk_no)
            return None
        if self._fault("crc_error", chunk_no):
            log.info("hot-swap fault: chunk %d damaged", chunk_no)
            return self._err("chunk", f.seq, "crc", next=self._next())
        if x is None:
            return self._err("chunk", f.seq, "no_transfer")
        try:
            offset, data = hp.decode_chunk(f.payload)
        except hp.ProtocolError:
            return self._err("chunk", f.seq, "bad_frame")
        if offset < x["next"] and offset + len(data) <= x["next"]:
            return hp.reply_line("ok", "chunk", f.seq, next=x["next"], dup=1)
        if offset != x["next"] or offset % 4 or offset + len(data) > x["total"] or (
                len(data) % 4 and offset + len(data) != x["total"]):
            return self._err("chunk", f.seq, "order", next=x["next"])
        if self._fault("power_cut", chunk_no):
            self.slots.flash.cut_after = len(data) // 2 // 4 * 4
        try:
            self.slots.write_payload(x["slot"], offset, data)
        except ValueError:
            return self._err("chunk", f.seq, "flash", next=x["next"])
        except PowerCut:
            self._xfer = None
            raise
        if self.real_timing:
            self._pause((len(data) + 3) // 4 * WRITE_WORD_S)
        x["next"] = offset + len(data)
        self._chunk_no += 1
        return hp.reply_line("ok", "chunk", f.seq, next=x["next"])

    def _commit(self, f: hp.Frame) -> str:
        x = self._xfer
        if x is None:
            return self._err("commit", f.seq, "no_transfer")
        if x["next"] != x["total"]:
            return self._err("commit", f.seq, "order", next=x["next"])
        if x["committed"]:  # answered again (its answer was lost), written once
            head = self.slots.header(x["slot"])
            return hp.reply_line("ok", "commit", f.seq, slot=x["slot"],
                                 gen=head.generation if head else 0)
        try:
            head = self.slots.commit(x["slot"], x["total"], x["model_len"], x["arena"], x["sha"])
        except ValueError:
            return self._err("commit", f.seq, "flash")
        if head is None:
            self._xfer = None
            return self._err("commit", f.seq, "sha_mismatch")
        x["committed"] = True
        return hp.reply_line("ok", "commit", f.seq, slot=x["slot"], gen=head.generation)

    def _activate(self, f: hp.Frame) -> tuple[str, int | None]:
        if len(f.payload) != 1:
            return self._err("activate", f.seq, "bad_frame"), None
        slot = f.payload[0]
        if slot == hp.BUILTIN_SLOT:
            for s, _ in self.slots.bootable():
                self.slots.reject(s)
        else:
            if slot >= self.slots.flash.slots:
                return self._err("activate", f.seq, "bad_slot"), None
            head = self.slots.header(slot)
            if head is None or head.rejected:
                return self._err("activate", f.seq, "bad_slot"), None
            other = 1 - slot
            oh = self.slots.header(other)
            if oh is not None and not oh.rejected and oh.generation > head.generation:
                self.slots.reject(other)  # a reset must boot what the host chose
            self.slots.burn_attempt(slot)  # starting it counts as a boot until it ran
        self._xfer = None
        self.running = slot
        return hp.reply_line("ok", "activate", f.seq, slot=slot), slot


def describe(state_dir: Path) -> dict:
    """The slots' state for logs and tests (never raises)."""
    try:
        data = (Path(state_dir) / FLASH_FILE).read_bytes()
    except OSError:
        return {}
    out = {}
    for slot in (0, 1):
        size = len(data) // 2
        head = hp.parse_header(data[slot * size: slot * size + hp.HEADER_AREA])
        out[slot] = None if head is None else {**asdict(replace(head, sha256=b"")),
                                               "sha256": head.sha256.hex()}
    return json.loads(json.dumps(out))
