"""The board side of the hot-swap protocol (hal.virtual.hotswap_device, hal.virtual.flash_slots)
frame by frame: every reply code, resume, NOR-flash rules, power cut, boot selection with
boot attempts, confirmation and rejection."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from hal.arduino import hotswap, sketch
from hal.arduino import hotswap_protocol as hp
from hal.driver import InstallRequest
from hal.model.analysis import analyze
from hal.virtual import image as image_mod
from hal.virtual.flash_slots import Flash, PowerCut, Slots
from hal.virtual.hotswap_device import HotswapRuntime, parse_fault
from tests.virtual.helpers import model

SPEECH = model("arduino_micro_speech")
WAND = model("arduino_magic_wand")


def _config(data: bytes, arena: int = 65536, slot_bytes: int = 131072):
    report = analyze(data, board="nano33ble")
    cfg = sketch.config_for(report, data, InstallRequest(model=data), 20000, "nano33ble")
    ops = tuple(sorted(set(hp.op_set()) | set(report.ops)))
    return hotswap.firmware_config(cfg, hotswap.Plan("compile_upload", "hotswap", "", ops=ops,
                                                     arena_bytes=arena, slot_bytes=slot_bytes))


def _runtime(tmp_path: Path, *faults: str, arena: int = 65536) -> HotswapRuntime:
    cfg = _config(SPEECH, arena)
    header = {k: v for k, v in asdict(cfg).items() if k != "model"}
    img = image_mod.unpack(image_mod.pack(cfg.model, {"config": header}))
    (tmp_path / "flash.bin").write_bytes(image_mod.pack(cfg.model, {"config": header}))
    return HotswapRuntime(tmp_path, img, faults)


class Host:
    """Sends frames to a runtime and parses its replies."""

    def __init__(self, rt: HotswapRuntime) -> None:
        self.rt = rt
        self.seq = 0

    def send(self, kind: int, payload: bytes = b"", damage: bool = False):
        self.seq += 1
        frame = bytearray(hp.encode_frame(kind, self.seq, payload))
        if damage:
            frame[-1] ^= 0xFF
        replies, activate = self.rt.feed(bytes(frame))
        return [json.loads(r) for r in replies], activate

    def one(self, kind: int, payload: bytes = b"", **kw) -> dict:
        replies, _ = self.send(kind, payload, **kw)
        assert len(replies) == 1
        return replies[0]


def _payload(data: bytes = WAND) -> bytes:
    return hp.SlotPayload(model=data, labels=("a", "b"), vectors=()).pack()


def _begin(host: Host, payload: bytes, arena: int = 12000) -> dict:
    return host.one(hp.BEGIN_T, hp.begin_payload(len(payload), len(WAND), arena,
                                                 hashlib.sha256(payload).digest()))


def _send_all(host: Host, payload: bytes, start: int = 0) -> None:
    for off in range(start, len(payload), hp.MAX_CHUNK):
        r = host.one(hp.CHUNK, hp.chunk_payload(off, payload[off:off + hp.MAX_CHUNK]))
        assert r["r"] == "ok", r


def test_transfer_commit_activate_then_boot_selection(tmp_path):
    rt = _runtime(tmp_path)
    host = Host(rt)
    hello = host.one(hp.HELLO)
    assert hello["r"] == "hello" and hello["slot"] == hp.BUILTIN_SLOT
    assert hello["sha"] == hashlib.sha256(SPEECH).hexdigest()[:16]
    assert hp.op_set_digest(hello["ops"]) == hello["opset"]
    payload = _payload()
    r = _begin(host, payload)
    assert (r["r"], r["slot"], r["next"], r["pages"]) == ("ok", 0, 0, hp.pages_for(len(payload)))
    _send_all(host, payload)
    assert host.one(hp.COMMIT)["gen"] == 1
    replies, activate = host.send(hp.ACTIVATE, bytes([0]))
    assert replies[0]["r"] == "ok" and activate == 0
    path, lines = rt.boot_image(reset=False)
    assert image_mod.read(path).sha256 == hashlib.sha256(WAND).hexdigest() and not lines
    assert rt.slots.header(0).attempts == 1
    # a reset now boots the slot again (second attempt), and after two boots without an
    # inference the slot is given up: the compiled-in model runs and says why
    assert rt.boot_image()[0].name == "slot-run.bin"
    path, lines = rt.boot_image()
    assert rt.running == hp.BUILTIN_SLOT and "slot_rejected" in lines[0]
    assert json.loads(lines[0])["reason"] == "faulted"


def test_confirmed_slot_boots_at_every_reset(tmp_path):
    rt = _runtime(tmp_path)
    host = Host(rt)
    payload = _payload()
    _begin(host, payload)
    _send_all(host, payload)
    host.one(hp.COMMIT)
    host.send(hp.ACTIVATE, b"\0")
    rt.boot_image(reset=False)
    assert rt.on_line(b'{"t":"inf","n":1,"us":5,"out":[0.5],"top":0,"label":""}') == (True, [])
    assert rt.slots.header(0).confirmed
    for _ in range(4):
        rt.boot_image()
        assert rt.running == 0


@pytest.mark.parametrize("case,expect", [
    ("too_big", "too_big"), ("arena", "arena"), ("chunk_first", "no_transfer"),
    ("commit_first", "no_transfer"), ("gap", "order"), ("unaligned", "order"),
    ("early_commit", "order"), ("bad_slot", "bad_slot"), ("activate_len", "bad_frame"),
    ("begin_len", "bad_frame"), ("crc", "crc"),
])
def test_every_reply_error(tmp_path, case, expect):
    host = Host(_runtime(tmp_path))
    payload = _payload()
    sha = hashlib.sha256(payload).digest()
    if case == "too_big":
        r = host.one(hp.BEGIN_T, hp.begin_payload(10**6, 10, 1, sha))
    elif case == "arena":
        r = host.one(hp.BEGIN_T, hp.begin_payload(len(payload), len(WAND), 10**6, sha))
    elif case == "chunk_first":
        r = host.one(hp.CHUNK, hp.chunk_payload(0, b"abcd"))
    elif case == "commit_first":
        r = host.one(hp.COMMIT)
    elif case == "bad_slot":
        r = host.one(hp.ACTIVATE, b"\1")
    elif case == "activate_len":
        r = host.one(hp.ACTIVATE, b"\0\0")
    elif case == "begin_len":
        r = host.one(hp.BEGIN_T, b"\0" * 7)
    elif case == "crc":
        r = host.one(hp.HELLO, damage=True)
    else:
        _begin(host, payload)
        if case == "gap":
            r = host.one(hp.CHUNK, hp.chunk_payload(2048, payload[2048:3072]))
        elif case == "unaligned":
            r = host.one(hp.CHUNK, hp.chunk_payload(0, payload[:6]))
        else:
            r = host.one(hp.COMMIT)
    assert r["r"] == "err" and r["code"] == expect, r
    assert r["msg"] and set(r) >= {"t", "op", "seq"}
    if expect == "order":
        assert r["next"] == 0


def test_sha_mismatch_at_commit_leaves_no_bootable_slot(tmp_path):
    rt = _runtime(tmp_path)
    host = Host(rt)
    payload = _payload()
    host.one(hp.BEGIN_T, hp.begin_payload(len(payload), len(WAND), 1, b"\x11" * 32))
    _send_all(host, payload)
    r = host.one(hp.COMMIT)
    assert r["code"] == "sha_mismatch"
    assert rt.slots.bootable() == [] and rt.boot_image()[0].name == "builtin-run.bin"


def test_resume_and_duplicate_chunks(tmp_path):
    host = Host(_runtime(tmp_path))
    payload = _payload()
    _begin(host, payload)
    _send_all(host, payload[:3 * hp.MAX_CHUNK])
    # the same chunk again (its answer was lost): acknowledged, not written twice
    again = host.one(hp.CHUNK, hp.chunk_payload(1024, payload[1024:2048]))
    assert again["r"] == "ok" and again["next"] == 3072 and again.get("dup") == 1
    resumed = _begin(host, payload)
    assert resumed["next"] == 3 * hp.MAX_CHUNK and resumed["resumed"] == 1
    _send_all(host, payload, start=3 * hp.MAX_CHUNK)
    assert host.one(hp.COMMIT)["r"] == "ok"


def test_faults_drop_damage_and_power_cut(tmp_path):
    rt = _runtime(tmp_path, "drop_chunk:1", "crc_error:2", "power_cut:4")
    host = Host(rt)
    payload = _payload()
    _begin(host, payload)
    chunk = lambda off: hp.chunk_payload(off, payload[off:off + 1024])  # noqa: E731
    assert host.one(hp.CHUNK, chunk(0))["next"] == 1024
    assert host.send(hp.CHUNK, chunk(1024)) == ([], None)  # dropped: no answer
    assert host.one(hp.CHUNK, chunk(1024))["next"] == 2048
    assert host.one(hp.CHUNK, chunk(2048))["code"] == "crc"
    assert host.one(hp.CHUNK, chunk(2048))["next"] == 3072
    assert host.one(hp.CHUNK, chunk(3072))["next"] == 4096
    with pytest.raises(PowerCut):
        host.send(hp.CHUNK, chunk(4096))
    # after the power comes back: a fresh firmware run; the half-written slot never boots
    rt2 = _runtime(tmp_path)
    assert rt2.slots.bootable() == [] and rt2.boot_image()[0].name == "builtin-run.bin"


def test_alloc_failure_of_a_slot_falls_back(tmp_path):
    sha = hashlib.sha256(WAND).hexdigest()
    rt = _runtime(tmp_path, f"alloc_fail:{sha[:12]}")
    host = Host(rt)
    payload = _payload()
    _begin(host, payload)
    _send_all(host, payload)
    host.one(hp.COMMIT)
    host.send(hp.ACTIVATE, b"\0")
    path, _ = rt.boot_image(reset=False)
    assert image_mod.read(path).header["config"]["arena_bytes"] == 2048  # TFLM will refuse
    keep, extra = rt.on_line(b'{"t":"err","code":"alloc_failed","msg":"x","arena":64}')
    assert not keep and rt.fallback_needed and rt.running == hp.BUILTIN_SLOT
    assert json.loads(extra[0])["reason"] == "alloc_failed"
    assert rt.slots.header(0).rejected


def test_nor_flash_rules(tmp_path):
    flash = Flash(tmp_path / "f.bin", 8192)
    flash.program(0, b"\x0f\xff\xff\xff")
    flash.program(0, b"\xf0\xff\xff\xff")
    assert flash.read(0, 1) == b"\x00"  # programming only clears bits
    with pytest.raises(ValueError):
        flash.program(0, b"\0\0\0\0")  # a third write of the word before an erase
    with pytest.raises(ValueError):
        flash.program(2, b"\0\0\0\0")
    with pytest.raises(ValueError):
        Flash(tmp_path / "g.bin", 5000)
    flash.erase_page(0)
    assert flash.read(0, 4) == b"\xff" * 4
    flash.program(0, b"\0\0\0\0")  # allowed again after the erase
    slots = Slots(flash, "1.0.0")
    assert slots.target_for_transfer(hp.BUILTIN_SLOT) == 0
    assert slots.target_for_transfer(0) == 1


@pytest.mark.parametrize("spec", ["nope", "drop_chunk", "drop_chunk:x", "alloc_fail:zz",
                                  "alloc_fail:12"])
def test_bad_fault_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse_fault(spec)
