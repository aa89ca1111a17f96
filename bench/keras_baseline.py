"""The plain Keras script the backend's training + conversion is compared against: the same
work in one process, no database, no web service, no worker processes.

    python bench/keras_baseline.py DATA_DIR --epochs N --size S --batch-size B --lr LR

DATA_DIR holds one folder per label. Prints one JSON line with the timings and accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--split", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.monotonic()

    import numpy as np
    from PIL import Image

    labels = sorted(p.name for p in a.data_dir.iterdir() if p.is_dir())
    rng = random.Random(a.seed)
    train, val = [], []
    for cls, label in enumerate(labels):
        files = sorted((a.data_dir / label).iterdir())
        rng.shuffle(files)
        n_val = min(max(1, round(len(files) * a.split)), len(files) - 1)
        val += [(f, cls) for f in files[:n_val]]
        train += [(f, cls) for f in files[n_val:]]

    def load(items):
        x = np.empty((len(items), a.size, a.size, 1), np.float32)
        for i, (f, _) in enumerate(items):
            with Image.open(f) as img:
                img = img.convert("L").resize((a.size, a.size), Image.Resampling.BILINEAR)
                x[i, :, :, 0] = np.asarray(img, np.float32) / 255.0
        return x, np.array([c for _, c in items], np.int32)

    x_train, y_train = load(train)
    x_val, y_val = load(val)

    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from keras import layers

    keras.utils.set_random_seed(a.seed)

    def build(batch_size=None):
        inp = keras.Input((a.size, a.size, 1), batch_size=batch_size)
        x = inp
        for f in (8, 16):
            x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(layers.Flatten()(x))
        return keras.Model(inp, layers.Dense(len(labels), activation="softmax")(x))

    t_train = time.monotonic()
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(a.lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=a.batch_size, epochs=a.epochs,
              validation_data=(x_val, y_val), verbose=0)
    model.evaluate(x_val, y_val, verbose=0)
    fixed = build(1)
    fixed.set_weights(model.get_weights())
    t_convert = time.monotonic()

    def rep():
        for s in range(0, len(x_train), a.batch_size):
            for sample in x_train[s:s + a.batch_size]:
                yield [sample[None]]

    conv = tf.lite.TFLiteConverter.from_keras_model(fixed)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    tflite = conv.convert()
    float_acc = float(np.mean(np.argmax(fixed.predict(x_val, batch_size=1, verbose=0), 1)
                              == y_val))
    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = i["quantization"]
    hits = 0
    for x, y in zip(x_val, y_val, strict=True):
        interp.set_tensor(i["index"], np.clip(np.round(x / scale + zero), -128, 127)
                          .astype(np.int8)[None])
        interp.invoke()
        hits += int(np.argmax(interp.get_tensor(o["index"])[0]) == y)
    end = time.monotonic()
    print(json.dumps({"total_s": round(end - t0, 3), "train_s": round(t_convert - t_train, 3),
                      "convert_eval_s": round(end - t_convert, 3), "float_accuracy": float_acc,
                      "int8_accuracy": hits / len(y_val), "tflite_bytes": len(tflite)}))


if __name__ == "__main__":
    main()
