"""The model report: what every part of the system knows about a ``.tflite`` file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TensorInfo:
    """An input or output tensor as a target sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy-style name: "int8", "uint8", "float32", "int16", "int32"
    scale: float | None = None  # quantisation; None for float tensors
    zero_point: int | None = None

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= max(int(d), 1)
        return n


@dataclass(frozen=True)
class ModelReport:
    """Result of :func:`hal.model.analyze`. Immutable; ``to_dict()`` is the JSON form."""

    sha256: str
    size_bytes: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    ops: tuple[str, ...]  # builtin op names ("CONV_2D") or "CUSTOM:<name>", sorted, unique
    int8: bool  # every activation tensor and every input/output is int8 (weights int8/int32)
    arena_estimate_bytes: int  # activation plan + interpreter allowance, see hal.model.planner
    activation_bytes: int  # the greedy plan's "head" alone
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # The same estimate for the Nano 33 BLE's 32-bit build (Cortex-M4, CMSIS-NN kernels):
    # what its boot line's "used" will say. arena_estimate_bytes (the 64-bit host figure) is
    # never smaller, so the arena compiled from it allocates on both (tests/firmware/qemu).
    arena_estimate_mcu_bytes: int = 0

    @property
    def sha_prefix(self) -> str:
        """The prefix devices announce in boot and status lines."""
        return self.sha256[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [asdict(t) for t in self.inputs]
        data["outputs"] = [asdict(t) for t in self.outputs]
        data["ops"] = list(self.ops)
        data["warnings"] = list(self.warnings)
        return data
