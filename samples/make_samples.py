"""Train and convert the project's sample models with TensorFlow.

Run from the repository root (needs the ``[train]`` extra)::

    .venv/bin/python samples/make_samples.py            # all models
    .venv/bin/python samples/make_samples.py sine_int8  # just one

Writes ``samples/models/<name>.tflite`` and ``samples/models/<name>.json`` (labels, tensor
details, reference inputs in real units and the reference outputs the LiteRT interpreter gives
for them). Everything is seeded so re-runs give near-identical files; the files are committed so
tests and demos never need TensorFlow.

Models:

* ``sine_int8`` / ``sine_float`` -- the regression of TFLM's hello_world: y = sin(x) for
  x in [0, 2*pi), Dense(16, relu) -> Dense(16, relu) -> Dense(1). The int8 one is converted
  with full-integer quantisation (int8 input and output).
* ``shapes_int8`` -- a small image CNN on 32x32 grayscale synthetic images of three classes
  (``blank``, ``square``, ``stripes``), Conv(8) -> MaxPool -> Conv(16) -> MaxPool -> Dense(3)
  -> Softmax, full-integer int8. Built with ``batch_size=1`` so the converted graph has no
  SHAPE / STRIDED_SLICE / PACK ops (which Keras 3 adds for a dynamic batch dimension).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # deterministic float maths on CPU

import numpy as np

OUT = Path(__file__).resolve().parent / "models"
SEED = 1234
IMAGE_SIZE = 32
SHAPE_LABELS = ["blank", "square", "stripes"]


def _seed_everything() -> None:
    import tensorflow as tf

    random.seed(SEED)
    np.random.seed(SEED)
    tf.keras.utils.set_random_seed(SEED)
    with contextlib.suppress(Exception):  # older TF: best effort
        tf.config.experimental.enable_op_determinism()


# ------------------------------------------------------------------------------- data


def sine_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(0.0, 2 * np.pi, size=(n, 1)).astype(np.float32)
    y = (np.sin(x) + rng.normal(0.0, 0.05, size=x.shape)).astype(np.float32)
    return x, y


def shape_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 32x32 grayscale image in [0, 1] of class ``label`` (index into SHAPE_LABELS)."""
    s = IMAGE_SIZE
    img = rng.uniform(0.0, 0.15, size=(s, s)).astype(np.float32)  # sensor-like noise floor
    if label == 1:  # a filled bright square somewhere
        side = int(rng.integers(8, 17))
        x0, y0 = (int(v) for v in rng.integers(0, s - side, size=2))
        img[y0 : y0 + side, x0 : x0 + side] += rng.uniform(0.6, 0.85)
    elif label == 2:  # horizontal or vertical stripes
        period = int(rng.integers(3, 7))
        phase = int(rng.integers(0, period))
        lines = (np.arange(s) + phase) % period < period // 2 + 1
        mask = np.tile(lines[:, None], (1, s)) if rng.random() < 0.5 else np.tile(lines, (s, 1))
        img[mask] += rng.uniform(0.6, 0.85)
    return np.clip(img, 0.0, 1.0)


def shapes_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(SHAPE_LABELS), size=n)
    x = np.stack([shape_image(int(k), rng) for k in labels])[..., None].astype(np.float32)
    return x, labels.astype(np.int32)


# ------------------------------------------------------------------------------ models


def build_sine():
    import tensorflow as tf

    inp = tf.keras.Input(shape=(1,), batch_size=1, name="x")
    h = tf.keras.layers.Dense(16, activation="relu")(inp)
    h = tf.keras.layers.Dense(16, activation="relu")(h)
    out = tf.keras.layers.Dense(1, name="y")(h)
    return tf.keras.Model(inp, out, name="sine")


def build_shapes():
    import tensorflow as tf

    layers = tf.keras.layers
    inp = tf.keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), batch_size=1, name="image")
    h = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(len(SHAPE_LABELS))(h)
    out = layers.Softmax(name="probs")(h)
    return tf.keras.Model(inp, out, name="shapes")


def train(model, x, y, *, loss, epochs: int, batch: int, metrics=()):
    """Train a copy with a free batch size, then copy the weights into ``model`` (batch 1)."""
    import tensorflow as tf

    trainable = tf.keras.models.clone_model(model, input_tensors=None)
    # clone_model keeps batch_size=1 in the Input; rebuild the graph without it for training.
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [None, *layer["config"]["batch_shape"][1:]]
    trainable = tf.keras.Model.from_config(config)
    trainable.compile(optimizer=tf.keras.optimizers.Adam(0.005), loss=loss, metrics=list(metrics))
    hist = trainable.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, shuffle=True)
    model.set_weights(trainable.get_weights())
    return {k: float(v[-1]) for k, v in hist.history.items()}


