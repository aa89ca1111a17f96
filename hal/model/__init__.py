"""TFLite model analysis: validation, tensors, ops, RAM estimate, measured arena."""

from hal.model.report import ModelReport, TensorInfo

__all__ = ["ModelReport", "TensorInfo"]
