"""Board profiles (data in ``boards.toml``), the size model of an MCU build, and the static
fit check.

The size model (:class:`SizeModel`, the ``[<board>.sizes]`` table) predicts what arduino-cli
will print for a rendered sketch -- ``text`` (flash) and ``data`` (static RAM) -- from measured
parts; its derivation is written next to the numbers in ``boards.toml``. The fit check
(:func:`fit_check`) and the stand-in arduino-cli (:mod:`hal.virtual.arduino_cli`) both use
:meth:`SizeModel.predict`, so a build the fit check accepts is one the stand-in links and the
virtual board's flash takes, and one it refuses is refused before anything is compiled.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from hal.errors import FitError, InputError
from hal.model.report import ModelReport

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_PROFILES_FILE = Path(__file__).with_name("boards.toml")


@dataclass(frozen=True)
class SizePrediction:
    """Predicted arduino-cli figures of one build, with the parts they are made of."""

    text_bytes: int
    data_bytes: int
    flash_parts: dict[str, int]
    ram_parts: dict[str, int]
    mbed_flash_bytes: int  # the mbed OS share inside text_bytes (not measurable here)
    mbed_ram_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_flash_bytes(labels: tuple[str, ...] | list[str]) -> int:
    """Flash the sketch's label table takes: each label's JSON-escaped ASCII text (what the
    sketch stores and prints), its NUL and a 4-byte pointer."""
    return sum(len(json.dumps(x, ensure_ascii=True)) - 2 + 1 + 4 for x in labels)


def vector_flash_bytes(count: int, elements: int, dtype: str) -> int:
    """Flash the embedded test vectors take: one input tensor's bytes per vector."""
    return count * elements * (4 if dtype == "float32" else 1)


@dataclass(frozen=True)
class SizeModel:
    """Flash and static RAM of a rendered sketch from measured parts (bytes). See the
    derivation in ``boards.toml``; every part is one figure measured from real links."""

    empty_sketch_flash: int  # published arduino-cli figure of an empty sketch (with mbed OS)
    empty_sketch_ram: int
    mbedless_empty_flash: int  # our link of the same empty sketch without libmbed.a
    mbedless_empty_ram: int
    sketch_flash: int  # the template + TFLM's fixed part (no op), above the empty sketch
    sketch_ram: int
    op_flash: dict[str, int]  # one registered op's kernel code
    op_flash_default: int  # an op not measured (the largest measured, rounded up)
    op_shared_flash: int  # kernel helpers each op beyond the first shares with the others
    op_ram: int  # the op resolver's static table, per op beyond the first
    model_align: int  # the model array is alignas(16)
    camera_flash: int  # Arduino_OV767X + the camera code of the template
    camera_ram: int  # the 176x144 frame + the library's statics (pixel table separate)
    arena_align: int = 16

    @property
    def mbed_flash_bytes(self) -> int:
        """mbed OS's share of an empty sketch: the published figure minus our link."""
        return self.empty_sketch_flash - self.mbedless_empty_flash

    @property
    def mbed_ram_bytes(self) -> int:
        return self.empty_sketch_ram - self.mbedless_empty_ram

    def predict(
        self,
        *,
        model_bytes: int,
        ops: tuple[str, ...] | list[str],
        arena_bytes: int,
        vector_bytes: int = 0,
        label_bytes: int = 0,
        camera: bool = False,
        input_dtype: str = "int8",
    ) -> SizePrediction:
        """The ``text`` and ``data`` arduino-cli would print for this sketch."""
        a = self.model_align
        flash = {
            "empty_sketch": self.empty_sketch_flash,
            "sketch_and_tflm": self.sketch_flash,
            "ops": sum(self.op_flash.get(op, self.op_flash_default) for op in set(ops))
            - self.op_shared_flash * max(0, len(set(ops)) - 1),
            "model": (model_bytes + a - 1) // a * a,
            "vectors": vector_bytes,
            "labels": label_bytes,
            "camera": self.camera_flash if camera else 0,
        }
        table = 256 * (4 if input_dtype == "float32" else 1)
        b = self.arena_align
        ram = {
            "empty_sketch": self.empty_sketch_ram,
            "sketch_and_tflm": self.sketch_ram,
            "arena": (arena_bytes + b - 1) // b * b,
            "ops": self.op_ram * max(0, len(set(ops)) - 1),
            "camera": self.camera_ram + table if camera else 0,
        }
        return SizePrediction(
            text_bytes=sum(flash.values()),
            data_bytes=sum(ram.values()),
            flash_parts=flash,
            ram_parts=ram,
            mbed_flash_bytes=self.mbed_flash_bytes,
            mbed_ram_bytes=self.mbed_ram_bytes,
        )