def convert(model, representative: np.ndarray | None) -> bytes:
    """Convert to .tflite; with ``representative`` full-integer int8 (int8 input/output)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]

        def rep():
            for sample in representative:
                yield [sample[None, ...].astype(np.float32)]

        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return bytes(conv.convert())


# --------------------------------------------------------------------------- reference


def _tensor_json(d: dict) -> dict:
    scales, zps = d["quantization"]
    quant = d["dtype"] in (np.int8, np.uint8, np.int16)
    return {
        "name": d["name"],
        "shape": [int(v) for v in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
        "scale": float(scales) if quant else None,
        "zero_point": int(zps) if quant else None,
    }


def reference(data: bytes, inputs: list[np.ndarray]) -> tuple[dict, dict, list[dict]]:
    """Run the LiteRT interpreter on ``inputs`` (real units) and record what it gives."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    ind = interp.get_input_details()[0]
    outd = interp.get_output_details()[0]
    cases = []
    for x in inputs:
        x = np.asarray(x, dtype=np.float32).reshape(ind["shape"])
        if ind["dtype"] == np.int8:
            scale, zp = ind["quantization"]
            q = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
        else:
            q = x
        interp.set_tensor(ind["index"], q)
        interp.invoke()
        raw = interp.get_tensor(outd["index"]).reshape(-1)
        if outd["dtype"] == np.int8:
            scale, zp = outd["quantization"]
            real = (raw.astype(np.float32) - zp) * scale
        else:
            real = raw.astype(np.float32)
        case = {
            "input": [round(float(v), 6) for v in x.reshape(-1)],
            "output": [round(float(v), 6) for v in real],
            "output_raw": [int(v) if outd["dtype"] == np.int8 else round(float(v), 6)
                           for v in raw],
            "top": int(np.argmax(real)),
        }
        if ind["dtype"] == np.int8:
            case["input_raw"] = [int(v) for v in q.reshape(-1)]
        cases.append(case)
    return _tensor_json(ind), _tensor_json(outd), cases


def write(name: str, data: bytes, meta: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.tflite").write_bytes(data)
    meta = {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
            **meta}
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name}: {len(data)} bytes, sha256 {meta['sha256'][:16]}")


# ----------------------------------------------------------------------------- recipes


def make_sine() -> None:
    _seed_everything()
    rng = np.random.default_rng(SEED)
    x, y = sine_data(2000, rng)
    model = build_sine()
    hist = train(model, x, y, loss="mse", epochs=60, batch=32)
    test_x = [0.0, 0.5, 1.5707964, 3.1415927, 4.712389, 6.0]
    for name, rep in (("sine_int8", x[:300]), ("sine_float", None)):
        data = convert(model, rep)
        ind, outd, cases = reference(data, [[v] for v in test_x])
        write(name, data, {
            "task": "regression",
            "description": "y = sin(x), x in [0, 2*pi) (TFLM hello_world)",
            "labels": [],
            "input": ind,
            "output": outd,
            "train": {"samples": len(x), "epochs": 60, **hist},
            "reference": cases,
        })


def make_shapes() -> None:
    _seed_everything()
    rng = np.random.default_rng(SEED + 1)
    x, y = shapes_data(1500, rng)
    model = build_shapes()
    hist = train(model, x, y, loss="sparse_categorical_crossentropy", epochs=8, batch=32,
                 metrics=["accuracy"])
    data = convert(model, x[:200])
    ref_rng = np.random.default_rng(SEED + 2)
    refs = [shape_image(k, ref_rng) for k in range(len(SHAPE_LABELS))]
    ind, outd, cases = reference(data, refs)
    for k, case in enumerate(cases):
        case["expected"] = k
        case["expected_label"] = SHAPE_LABELS[k]
    write("shapes_int8", data, {
        "task": "classification",
        "description": "32x32 grayscale synthetic images: blank, square, stripes",
        "labels": SHAPE_LABELS,
        "input": ind,
        "output": outd,
        "input_range": [0.0, 1.0],
        "train": {"samples": len(x), "epochs": 8, **hist},
        "reference": cases,
    })


RECIPES = {"sine_int8": make_sine, "sine_float": make_sine, "shapes_int8": make_shapes}


def main(argv: list[str]) -> int:
    wanted = argv or ["sine_int8", "shapes_int8"]
    done = set()
    for name in wanted:
        recipe = RECIPES.get(name)
        if recipe is None:
            print(f"unknown sample {name!r}; known: {', '.join(sorted(RECIPES))}",
                  file=sys.stderr)
            return 2
        if recipe not in done:
            recipe()
            done.add(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
