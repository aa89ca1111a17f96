"""Full-integer int8 conversion, in the worker process (imports TensorFlow).

* The representative dataset is the training split, preprocessed exactly as in training
  (:func:`backend_stub.preprocess.preprocess`), walked batch by batch yielding **every**
  sample of each batch (the old backend yielded only the last one, unnormalised).
* Input and output tensors are int8 (``inference_input_type``/``inference_output_type``),
  every op is an int8 builtin (``TFLITE_BUILTINS_INT8``): conversion fails rather than
  falling back to float.
* Accuracy: the float Keras model and the int8 model (run with LiteRT's interpreter, inputs
  quantised with the input tensor's scale and zero point) on the validation split.
* ``hal.model.analysis.analyze`` and ``hal.boards.fit_check`` for the chosen board; the report
  is stored with the artifact. An artifact that does not fit ends the job ``failed`` with the
  ``fit_*`` error (the artifact and report are kept for inspection, never deployable).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sqlalchemy import update

from backend_stub import agreement, metrics
from backend_stub.datasets import load_images
from backend_stub.preprocess import preprocess_many
from backend_stub.storage import FAILED, RUNNING, SUCCEEDED, Compilation, Store, Training, utcnow
from hal.boards import fit_check, get_profile
from hal.errors import FitError, InputError
from hal.model.analysis import analyze

log = logging.getLogger(__name__)


def representative_batches(x: np.ndarray, batch_size: int,
                           limit: int | None = None) -> Iterator[list[np.ndarray]]:
    """Every sample of every batch of ``x`` (shape ``[n, h, w, c]``), one at a time with a
    batch dimension of 1, up to ``limit`` samples."""
    n = len(x) if limit is None else min(limit, len(x))
    for start in range(0, n, batch_size):
        for sample in x[start:min(start + batch_size, n)]:
            yield [sample[np.newaxis, ...].astype(np.float32)]


def int8_predict(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Class indices predicted by the int8 model with LiteRT, one sample at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    preds = np.empty(len(x), dtype=np.int64)
    for i, sample in enumerate(x):
        q = np.clip(np.round(sample / scale + zero), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q[np.newaxis, ...])
        interp.invoke()
        preds[i] = int(np.argmax(interp.get_tensor(out["index"])[0]))
    return preds


def load_job(store: Store, compilation_id: int) -> dict[str, Any]:
    """Parameters, the stored model and the training's split (no TensorFlow)."""
    with store.session() as s:
        c = s.get(Compilation, compilation_id)
        if c is None:
            raise InputError("not_found", f"compilation {compilation_id} does not exist")
        t = s.get(Training, c.training_id)
        if t is None or t.model_keras is None or not t.split:
            raise InputError("not_found", f"training {c.training_id} has no trained model")
        c.pid = os.getpid()
        p = dict(t.params)
        train = [i for i, _ in t.split["train"]]
        val = t.split["validation"]
        blobs = load_images(s, train + [i for i, _ in val])
        job = {"board": c.board, "params": dict(c.params), "train_params": p,
               "model": t.model_keras, "labels": list(t.labels or [])}
    # Images deleted since training are left out; both splits must keep at least one.
    train_kept = [blobs[i] for i in train if i in blobs]
    val_kept = [(blobs[i], cls) for i, cls in val if i in blobs]
    if not train_kept or not val_kept:
        raise InputError("dataset_invalid", "the images of the training's split were deleted; "
                         "retrain on the current dataset", train_left=len(train_kept),
                         validation_left=len(val_kept))
    size = (p["image_width"], p["image_height"], p["color_mode"])
    job["x_train"] = preprocess_many(train_kept, *size)
    job["x_val"] = preprocess_many([b for b, _ in val_kept], *size)
    job["y_val"] = np.array([c for _, c in val_kept], dtype=np.int64)
    job["missing"] = (len(train) - len(train_kept)) + (len(val) - len(val_kept))
    job["val_pairs"] = [(i, cls) for i, cls in val if i in blobs]
    job["val_blobs"] = {i: blobs[i] for i, _ in job["val_pairs"]}
    return job


def run_compilation(store: Store, compilation_id: int, fault: Callable[[], None]) -> None:
    t0 = time.monotonic()
    job = load_job(store, compilation_id)
    get_profile(job["board"])
    fault()

    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(job["model"])
        model = keras.models.load_model(path)

    limit = job["params"].get("representative_samples")
    batch = int(job["train_params"]["batch_size"])
    rep_count = len(job["x_train"]) if limit is None else min(limit, len(job["x_train"]))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: representative_batches(job["x_train"], batch,
                                                                      limit)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = bytes(converter.convert())
    log.info("compilation %d: converted, %d bytes", compilation_id, len(tflite))

    x_val, y_val = job["x_val"], job["y_val"]
    float_pred = np.argmax(model.predict(x_val, batch_size=1, verbose=0), axis=1)
    int8_pred = int8_predict(tflite, x_val)
    accuracy = {
        "float": float(np.mean(float_pred == y_val)),
        "int8": float(np.mean(int8_pred == y_val)),
        "agreement": float(np.mean(float_pred == int8_pred)),
        "validation_samples": len(y_val),
        "representative_samples": rep_count,
        "images_missing_since_training": job["missing"],
    }
    model_report = analyze(tflite, board=job["board"])
    fit = fit_check(model_report, get_profile(job["board"]))
    per_label = metrics.per_label(y_val, job["labels"], float=float_pred, int8=int8_pred)
    vin, vout = model_report.inputs[0], model_report.outputs[0]
    vectors = None
    if None not in (vin.scale, vin.zero_point, vout.scale, vout.zero_point):
        # Held-out vectors evenly across labels with the host int8 outputs, for deployments.
        vectors = agreement.host_vectors(
            tflite, (float(vin.scale), int(vin.zero_point)),
            (float(vout.scale), int(vout.zero_point)),
            agreement.stratified(job["val_pairs"]), job["val_blobs"], job["train_params"])
    report = {"model": model_report.to_dict(), "fit": fit.to_dict(), "accuracy": accuracy,
              "labels": job["labels"], "seconds": round(time.monotonic() - t0, 3)}
    state, error = SUCCEEDED, None
    try:
        fit.raise_if_not_fit()
    except FitError as exc:
        state, error = FAILED, exc.to_dict()
    with store.session() as s:
        s.execute(update(Compilation).where(Compilation.id == compilation_id,
                                            Compilation.state == RUNNING)
                  .values(state=state, error=error, finished_at=utcnow(), artifact=tflite,
                          sha256=hashlib.sha256(tflite).hexdigest(), report=report,
                          per_label=per_label, vectors=vectors))
    log.info("compilation %d %s: float %.4f int8 %.4f, fits %s: %s", compilation_id, state,
             accuracy["float"], accuracy["int8"], job["board"], fit.fits)