@dataclass(frozen=True)
class BoardProfile:
    """Facts about one kind of target. MCU fields are None for Linux targets and vice versa."""

    name: str
    title: str
    kind: str  # "mcu" or "linux"
    max_model_bytes: int
    fqbn: str | None = None
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    baseline_flash_bytes: int = 0
    baseline_ram_bytes: int = 0
    ram_reserve_bytes: int = 0
    arena_margin: float = 0.0
    arena_min_headroom_bytes: int = 0
    requires_int8: bool = False
    usb_vid: int | None = None
    usb_pids_sketch: tuple[int, ...] = ()
    usb_pids_bootloader: tuple[int, ...] = ()
    touch_1200bps: bool = False
    arch: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()
    sizes: SizeModel | None = None  # MCU boards: the build size model
    hotswap_slot_bytes: int = 0  # 0: no hot-swap firmware for this board
    hotswap_arena_bytes: int = 0
    hotswap_flash_per_op_bytes: int = 0

    def arena_for(self, estimate_bytes: int) -> int:
        """The arena to compile in: the estimate plus this board's margin (at least
        ``arena_min_headroom_bytes``), rounded up to 16 bytes."""
        headroom = max(estimate_bytes * self.arena_margin, self.arena_min_headroom_bytes)
        return int(math.ceil((estimate_bytes + headroom) / 16.0) * 16)


@cache
def profiles() -> dict[str, BoardProfile]:
    """Every known profile by name."""
    raw = tomllib.loads(_PROFILES_FILE.read_text())
    out = {}
    for name, data in raw.items():
        sizes = data.pop("sizes", None)
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if sizes is not None:
            data["sizes"] = SizeModel(**sizes)
        out[name] = BoardProfile(name=name, **data)
    return out


def get_profile(name: str) -> BoardProfile:
    """The profile called ``name``; ``InputError("unknown_board")`` if there is none."""
    try:
        return profiles()[name]
    except KeyError:
        raise InputError(
            "unknown_board", f"no board profile named {name!r}", known=sorted(profiles())
        ) from None


@dataclass(frozen=True)
class FitResult:
    """Every number of a fit check. ``fits`` is False when any limit is exceeded."""

    board: str
    fits: bool
    model_flash_bytes: int
    arena_bytes: int
    baseline_flash_bytes: int
    baseline_ram_bytes: int
    ram_reserve_bytes: int
    flash_needed_bytes: int
    flash_limit_bytes: int | None
    ram_needed_bytes: int
    ram_limit_bytes: int | None
    flash_margin_bytes: int | None  # limit - needed; negative when it does not fit
    ram_margin_bytes: int | None
    reasons: tuple[str, ...] = field(default_factory=tuple)
    # The predicted build (MCU boards with a size model): the parts behind the needs above.
    vector_bytes: int = 0
    label_bytes: int = 0
    camera: bool = False
    predicted: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data

    def raise_if_not_fit(self) -> None:
        """Raise a ``FitError`` (``fit_flash`` before ``fit_ram``) carrying every number."""
        if self.fits:
            return
        code = "fit_flash" if self.flash_margin_bytes is not None and self.flash_margin_bytes < 0 \
            else "fit_ram"
        raise FitError(code, "; ".join(self.reasons), **self.to_dict())


