"""Tensor-arena estimate without TensorFlow: what TFLM's ``AllocateTensors()`` will take.

TFLM splits its arena into a *head* (the planned activation memory, reused between tensors
whose lifetimes do not overlap) and a *tail* (persistent interpreter structures). The estimate
is ``head + tail``, for the 64-bit host build with reference kernels -- the figures the
``tflite-micro`` package reports and the README of tests/data/tflm-examples lists -- and, with
``target="cortex-m"``, for the Nano 33 BLE's 32-bit build (smaller structures, CMSIS-NN op
data; measured under QEMU, see :data:`CORTEX_M`). The head is the same on both.

Head (:func:`plan_activations`)
    Every non-constant tensor (its buffer holds no data, it is not a variable) gets a
    lifetime ``[first op writing it, last op reading it]`` -- graph inputs are born at op 0,
    graph outputs live to the last op -- and a size ``prod(shape) * element size`` rounded up
    to 16 bytes (TFLM's buffer alignment). Like TFLM's ``GreedyMemoryPlanner`` the buffers are
    placed largest first, each at the lowest offset where it overlaps no already-placed buffer
    that is alive at the same time (first fit in time x offset); equal sizes are placed in
    descending tensor index, which is the order that reproduces TFLM's plan. Scratch buffers
    that reference kernels request (:func:`scratch_bytes`, e.g. MEAN) are planned with the
    lifetime of their op. ``head = max(offset + size)``; it matches TFLM exactly on every
    example and sample model.

Tail (:func:`interpreter_tail`)::

    tail = TAIL_FIXED                                   488  allocator, graph, subgraph
         + EVAL_TENSOR_BYTES  * tensors                  24  TfLiteEvalTensor per tensor
         + IO_TENSOR_BYTES    * (inputs + outputs)       64  persistent TfLiteTensor per I/O
         + IO_QUANT_BYTES     * quantised I/O tensors    32  affine quantisation + zero point
         + align16(8 * inputs) + align16(8 * outputs)        input / output pointer arrays
         + NODE_BYTES         * ops                      64  NodeAndRegistration
         + sum over ops of align16(KERNEL_DATA[op])          op data from Init/Prepare
         + align16(sum over ops of BUILTIN_DATA[op])         parsed builtin options
         + sum over conv / depthwise conv (and per-channel fully connected) ops of
           2 * align16(4 * output channels)                  multiplier + shift arrays
         + sum of align16(variable tensor bytes)             persistent state

Unknown ops count ``DEFAULT_KERNEL_BYTES`` + ``DEFAULT_BUILTIN_BYTES`` (generous). The
constants were fit to the ``print_allocations()`` breakdown of the TFLM example models
(tests/data/tflm-examples/README.md), the sample models and ~50 single-op models converted
with TensorFlow; on all of them the total is within -0.5% .. +1.3% of TFLM's figure.
Per-model figures: ``bench/bench_analysis.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

ALIGN = 16

# ---- tail constants (64-bit host, reference kernels) ------------------------------------
# Fit to print_allocations() of the TFLM examples, the sample models and single-op models
# converted with TensorFlow (see bench/bench_analysis.py for the per-model error).
TAIL_FIXED = 488  # interpreter, allocator, graph and subgraph bookkeeping
EVAL_TENSOR_BYTES = 24  # TfLiteEvalTensor, one per tensor of the subgraph
IO_TENSOR_BYTES = 64  # persistent TfLiteTensor, one per graph input and output
IO_QUANT_BYTES = 32  # TfLiteAffineQuantization + 1-element zero-point array per quantised I/O
NODE_BYTES = 64  # NodeAndRegistration, one per op
IO_POINTER_BYTES = 8  # the interpreter's arrays of input / output tensor pointers
DEFAULT_KERNEL_BYTES = 64  # op data of ops without a KERNEL_DATA entry (generous)
DEFAULT_BUILTIN_BYTES = 16  # parsed options of ops without a BUILTIN_DATA entry

# Op data a kernel allocates in Init/Prepare (bytes requested; each allocation is rounded up
# to 16). Ops that keep none (RESHAPE, CAST, MINIMUM, TRANSPOSE, ...) are listed with 0.
KERNEL_DATA: dict[str, int] = {
    "ADD": 60,
    "AVERAGE_POOL_2D": 32,
    "CAST": 0,
    "CONCATENATION": 80,
    "CONV_2D": 80,
    "DEPTHWISE_CONV_2D": 80,
    "DEQUANTIZE": 32,
    "DIV": 36,
    "EXPAND_DIMS": 0,
    "FULLY_CONNECTED": 72,
    "HARD_SWISH": 20,
    "LEAKY_RELU": 24,
    "LOGISTIC": 16,
    "MAXIMUM": 0,
    "MAX_POOL_2D": 32,
    "MEAN": 44,
    "MINIMUM": 0,
    "MUL": 36,
    "PAD": 56,
    "QUANTIZE": 32,
    "RELU": 28,
    "RELU6": 8,
    "RESHAPE": 0,
    "RESIZE_NEAREST_NEIGHBOR": 0,
    "SOFTMAX": 80,
    "SQUEEZE": 0,
    "STRIDED_SLICE": 84,
    "SUB": 52,
    "TANH": 16,
    "TRANSPOSE": 0,
    # TFLM "signal" custom ops (audio front end), fit to the audio_preprocessor models
    # (480-sample window, 512-point FFT, 40 channels). Not in the Arduino library.
    "CUSTOM:SignalWindow": 16,
    "CUSTOM:SignalFftAutoScale": 0,
    "CUSTOM:SignalRfft": 2304,
    "CUSTOM:SignalEnergy": 16,
    "CUSTOM:SignalFilterBank": 352,
    "CUSTOM:SignalFilterBankSquareRoot": 0,
    "CUSTOM:SignalFilterBankSpectralSubtraction": 704,
    "CUSTOM:SignalPCAN": 32,
    "CUSTOM:SignalFilterBankLog": 16,
}
# Parsed builtin options (TfLiteConvParams, ...), allocated unaligned in the tail.
BUILTIN_DATA: dict[str, int] = {
    "ADD": 8,
    "AVERAGE_POOL_2D": 40,
    "CAST": 8,
    "CONCATENATION": 8,
    "CONV_2D": 28,
    "DEPTHWISE_CONV_2D": 28,
    "DEQUANTIZE": 0,
    "FULLY_CONNECTED": 32,
    "HARD_SWISH": 0,
    "LEAKY_RELU": 4,
    "LOGISTIC": 0,
    "MAXIMUM": 0,
    "MAX_POOL_2D": 40,
    "MEAN": 25,
    "MINIMUM": 0,
    "MUL": 4,
    "PAD": 0,
    "QUANTIZE": 0,
    "RELU": 0,
    "RELU6": 0,
    "RESHAPE": 36,
    "SOFTMAX": 4,
    "SQUEEZE": 36,
    "STRIDED_SLICE": 24,
    "SUB": 8,
    "TANH": 0,
    "TRANSPOSE": 0,
}
# Conv kernels keep per-output-channel multiplier and shift arrays (int32) whatever the
# type; fully connected only when its weights are quantised per channel.
ALWAYS_PER_CHANNEL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"})
PER_CHANNEL_IF_QUANTIZED_OPS = frozenset({"FULLY_CONNECTED"})


def scratch_bytes(op: PlanOp) -> int:
    """Scratch a reference kernel requests in Prepare (planned in the head for its op)."""
    if op.name == "MEAN":
        # temp index + resolved axis arrays, plus an int32 sum per output for integer types
        return 32 + (align(4 * op.out_elements) if op.quantized else 0)
    return 0


def align(n: int, to: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class PlanTensor:
    """What the planner needs of one tensor."""

    nbytes: int
    constant: bool = False  # its buffer holds data (weights): lives in flash, not the arena
    variable: bool = False  # persistent state (TFLM allocates it in the tail)


@dataclass(frozen=True)
class PlanOp:
    """What the planner needs of one operator."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    out_channels: int = 0  # last dimension of the first output, for per-channel arrays
    quantized: bool = False  # integer kernel (per-channel arrays are kept only then)
    filter_scales: int = 0  # quantisation scales of the weights (input 1); >1 = per-channel
    out_elements: int = 0  # elements of the first output


