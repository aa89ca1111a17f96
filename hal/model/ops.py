"""Which ops a target can run, and the ``MicroMutableOpResolver`` call that registers each.

The table lists the builtin ops of the Arduino TFLM library (``Arduino_TensorFlowLite``, as
shipped by tensorflow/tflite-micro-arduino-examples) with the ``MicroMutableOpResolver`` method
that adds each one. The sketch renderer turns a model's op list into exactly those calls
(:func:`resolver_methods`), so the sketch links only the kernels the model needs (an
``AllOpsResolver`` costs ~200 KB more flash).

Op names are the ones :class:`hal.model.ModelReport` uses: the schema's builtin operator name
(``"CONV_2D"``) or ``"CUSTOM:<custom_code>"`` for custom ops.
"""

from __future__ import annotations

from collections.abc import Iterable

from hal.errors import InputError

# Builtin op name -> MicroMutableOpResolver method of the Arduino TFLM library.
TFLM_BUILTIN_OPS: dict[str, str] = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast",
    "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "COS": "AddCos",
    "CUMSUM": "AddCumSum",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "ELU": "AddElu",
    "EQUAL": "AddEqual",
    "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill",
    "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog",
    "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad",
    "MUL": "AddMul",
    "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable",
    "REDUCE_MAX": "AddReduceMax",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "ROUND": "AddRound",
    "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape",
    "SIN": "AddSin",
    "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "SVDF": "AddSvdf",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
}

# Custom ops the Arduino library ships kernels for. ``ethos-u`` is absent on purpose: its
# registration is null without an Ethos-U NPU, so a Cortex-M4 cannot run a Vela model. The
# TFLM "signal" ops (audio front end) are not in the Arduino library either.
TFLM_CUSTOM_OPS: dict[str, str] = {
    "CUSTOM:CIRCULAR_BUFFER": "AddCircularBuffer",
    "CUSTOM:TFLite_Detection_PostProcess": "AddDetectionPostprocess",
}

# Custom ops that LiteRT's builtin resolver registers (every builtin op is available there).
LITERT_CUSTOM_OPS = frozenset(
    {"CUSTOM:TFLite_Detection_PostProcess", "CUSTOM:Mfcc", "CUSTOM:AudioSpectrogram"}
)


def resolver_method(op: str) -> str | None:
    """The ``MicroMutableOpResolver`` method for ``op``, or None if the library lacks it."""
    return TFLM_BUILTIN_OPS.get(op) or TFLM_CUSTOM_OPS.get(op)


def resolver_methods(ops: Iterable[str]) -> list[str]:
    """The resolver calls (method names, e.g. ``"AddConv2D"``) registering exactly ``ops``,
    in the order given, without duplicates. The resolver's template size is ``len(result)``.

    Raises ``InputError("model_unsupported_ops")`` when an op has no TFLM kernel.
    """
    methods: list[str] = []
    missing: list[str] = []
    for op in ops:
        method = resolver_method(op)
        if method is None:
            if op not in missing:
                missing.append(op)
        elif method not in methods:
            methods.append(method)
    if missing:
        raise InputError(
            "model_unsupported_ops",
            f"the Arduino TFLM library has no kernel for: {', '.join(missing)}",
            unsupported=missing,
            runtime="tflite-micro (Arduino)",
        )
    return methods


def unsupported_ops(ops: Iterable[str], board_profile) -> list[str]:
    """The ops of ``ops`` that ``board_profile`` cannot run (in the order given, unique).

    ``board_profile`` is a :class:`hal.boards.BoardProfile` or a profile name. A
    microcontroller (kind ``"mcu"``) runs the Arduino TFLM library (:data:`TFLM_BUILTIN_OPS`
    and :data:`TFLM_CUSTOM_OPS`); a Linux target runs LiteRT, which has every builtin op but
    only a few custom ones (:data:`LITERT_CUSTOM_OPS`).
    """
    if isinstance(board_profile, str):
        from hal.boards import get_profile

        board_profile = get_profile(board_profile)
    out: list[str] = []
    for op in ops:
        if board_profile.kind == "mcu":
            ok = resolver_method(op) is not None
        else:
            ok = not op.startswith("CUSTOM:") or op in LITERT_CUSTOM_OPS
        if not ok and op not in out:
            out.append(op)
    return out
