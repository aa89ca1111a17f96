"""The firmware's slot and protocol code (tinyml_hotswap.cpp), compiled for the host against
tiny stand-ins of Serial and mbed's FlashIAP, answers the same frames exactly as the virtual
board does (hal/virtual/hotswap_device.py) and leaves the same bytes in flash: one protocol,
two implementations, checked against each other byte for byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from hal.arduino import hotswap_protocol as hp
from hal.arduino.sketch import SKETCH_NAME, render_sketch
from hal.virtual.flash_slots import FLASH_FILE
from tests.firmware.helpers import gxx
from tests.hotswap.test_device import SPEECH, WAND, _config, _runtime

STUB = Path(__file__).resolve().parent / "host_stub"
HELLO_WORLD = (Path(__file__).resolve().parents[1] / "data" / "tflm-examples"
               / "hello_world_int8.tflite").read_bytes()


def _frames() -> list[bytes]:
    """HELLO; magic_wand into slot 0 with a resend, a damaged frame, a gap and a duplicate;
    ACTIVATE 0; hello_world into slot 1; ACTIVATE 0 again (rejects the newer slot 1);
    hostile bytes and an unknown frame type in between."""
    out: list[bytes] = []
    seq = iter(range(1, 1000))

    def frame(kind: int, payload: bytes = b"", damage: bool = False) -> None:
        data = bytearray(hp.encode_frame(kind, next(seq), payload))
        if damage:
            data[-2] ^= 0x10
        out.append(bytes(data))

    frame(hp.HELLO)
    for model, labels in ((WAND, ("wing", "ring")), (HELLO_WORLD, ())):
        payload = hp.SlotPayload(model=model, labels=labels,
                                 vectors=(b"\x01" * 4, b"\x02" * 4)).pack()
        sha = hashlib.sha256(payload).digest()
        frame(hp.BEGIN_T, hp.begin_payload(len(payload), len(model), 4000, sha))
        for i, off in enumerate(range(0, len(payload), hp.MAX_CHUNK)):
            chunk = hp.chunk_payload(off, payload[off:off + hp.MAX_CHUNK])
            if i == 1:
                frame(hp.CHUNK, chunk, damage=True)
                out.append(b"garbage\n\xa5\x00")
            if i == 2:
                frame(hp.CHUNK, hp.chunk_payload(off + 1024, b"x" * 8))  # a gap: order
            frame(hp.CHUNK, chunk)
            if i == 0:
                frame(hp.CHUNK, chunk)  # its answer was lost: sent again (dup)
        frame(hp.COMMIT)
        frame(hp.COMMIT)  # again: answered ok, not written twice
        frame(hp.ACTIVATE, b"\x00")
    out.append(hp.SYNC + bytes([0x77, 1, 0, 0, 0]))  # unknown type: bad_frame
    frame(hp.ACTIVATE, b"\x01")  # slot 1 was rejected by the ACTIVATE 0 before: bad_slot
    frame(hp.ABORT)
    frame(hp.COMMIT)  # no transfer
    return out


def test_firmware_code_answers_like_the_virtual_board(tmp_path):
    config = _config(SPEECH)
    sketch_dir = tmp_path / SKETCH_NAME
    render_sketch(config, sketch_dir)
    exe = tmp_path / "hs_host"
    argv = [gxx(), "-std=gnu++17", "-O1", "-Wall", "-Wextra", "-Werror", "-fno-pie", "-no-pie",
            "-I", str(STUB), "-I", str(sketch_dir), "-o", str(exe), str(STUB / "hs_main.cpp"),
            str(sketch_dir / "tinyml_hotswap.cpp"), str(sketch_dir / "model_data.cpp")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    frames = _frames()
    run = subprocess.run([str(exe), str(tmp_path / "cpp_flash.bin")], input=b"".join(frames),
                         capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    cpp = run.stdout.decode().splitlines()

    board = tmp_path / "board"
    board.mkdir()
    rt = _runtime(board)
    py: list[str] = []
    for data in frames:
        replies, activate = rt.feed(data)
        py += replies
        if activate is not None:
            py.append(json.dumps({"activated": activate}, separators=(",", ":")))
    for _ in range(3):
        slot, rejected = rt.slots.select_boot()
        py += [rt._rejected_line(r, "faulted", slot) for r in rejected]
        sha = (hashlib.sha256(rt.slots.payload(slot).model).hexdigest()
               if slot != hp.BUILTIN_SLOT else hashlib.sha256(SPEECH).hexdigest())[:16]
        py.append(json.dumps({"select": slot, "sha": sha}, separators=(",", ":")))

    assert cpp == py
    codes = [json.loads(x).get("code") for x in cpp if '"r":"err"' in x]
    assert codes == ["crc", "order", "crc", "order", "bad_frame", "bad_slot", "no_transfer"]
    assert (tmp_path / "cpp_flash.bin").read_bytes() == (board / FLASH_FILE).read_bytes()