@dataclass(frozen=True)
class Graph:
    """One subgraph in execution order."""

    tensors: Sequence[PlanTensor]
    ops: Sequence[PlanOp]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    quantized_io: int = 0  # inputs/outputs with affine quantisation


@dataclass(frozen=True)
class ArenaEstimate:
    """The estimate and its parts (bytes)."""

    head: int
    tail: int
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.head + self.tail


def lifetimes(graph: Graph) -> list[tuple[int, int, int]]:
    """``(tensor index, first op, last op)`` of every tensor the head must hold."""
    n_ops = len(graph.ops)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t in graph.inputs:
        first[t] = 0
        last[t] = 0
    for i, op in enumerate(graph.ops):
        for t in op.inputs:
            if t < 0:  # optional input left out
                continue
            first.setdefault(t, 0)  # read before anything wrote it: alive from the start
            last[t] = i
        for t in op.outputs:
            if t < 0:
                continue
            first.setdefault(t, i)
            last[t] = max(last.get(t, i), i)
    for t in graph.outputs:
        first.setdefault(t, 0)
        last[t] = max(n_ops - 1, 0)
    out = []
    for t, f in sorted(first.items()):
        tensor = graph.tensors[t]
        if tensor.constant or tensor.variable:
            continue
        out.append((t, f, last[t]))
    return out


