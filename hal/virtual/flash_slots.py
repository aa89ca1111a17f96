"""The virtual board's model slots: two page-aligned regions of NOR flash, as the hot-swap
firmware keeps them at the top of the nRF52840's application flash.

The flash is a file (``slots.bin`` in the board's state directory) with the nRF52840's rules:
a page (4096 bytes) erases to 0xFF, programming works on aligned 32-bit words and can only
clear bits (new = old AND data), and a word may be programmed at most twice between erases
(a third write is refused, as the NVMC's ``n_WRITE`` limit makes it undefined). A power cut
can be injected after any number of programmed bytes.

The slot logic (which slot boots, boot attempts, confirmation, rejection) follows
``firmware_templates/nano33ble/tinyml_hotswap.cpp`` line for line; the layout is in
:mod:`hal.arduino.hotswap_protocol`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from pathlib import Path

from hal.arduino import hotswap_protocol as hp

FLASH_FILE = "slots.bin"


class PowerCut(Exception):
    """The (virtual) power failed while the flash was being programmed."""


class Flash:
    """``slots`` slots of ``slot_bytes`` each, persisted in ``path``."""

    def __init__(self, path: Path, slot_bytes: int, slots: int = 2) -> None:
        if slot_bytes <= 0 or slot_bytes % hp.PAGE_BYTES:
            raise ValueError(f"slot size {slot_bytes} is not a positive multiple of a page")
        self.path = Path(path)
        self.slot_bytes = slot_bytes
        self.slots = slots
        size = slot_bytes * slots
        data = b""
        with contextlib.suppress(FileNotFoundError):
            data = self.path.read_bytes()
        if len(data) != size:  # a firmware with another slot size: its region was erased
            data = b"\xff" * size
        self._mem = bytearray(data)
        self._writes = bytearray(size // 4)  # programs per word since its page's erase
        self.cut_after: int | None = None  # inject: power fails after this many bytes
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(self._mem)
        os.replace(tmp, self.path)

    def base(self, slot: int) -> int:
        return slot * self.slot_bytes

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self._mem[addr: addr + length])

    def erase_page(self, addr: int) -> None:
        if addr % hp.PAGE_BYTES:
            raise ValueError("erase of an unaligned page")
        self._mem[addr: addr + hp.PAGE_BYTES] = b"\xff" * hp.PAGE_BYTES
        self._writes[addr // 4: (addr + hp.PAGE_BYTES) // 4] = bytes(hp.PAGE_BYTES // 4)
        self._save()

    def program(self, addr: int, data: bytes) -> None:
        """Program whole words at ``addr`` (both multiples of 4)."""
        if addr % 4 or len(data) % 4:
            raise ValueError("flash programming needs aligned whole words")
        for i in range(0, len(data), 4):
            if self.cut_after is not None:
                if self.cut_after <= 0:
                    self.cut_after = None
                    self._save()
                    raise PowerCut(f"power cut while programming {addr + i:#x}")
                self.cut_after -= 4
            word = (addr + i) // 4
            if self._writes[word] >= 2:
                raise ValueError(f"word {addr + i:#x} programmed a third time without erase")
            self._writes[word] += 1
            for j in range(4):
                self._mem[addr + i + j] &= data[i + j]
        self._save()


class Slots:
    """Slot headers, payloads and the boot selection of the hot-swap firmware."""

    def __init__(self, flash: Flash, template_version: str) -> None:
        self.flash = flash
        self.template_version = template_version

    def header(self, slot: int) -> hp.SlotHeader | None:
        """The slot's header when it is valid for this firmware (sha256 checked)."""
        head = hp.parse_header(self.flash.read(self.flash.base(slot), hp.HEADER_AREA))
        if head is None or head.template_version != self.template_version[:12]:
            return None
        if head.total > hp.slot_capacity(self.flash.slot_bytes):
            return None
        if hashlib.sha256(self.payload_bytes(slot, head.total)).digest() != head.sha256:
            return None
        return head

    def payload_bytes(self, slot: int, total: int) -> bytes:
        return self.flash.read(self.flash.base(slot) + hp.HEADER_AREA, total)

    def payload(self, slot: int) -> hp.SlotPayload:
        head = self.header(slot)
        if head is None:
            raise hp.ProtocolError(f"slot {slot} holds no valid model")
        return hp.SlotPayload.unpack(self.payload_bytes(slot, head.total), head.model_len)

    def _mark(self, slot: int, offset: int) -> None:
        self.flash.program(self.flash.base(slot) + offset, b"\0\0\0\0")

    def reject(self, slot: int) -> None:
        head = self.header(slot)
        if head is not None and not head.rejected:
            self._mark(slot, hp.REJECTED_AT)

    def confirm(self, slot: int) -> None:
        head = self.header(slot)
        if head is not None and not head.confirmed:
            self._mark(slot, hp.CONFIRMED_AT)

    def burn_attempt(self, slot: int) -> None:
        head = self.header(slot)
        if head is not None and not head.confirmed and head.attempts < hp.MAX_BOOT_ATTEMPTS:
            self._mark(slot, hp.ATTEMPTS_AT + 4 * head.attempts)

    def bootable(self) -> list[tuple[int, hp.SlotHeader]]:
        """Valid, unrejected slots, newest generation first."""
        out = []
        for slot in range(self.flash.slots):
            head = self.header(slot)
            if head is not None and not head.rejected:
                out.append((slot, head))
        return sorted(out, key=lambda item: item[1].generation, reverse=True)

    def select_boot(self) -> tuple[int, list[int]]:
        """At reset: the slot to boot (or ``BUILTIN_SLOT``) and the slots rejected on the
        way because they used up their boot attempts without ever running (a model that
        hard-faults at boot). Burns one attempt of an unconfirmed slot."""
        rejected = []
        for slot, head in self.bootable():
            if head.confirmed:
                return slot, rejected
            if head.attempts >= hp.MAX_BOOT_ATTEMPTS:
                self.reject(slot)
                rejected.append(slot)
                continue
            self.burn_attempt(slot)
            return slot, rejected
        return hp.BUILTIN_SLOT, rejected

    def target_for_transfer(self, running: int) -> int:
        """The slot a new model goes into: never the running one; else the older one."""
        if running != hp.BUILTIN_SLOT:
            return 1 - running
        heads = [self.header(s) for s in range(self.flash.slots)]
        for slot, head in enumerate(heads):
            if head is None or head.rejected:
                return slot
        return min(range(self.flash.slots), key=lambda s: heads[s].generation)

    def next_generation(self) -> int:
        gens = [h.generation for s in range(self.flash.slots)
                if (h := hp.parse_header(self.flash.read(self.flash.base(s), hp.HEADER_AREA)))]
        return max(gens, default=0) + 1

    def erase_for(self, slot: int, total: int) -> int:
        """Erase the pages a payload of ``total`` bytes needs; returns how many."""
        pages = hp.pages_for(total)
        for page in range(pages):
            self.flash.erase_page(self.flash.base(slot) + page * hp.PAGE_BYTES)
        return pages

    def write_payload(self, slot: int, offset: int, data: bytes) -> None:
        pad = (-len(data)) % 4
        self.flash.program(self.flash.base(slot) + hp.HEADER_AREA + offset,
                           data + b"\xff" * pad)

    def commit(self, slot: int, total: int, model_len: int, arena: int,
               sha256: bytes) -> hp.SlotHeader | None:
        """Check the written payload against ``sha256``; on a match program the header,
        its magic last. None when the sha256 differs (nothing programmed)."""
        if hashlib.sha256(self.payload_bytes(slot, total)).digest() != sha256:
            return None
        head = hp.SlotHeader(generation=self.next_generation(), total=total,
                             model_len=model_len, arena_needed=arena,
                             template_version=self.template_version, sha256=sha256)
        area = head.pack()
        base = self.flash.base(slot)
        self.flash.program(base + 4, area[4: hp.HEADER.size + 4])  # body and crc ...
        self.flash.program(base, struct.pack("<I", hp.SLOT_MAGIC))  # ... then the magic
        return self.header(slot)
