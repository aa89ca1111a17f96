"""Harder data end to end (issue 13, item 7; marker ``train``): scikit-learn's bundled 8x8
handwritten digits (1,797 images, ten labels, no download). A fifth of them is held out before
anything reaches the backend; the rest is uploaded, trained on and compiled to int8 in the
worker, the artifact is downloaded and measured on the held-out fifth here with LiteRT and
this file's own preprocessing (int8 accuracy >= 0.95), then deployed through a real bridge
process to a virtual Nano 33 BLE with 20 vectors (two per digit), whose answers must equal
the host int8 model's exactly."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from backend_stub.synthetic import digits_entries
from tests.backend.conftest import VIRTUAL_DEVICE, make_zip
from tests.backend.test_bridges import _add_bridge, _wait_deployment
from tests.backend.test_jobs import wait_state

pytestmark = pytest.mark.train

# Few epochs keep the train suite short (~15 s of training on 2 vCPUs); 0.98 held out.
PARAMS = {"image_width": 8, "image_height": 8, "conv_filters": [8, 16], "epochs": 15,
          "batch_size": 32, "learning_rate": 0.01, "dropout": 0.1, "seed": 1}


def _held_out_split() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    return train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)


def _int8_accuracy(tflite: bytes, indices: np.ndarray) -> float:
    """Top-1 accuracy of the int8 model on the given digits, from scikit-learn's arrays: pixel
    0..16 -> the 0..255 stored in the PNG -> /255, quantised with the input tensor's scale."""
    from ai_edge_litert.interpreter import Interpreter
    from sklearn.datasets import load_digits

    digits = load_digits()
    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    correct = 0
    for i in indices:
        real = np.clip(np.round(digits.images[i] * (255.0 / 16.0)), 0, 255) / 255.0
        q = np.clip(np.round(real / scale + zero), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q.reshape(inp["shape"]))
        interp.invoke()
        correct += int(np.argmax(interp.get_tensor(out["index"])[0]) == digits.target[i])
    return correct / len(indices)


def test_digits_end_to_end_with_on_device_agreement(sqlite_client, real_bridge):
    c = sqlite_client
    train_idx, held_out = _held_out_split()
    r = c.post("/datasets?name=digits", data=make_zip(digits_entries(train_idx)),
               content_type="application/zip")
    assert r.status_code == 201, r.get_json()
    ds = r.get_json()
    assert ds["images"] == len(train_idx) and sorted(ds["labels"]) == [str(d) for d in range(10)]

    r = c.post("/trainings", json={"dataset_id": ds["id"], "compile_board": "nano33ble",
                                   **PARAMS})
    assert r.status_code == 202, r.get_json()
    t = wait_state(c, f"/trainings/{r.get_json()['id']}", timeout=600)
    assert t["state"] == "succeeded", t
    comp = wait_state(c, t["links"]["compilation"], timeout=600)
    assert comp["state"] == "succeeded", comp
    acc = comp["report"]["accuracy"]

    tflite = c.get(f"/compilations/{comp['id']}/model.tflite").data
    held_acc = _int8_accuracy(tflite, held_out)
    per_label = c.get(f"/compilations/{comp['id']}/per-label").get_json()
    worst = min(per_label["int8"]["labels"], key=lambda row: row["recall"])

    r = c.post("/deployments", json={"compilation_id": comp["id"],
                                     "bridge_id": _add_bridge(c, real_bridge.url),
                                     "device_id": VIRTUAL_DEVICE, "input_vectors": 20})
    assert r.status_code == 202, r.get_json()
    dep = _wait_deployment(c, r.get_json()["id"], timeout=180)
    agr = dep["agreement"]
    print(f"\ndigits: float {acc['float']:.4f}, int8 {acc['int8']:.4f} on the backend's "
          f"{acc['validation_samples']} validation images; int8 {held_acc:.4f} on "
          f"{len(held_out)} held-out images; worst int8 recall {worst['label']} "
          f"{worst['recall']:.3f}; on-device agreement: {agr}")
    assert held_acc >= 0.95, held_acc
    assert dep["state"] == "succeeded", dep
    assert Counter(dep["vectors"]["expected"]) == {d: 2 for d in range(10)}
    assert agr["state"] == "passed" and agr["answered"] == 20
    assert agr["exact_output_match_rate"] == 1.0 and agr["label_match_rate"] == 1.0
    assert agr["device_accuracy"] == agr["host_accuracy"]
