"""Per-label metrics (issue 13, item 2): the computation, the JSON and PNG endpoints of
trainings and compilations, and the CLI. The figures here are stored rows; the train suite
checks that the workers store them (tests/backend/test_train.py)."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from PIL import Image

from backend_stub.cli import cli
from backend_stub.metrics import confusion_png, label_metrics, per_label
from backend_stub.storage import Compilation, Training
from tests.backend.conftest import TOKEN

LABELS = ["cat", "dog", "owl"]


def test_confusion_precision_and_recall():
    m = label_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 1], LABELS)
    assert m["confusion"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert m["samples"] == 6 and m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    cat, dog, owl = m["labels"]
    assert (cat["precision"], cat["recall"], cat["support"]) == (1.0, pytest.approx(2 / 3,
                                                                                     abs=1e-6), 3)
    assert (dog["precision"], dog["recall"], dog["predicted"]) == (0.5, 1.0, 4)
    assert owl["precision"] is None and owl["recall"] == 0.0  # never predicted: 0/0
    empty = label_metrics([], [], LABELS)
    assert empty["accuracy"] is None and all(r["recall"] is None for r in empty["labels"])


def test_bad_predictions_are_refused():
    with pytest.raises(ValueError):
        label_metrics([0, 1], [0], LABELS)
    with pytest.raises(ValueError):
        label_metrics([0, 3], [0, 1], LABELS)
    with pytest.raises(ValueError):
        label_metrics([0, -1], [0, 1], LABELS)


@pytest.mark.parametrize("k", [2, 10, 40])
def test_png_for_few_and_many_labels(k):
    labels = [f"label-{i}" for i in range(k)]
    y = [i % k for i in range(5 * k)]
    png = confusion_png(label_metrics(y, [(v + (v % 3 == 0)) % k for v in y], labels), "t")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size[0] >= 400


def _rows(app) -> tuple[int, int]:
    """A training and a compilation with stored per-label metrics (as the workers store)."""
    y = [0, 0, 1, 1, 2, 2]
    with app.extensions["tinyml_backend"].store.session() as s:
        t = Training(state="succeeded", params={"epochs": 1}, labels=LABELS,
                     per_label=per_label(y, LABELS, float=[0, 0, 1, 1, 2, 1]))
        s.add(t)
        s.flush()
        c = Compilation(training_id=t.id, board="nano33ble", state="succeeded",
                        per_label=per_label(y, LABELS, float=[0, 0, 1, 1, 2, 1],
                                            int8=[0, 1, 1, 1, 2, 1]))
        bare = Training(state="running", params={"epochs": 1})
        s.add_all([c, bare])
        s.flush()
        return t.id, c.id


def test_json_and_png_endpoints(client, app):
    tid, cid = _rows(app)
    body = client.get(f"/trainings/{tid}/per-label").get_json()
    assert body["training_id"] == tid and body["labels"] == LABELS
    assert body["float"]["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert body["int8"] is None
    body = client.get(f"/compilations/{cid}/per-label").get_json()
    assert body["compilation_id"] == cid and body["training_id"] == tid
    assert body["int8"]["labels"][0]["recall"] == 0.5
    for path in (f"/trainings/{tid}/confusion.png", f"/compilations/{cid}/confusion.png",
                 f"/compilations/{cid}/confusion.png?model=float"):
        r = client.get(path)
        assert r.status_code == 200 and r.mimetype == "image/png", path
        with Image.open(io.BytesIO(r.data)) as img:
            img.load()
    assert client.get(f"/compilations/{cid}/confusion.png?model=int8").data != \
        client.get(f"/compilations/{cid}/confusion.png?model=float").data


@pytest.mark.parametrize("path", [
    "/trainings/{bare}/per-label", "/trainings/{bare}/confusion.png",
    "/trainings/999/per-label", "/compilations/999/confusion.png",
])
def test_missing_metrics_are_404(sqlite_client, sqlite_app, path):
    tid, _ = _rows(sqlite_app)
    r = sqlite_client.get(path.format(bare=tid + 1))
    assert r.status_code == 404 and r.get_json()["code"] == "not_found"


@pytest.mark.parametrize("model", ["int4", "", "x" * 5000, "<script>"])
def test_bad_model_query_is_422(sqlite_client, sqlite_app, model):
    _, cid = _rows(sqlite_app)
    r = sqlite_client.get(f"/compilations/{cid}/confusion.png", query_string={"model": model})
    assert r.status_code == 422 and r.get_json()["code"] == "bad_option"
    assert len(r.get_json()["message"]) < 200


def test_cli_prints_tables_and_writes_the_png(live_server, tmp_path):
    tid, cid = _rows(live_server.app)

    def run(*args: str):
        return CliRunner().invoke(cli, [*args, "--url", live_server.url, "--token", TOKEN],
                                  catch_exceptions=False)

    r = run("trainings", "per-label", str(tid))
    assert r.exit_code == 0, r.output
    assert "float: accuracy 0.8333 on 6 validation images" in r.output
    assert "owl    2       1          1.0000     0.5000" in r.output
    assert "TRUE\\PRED" in r.output and "int8" not in r.output
    out = tmp_path / "c.png"
    r = run("compilations", "per-label", str(cid), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "int8: accuracy 0.6667" in r.output and f"wrote {out}" in r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("trainings", "per-label", "999")
    assert r.exit_code == 1 and "not_found" in r.output
