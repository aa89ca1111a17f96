"""Training, in the worker process (imports TensorFlow; the web process never imports this).

The default architecture, small enough for an Arduino Nano 33 BLE (256 KB RAM, 1 MB flash)::

    Input(height, width, channels)          float32 in [0, 1] (backend_stub.preprocess)
    [Conv2D(f, 3x3, same, relu) -> MaxPool2D(2)]  for f in conv_filters (default 8, 16)
    Flatten -> Dropout(dropout) -> Dense(num_classes, softmax)

The softmax is the last layer: nothing follows it. The model is trained with a flexible batch
dimension, then its weights are copied into the same architecture built with
``batch_size=1`` on the Input; that fixed-shape copy is what is stored and later converted,
so the int8 model has no dynamic-shape ops (SHAPE, STRIDED_SLICE, PACK) that TFLM lacks.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import update

from backend_stub import metrics as metrics_mod
from backend_stub.datasets import image_index, load_images
from backend_stub.preprocess import channels, preprocess_many, split_ids
from backend_stub.storage import RUNNING, SUCCEEDED, Store, Training, TrainingEpoch, utcnow
from hal.errors import InputError

log = logging.getLogger(__name__)


def build_model(num_classes: int, height: int, width: int, chans: int,
                conv_filters: Sequence[int] = (8, 16), dropout: float = 0.25,
                batch_size: int | None = None):
    """The default CNN (see the module docstring). ``batch_size=1`` for conversion."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(height, width, chans), batch_size=batch_size, name="image")
    x = inputs
    for i, filters in enumerate(conv_filters):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="tinyml_cnn")


def plot_curves(epochs: list[dict[str, Any]]) -> bytes:
    """Loss and accuracy per epoch (training and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    xs = [e["epoch"] for e in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(xs, [e.get(key) for e in epochs], marker="o", label="training")
        ax.plot(xs, [e.get(f"val_{key}") for e in epochs], marker="o", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def load_split(store: Store, training_id: int) -> dict[str, Any]:
    """The job's parameters and its data, preprocessed (no TensorFlow). Records the labels,
    the split and the worker's pid on the training row."""
    with store.session() as s:
        t = s.get(Training, training_id)
        if t is None:
            raise InputError("not_found", f"training {training_id} does not exist")
        if t.dataset_id is None:
            raise InputError("not_found", "the dataset was deleted before the training started")
        p = dict(t.params)
        index = image_index(s, t.dataset_id)
        too_few = {k: len(v) for k, v in index.items() if len(v) < 2}
        if len(index) < 2 or too_few:
            raise InputError("dataset_invalid", "the dataset changed and can no longer be "
                             "trained on: it needs at least 2 labels with 2 images each",
                             counts={k: len(v) for k, v in index.items()})
        labels = sorted(index)
        train, val = split_ids(index, p["validation_split"], p["seed"])
        blobs = load_images(s, [i for i, _ in train + val])
        t.labels = labels
        t.split = {"train": train, "validation": val}
        t.pid = os.getpid()
    size = (p["image_width"], p["image_height"], p["color_mode"])
    return {
        "params": p, "labels": labels,
        "x_train": preprocess_many([blobs[i] for i, _ in train], *size),
        "y_train": np.array([c for _, c in train], dtype=np.int32),
        "x_val": preprocess_many([blobs[i] for i, _ in val], *size),
        "y_val": np.array([c for _, c in val], dtype=np.int32),
    }


def run_training(store: Store, training_id: int, fault: Callable[[], None]) -> None:
    t0 = time.monotonic()
    data = load_split(store, training_id)
    p, labels = data["params"], data["labels"]
    log.info("training %d: %d train / %d validation images, %d labels", training_id,
             len(data["y_train"]), len(data["y_val"]), len(labels))
    fault()

    import keras

    keras.utils.set_random_seed(p["seed"])
    shape = (p["image_height"], p["image_width"], channels(p["color_mode"]))
    model = build_model(len(labels), *shape, conv_filters=p["conv_filters"],
                        dropout=p["dropout"])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=p["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class Progress(keras.callbacks.Callback):
        """Writes each epoch's figures to the database as soon as the epoch ends."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}

            def num(key: str) -> float | None:
                v = logs.get(key)
                return None if v is None else float(v)

            with store.session() as s:
                s.add(TrainingEpoch(training_id=training_id, epoch=epoch + 1, loss=num("loss"),
                                    accuracy=num("accuracy"), val_loss=num("val_loss"),
                                    val_accuracy=num("val_accuracy"),
                                    seconds=round(time.monotonic() - self.started, 3)))
            log.info("training %d: epoch %d/%d loss %.4f accuracy %.4f val_accuracy %s",
                     training_id, epoch + 1, p["epochs"], num("loss") or 0.0,
                     num("accuracy") or 0.0, num("val_accuracy"))

    history = model.fit(data["x_train"], data["y_train"], batch_size=p["batch_size"],
                        epochs=p["epochs"], validation_data=(data["x_val"], data["y_val"]),
                        shuffle=True, verbose=0, callbacks=[Progress()])
    val_loss, val_acc = model.evaluate(data["x_val"], data["y_val"], verbose=0,
                                       batch_size=p["batch_size"])
    val_pred = np.argmax(model.predict(data["x_val"], batch_size=p["batch_size"], verbose=0),
                         axis=1)
    per_label = metrics_mod.per_label(data["y_val"], labels, float=val_pred)

    # The conversion model: same layers, batch dimension fixed to 1, trained weights copied.
    fixed = build_model(len(labels), *shape, conv_filters=p["conv_filters"],
                        dropout=p["dropout"], batch_size=1)
    fixed.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        fixed.save(path)
        with open(path, "rb") as f:
            model_bytes = f.read()

    epochs = [{"epoch": i + 1, **{k: float(v[i]) for k, v in history.history.items()}}
              for i in range(len(history.history.get("loss", [])))]
    curves = plot_curves(epochs)
    metrics = {
        "val_accuracy": float(val_acc), "val_loss": float(val_loss),
        "train_samples": len(data["y_train"]), "validation_samples": len(data["y_val"]),
        "parameters": int(fixed.count_params()), "seconds": round(time.monotonic() - t0, 3),
    }
    with store.session() as s:
        s.execute(update(Training).where(Training.id == training_id, Training.state == RUNNING)
                  .values(state=SUCCEEDED, finished_at=utcnow(), model_keras=model_bytes,
                          curves_png=curves, metrics=metrics, per_label=per_label))
    log.info("training %d succeeded: val_accuracy %.4f in %.1f s", training_id, val_acc,
             metrics["seconds"])
