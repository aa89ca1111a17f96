"""On-device agreement: the input vectors a deployment sends, what the host int8 model answers
for them, and what the board answered.

1. **Selection** (:func:`stratified`): vectors are held-out (validation split) images drawn
   evenly across labels: round robin over the labels, each label's images in the split's
   seeded order, so any first N of them cover the labels evenly (counts differ by at most one
   while every label still has images).
2. **Host outputs** (:func:`host_vectors`, in the compile worker, with LiteRT): each vector is
   quantised exactly as the sketch quantises it (:func:`hal.arduino.sketch.quantise`: round
   half away from zero of the values the bridge receives), run through the int8 model, and
   the raw int8 outputs stored with the compilation, with the expected label.
3. **Collection** (:func:`collect`, in the deployment thread, through ``bridge.client``'s
   observe API): inference lines printed after the install started by a run announcing the
   new model's hash (boot and status lines carry it). The sketch cycles its vectors, so line
   ``n`` (counted from 1 at each boot) answers vector ``(n - 1) % N``.
4. **Comparison** (:func:`evaluate`): a line's dequantised outputs are quantised back with the
   output tensor's scale and zero point; *exact* means every int8 output equals the host's,
   *label match* means the same top class, *correct* means the expected label.

The deployment passes when the label match rate reaches ``min_agreement`` (default 0.95;
boards whose kernels differ from the host's reference kernels, such as CMSIS-NN on the Nano,
may differ by one step in an output now and then, which rarely changes the top class).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from backend_stub.preprocess import preprocess
from hal.errors import Cancelled, InfraError, InputError

log = logging.getLogger(__name__)

MAX_VECTORS = 64  # the most a deployment sends (schemas.DeploymentIn.input_vectors)
DEFAULT_MIN_AGREEMENT = 0.95  # label match rate a deployment needs (DeploymentIn.min_agreement)
_POLL_S = 0.5
_OBSERVE_LINES = 200  # recent lines asked for on each poll (bridges keep 2000 by default)


def stratified(validation: Sequence[Sequence[int]], limit: int = MAX_VECTORS
               ) -> list[tuple[int, int]]:
    """``(image_id, class)`` pairs of the validation split, round robin across classes,
    at most ``limit``."""
    by_class: dict[int, list[int]] = {}
    for image_id, cls in validation:
        by_class.setdefault(int(cls), []).append(int(image_id))
    queues = [by_class[c] for c in sorted(by_class)]
    out: list[tuple[int, int]] = []
    depth = 0
    while len(out) < limit and any(depth < len(q) for q in queues):
        for cls, q in zip(sorted(by_class), queues, strict=True):
            if depth < len(q) and len(out) < limit:
                out.append((q[depth], cls))
        depth += 1
    return out


def vector_values(blob: bytes, params: dict[str, Any]) -> list[float]:
    """One image as the deployment sends it: preprocessed as in training, flattened, rounded
    to 6 decimals (what the bridge receives, and so what the sketch quantises)."""
    arr = preprocess(blob, params["image_width"], params["image_height"], params["color_mode"])
    return arr.reshape(-1).round(6).tolist()


def quantise_input(values: Sequence[float], scale: float, zero_point: int) -> np.ndarray:
    """The int8 input tensor the sketch builds from ``values`` (the sketch's own function,
    so host and board start from the same bytes)."""
    from hal.arduino.sketch import quantise

    # quantise() reads only these three fields of the sketch configuration.
    cfg = SimpleNamespace(input_dtype="int8", input_scale=scale, input_zero_point=zero_point)
    return np.asarray(quantise(cfg, values), dtype=np.int8)


def host_vectors(tflite: bytes, input_quant: tuple[float, int], output_quant: tuple[float, int],
                 picks: Sequence[tuple[int, int]], blobs: dict[int, bytes],
                 params: dict[str, Any]) -> dict[str, Any]:
    """Run the int8 model (LiteRT) on the picked validation images; the record stored with
    the compilation (``compilations.vectors``). Images missing from ``blobs`` are skipped."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    ids, expected, outputs = [], [], []
    for image_id, cls in picks:
        if image_id not in blobs:
            continue
        q = quantise_input(vector_values(blobs[image_id], params), *input_quant)
        interp.set_tensor(inp["index"], q.reshape(inp["shape"]))
        interp.invoke()
        outputs.append([int(v) for v in interp.get_tensor(out["index"]).reshape(-1)])
        ids.append(image_id)
        expected.append(cls)
    return {"image_ids": ids, "expected": expected, "host_int8": outputs,
            "host_top": [_top(o) for o in outputs],
            "input": {"scale": input_quant[0], "zero_point": input_quant[1]},
            "output": {"scale": output_quant[0], "zero_point": output_quant[1]}}


def _top(values: Sequence[float]) -> int:
    """The first index of the largest value (the sketch's rule)."""
    return max(range(len(values)), key=lambda i: (values[i], -i)) if values else 0


def for_deployment(record: dict[str, Any], wanted: int, present: set[int]) -> dict[str, Any]:
    """The first ``wanted`` vectors of a compilation's record whose images still exist."""
    keep = [i for i, image_id in enumerate(record["image_ids"]) if image_id in present][:wanted]
    return {**{k: [record[k][i] for i in keep]
               for k in ("image_ids", "expected", "host_int8", "host_top")},
            "input": record["input"], "output": record["output"]}


