"""On-device agreement (issue 13, item 1): held-out vectors drawn evenly across labels, their
host int8 outputs, and the virtual Nano 33 BLE's answers for them collected through a real
bridge process, compared and judged against a threshold. No TensorFlow: the artifact is the
real ``samples/models/shapes_int8.tflite`` and the host outputs come from LiteRT, as in the
compile worker."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter

import pytest

from backend_stub import agreement
from backend_stub.preprocess import split_ids
from backend_stub.storage import Compilation, Training
from backend_stub.synthetic import SHAPE_LABELS, shapes_entries
from hal.boards import fit_check, get_profile
from hal.errors import Cancelled
from hal.model.analysis import analyze
from tests.backend.conftest import VIRTUAL_DEVICE, upload
from tests.backend.test_bridges import SHAPES, _add_bridge, _wait_deployment

# ------------------------------------------------------------------------------ selection


def test_reproduction_vectors_no_longer_come_from_one_label():
    # The validation split is sorted by label; deploy used to send its first N images.
    index = {lb: list(range(100 * k, 100 * k + 10)) for k, lb in enumerate("abc")}
    _train, val = split_ids(index, 0.5, seed=0)
    assert [cls for _, cls in val[:4]] == [0, 0, 0, 0]  # the old choice: one label
    picks = agreement.stratified(val, 4)
    assert [cls for _, cls in picks] == [0, 1, 2, 0]
    assert len({i for i, _ in agreement.stratified(val)}) == len(val)  # each image once


def test_every_prefix_is_balanced_and_short_labels_run_out():
    val = [(i, 0) for i in range(1)] + [(10 + i, 1) for i in range(5)] + \
          [(20 + i, 2) for i in range(5)]
    picks = agreement.stratified(val)
    assert [c for _, c in picks] == [0, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2]
    ten_labels = [(100 * c + i, c) for c in range(10) for i in range(36)]
    counts = Counter(c for _, c in agreement.stratified(ten_labels, 32))
    assert set(counts) == set(range(10)) and max(counts.values()) - min(counts.values()) <= 1
    assert agreement.stratified([], 8) == [] and agreement.stratified(val, 0) == []


# ------------------------------------------------------------------------------ comparison

SENT = {"image_ids": [1, 2, 3], "expected": [0, 1, 2], "host_int8": [
    [100, -100, -128], [-128, 127, -128], [-128, -100, 100]], "host_top": [0, 1, 2],
    "input": {"scale": 1 / 255, "zero_point": -128},
    "output": {"scale": 0.00390625, "zero_point": -128}}


def _line(n: int, q: list[int]) -> dict:
    outs = [(v + 128) * 0.00390625 for v in q]
    return {"kind": "inference", "seq": n, "latency_us": 10, "outputs": outs,
            "top": max(range(len(q)), key=lambda i: (q[i], -i)), "label": ""}


def test_evaluate_exact_label_and_accuracy_rates():
    answers = {0: _line(1, [100, -100, -128]),            # exact
               1: _line(2, [-128, 126, -128])}            # one step off, same label
    r = agreement.evaluate(SENT, answers, ["a", "b", "c"], 0.95)
    assert r["vectors"] == 3 and r["answered"] == 2
    assert r["exact_output_match_rate"] == pytest.approx(1 / 3)
    assert r["label_match_rate"] == pytest.approx(2 / 3)  # the unanswered one counts against
    assert r["passed"] is False
    row = r["per_vector"][1]
    assert row["exact"] is False and row["device_int8"] == [-128, 126, -128]
    assert row["expected"] == row["host"] == row["device"] == "b"
    answers[2] = _line(3, [-128, 110, 100])               # the board says "b", host "c"
    r = agreement.evaluate(SENT, answers, ["a", "b", "c"], 0.6)
    assert r["label_match_rate"] == pytest.approx(2 / 3) and r["passed"] is True
    assert r["device_accuracy"] == pytest.approx(2 / 3) and r["host_accuracy"] == 1.0


class ScriptedBridge:
    """Stands in for the bridge's observe API with a fixed sequence of answers (the real
    bridge is used in the deployment tests below; this one reaches the corner cases)."""

    def __init__(self, pages: list[list[dict]]) -> None:
        self.pages = pages
        self.calls = 0

    def observe(self, device_id: str, lines: int) -> dict:
        page = self.pages[min(self.calls, len(self.pages) - 1)]
        self.calls += 1
        return {"lines": page, "last_seq": page[-1]["seq"] if page else 0}


def _entries(start: int, lines: list[dict]) -> list[dict]:
    return [{"seq": start + i, "at": "", "line": ln} for i, ln in enumerate(lines)]


SHA = "ab" * 32


def test_collect_reads_only_the_new_models_lines_and_follows_restarts(monkeypatch):
    monkeypatch.setattr(agreement, "_POLL_S", 0.01)
    old = {"kind": "boot", "sha": "cd" * 8}
    new = {"kind": "boot", "sha": SHA[:16]}
    page1 = _entries(1, [old, _line(5, [0, 0, 0]),        # before the install: ignored
                         new, _line(1, [100, -100, -128]), _line(2, [-128, 127, -128])])
    # The board restarts (n back to 1), then answers every vector.
    page2 = page1 + _entries(6, [new, _line(1, [1, 2, 3]), _line(2, [-128, 127, -128]),
                                 _line(3, [-128, -100, 100])])
    answers, complete = agreement.collect(ScriptedBridge([page1, page2]), "d", SHA, 3, 0,
                                          5.0, threading.Event())
    assert complete
    assert answers[0]["outputs"] == _line(1, [1, 2, 3])["outputs"]  # the restarted run's
    # Lines before the anchor (the install's start) are never read.
    answers, complete = agreement.collect(ScriptedBridge([page2]), "d", SHA, 3, 7, 0.2,
                                          threading.Event())
    assert not complete and answers == {}  # no announcement of our model after seq 7


def test_lines_before_the_announcement_count_once_it_proves_them_ours(monkeypatch):
    monkeypatch.setattr(agreement, "_POLL_S", 0.01)
    status = {"kind": "status", "sha": SHA[:16]}
    # The bridge consumed the boot line while verifying; n=1 and n=2 come before the next
    # announcement, and n=3 continues the same run.
    page = _entries(1, [_line(1, [100, -100, -128]), _line(2, [-128, 127, -128]), status,
                        _line(3, [-128, -100, 100])])
    answers, complete = agreement.collect(ScriptedBridge([page]), "d", SHA, 3, 0, 1.0,
                                          threading.Event())
    assert complete and [answers[i]["seq"] for i in range(3)] == [1, 2, 3]
    # Unannounced lines followed by a new boot (n restarts) are not the new run's.
    page = _entries(1, [_line(7, [0, 0, 0]), {"kind": "boot", "sha": SHA[:16]},
                        _line(1, [100, -100, -128])])
    answers, complete = agreement.collect(ScriptedBridge([page]), "d", SHA, 3, 0, 0.1,
                                          threading.Event())
    assert not complete and list(answers) == [0] and answers[0]["seq"] == 1
    # Lines of another model's announcement never count.
    page = _entries(1, [_line(1, [0, 0, 0]), {"kind": "status", "sha": "cd" * 8},
                        _line(2, [0, 0, 0])])
    answers, _ = agreement.collect(ScriptedBridge([page]), "d", SHA, 3, 0, 0.1,
                                   threading.Event())
    assert answers == {}


def test_collect_times_out_and_cancels(monkeypatch):
    monkeypatch.setattr(agreement, "_POLL_S", 0.01)
    page = _entries(1, [{"kind": "status", "sha": SHA[:16]}, _line(1, [0, 0, 0])])
    answers, complete = agreement.collect(ScriptedBridge([page]), "d", SHA, 2, 0, 0.1,
                                          threading.Event())
    assert not complete and list(answers) == [0]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        agreement.collect(ScriptedBridge([page]), "d", SHA, 2, 0, 5.0, cancel)


# ------------------------------------------------------------------------------ end to end


def _compiled_with_vectors(client, app, tamper: int = 0) -> int:
    """Shapes images, a training row with a stratified split, and a compilation holding the
    real shapes_int8 model with host int8 outputs (as the compile worker records them).
    ``tamper`` host records are changed to another class, to make the board disagree."""
    ds = upload(client, f"shapes-{time.monotonic_ns()}", shapes_entries(12, 32)).get_json()
    images = client.get(f"/datasets/{ds['id']}/images").get_json()["images"]
    index: dict[str, list[int]] = {}
    for img in images:
        index.setdefault(img["label"], []).append(img["id"])
    train, val = split_ids(index, 0.5, seed=0)
    params = {"image_width": 32, "image_height": 32, "color_mode": "grayscale", "epochs": 1}
    model = SHAPES.read_bytes()
    report = analyze(model, board="nano33ble")
    store = app.extensions["tinyml_backend"].store
    from backend_stub.datasets import load_images

    with store.session() as s:
        blobs = load_images(s, [i for i, _ in val])
    vin, vout = report.inputs[0], report.outputs[0]
    record = agreement.host_vectors(model, (vin.scale, vin.zero_point),
                                    (vout.scale, vout.zero_point), agreement.stratified(val),
                                    blobs, params)
    for i in range(tamper):  # the host "said" another class for these vectors
        top = record["host_top"][i]
        record["host_top"][i] = (top + 1) % 3
        record["host_int8"][i] = [127 if k == (top + 1) % 3 else -128 for k in range(3)]
    with store.session() as s:
        t = Training(dataset_id=ds["id"], state="succeeded", labels=list(SHAPE_LABELS),
                     params=params, split={"train": train, "validation": val})
        s.add(t)
        s.flush()
        comp = Compilation(training_id=t.id, board="nano33ble", state="succeeded",
                           artifact=model, sha256=hashlib.sha256(model).hexdigest(),
                           vectors=record,
                           report={"model": report.to_dict(), "fit": fit_check(
                               report, get_profile("nano33ble")).to_dict()})
        s.add(comp)
        s.flush()
        return comp.id


def test_deployment_reports_on_device_agreement(sqlite_client, sqlite_app, real_bridge):
    c = sqlite_client
    comp = _compiled_with_vectors(c, sqlite_app)
    bid = _add_bridge(c, real_bridge.url)
    r = c.post("/deployments", json={"compilation_id": comp, "bridge_id": bid,
                                     "device_id": VIRTUAL_DEVICE, "input_vectors": 9})
    assert r.status_code == 202, r.get_json()
    dep = _wait_deployment(c, r.get_json()["id"])
    assert dep["state"] == "succeeded", dep
    sent = dep["vectors"]
    assert Counter(sent["expected"]) == {0: 3, 1: 3, 2: 3}  # evenly across the labels
    assert len(sent["host_int8"]) == 9 and dep["params"]["input_vectors_sent"] == 9
    a = dep["agreement"]
    assert a["state"] == "passed", a
    assert a["vectors"] == a["answered"] == 9
    assert a["exact_output_match_rate"] == 1.0  # TFLM on the board == LiteRT on the host
    assert a["label_match_rate"] == 1.0
    assert a["device_accuracy"] == a["host_accuracy"]
    assert [row["expected"] for row in a["per_vector"][:3]] == list(SHAPE_LABELS)
    assert all(row["exact"] and row["n"] >= 1 for row in a["per_vector"])
    from backend_stub.cli import _agreement_text

    assert _agreement_text(a) == (
        "on-device agreement passed: 9/9 vectors answered; exact int8 outputs 100.00%, labels "
        f"100.00% (minimum 95.00%); accuracy on the board {a['device_accuracy']:.2%}, on the "
        f"host {a['host_accuracy']:.2%}")


def test_board_too_slow_to_answer_is_a_timeout(sqlite_client, sqlite_app, real_bridge):
    c = sqlite_client
    comp = _compiled_with_vectors(c, sqlite_app)
    r = c.post("/deployments", json={"compilation_id": comp,
                                     "bridge_id": _add_bridge(c, real_bridge.url),
                                     "device_id": VIRTUAL_DEVICE, "input_vectors": 18,
                                     "agreement_timeout_s": 0.5})
    dep = _wait_deployment(c, r.get_json()["id"])
    assert dep["state"] == "failed" and dep["error"]["code"] == "timeout", dep
    assert dep["error"]["detail"]["vectors"] == 18
    assert dep["error"]["detail"]["answered"] < 18
    assert dep["agreement"]["state"] == "timeout"


def test_cancel_while_collecting(sqlite_client, sqlite_app, real_bridge):
    c = sqlite_client
    comp = _compiled_with_vectors(c, sqlite_app)
    r = c.post("/deployments", json={"compilation_id": comp,
                                     "bridge_id": _add_bridge(c, real_bridge.url),
                                     "device_id": VIRTUAL_DEVICE, "input_vectors": 18})
    dep_id = r.get_json()["id"]
    end = time.monotonic() + 60
    while time.monotonic() < end:
        dep = c.get(f"/deployments/{dep_id}").get_json()
        if (dep.get("agreement") or {}).get("state") == "collecting" or \
                dep["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert dep["agreement"]["state"] == "collecting", dep
    assert c.post(f"/deployments/{dep_id}/cancel").status_code == 202
    dep = _wait_deployment(c, dep_id)
    assert dep["state"] == "cancelled", dep
    assert dep["agreement"]["state"] == "cancelled"
    assert "board runs the new model" in dep["error"]["message"]


def test_deployment_below_the_threshold_is_reported(sqlite_client, sqlite_app, real_bridge):
    c = sqlite_client
    comp = _compiled_with_vectors(c, sqlite_app, tamper=3)
    bid = _add_bridge(c, real_bridge.url)
    r = c.post("/deployments", json={"compilation_id": comp, "bridge_id": bid,
                                     "device_id": VIRTUAL_DEVICE, "input_vectors": 6,
                                     "min_agreement": 0.9})
    dep = _wait_deployment(c, r.get_json()["id"])
    assert dep["state"] == "failed", dep
    err = dep["error"]
    assert err["code"] == "agreement_low" and err["class"] == "device"
    assert err["detail"]["label_match_rate"] == 0.5 and err["detail"]["min_agreement"] == 0.9
    assert "50.00% of 6 vectors" in err["message"] and "board runs the new model" in \
        err["message"]
    assert dep["agreement"]["state"] == "below_threshold"
    assert dep["bridge_job"]["state"] == "succeeded"  # the install itself was verified
    # The same deployment with a threshold it meets succeeds.
    r = c.post("/deployments", json={"compilation_id": comp, "bridge_id": bid,
                                     "device_id": VIRTUAL_DEVICE, "input_vectors": 6,
                                     "min_agreement": 0.5})
    dep = _wait_deployment(c, r.get_json()["id"])
    assert dep["state"] == "succeeded" and dep["agreement"]["state"] == "passed", dep


@pytest.mark.parametrize(("body", "field"), [
    ({"min_agreement": 1.5}, "min_agreement"), ({"min_agreement": "all"}, "min_agreement"),
    ({"min_agreement": float("nan")}, "min_agreement"),
    ({"min_agreement": -1e308}, "min_agreement"),
    ({"agreement_timeout_s": 0}, "agreement_timeout_s"),
    ({"agreement_timeout_s": 1e9}, "agreement_timeout_s"),
])
def test_agreement_options_validated(sqlite_client, body, field):
    r = sqlite_client.post("/deployments", json={"compilation_id": 1, "bridge_id": 1,
                                                 "device_id": "d", **body})
    assert r.status_code == 422
    assert [e["field"] for e in r.get_json()["detail"]["errors"]] == [field]


def test_compilation_without_host_outputs_deploys_without_a_check(sqlite_client, sqlite_app,
                                                                  real_bridge):
    """Compilations made before host outputs were recorded: the install is verified as
    before, and the agreement says why it was not checked."""
    from tests.backend.test_bridges import _compiled_artifact

    comp = _compiled_artifact(sqlite_client, sqlite_app)
    bid = _add_bridge(sqlite_client, real_bridge.url)
    r = sqlite_client.post("/deployments", json={"compilation_id": comp, "bridge_id": bid,
                                                 "device_id": VIRTUAL_DEVICE,
                                                 "input_vectors": 3})
    dep = _wait_deployment(sqlite_client, r.get_json()["id"])
    assert dep["state"] == "succeeded", dep
    assert dep["agreement"]["state"] == "unavailable"
    assert "compile again" in dep["agreement"]["reason"]
    assert dep["vectors"] is None and dep["params"]["input_vectors_sent"] == 3