def fit_check(
    report: ModelReport,
    profile: BoardProfile,
    arena_bytes: int | None = None,
    *,
    vectors: int = 0,
    labels: tuple[str, ...] | list[str] = (),
    camera: bool = False,
) -> FitResult:
    """Static fit of ``report`` on ``profile``, before anything is compiled (microseconds).

    With a size model (the Nano 33 BLE) the needs are the predicted build: ``text`` (mbed OS
    share, template, TFLM, the model's ops, model, ``vectors`` test vectors, ``labels``,
    camera code) against flash and ``data`` (the same with the arena and, for ``camera``, the
    frame buffer) plus the stack/heap reserve against RAM -- the figures the stand-in
    arduino-cli prints for the same sketch. Without one: model + baseline against flash and
    arena + baseline + reserve against RAM. ``arena_bytes`` overrides the estimate (with
    margin)."""
    arena = arena_bytes if arena_bytes is not None else profile.arena_for(
        report.arena_estimate_bytes
    )
    dtype = report.inputs[0].dtype if report.inputs else "int8"
    elements = report.inputs[0].elements if report.inputs else 0
    vector_bytes = vector_flash_bytes(0 if camera else vectors, elements, dtype)
    label_bytes = label_flash_bytes(labels)
    predicted = None
    if profile.sizes is not None:
        prediction = profile.sizes.predict(
            model_bytes=report.size_bytes, ops=report.ops, arena_bytes=arena,
            vector_bytes=vector_bytes, label_bytes=label_bytes, camera=camera,
            input_dtype=dtype)
        predicted = prediction.to_dict()
        flash_needed = prediction.text_bytes
        ram_needed = prediction.data_bytes + profile.ram_reserve_bytes
        baseline_flash = flash_needed - report.size_bytes
        baseline_ram = prediction.data_bytes - arena
    else:
        baseline_flash = profile.baseline_flash_bytes
        baseline_ram = profile.baseline_ram_bytes
        flash_needed = baseline_flash + report.size_bytes + vector_bytes + label_bytes
        ram_needed = baseline_ram + arena + profile.ram_reserve_bytes
    reasons = []
    flash_margin = ram_margin = None
    if report.size_bytes > profile.max_model_bytes:
        reasons.append(
            f"model of {report.size_bytes} B exceeds the {profile.max_model_bytes} B model limit"
        )
    if profile.flash_bytes is not None:
        flash_margin = profile.flash_bytes - flash_needed
        if flash_margin < 0:
            extra = (f" + test vectors {vector_bytes} B" if vector_bytes else "") + (
                f" + labels {label_bytes} B" if label_bytes else "")
            reasons.append(
                f"flash: model {report.size_bytes} B{extra} + the rest of the build "
                f"{flash_needed - report.size_bytes - vector_bytes - label_bytes} B"
                f" = {flash_needed} B > {profile.flash_bytes} B available"
            )
    if profile.ram_bytes is not None:
        ram_margin = profile.ram_bytes - ram_needed
        if ram_margin < 0:
            reasons.append(
                f"RAM: arena {arena} B + the rest of the build {baseline_ram} B + reserve "
                f"{profile.ram_reserve_bytes} B = {ram_needed} B > {profile.ram_bytes} B available"
            )
    return FitResult(
        board=profile.name,
        fits=not reasons,
        model_flash_bytes=report.size_bytes,
        arena_bytes=arena,
        baseline_flash_bytes=baseline_flash,
        baseline_ram_bytes=baseline_ram,
        ram_reserve_bytes=profile.ram_reserve_bytes,
        flash_needed_bytes=flash_needed,
        flash_limit_bytes=profile.flash_bytes,
        ram_needed_bytes=ram_needed,
        ram_limit_bytes=profile.ram_bytes,
        flash_margin_bytes=flash_margin,
        ram_margin_bytes=ram_margin,
        reasons=tuple(reasons),
        vector_bytes=vector_bytes,
        label_bytes=label_bytes,
        camera=camera,
        predicted=predicted,
    )
