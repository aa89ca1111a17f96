"""The host end of the hot-swap protocol on an open serial port: stop-and-wait frames with
resends, the transfer of a slot payload (resumable), activation and the boot check after it.

Every exchange is bounded: each frame by its own timeout (a BEGIN also by the time the board
needs to erase the pages), the whole session by the caller's :class:`~hal.deadline.Deadline`.
Lines the board prints meanwhile (inference, status) are handed to ``deliver`` so that
observation sees no gap. Failures are classified (:mod:`hal.errors`), the protocol's own
reply code in ``detail["protocol_code"]``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from hal.arduino import hotswap_protocol as hp
from hal.arduino.serial_link import PortLink
from hal.deadline import Deadline
from hal.errors import DeviceError, FitError, HalError, InfraError
from hal.protocol import (
    BootLine,
    DeviceLine,
    ErrorLine,
    HotswapReply,
    LineSplitter,
    StatusLine,
    sha_matches,
    to_dict,
)

log = logging.getLogger(__name__)

FRAME_TIMEOUT_S = 0.5  # a chunk is written in ~10 ms on the nRF52840; USB adds ~1 ms
ERASE_ALLOWANCE_S = 0.1  # per page, above the nRF52840's 85 ms maximum
TRIES = 5  # sends of one frame before the transfer is given up


@dataclass
class TransferStats:
    """What a transfer cost: frames sent, resends and why, bytes on the wire."""

    frames: int = 0
    resent: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    wire_bytes: int = 0
    payload_bytes: int = 0
    resumed_at: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _reply_error(reply: HotswapReply, what: str) -> HalError:
    code = str(reply.fields.get("code", ""))
    msg = f"the board refused {what}: {code} ({reply.fields.get('msg', '')})"
    detail = {"protocol_code": code, "reply": to_dict(reply)}
    if code == "too_big":
        return FitError("fit_flash", msg, **detail)
    if code == "arena":
        return FitError("fit_ram", msg, **detail)
    return DeviceError("device_error", msg, **detail)


class HotswapSession:
    """One conversation with a hot-swap firmware over ``link``."""

    def __init__(self, link: PortLink, deliver: Callable[[DeviceLine], None],
                 deadline: Deadline, frame_timeout_s: float = FRAME_TIMEOUT_S,
                 tries: int = TRIES) -> None:
        self.link = link
        self.deliver = deliver
        self.deadline = deadline
        self.frame_timeout_s = frame_timeout_s
        self.tries = tries
        self.splitter = LineSplitter()
        self.seq = random.randrange(1, 0xFFFF)
        self.stats = TransferStats()
        self.backlog: list[DeviceLine] = []  # lines read while waiting, for wait_boot

    # -- frames -------------------------------------------------------------------------

    def _wait_reply(self, seq: int, timeout_s: float) -> HotswapReply | None:
        end = time.monotonic() + timeout_s
        while True:
            self.deadline.check()
            left = min(end - time.monotonic(), self.deadline.remaining())
            if left <= 0:
                return None
            for line in self.splitter.feed(self.link.read(min(left, 0.05))):
                if isinstance(line, HotswapReply):
                    if line.seq == seq:
                        return line
                    continue  # a late answer to a frame already resent
                self.deliver(line)
                self.backlog.append(line)

    def exchange(self, kind: int, payload: bytes = b"", timeout_s: float | None = None
                 ) -> HotswapReply:
        """Send one frame until it is answered (resending after a timeout or a ``crc``
        answer, at most :attr:`tries` times); returns the answer (``ok`` / ``hello`` or a
        non-resendable ``err``)."""
        self.seq = self.seq % 0xFFFF + 1
        seq = self.seq
        frame = hp.encode_frame(kind, seq, payload)
        name = hp.FRAME_NAMES[kind]
        last = "no answer"
        for attempt in range(self.tries):
            self.link.write(frame)
            self.stats.frames += 1
            self.stats.wire_bytes += len(frame)
            if attempt:
                self.stats.resent += 1
            reply = self._wait_reply(seq, timeout_s or self.frame_timeout_s)
            if reply is None:
                self.stats.timeouts += 1
                last = "no answer"
                continue
            if reply.result == "err" and reply.fields.get("code") == "crc":
                self.stats.crc_errors += 1
                last = "crc"
                continue
            return reply
        raise InfraError(
            "transport_broken",
            f"hot-swap {name} frame not accepted after {self.tries} tries (last: {last})",
            protocol_code="crc" if last == "crc" else "no_answer", frame=name,
            tries=self.tries, stats=self.stats.to_dict())

    # -- operations ---------------------------------------------------------------------

    def hello(self, timeout_s: float = 0.5) -> HotswapReply | None:
        """The board's capabilities, or None when it does not speak the protocol."""
        try:
            reply = self.exchange(hp.HELLO, timeout_s=timeout_s)
        except InfraError:
            return None
        return reply if reply.result == "hello" else None

    def send(self, payload: bytes, model_len: int, arena_needed: int) -> int:
        """Transfer ``payload`` into the slot the board chooses; returns the slot. Resumes
        where the board says a previous, interrupted transfer of the same payload ended."""
        started = time.monotonic()
        sha = hashlib.sha256(payload).digest()
        pages = hp.pages_for(len(payload))
        reply = self.exchange(hp.BEGIN_T, hp.begin_payload(len(payload), model_len,
                                                           arena_needed, sha),
                              timeout_s=self.frame_timeout_s + pages * ERASE_ALLOWANCE_S)
        if reply.result != "ok":
            raise _reply_error(reply, "the transfer")
        slot = int(reply.fields.get("slot", -1))
        offset = int(reply.fields.get("next", 0))
        self.stats.resumed_at = offset
        while offset < len(payload):
            data = payload[offset: offset + hp.MAX_CHUNK]
            reply = self.exchange(hp.CHUNK, hp.chunk_payload(offset, data))
            nxt = reply.fields.get("next")
            if reply.result == "err" and reply.fields.get("code") == "order" \
                    and isinstance(nxt, int) and 0 <= nxt <= len(payload) and nxt % 4 == 0:
                offset = nxt  # the board says where it is: continue from there
                continue
            if reply.result != "ok":
                raise _reply_error(reply, f"the chunk at {offset}")
            if nxt != offset + len(data):  # an answer that is not about this chunk
                raise DeviceError("device_error", f"the board acknowledged the chunk at "
                                  f"{offset} with next {nxt!r}, not {offset + len(data)}",
                                  protocol_code="bad_reply", reply=to_dict(reply))
            offset = nxt
        self.stats.payload_bytes = len(payload)
        reply = self.exchange(hp.COMMIT)
        if reply.result != "ok":
            raise _reply_error(reply, "the commit")
        self.stats.seconds = time.monotonic() - started
        return slot

    def activate(self, slot: int) -> None:
        reply = self.exchange(hp.ACTIVATE, bytes([slot]))
        if reply.result != "ok":
            raise _reply_error(reply, f"switching to slot {slot}")

    def wait_boot(self, sha256: str, deadline: Deadline) -> BootLine:
        """After ACTIVATE: the boot line of ``sha256``. When the firmware gave the new model
        up (``slot_rejected``) and fell back, raises the classified failure with
        ``detail["fallback"]`` (the slot and model that run now)."""
        rejected: ErrorLine | None = None
        pending = list(self.backlog)
        self.backlog.clear()
        while True:
            if not pending:
                if deadline.expired and not deadline.cancelled:
                    raise DeviceError(
                        "boot_silent", f"no boot line of {sha256[:16]} within the boot deadline "
                        "after the switch", expected_sha=sha256[:16],
                        slot_rejected=to_dict(rejected) if rejected else None)
                deadline.check()
                pending = self.splitter.feed(self.link.read(deadline.poll_timeout(0.1)))
                for line in pending:
                    if not isinstance(line, HotswapReply):
                        self.deliver(line)
                continue
            line = pending.pop(0)
            if isinstance(line, ErrorLine) and line.code == "slot_rejected":
                rejected = line
            elif isinstance(line, ErrorLine) and line.code == "alloc_failed":
                raise FitError("alloc_failed", "the new model did not allocate its tensors",
                               arena_bytes=line.numbers.get("arena"))
            elif isinstance(line, (BootLine, StatusLine)):
                if sha_matches(line.sha, sha256) and rejected is None:
                    if isinstance(line, BootLine):
                        return line
                    continue  # a status line of the new model before its boot line: odd
                if rejected is not None:
                    raise _fallback_error(rejected, line, sha256)
                if isinstance(line, BootLine):
                    raise DeviceError("wrong_model", f"after the switch the board runs "
                                      f"{line.sha}, not {sha256[:16]}", running_sha=line.sha,
                                      expected_sha=sha256[:16])