# ------------------------------------------------------------------------------ the board


def observe_anchor(client: Any, device_id: str) -> int:
    """The device stream's last sequence number now (lines after it are new)."""
    return int(client.observe(device_id, 1).get("last_seq") or 0)


def collect(client: Any, device_id: str, sha256: str, count: int, after_seq: int,
            deadline_s: float, cancel: threading.Event,
            progress: Callable[[int], None] | None = None) -> tuple[dict[int, dict], bool]:
    """The first inference line of the new model for each of ``count`` vectors, from the
    bridge's observe API, polled until every vector answered or ``deadline_s`` passed.
    Returns ``({vector index: inference line}, complete)``. Raises ``Cancelled``."""
    results: dict[int, dict] = {}
    last_seq = after_seq
    # Whether the lines being read come from a run that announced our model: None until a
    # boot or status line says. The bridge reads the first boot line itself (to verify the
    # boot), so a run's first inference lines often come before its next announcement; they
    # wait in `pending` and count once the announcement proves they belong to our run (the
    # line after it continues their count: no restart in between).
    ours: bool | None = None
    pending: list[dict] = []
    confirm = False
    last_n = 0
    lines = _OBSERVE_LINES
    end = time.monotonic() + deadline_s

    def take(line: dict) -> None:
        results.setdefault((int(line.get("seq", 0)) - 1) % count, line)

    while len(results) < count:
        if cancel.is_set():
            raise Cancelled(f"cancelled while collecting inference lines ({len(results)} of "
                            f"{count} vectors answered); the board runs the new model")
        if time.monotonic() > end:
            return results, False
        try:
            obs = client.observe(device_id, lines)
        except InputError as exc:
            if exc.code != "bad_option" or lines == 10:
                raise
            lines = 10  # a bridge configured with a small buffer: its minimum
            continue
        entries = sorted((e for e in obs.get("lines", []) if int(e.get("seq", 0)) > last_seq),
                         key=lambda e: int(e["seq"]))
        if entries and int(entries[0]["seq"]) > last_seq + 1 and last_seq > after_seq:
            ours, pending, confirm = None, [], False  # lines were lost between polls
        for e in entries:
            last_seq = int(e["seq"])
            line = e.get("line") or {}
            kind = line.get("kind")
            if kind in ("boot", "status"):
                ours = bool(line.get("sha")) and sha256.startswith(str(line["sha"]))
                confirm = ours and bool(pending)
                if not ours:
                    pending = []
            elif kind == "inference":
                n = int(line.get("seq", 0))
                if n <= last_n:  # the board restarted: its count (and vector cycle) too
                    results.clear()
                    pending, confirm = [], False
                last_n = n
                if confirm:
                    for held in pending:
                        take(held)
                    pending, confirm = [], False
                if ours:
                    take(line)
                elif ours is None:
                    pending.append(line)
        if progress is not None:
            progress(len(results))
        if len(results) < count:
            time.sleep(_POLL_S)
    return results, True


def evaluate(sent: dict[str, Any], answers: dict[int, dict], labels: Sequence[str],
             min_agreement: float) -> dict[str, Any]:
    """Compare the board's answers with the host int8 outputs (see the module docstring)."""
    scale = float(sent["output"]["scale"])
    zero = int(sent["output"]["zero_point"])
    rows = []
    for i, (image_id, expected, host, host_top) in enumerate(zip(
            sent["image_ids"], sent["expected"], sent["host_int8"], sent["host_top"],
            strict=True)):
        line = answers.get(i)
        row: dict[str, Any] = {"vector": i, "image_id": image_id,
                               "expected": labels[expected] if expected < len(labels) else "",
                               "host": labels[host_top] if host_top < len(labels) else "",
                               "device": None, "exact": False, "n": None}
        if line is not None:
            outs = [float(v) for v in line.get("outputs", [])]
            device_q = [round(v / scale) + zero for v in outs] if scale else []
            top = int(line.get("top", -1))
            row.update(device=labels[top] if 0 <= top < len(labels) else str(top),
                       n=line.get("seq"), exact=device_q == list(host),
                       label_match=top == host_top, correct=top == expected)
            if not row["exact"]:
                row["device_int8"] = device_q
                row["host_int8"] = list(host)
        rows.append(row)
    answered = [r for r in rows if r["device"] is not None]
    n = len(rows)

    def rate(key: str) -> float | None:
        return round(sum(1 for r in answered if r.get(key)) / n, 6) if n else None

    host_correct = sum(1 for e, t in zip(sent["expected"], sent["host_top"], strict=True)
                       if e == t)
    label_rate = rate("label_match")
    passed = n > 0 and len(answered) == n and (label_rate or 0.0) >= min_agreement
    return {"vectors": n, "answered": len(answered),
            "exact_output_match_rate": rate("exact"), "label_match_rate": label_rate,
            "device_accuracy": rate("correct"),
            "host_accuracy": round(host_correct / n, 6) if n else None,
            "min_agreement": min_agreement, "passed": passed, "per_vector": rows}


def timeout_error(count: int, answered: int, deadline_s: float) -> InfraError:
    return InfraError("timeout", f"the board answered {answered} of {count} input vectors "
                      f"within {deadline_s:g} s after its verified boot",
                      vectors=count, answered=answered)
