"""Build small synthetic ``.tflite`` flatbuffers for tests and benchmarks (no TensorFlow).

The models follow the TFLite schema but are not meant to run: a chain of ops, each reading the
previous activation (and an optional constant weight tensor) and writing the next.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import flatbuffers
from tflite.BuiltinOperator import BuiltinOperator

# ``tflite/__init__`` star-imports its modules, shadowing them with the classes: fetch the
# modules (which hold the builder functions) explicitly.
B = importlib.import_module("tflite.Buffer")
M = importlib.import_module("tflite.Model")
OP = importlib.import_module("tflite.Operator")
OC = importlib.import_module("tflite.OperatorCode")
Q = importlib.import_module("tflite.QuantizationParameters")
SG = importlib.import_module("tflite.SubGraph")
T = importlib.import_module("tflite.Tensor")

INT8 = 9
FLOAT32 = 0


def _int_vector(b: flatbuffers.Builder, start, values: Sequence[int]) -> int:
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(v)
    return b.EndVector()


def _offset_vector(b: flatbuffers.Builder, start, offsets: Sequence[int]) -> int:
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def build_model(
    ops: Sequence[str] = ("FULLY_CONNECTED",),
    *,
    subgraphs: int = 1,
    dtype: int = INT8,
    width: int = 16,
    weight_bytes: int = 0,
    description: str = "synthetic test model",
) -> bytes:
    """A model whose each subgraph chains ``ops`` (names like ``"CONV_2D"`` or
    ``"CUSTOM:ethos-u"``) over ``[1, width]`` activations of ``dtype``. With
    ``weight_bytes`` every op also reads a constant tensor holding that many bytes."""
    b = flatbuffers.Builder(1024 + weight_bytes * len(ops) * subgraphs)
    names = list(dict.fromkeys(ops))

    # buffers: 0 is the empty sentinel, then one per weight tensor
    buffer_offsets = []
    b.StartVector(1, 0, 1)
    empty = b.EndVector()
    B.BufferStart(b)
    B.BufferAddData(b, empty)
    buffer_offsets.append(B.BufferEnd(b))
    n_weights = len(ops) * subgraphs if weight_bytes else 0
    for i in range(n_weights):
        data = b.CreateByteVector(bytes((i + k) % 251 for k in range(weight_bytes)))
        B.BufferStart(b)
        B.BufferAddData(b, data)
        buffer_offsets.append(B.BufferEnd(b))

    codes = []
    for name in names:
        custom = b.CreateString(name.split(":", 1)[1]) if name.startswith("CUSTOM:") else None
        code = 32 if custom is not None else getattr(BuiltinOperator, name)
        OC.OperatorCodeStart(b)
        OC.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        OC.OperatorCodeAddBuiltinCode(b, code)
        if custom is not None:
            OC.OperatorCodeAddCustomCode(b, custom)
        OC.OperatorCodeAddVersion(b, 1)
        codes.append(OC.OperatorCodeEnd(b))

    def tensor(name: str, shape: Sequence[int], ttype: int, buffer: int) -> int:
        name_off = b.CreateString(name)
        shape_off = _int_vector(b, T.TensorStartShapeVector, shape)
        quant = None
        if ttype == INT8:
            Q.QuantizationParametersStartScaleVector(b, 1)
            b.PrependFloat32(0.05)
            scale = b.EndVector()
            Q.QuantizationParametersStartZeroPointVector(b, 1)
            b.PrependInt64(-3)
            zp = b.EndVector()
            Q.QuantizationParametersStart(b)
            Q.QuantizationParametersAddScale(b, scale)
            Q.QuantizationParametersAddZeroPoint(b, zp)
            quant = Q.QuantizationParametersEnd(b)
        T.TensorStart(b)
        T.TensorAddShape(b, shape_off)
        T.TensorAddType(b, ttype)
        T.TensorAddBuffer(b, buffer)
        T.TensorAddName(b, name_off)
        if quant is not None:
            T.TensorAddQuantization(b, quant)
        return T.TensorEnd(b)

    subgraph_offsets = []
    weight = 1
    for s in range(subgraphs):
        # tensors: act0, then per op its output activation and (optionally) its weights
        tensors = [tensor(f"s{s}_act0", [1, width], dtype, 0)]
        act, wts = [0], []
        for i in range(len(ops)):
            act.append(len(tensors))
            tensors.append(tensor(f"s{s}_act{i + 1}", [1, width], dtype, 0))
            if weight_bytes:
                wts.append(len(tensors))
                tensors.append(tensor(f"s{s}_w{i}", [weight_bytes], INT8, weight))
                weight += 1
        op_offsets = []
        for i, name in enumerate(ops):
            ins = [act[i]] + ([wts[i]] if wts else [])
            in_vec = _int_vector(b, OP.OperatorStartInputsVector, ins)
            out_vec = _int_vector(b, OP.OperatorStartOutputsVector, [act[i + 1]])
            OP.OperatorStart(b)
            OP.OperatorAddOpcodeIndex(b, names.index(name))
            OP.OperatorAddInputs(b, in_vec)
            OP.OperatorAddOutputs(b, out_vec)
            op_offsets.append(OP.OperatorEnd(b))
        t_vec = _offset_vector(b, SG.SubGraphStartTensorsVector, tensors)
        o_vec = _offset_vector(b, SG.SubGraphStartOperatorsVector, op_offsets)
        in_vec = _int_vector(b, SG.SubGraphStartInputsVector, [0])
        out_vec = _int_vector(b, SG.SubGraphStartOutputsVector, [act[-1]])
        name = b.CreateString(f"subgraph{s}")
        SG.SubGraphStart(b)
        SG.SubGraphAddTensors(b, t_vec)
        SG.SubGraphAddInputs(b, in_vec)
        SG.SubGraphAddOutputs(b, out_vec)
        SG.SubGraphAddOperators(b, o_vec)
        SG.SubGraphAddName(b, name)
        subgraph_offsets.append(SG.SubGraphEnd(b))

    codes_vec = _offset_vector(b, M.ModelStartOperatorCodesVector, codes)
    sub_vec = _offset_vector(b, M.ModelStartSubgraphsVector, subgraph_offsets)
    buf_vec = _offset_vector(b, M.ModelStartBuffersVector, buffer_offsets)
    desc = b.CreateString(description)
    M.ModelStart(b)
    M.ModelAddVersion(b, 3)
    M.ModelAddOperatorCodes(b, codes_vec)
    M.ModelAddSubgraphs(b, sub_vec)
    M.ModelAddDescription(b, desc)
    M.ModelAddBuffers(b, buf_vec)
    b.Finish(M.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())
