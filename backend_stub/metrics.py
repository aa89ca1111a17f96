"""Per-label metrics: confusion matrix, precision and recall per label, and their PNG.

numpy and matplotlib only (no TensorFlow): the worker computes them on the validation split
when it trains (float model) and compiles (float and int8), and stores them with the training
and the compilation (``per_label`` columns); the web process serves them as JSON and draws
the PNG from the stored JSON.

The stored form, for each model::

    {"samples": N, "accuracy": A,
     "confusion": [[...], ...],   # rows: the true label, columns: the predicted label
     "labels": [{"label", "support", "predicted", "precision", "recall"}, ...]}

``precision`` is ``None`` for a label never predicted (0 / 0), ``recall`` is ``None`` for a
label without validation images.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def label_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                  labels: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix and per-label precision and recall of one model's predictions."""
    k = len(labels)
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape[0]} true labels but {p.shape[0]} predictions")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= k or p.max() >= k):
        raise ValueError(f"class indices must be in 0..{k - 1}")
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (t, p), 1)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    diag = np.diag(confusion)

    def ratio(num: int, den: int) -> float | None:
        return None if den == 0 else round(float(num) / float(den), 6)

    return {
        "samples": int(t.size),
        "accuracy": ratio(int(diag.sum()), int(t.size)),
        "confusion": confusion.tolist(),
        "labels": [{"label": labels[i], "support": int(support[i]),
                    "predicted": int(predicted[i]),
                    "precision": ratio(int(diag[i]), int(predicted[i])),
                    "recall": ratio(int(diag[i]), int(support[i]))} for i in range(k)],
    }


def per_label(y_true: Sequence[int], labels: Sequence[str],
              **predictions: Sequence[int]) -> dict[str, Any]:
    """``{"labels": [...], "<model>": label_metrics(...)}`` for each keyword (float, int8)."""
    out: dict[str, Any] = {"labels": list(labels)}
    for model, pred in predictions.items():
        out[model] = label_metrics(y_true, pred, labels)
    return out


def confusion_png(metrics: dict[str, Any], title: str) -> bytes:
    """One model's confusion matrix (counts, rows true, columns predicted) with each label's
    precision and recall in the axis labels, as a PNG. Uses matplotlib's object API (no
    pyplot state), so web threads can draw concurrently."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conf = np.asarray(metrics["confusion"], dtype=np.int64)
    rows = metrics["labels"]
    k = len(rows)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.0f}%"

    side = min(3.0 + 0.55 * k, 16.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=max(1, int(conf.max(initial=0))))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), [f"{r['label']}\nP {pct(r['precision'])}" for r in rows],
                  rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_yticks(range(k), [f"{r['label']} (R {pct(r['recall'])})" for r in rows])
    ax.set_xlabel("predicted (P: precision)")
    ax.set_ylabel("true (R: recall)")
    acc = metrics.get("accuracy")
    ax.set_title(f"{title}: accuracy {pct(acc)} on {metrics['samples']} images")
    if k <= 30:  # counts stay readable up to about 30 labels
        limit = conf.max(initial=0) / 2
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if conf[i, j] > limit else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def metrics_table(metrics: dict[str, Any]) -> list[list[Any]]:
    """Rows ``[label, support, predicted, precision, recall]`` for a text table."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    return [[r["label"], r["support"], r["predicted"], fmt(r["precision"]), fmt(r["recall"])]
            for r in metrics["labels"]]
