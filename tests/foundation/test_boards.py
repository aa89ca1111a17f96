"""Board profiles and the static fit check."""

from __future__ import annotations

import pytest

from hal.boards import fit_check, get_profile, label_flash_bytes, profiles
from hal.errors import FitError, InputError
from hal.model.report import ModelReport


def _report(size: int, arena: int) -> ModelReport:
    return ModelReport(
        sha256="ab" * 32,
        size_bytes=size,
        inputs=(),
        outputs=(),
        ops=("FULLY_CONNECTED",),
        int8=True,
        arena_estimate_bytes=arena,
        activation_bytes=arena,
    )


def test_nano_profile_has_the_documented_limits():
    nano = get_profile("nano33ble")
    assert nano.fqbn == "arduino:mbed_nano:nano33ble"
    assert (nano.flash_bytes, nano.ram_bytes) == (983_040, 262_144)
    assert nano.usb_vid == 0x2341
    assert 0x805A in nano.usb_pids_sketch and 0x005A in nano.usb_pids_bootloader
    assert nano.touch_1200bps


def test_pi_profiles_list_their_runtimes():
    assert get_profile("rpi64").runtimes == ("ai_edge_litert", "tflite_runtime")
    assert get_profile("rpi32").runtimes == ("tflite_runtime",)  # LiteRT has no armv7l wheels
    assert {"nano33ble", "rpi64", "rpi32"} <= set(profiles())


def test_unknown_board_is_an_input_error_listing_the_known_ones():
    with pytest.raises(InputError) as info:
        get_profile("uno; rm -rf /")
    assert info.value.code == "unknown_board"
    assert "nano33ble" in info.value.detail["known"]


def test_small_model_fits_with_every_number():
    nano = get_profile("nano33ble")
    result = fit_check(_report(2_704, 1_504), nano)
    assert result.fits
    assert result.arena_bytes == nano.arena_for(1_504) >= 1_504
    assert result.arena_bytes % 16 == 0
    predicted = nano.sizes.predict(model_bytes=2_704, ops=("FULLY_CONNECTED",),
                                   arena_bytes=result.arena_bytes)
    assert result.flash_needed_bytes == predicted.text_bytes
    assert result.ram_needed_bytes == predicted.data_bytes + nano.ram_reserve_bytes
    assert result.baseline_flash_bytes == predicted.text_bytes - 2_704
    assert result.predicted["flash_parts"]["model"] == -(-2_704 // 16) * 16
    assert result.flash_margin_bytes == nano.flash_bytes - result.flash_needed_bytes
    result.raise_if_not_fit()  # no exception


def test_size_model_is_the_sum_of_its_documented_parts():
    sizes = get_profile("nano33ble").sizes
    p = sizes.predict(model_bytes=1000, ops=("CONV_2D", "CONV_2D", "NOT_MEASURED"),
                      arena_bytes=1001, vector_bytes=7, label_bytes=3, camera=True,
                      input_dtype="float32")
    assert p.text_bytes == (sizes.empty_sketch_flash + sizes.sketch_flash
                            + sizes.op_flash["CONV_2D"] + sizes.op_flash_default
                            - sizes.op_shared_flash  # two distinct ops: shared once
                            + 1008 + 7 + 3 + sizes.camera_flash)
    assert p.data_bytes == (sizes.empty_sketch_ram + sizes.sketch_ram + 1008
                            + sizes.op_ram + sizes.camera_ram + 1024)
    assert sum(p.flash_parts.values()) == p.text_bytes
    assert sum(p.ram_parts.values()) == p.data_bytes
    # the mbed OS share is the published empty sketch minus our mbed-less link of it
    assert sizes.mbed_flash_bytes == sizes.empty_sketch_flash - sizes.mbedless_empty_flash > 0
    assert sizes.mbed_ram_bytes == sizes.empty_sketch_ram - sizes.mbedless_empty_ram > 0


def test_labels_are_counted_as_the_sketch_stores_them():
    assert label_flash_bytes(()) == 0
    assert label_flash_bytes(("yes", "no")) == (3 + 5) + (2 + 5)
    assert label_flash_bytes(('say "hi"',)) == len('say \\"hi\\"') + 5
    assert label_flash_bytes(("\u00e9",)) == len("\\u00e9") + 5


def test_model_too_big_for_flash_fails_with_numbers():
    result = fit_check(_report(900_000, 10_000), get_profile("nano33ble"))
    assert not result.fits and result.flash_margin_bytes < 0
    with pytest.raises(FitError) as info:
        result.raise_if_not_fit()
    assert info.value.code == "fit_flash"
    assert info.value.detail["flash_needed_bytes"] == result.flash_needed_bytes
    assert "900000" in info.value.message


def test_arena_too_big_for_ram_fails_as_fit_ram():
    result = fit_check(_report(50_000, 250_000), get_profile("nano33ble"))
    assert not result.fits and result.ram_margin_bytes < 0 and result.flash_margin_bytes > 0
    with pytest.raises(FitError) as info:
        result.raise_if_not_fit()
    assert info.value.code == "fit_ram"
    assert info.value.detail["ram_limit_bytes"] == 262_144


def test_arena_override_replaces_the_estimate():
    result = fit_check(_report(2_704, 1_504), get_profile("nano33ble"), arena_bytes=300_000)
    assert result.arena_bytes == 300_000 and not result.fits


def test_linux_target_has_no_static_flash_or_ram_limit():
    result = fit_check(_report(10_000_000, 5_000_000), get_profile("rpi64"))
    assert result.fits and result.flash_limit_bytes is None and result.ram_limit_bytes is None
