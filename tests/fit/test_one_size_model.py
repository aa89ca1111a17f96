"""One size model (issue 13, item 4): the fit check, the stand-in arduino-cli and the virtual
board agree on flash and RAM; what does not fit is refused by the fit check with the numbers;
a bootloader refusal reaches the error message.

Reproduction from the issue: many input vectors on an image model passed fit_check_build and
then failed with ``upload_failed: the uploader found no board``; the real cause (``bootloader
refused ERASE: ERR image too big for flash``) was only in ``output_tail``: the virtual image
carried the vectors as JSON text, several times the flash the build had counted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hal.arduino.cli import ArduinoCli
from hal.arduino.sketch import render_sketch
from hal.boards import fit_check, get_profile
from hal.deadline import Deadline
from hal.driver import InstallRequest
from hal.errors import DeviceError, FitError
from hal.model.analysis import analyze
from hal.protocol import InferenceLine
from hal.virtual import board as board_mod
from hal.virtual import image
from tests.firmware.variants import VARIANTS
from tests.model.builder import build_model
from tests.virtual.helpers import STAND_IN, model, start_board, stop_board, wait_until

FQBN = "arduino:mbed_nano:nano33ble"
PERSON = model("person_detect")
NANO = get_profile("nano33ble")


def test_the_virtual_board_the_stand_in_and_the_profile_share_one_flash_capacity():
    from hal.virtual import arduino_cli

    assert (NANO.flash_bytes, NANO.ram_bytes) == (arduino_cli.TEXT_MAX, arduino_cli.DATA_MAX)
    assert NANO.flash_bytes + 8 == board_mod.FLASH_BYTES  # the .bin is "Sketch uses" + 8


# Variants whose sketch declares the model's own input type (the float-camera and uint8
# variants re-declare the input to exercise the template, which no install does).
AS_INSTALLED = [name for name in sorted(VARIANTS) if name not in
                ("person_camera_float", "hello_uint8_vectors")]


@pytest.mark.parametrize("variant", AS_INSTALLED)
def test_fit_check_predicts_exactly_what_the_stand_in_prints(variant, tmp_path):
    config = VARIANTS[variant]()
    render_sketch(config, tmp_path / "tinyml_sketch")
    result = ArduinoCli(STAND_IN).compile(tmp_path / "tinyml_sketch", FQBN, tmp_path / "b",
                                          Deadline(60))
    fit = fit_check(analyze(config.model), NANO, config.arena_bytes,
                    vectors=len(config.input_vectors), labels=config.labels,
                    camera=config.input_source == "camera")
    assert result.text_bytes == fit.flash_needed_bytes
    assert result.data_bytes == fit.ram_needed_bytes - NANO.ram_reserve_bytes
    # and the image the board gets is never longer than that build (+ bossac's 8 bytes)
    blob = (tmp_path / "b" / "tinyml_sketch.ino.bin").read_bytes()
    assert len(blob) == result.text_bytes + 8
    assert image.unpack(blob).model == config.model


def test_many_vectors_on_an_image_model_install_and_run(make_driver):
    """The issue's case, at the template's vector limit: 20 person_detect vectors (184 KB).
    Before, the image held them as JSON floats (about 4 MB) and the bootloader refused it."""
    n = 96 * 96
    vectors = tuple(tuple(((i + k) % 7) / 7.0 - 0.4 for i in range(n)) for k in range(20))
    driver = make_driver()
    report = driver.install(InstallRequest(model=PERSON, labels=("no", "yes"),
                                           input_vectors=vectors), Deadline(120))
    fit = report.detail["fit"]
    assert fit["vector_bytes"] == 20 * n
    assert report.detail["build"]["text_bytes"] == fit["flash_needed_bytes"]
    blob = (driver._board_dir / "flash.bin").read_bytes()
    assert len(blob) == fit["flash_needed_bytes"] + 8 <= board_mod.FLASH_BYTES
    assert len(image.unpack(blob).vectors) == 20
    lines: list = []
    driver.start_observing(lines.append)
    try:
        seen = wait_until(lambda: [x for x in lines if isinstance(x, InferenceLine)], 20)
    finally:
        driver.stop_observing()
    assert seen and seen[0].label in ("no", "yes")


def test_vectors_that_do_not_fit_are_refused_by_the_fit_check_with_the_numbers(
        make_driver, compiles):
    """A model that fits alone but not with its vectors: fit_flash at fit_check, every
    number in the error, nothing compiled."""
    sizes = NANO.sizes
    rest = sizes.predict(model_bytes=0, ops=("FULLY_CONNECTED",), arena_bytes=0).text_bytes
    weights = (NANO.flash_bytes - rest - 8_000) // 2
    data = build_model(["FULLY_CONNECTED"] * 2, weight_bytes=weights, width=64)
    report = analyze(data)
    assert fit_check(report, NANO).fits  # alone it fits
    vectors = tuple(tuple(0.0 for _ in range(64)) for _ in range(200))  # 12,800 B
    with pytest.raises(FitError) as info:
        make_driver().install(InstallRequest(model=data, input_vectors=vectors,
                                             arena_bytes=4096), Deadline(30))
    err = info.value
    assert err.code == "fit_flash"
    assert err.detail["vector_bytes"] == 200 * 64
    assert err.detail["flash_needed_bytes"] > err.detail["flash_limit_bytes"] == 983_040
    assert "test vectors 12800 B" in err.message
    assert compiles() == 0


def test_a_bootloader_refusal_reaches_the_error_message(tmp_path: Path):
    """An image the bootloader refuses: the error says so, not 'found no board'."""
    ports = tmp_path / "ports"
    proc = start_board(ports, tmp_path / "state", "REFUSE01")
    try:
        from hal.arduino import discovery

        port = discovery.find_board("REFUSE01", ports, mode="sketch", include_usb=False)
        build = tmp_path / "build"
        build.mkdir()
        (build / "tinyml_sketch.ino.bin").write_bytes(b"\0" * (board_mod.FLASH_BYTES + 4096))
        cli = ArduinoCli(STAND_IN, env={"TINYML_VIRTUAL_PORTS": str(ports)})
        with pytest.raises(DeviceError) as info:
            cli.upload(port.device, FQBN, build, Deadline(60))
    finally:
        stop_board(proc)
    err = info.value
    assert err.code == "upload_failed"
    assert "image too big for flash" in err.message
    assert "found no board" not in err.message
    assert "ERASE" in err.detail["bootloader"]


def test_camera_ram_is_counted_by_the_fit_check():
    base = replace(VARIANTS["person_vectors"](), input_vectors=())
    report = analyze(base.model)
    plain = fit_check(report, NANO, base.arena_bytes)
    camera = fit_check(report, NANO, base.arena_bytes, camera=True)
    frame_and_table = NANO.sizes.camera_ram + 256
    assert camera.ram_needed_bytes - plain.ram_needed_bytes == frame_and_table
    assert frame_and_table >= 176 * 144 + 256
    assert camera.flash_needed_bytes - plain.flash_needed_bytes == NANO.sizes.camera_flash


def test_the_image_stores_vectors_as_the_sketch_does_and_rejects_bad_lengths():
    vectors = (b"\x01\x02\x03", b"\x04\x05\x06")
    blob = image.pack(b"model", {"config": {}}, total_bytes=400, vectors=vectors)
    assert len(blob) == 400 and image.unpack(blob).vectors == vectors
    with pytest.raises(ValueError):  # never longer than the build it stands for
        image.pack(b"model", {"config": {}}, total_bytes=20, vectors=vectors)
    with pytest.raises(ValueError):
        image.pack(b"model", {}, vectors=(b"ab", b"abc"))
    bad = blob.replace(b'"vector_count":2', b'"vector_count":4')
    with pytest.raises(image.ImageError):
        image.unpack(bad)
    huge = blob.replace(b'"vectors_len":6', b'"vectors_len":9999999')
    with pytest.raises(image.ImageError):
        image.unpack(huge)