def greedy_plan(buffers: Sequence[tuple[int, int, int]]) -> tuple[int, list[int]]:
    """First-fit placement of ``(size, first, last)`` buffers, largest first.

    Returns ``(head bytes, offsets in input order)``. Sizes must already be aligned.
    """
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i][0], i))
    offsets = [0] * len(buffers)
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last) by offset
    head = 0
    for i in order:
        size, first, last = buffers[i]
        offset = 0
        for p_off, p_size, p_first, p_last in placed:
            if p_last < first or last < p_first:
                continue  # not alive at the same time: may share memory
            if p_off >= offset + size:
                break  # the gap before this buffer is big enough
            offset = max(offset, p_off + p_size)
        offsets[i] = offset
        # keep ``placed`` sorted by offset
        pos = len(placed)
        while pos > 0 and placed[pos - 1][0] > offset:
            pos -= 1
        placed.insert(pos, (offset, size, first, last))
        head = max(head, offset + size)
    return head, offsets


def plan_activations(graph: Graph) -> int:
    """The head: the greedy plan of activations and kernel scratch buffers (bytes)."""
    # Buffers are handed to the planner in descending tensor index (scratch buffers first):
    # with TFLM's stable largest-first sort this reproduces its tie order, and with it the
    # exact head of every example model (ascending order is off on two of them).
    buffers = []
    for i in range(len(graph.ops) - 1, -1, -1):
        scratch = scratch_bytes(graph.ops[i])
        if scratch:
            buffers.append((align(scratch), i, i))
    for t, first, last in sorted(lifetimes(graph), reverse=True):
        buffers.append((align(graph.tensors[t].nbytes), first, last))
    head, _ = greedy_plan(buffers)
    return head


@dataclass(frozen=True)
class TailSizes:
    """Per-structure byte counts of one TFLM build (see the module docstring)."""

    fixed: int
    eval_tensor: int
    io_tensor: int
    io_quant: int
    io_pointer: int
    node: int
    kernel_align: int  # persistent buffers are rounded up to this
    per_channel_ops: frozenset[str]  # ops whose multiplier/shift arrays are always kept
    per_channel_if_quantized: frozenset[str]


# The 64-bit host build with reference kernels (the tflite-micro package).
HOST = TailSizes(TAIL_FIXED, EVAL_TENSOR_BYTES, IO_TENSOR_BYTES, IO_QUANT_BYTES,
                 IO_POINTER_BYTES, NODE_BYTES, ALIGN, ALWAYS_PER_CHANNEL_OPS,
                 PER_CHANNEL_IF_QUANTIZED_OPS)
# The Nano 33 BLE build: 32-bit Cortex-M4, the Arduino library @7948b85 with CMSIS-NN kernels
# and without TF_LITE_STATIC_MEMORY. Measured with RecordingMicroAllocator under QEMU
# (tests/firmware/qemu, HARNESS_RECORD) on every example and sample model: TfLiteEvalTensor
# 12 B, persistent TfLiteTensor 64 B, quantisation 20 B per quantised I/O tensor,
# NodeAndRegistration 44 B, op data unpadded, no per-channel arrays for fully connected
# (CMSIS-NN quantises it per tensor); the fixed part covers the allocator, graph and the
# remaining builtin-options difference. Error per model: BENCHMARKS.md (32-bit arena table).
CORTEX_M = TailSizes(40, 12, 64, 20, 4, 44, 8, ALWAYS_PER_CHANNEL_OPS, frozenset())
TARGETS = {"host": HOST, "cortex-m": CORTEX_M}


def interpreter_tail(graph: Graph, target: str = "host") -> dict[str, int]:
    """The tail's parts (see the module docstring), by name, for ``target`` ("host": the
    64-bit tflite-micro package; "cortex-m": the Nano 33 BLE's 32-bit build)."""
    t = TARGETS[target]
    kernel = builtin = per_channel = 0
    for op in graph.ops:
        kernel += align(KERNEL_DATA.get(op.name, DEFAULT_KERNEL_BYTES), t.kernel_align)
        builtin += BUILTIN_DATA.get(op.name, DEFAULT_BUILTIN_BYTES)
        if op.out_channels > 0 and (
            op.name in t.per_channel_ops
            or (op.name in t.per_channel_if_quantized and op.filter_scales > 1)
        ):
            per_channel += 2 * align(4 * op.out_channels)
    variables = sum(align(x.nbytes) for x in graph.tensors if x.variable)
    return {
        "fixed": t.fixed,
        "eval_tensors": t.eval_tensor * len(graph.tensors),
        "io_tensors": t.io_tensor * (len(graph.inputs) + len(graph.outputs)),
        "io_quantization": t.io_quant * graph.quantized_io,
        "io_pointers": align(t.io_pointer * len(graph.inputs))
        + align(t.io_pointer * len(graph.outputs)),
        "nodes": t.node * len(graph.ops),
        "kernel_data": kernel,
        "builtin_options": align(builtin),
        "per_channel": per_channel,
        "variables": variables,
    }


def estimate(graph: Graph, target: str = "host") -> ArenaEstimate:
    """Head plus tail for ``graph`` on ``target``: see the module docstring."""
    head = plan_activations(graph)
    parts = interpreter_tail(graph, target)
    return ArenaEstimate(head=head, tail=sum(parts.values()), breakdown={"head": head, **parts})
