"""Real training and int8 compiling with TensorFlow in the worker process (marker ``train``)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from backend_stub.synthetic import shapes_entries
from tests.backend.conftest import AUTH, upload
from tests.backend.test_jobs import _assert_gone, _wait_pid, wait_state

pytestmark = pytest.mark.train


def _shapes_dataset(client, per_label=16, size=32, mode="L") -> int:
    r = upload(client, f"shapes-{size}-{mode}", shapes_entries(per_label, size, mode))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def test_train_then_compile_int8(client, app):
    ds = _shapes_dataset(client)
    r = client.post("/trainings", json={"dataset_id": ds, "epochs": 12, "image_width": 32,
                                        "image_height": 32, "batch_size": 8,
                                        "learning_rate": 0.005})
    assert r.status_code == 202, r.get_json()
    tid = r.get_json()["id"]
    assert "epochs" not in r.get_json() and "curves" not in r.get_json()["links"].get("x", "")

    # Progress is visible while the worker trains.
    seen_running = None
    end = time.monotonic() + 240
    while time.monotonic() < end:
        t = client.get(f"/trainings/{tid}").get_json()
        if t["state"] == "running" and 0 < t["progress"]["epoch"] < 12:
            seen_running = t["progress"]
        if t["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert t["state"] == "succeeded", t
    assert seen_running is not None and seen_running["last"]["loss"] is not None
    assert t["labels"] == ["blank", "square", "stripes"]

    metrics = client.get(f"/trainings/{tid}/metrics").get_json()
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 13))
    assert all(e["val_accuracy"] is not None for e in metrics["epochs"])
    assert metrics["final"]["val_accuracy"] >= 0.8, metrics
    png = client.get(f"/trainings/{tid}/curves.png")
    assert png.mimetype == "image/png"
    with Image.open(io.BytesIO(png.data)) as img:
        assert img.format == "PNG" and img.size[0] > 300
    assert len(client.get(f"/trainings/{tid}/model.keras").data) > 1000

    r = client.post("/compilations", json={"training_id": tid})
    assert r.status_code == 202
    comp = wait_state(client, f"/compilations/{r.get_json()['id']}", timeout=240)
    assert comp["state"] == "succeeded", comp
    rep = comp["report"]
    model = rep["model"]
    assert model["int8"] is True
    assert model["inputs"][0]["shape"] == [1, 32, 32, 1]  # batch 1: static shapes
    assert model["inputs"][0]["dtype"] == "int8" and model["outputs"][0]["dtype"] == "int8"
    assert set(model["ops"]) == {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED",
                                 "SOFTMAX"}
    assert rep["fit"]["fits"] is True and rep["fit"]["board"] == "nano33ble"
    acc = rep["accuracy"]
    assert acc["representative_samples"] == metrics["final"]["train_samples"]
    assert acc["float"] >= 0.8 and abs(acc["float"] - acc["int8"]) <= 0.15, acc

    # The artifact really is what the report says, and it runs under LiteRT.
    from ai_edge_litert.interpreter import Interpreter

    blob = client.get(f"/compilations/{comp['id']}/model.tflite").data
    assert len(blob) == comp["size_bytes"]
    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    out = interp.get_output_details()[0]
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=np.int8))
    interp.invoke()
    scores = interp.get_tensor(out["index"]).astype(np.float32)
    probs = (scores - out["quantization"][1]) * out["quantization"][0]
    assert abs(float(probs.sum()) - 1.0) < 0.05  # softmax is the last op

    # Per-label metrics are stored with the training (float) and compilation (float, int8),
    # and agree with the overall figures.
    tpl = client.get(f"/trainings/{tid}/per-label").get_json()
    assert tpl["labels"] == ["blank", "square", "stripes"]
    assert tpl["float"]["samples"] == metrics["final"]["validation_samples"]
    assert abs(tpl["float"]["accuracy"] - metrics["final"]["val_accuracy"]) < 1e-4
    cpl = client.get(f"/compilations/{comp['id']}/per-label").get_json()
    assert abs(cpl["int8"]["accuracy"] - acc["int8"]) < 1e-6
    assert abs(cpl["float"]["accuracy"] - acc["float"]) < 1e-6
    assert sum(map(sum, cpl["int8"]["confusion"])) == acc["validation_samples"]
    assert client.get(f"/compilations/{comp['id']}/confusion.png").mimetype == "image/png"

    # Held-out vectors drawn evenly across labels, with the host int8 outputs.
    store = app.extensions["tinyml_backend"].store
    from backend_stub.storage import Compilation

    with store.session() as s:
        vec = s.get(Compilation, comp["id"]).vectors
    n = acc["validation_samples"]
    assert len(vec["image_ids"]) == min(n, 64)
    assert vec["expected"][:3] == [0, 1, 2]
    assert all(len(o) == 3 for o in vec["host_int8"])


def test_artifact_that_cannot_fit_is_rejected_before_deploy(sqlite_client):
    c = sqlite_client
    ds = _shapes_dataset(c, per_label=6, size=64, mode="RGB")
    r = c.post("/trainings", json={"dataset_id": ds, "epochs": 1, "image_width": 160,
                                   "image_height": 160, "color_mode": "rgb",
                                   "conv_filters": [32], "batch_size": 4})
    t = wait_state(c, f"/trainings/{r.get_json()['id']}", timeout=240)
    assert t["state"] == "succeeded", t
    cid = c.post("/compilations", json={"training_id": t["id"]}).get_json()["id"]
    comp = wait_state(c, f"/compilations/{cid}", timeout=240)
    assert comp["state"] == "failed"
    assert comp["error"]["code"] == "fit_ram", comp["error"]
    assert comp["error"]["detail"]["ram_margin_bytes"] < 0
    assert comp["report"]["fit"]["fits"] is False  # kept for inspection
    r = c.get(f"/compilations/{comp['id']}/model.tflite")
    assert r.status_code == 422 and r.get_json()["code"] == "fit_ram"
    r = c.post("/bridges", json={"name": "b", "url": "http://127.0.0.1:9"})
    r = c.post("/deployments", json={"compilation_id": comp["id"],
                                     "bridge_id": r.get_json()["id"], "device_id": "any"})
    assert r.status_code == 422 and r.get_json()["code"] == "fit_ram"
    # The same training compiled for a Linux board fits.
    r = c.post("/compilations", json={"training_id": t["id"], "board": "rpi64"})
    assert wait_state(c, f"/compilations/{r.get_json()['id']}", timeout=240)["state"] == \
        "succeeded"


def test_cancel_a_real_training(sqlite_client, sqlite_app):
    c = sqlite_client
    ds = _shapes_dataset(c, per_label=10)
    tid = c.post("/trainings", json={"dataset_id": ds, "epochs": 1000, "image_width": 32,
                                     "image_height": 32, "batch_size": 2}).get_json()["id"]
    pid = _wait_pid(sqlite_app.extensions["tinyml_backend"].store, tid, timeout=60)
    end = time.monotonic() + 120
    while c.get(f"/trainings/{tid}").get_json()["progress"]["epoch"] < 1:
        assert time.monotonic() < end
        time.sleep(0.1)
    assert c.post(f"/trainings/{tid}/cancel", headers=AUTH).status_code == 202
    t = wait_state(c, f"/trainings/{tid}")
    assert t["state"] == "cancelled" and 1 <= t["progress"]["epoch"] < 1000
    _assert_gone(pid)
    assert c.get("/health").get_json()["jobs_running"] == 0


def test_train_and_compile_in_one_worker(sqlite_client):
    c = sqlite_client
    ds = _shapes_dataset(c, per_label=10)
    r = c.post("/trainings", json={"dataset_id": ds, "epochs": 6, "image_width": 32,
                                   "image_height": 32, "batch_size": 8, "learning_rate": 0.005,
                                   "compile_board": "nano33ble"})
    assert r.status_code == 202
    link = r.get_json()["links"]["compilation"]
    assert c.get(link).get_json()["state"] == "queued"
    assert wait_state(c, f"/trainings/{r.get_json()['id']}", timeout=240)["state"] == \
        "succeeded"
    comp = wait_state(c, link, timeout=240)
    assert comp["state"] == "succeeded", comp
    assert comp["report"]["model"]["int8"] is True and comp["report"]["fit"]["fits"] is True
    assert c.get(f"{link}/model.tflite").status_code == 200


@pytest.mark.parametrize(("size", "filters", "chans", "classes"), [
    ((8, 8), [8, 8, 8], 1, 10), ((8, 8), [8, 8, 8, 8], 1, 10), ((48, 32), [8, 16], 3, 3),
    ((9, 17), [4, 4, 4], 1, 2),
])
def test_early_validation_agrees_with_keras(size, filters, chans, classes):
    """The web process's shape arithmetic (no TensorFlow) says exactly what Keras does:
    refused combinations raise when built, accepted ones build with that many parameters."""
    from backend_stub.architecture import shapes, training_problems
    from backend_stub.training import build_model

    width, height = size
    params = {"image_width": width, "image_height": height,
              "color_mode": "grayscale" if chans == 1 else "rgb", "conv_filters": filters}
    problems = training_problems(params, classes, 10)
    if problems:
        with pytest.raises(ValueError):
            build_model(classes, height, width, chans, filters)
    else:
        model = build_model(classes, height, width, chans, filters)
        assert model.count_params() == shapes(height, width, chans, filters, classes).parameters
