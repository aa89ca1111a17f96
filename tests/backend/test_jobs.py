"""Training and compiling jobs without TensorFlow: parameter validation, worker crashes,
cancellation, a killed worker, and the web process staying free of TensorFlow. The worker is
the real ``python -m backend_stub.worker`` process; faults are injected after it has loaded
its data (``TINYML_WORKER_FAULT``), before it would import TensorFlow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from backend_stub.storage import Training
from tests.backend.conftest import dataset_entries, upload


def wait_state(client, path: str, states=("succeeded", "failed", "cancelled"),
               timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        body = client.get(f"{path}?wait=2").get_json()
        if body["state"] in states:
            return body
        if time.monotonic() > end:
            raise AssertionError(f"{path} still {body['state']} after {timeout} s: {body}")


def _dataset(client, name="d", labels=("a", "b"), per_label=4) -> int:
    r = upload(client, name, dataset_entries(labels, per_label))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


@pytest.fixture
def fault_app(make_app, tmp_path):
    def build(fault: str):
        app = make_app(f"sqlite:///{tmp_path / f'{fault}.sqlite3'}",
                       worker_env={"TINYML_WORKER_FAULT": fault})
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-token-0123456789"
        return app, c
    return build


@pytest.mark.parametrize(("body", "field"), [
    ({"epochs": 0}, "epochs"),
    ({"epochs": "ten"}, "epochs"),
    ({"image_width": 4}, "image_width"),
    ({"image_height": 10_000}, "image_height"),
    ({"color_mode": "cmyk"}, "color_mode"),
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": 5}, "learning_rate"),
    ({"validation_split": 0}, "validation_split"),
    ({"validation_split": 0.9}, "validation_split"),
    ({"conv_filters": []}, "conv_filters"),
    ({"conv_filters": [8, 9999]}, "conv_filters"),
    ({"dropout": 1.0}, "dropout"),
    ({"optimizer": "sgd"}, "optimizer"),
])
def test_training_parameters_validated(sqlite_client, body, field):
    ds = _dataset(sqlite_client)
    r = sqlite_client.post("/trainings", json={"dataset_id": ds, **body})
    assert r.status_code == 422, r.get_json()
    err = r.get_json()
    assert err["code"] == "bad_option"
    assert any(e["field"].startswith(field) for e in err["detail"]["errors"]), err
    assert sqlite_client.get("/trainings").get_json()["trainings"] == []


def test_training_refuses_unusable_datasets(sqlite_client):
    assert sqlite_client.post("/trainings", json={"dataset_id": 99}).status_code == 404
    assert sqlite_client.post("/trainings", data="x").status_code == 400
    ds = _dataset(sqlite_client)
    for label in ("b",):
        sqlite_client.delete(f"/datasets/{ds}/labels/{label}")
    r = sqlite_client.post("/trainings", json={"dataset_id": ds})
    assert r.status_code == 422 and r.get_json()["code"] == "dataset_invalid"


def test_crashing_worker_marks_job_failed_and_web_keeps_serving(fault_app):
    _app, c = fault_app("raise")
    ds = _dataset(c)
    r = c.post("/trainings", json={"dataset_id": ds, "epochs": 1})
    assert r.status_code == 202
    job = wait_state(c, f"/trainings/{r.get_json()['id']}")
    assert job["state"] == "failed"
    assert job["error"]["code"] == "internal"
    assert "injected worker fault" in job["error"]["message"]
    assert c.get("/health").get_json()["status"] == "ok"
    assert c.get(f"/datasets/{ds}").status_code == 200
    assert c.get(f"/trainings/{job['id']}/curves.png").status_code == 404


def test_worker_dying_is_reported_with_its_exit_status(fault_app):
    _app, c = fault_app("exit")
    ds = _dataset(c)
    tid = c.post("/trainings", json={"dataset_id": ds}).get_json()["id"]
    job = wait_state(c, f"/trainings/{tid}")
    assert job["state"] == "failed"
    assert job["error"]["code"] == "interrupted"
    assert "exited with status 3" in job["error"]["message"]


def test_cancel_kills_the_worker(fault_app):
    app, c = fault_app("hang")
    ds = _dataset(c)
    tid = c.post("/trainings", json={"dataset_id": ds}).get_json()["id"]
    store = app.extensions["tinyml_backend"].store
    pid = _wait_pid(store, tid)
    assert c.get(f"/trainings/{tid}").get_json()["state"] == "running"
    r = c.post(f"/trainings/{tid}/cancel")
    assert r.status_code == 202
    job = wait_state(c, f"/trainings/{tid}")
    assert job["state"] == "cancelled" and job["error"]["code"] == "cancelled"
    _assert_gone(pid)
    assert c.post(f"/trainings/{tid}/cancel").status_code == 409
    assert c.get("/health").get_json()["jobs_running"] == 0


def test_externally_killed_worker_is_reported(fault_app):
    """The OOM killer (or anyone) kills the worker: the job fails, naming the signal."""
    app, c = fault_app("hang")
    ds = _dataset(c)
    tid = c.post("/trainings", json={"dataset_id": ds}).get_json()["id"]
    pid = _wait_pid(app.extensions["tinyml_backend"].store, tid)
    os.kill(pid, signal.SIGKILL)
    job = wait_state(c, f"/trainings/{tid}")
    assert job["state"] == "failed" and job["error"]["code"] == "interrupted"
    assert "SIGKILL" in job["error"]["message"]
    assert c.get("/health").status_code == 200


def test_queued_job_cancel_and_dataset_deleted_while_queued(fault_app):
    """One worker at a time: the second and third trainings queue behind a hanging one."""
    app, c = fault_app("hang")
    ds1, ds2 = _dataset(c, "one"), _dataset(c, "two")
    first = c.post("/trainings", json={"dataset_id": ds1}).get_json()["id"]
    second = c.post("/trainings", json={"dataset_id": ds2}).get_json()["id"]
    third = c.post("/trainings", json={"dataset_id": ds1}).get_json()["id"]
    _wait_pid(app.extensions["tinyml_backend"].store, first)
    assert c.get(f"/trainings/{second}").get_json()["state"] == "queued"
    r = c.post(f"/trainings/{third}/cancel")
    assert r.status_code == 202 and r.get_json()["state"] == "cancelled"
    assert c.delete(f"/datasets/{ds2}").status_code == 204
    c.post(f"/trainings/{first}/cancel")
    job = wait_state(c, f"/trainings/{second}")
    assert job["state"] == "failed" and job["error"]["code"] == "not_found"
    assert "dataset was deleted" in job["error"]["message"]
    assert wait_state(c, f"/trainings/{third}")["state"] == "cancelled"


def test_chained_compilation_ends_with_its_failed_training(fault_app):
    _app, c = fault_app("raise")
    ds = _dataset(c)
    r = c.post("/trainings", json={"dataset_id": ds, "compile_board": "nano99"})
    assert r.status_code == 422 and r.get_json()["code"] == "unknown_board"
    assert c.get("/compilations").get_json()["compilations"] == []
    r = c.post("/trainings", json={"dataset_id": ds, "compile_board": "nano33ble"})
    assert r.status_code == 202
    link = r.get_json()["links"]["compilation"]
    job = wait_state(c, f"/trainings/{r.get_json()['id']}")
    assert job["state"] == "failed"
    comp = wait_state(c, link)
    assert comp["state"] == "failed" and comp["board"] == "nano33ble"
    assert comp["error"]["code"] == "internal"
    assert f"training {job['id']} did not succeed" in comp["error"]["message"]
    assert c.post(f"/trainings/{job['id']}/cancel").status_code == 409


def test_cancelling_a_chained_compilation_while_training_cancels_it(fault_app):
    app, c = fault_app("hang")
    ds = _dataset(c)
    r = c.post("/trainings", json={"dataset_id": ds, "compile_board": "nano33ble"}).get_json()
    _wait_pid(app.extensions["tinyml_backend"].store, r["id"])
    comp_path = r["links"]["compilation"]
    assert c.post(f"{comp_path}/cancel").status_code == 202
    assert wait_state(c, comp_path)["state"] == "cancelled"
    # The training keeps running on its own; cancel it too.
    assert c.get(f"/trainings/{r['id']}").get_json()["state"] == "running"
    c.post(f"/trainings/{r['id']}/cancel")
    assert wait_state(c, f"/trainings/{r['id']}")["state"] == "cancelled"


def test_compile_requires_a_succeeded_training_and_known_board(fault_app):
    _app, c = fault_app("raise")
    ds = _dataset(c)
    tid = c.post("/trainings", json={"dataset_id": ds}).get_json()["id"]
    wait_state(c, f"/trainings/{tid}")
    r = c.post("/compilations", json={"training_id": tid})
    assert r.status_code == 409
    r = c.post("/compilations", json={"training_id": tid, "board": "nano99"})
    assert r.status_code == 422 and r.get_json()["code"] == "unknown_board"
    assert c.post("/compilations", json={"training_id": 1234}).status_code == 404


def test_restart_marks_running_jobs_interrupted(make_app, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    app = make_app(url, worker_env={"TINYML_WORKER_FAULT": "hang"})
    store = app.extensions["tinyml_backend"].store
    with store.session() as s:
        s.add(Training(params={"epochs": 1}, state="running"))
    app2 = make_app(url)
    c = app2.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-token-0123456789"
    job = c.get("/trainings/1").get_json()
    assert job["state"] == "failed" and job["error"]["code"] == "interrupted"


def test_web_process_never_imports_tensorflow(tmp_path):
    """A fresh process builds the app and drives datasets, a training (whose worker is
    killed) and a compilation request; TensorFlow and Keras never enter its sys.modules."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from backend_stub.app import create_app
        from tests.backend.conftest import make_config, make_zip, dataset_entries
        app = create_app(make_config("sqlite:///{tmp_path}/tf.sqlite3",
                                     worker_env={{"TINYML_WORKER_FAULT": "hang"}}))
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-token-0123456789"
        assert c.post("/datasets?name=d", data=make_zip(dataset_entries()),
                      content_type="application/zip").status_code == 201
        c.get("/datasets/1/archive").data
        tid = c.post("/trainings", json={{"dataset_id": 1}}).get_json()["id"]
        while c.get(f"/trainings/{{tid}}").get_json()["state"] != "running":
            time.sleep(0.1)
        c.get(f"/trainings/{{tid}}/metrics"); c.get("/openapi.json")
        c.post(f"/trainings/{{tid}}/cancel")
        c.post("/compilations", json={{"training_id": tid}})
        app.extensions["tinyml_backend"].close()
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tflite_micro",
                                              "ai_edge_litert", "matplotlib"))
        print("HEAVY", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout, out.stdout


def _wait_pid(store, training_id: int, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with store.session() as s:
            t = s.get(Training, training_id)
            if t.pid and t.state == "running":
                return t.pid
        time.sleep(0.05)
    raise AssertionError("the worker never recorded its pid")


def _assert_gone(pid: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} still alive")
