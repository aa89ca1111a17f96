"""Board profiles (data in ``boards.toml``) and the static fit check."""

from __future__ import annotations

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
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
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
    report: ModelReport, profile: BoardProfile, arena_bytes: int | None = None
) -> FitResult:
    """Static fit of ``report`` on ``profile``: model flash + baseline against flash, and
    arena + baseline RAM + reserve against RAM. ``arena_bytes`` overrides the estimate
    (with margin). Takes microseconds: run it before anything is compiled."""
    arena = arena_bytes if arena_bytes is not None else profile.arena_for(
        report.arena_estimate_bytes
    )
    flash_needed = profile.baseline_flash_bytes + report.size_bytes
    ram_needed = profile.baseline_ram_bytes + arena + profile.ram_reserve_bytes
    reasons = []
    flash_margin = ram_margin = None
    if report.size_bytes > profile.max_model_bytes:
        reasons.append(
            f"model of {report.size_bytes} B exceeds the {profile.max_model_bytes} B model limit"
        )
    if profile.flash_bytes is not None:
        flash_margin = profile.flash_bytes - flash_needed
        if flash_margin < 0:
            reasons.append(
                f"flash: model {report.size_bytes} B + baseline {profile.baseline_flash_bytes} B"
                f" = {flash_needed} B > {profile.flash_bytes} B available"
            )
    if profile.ram_bytes is not None:
        ram_margin = profile.ram_bytes - ram_needed
        if ram_margin < 0:
            reasons.append(
                f"RAM: arena {arena} B + baseline {profile.baseline_ram_bytes} B + reserve "
                f"{profile.ram_reserve_bytes} B = {ram_needed} B > {profile.ram_bytes} B available"
            )
    return FitResult(
        board=profile.name,
        fits=not reasons,
        model_flash_bytes=report.size_bytes,
        arena_bytes=arena,
        baseline_flash_bytes=profile.baseline_flash_bytes,
        baseline_ram_bytes=profile.baseline_ram_bytes,
        ram_reserve_bytes=profile.ram_reserve_bytes,
        flash_needed_bytes=flash_needed,
        flash_limit_bytes=profile.flash_bytes,
        ram_needed_bytes=ram_needed,
        ram_limit_bytes=profile.ram_bytes,
        flash_margin_bytes=flash_margin,
        ram_margin_bytes=ram_margin,
        reasons=tuple(reasons),
    )
