"""TFLite model analysis: validation, tensors, ops, RAM estimate, measured arena.

``analyze(data, board=...)`` is the entry point (see :mod:`hal.model.analysis`); the op table
and resolver calls are in :mod:`hal.model.ops`, the arena estimate in
:mod:`hal.model.planner`, and the TFLM-measured arena in :mod:`hal.model.measure`.
"""

from hal.model.analysis import DEFAULT_MAX_BYTES, analyze, analyze_file
from hal.model.ops import resolver_methods, unsupported_ops
from hal.model.report import ModelReport, TensorInfo

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ModelReport",
    "TensorInfo",
    "analyze",
    "analyze_file",
    "resolver_methods",
    "unsupported_ops",
]