def _fallback_error(rejected: ErrorLine, now: DeviceLine, sha256: str) -> HalError:
    reason = str(rejected.numbers.get("reason", ""))
    running = getattr(now, "sha", None)
    fallback = {"attempted": True, "by": "firmware", "verified": True,
                "running_sha": running, "slot": rejected.numbers.get("now"),
                "reason": f"the firmware gave slot {rejected.numbers.get('slot')} up "
                          f"({reason}) and runs {running} again"}
    if reason == "alloc_failed":
        return FitError("alloc_failed", f"the model {sha256[:16]} failed to allocate its "
                        f"tensors on the board; the firmware fell back to {running}",
                        fallback=fallback)
    return DeviceError("boot_silent", f"the model {sha256[:16]} faulted at boot "
                       f"({reason}); the firmware fell back to {running}", fallback=fallback)


def capability_from_hello(reply: HotswapReply) -> hp.Capability:
    """The :class:`~hal.arduino.hotswap_protocol.Capability` a HELLO answer states (its
    ``sha`` -- the running model's hash prefix -- in ``extra``); raises ``ProtocolError``."""
    f = reply.fields
    cap = hp.Capability.from_wire(f, f.get("arena", 0))
    return hp.Capability(**{**asdict(cap), "extra": {"sha": str(f.get("sha", ""))}})
