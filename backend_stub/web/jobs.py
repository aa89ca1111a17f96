"""Training and compiling views. Both create a job row and hand it to the job runner, which
runs it in a worker process; the answers here only read the database."""

from __future__ import annotations

import time
from typing import Any

from flask import Response
from sqlalchemy import delete, func, select

from backend_stub import schemas
from backend_stub.architecture import training_problems
from backend_stub.datasets import conflict, get_dataset, get_or_404, image_index, not_found
from backend_stub.storage import (
    FINAL_STATES,
    Compilation,
    Store,
    Training,
    TrainingEpoch,
)
from backend_stub.web import Query, answer, api, backend, job_links, parse_body, query_float
from hal.boards import get_profile
from hal.errors import InputError

TAG_T, TAG_C = "trainings", "compilations"
MAX_WAIT_S = 60.0


def _epoch(row: TrainingEpoch) -> dict[str, Any]:
    return {"epoch": row.epoch, "loss": row.loss, "accuracy": row.accuracy,
            "val_loss": row.val_loss, "val_accuracy": row.val_accuracy, "seconds": row.seconds}


def training_dict(s, t: Training) -> dict[str, Any]:
    done = s.scalar(select(func.count(TrainingEpoch.id)).where(
        TrainingEpoch.training_id == t.id)) or 0
    last = s.scalar(select(TrainingEpoch).where(TrainingEpoch.training_id == t.id)
                    .order_by(TrainingEpoch.epoch.desc()).limit(1))
    return {
        "id": t.id, "dataset_id": t.dataset_id, "state": t.state, "params": t.params,
        "labels": t.labels,
        "progress": {"epoch": int(done), "epochs": int(t.params.get("epochs", 0)),
                     "last": _epoch(last) if last else None},
        "created_at": t.created_at, "started_at": t.started_at, "finished_at": t.finished_at,
        "error": t.error,
        "links": {**job_links("trainings", t.id), **(
            {"compilation": f"/compilations/{t.params['compilation_id']}"}
            if t.params.get("compilation_id") else {})},
    }


def compilation_dict(c: Compilation) -> dict[str, Any]:
    return {
        "id": c.id, "training_id": c.training_id, "board": c.board, "state": c.state,
        "params": c.params, "sha256": c.sha256,
        "size_bytes": len(c.artifact) if c.artifact is not None else None,
        "report": c.report, "created_at": c.created_at, "started_at": c.started_at,
        "finished_at": c.finished_at, "error": c.error, "links": job_links("compilations", c.id),
    }


def _wait_for_end(store: Store, model: type, job_id: int) -> None:
    """``?wait=S``: hold the answer until the job ends or S seconds pass."""
    wait = query_float("wait", 0.0, lo=0.0, hi=MAX_WAIT_S)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        with store.session() as s:
            row = s.get(model, job_id)
            if row is None or row.state in FINAL_STATES:
                return
        time.sleep(0.2)


# ------------------------------------------------------------------------------ trainings


@api.route("POST", "/trainings", summary="Start training a model on a dataset", tag=TAG_T,
           body=schemas.TrainingIn, response=schemas.TrainingOut, status=202)
def create_training():
    b = backend()
    body = parse_body(schemas.TrainingIn)
    if any(not 1 <= f <= 256 for f in body.conv_filters):
        raise InputError("bad_option", "conv_filters: each must be from 1 to 256",
                         errors=[{"field": "conv_filters", "problem": "each must be 1..256"}])
    with b.store.session() as s:
        ds = get_dataset(s, body.dataset_id)
        counts = {k: len(v) for k, v in image_index(s, ds.id).items()}
        problems = []
        if len(counts) < 2:
            problems.append(f"{len(counts)} label(s) with images; training needs at least 2")
        problems += [f"label {k!r} has {n} image(s); at least 2 are needed (one to train, one "
                     "to validate)" for k, n in counts.items() if n < 2]
        if problems:
            raise InputError("dataset_invalid", "the dataset cannot be trained on: "
                             + "; ".join(problems), counts=counts,
                             problems=[{"entry": "(dataset)", "problem": p} for p in problems])
        bad = training_problems(body.model_dump(), len(counts), sum(counts.values()))
        if bad:  # a model that cannot build is refused here, not by a worker's ValueError
            raise InputError("bad_option", "; ".join(f"{e['field']}: {e['problem']}"
                                                     for e in bad), errors=bad)
        if body.compile_board is not None:
            get_profile(body.compile_board)  # unknown_board before anything is queued
        t = Training(dataset_id=ds.id, params=body.model_dump())
        s.add(t)
        s.flush()
        if body.compile_board is not None:
            # Chained: the training's worker runs it; it is never queued on its own.
            c = Compilation(training_id=t.id, board=body.compile_board,
                            params={"training_id": t.id, "board": body.compile_board,
                                    "representative_samples": None, "chained": True})
            s.add(c)
            s.flush()
            t.params = {**t.params, "compilation_id": c.id}
        out = training_dict(s, t)
    b.runner.submit("train", out["id"])
    return answer(schemas.TrainingOut, out, 202)


@api.route("GET", "/trainings", summary="List trainings", tag=TAG_T,
           response=schemas.TrainingList)
def list_trainings():
    with backend().store.session() as s:
        rows = s.scalars(select(Training).order_by(Training.id.desc())).all()
        return answer(schemas.TrainingList, {"trainings": [training_dict(s, t) for t in rows]})


def _training(s, training_id: int) -> Training:
    return get_or_404(s, Training, "training", training_id)


@api.route("GET", "/trainings/{training_id:int}", summary="A training and its progress",
           tag=TAG_T, response=schemas.TrainingOut,
           query=[Query("wait", "number", description="seconds to wait for the end (<= 60)")])
def get_training(training_id: int):
    b = backend()
    _wait_for_end(b.store, Training, training_id)
    with b.store.session() as s:
        return answer(schemas.TrainingOut, training_dict(s, _training(s, training_id)))


@api.route("POST", "/trainings/{training_id:int}/cancel",
           summary="Cancel a training (kills its worker)", tag=TAG_T,
           response=schemas.TrainingOut, status=202)
def cancel_training(training_id: int):
    b = backend()
    b.runner.cancel("train", training_id)
    with b.store.session() as s:
        return answer(schemas.TrainingOut, training_dict(s, _training(s, training_id)), 202)


@api.route("DELETE", "/trainings/{training_id:int}",
           summary="Delete an ended training, its model and its compilations", tag=TAG_T,
           status=204)
def delete_training(training_id: int):
    with backend().store.session() as s:
        t = _training(s, training_id)
        if t.state not in FINAL_STATES:
            raise conflict(f"training {training_id} is {t.state}; cancel it first")
        s.execute(delete(Compilation).where(Compilation.training_id == training_id))
        s.execute(delete(TrainingEpoch).where(TrainingEpoch.training_id == training_id))
        s.delete(t)
    return Response(status=204)


@api.route("GET", "/trainings/{training_id:int}/metrics",
           summary="Per-epoch loss and accuracy, and final validation figures", tag=TAG_T,
           response=schemas.MetricsOut)
def training_metrics(training_id: int):
    with backend().store.session() as s:
        t = _training(s, training_id)
        epochs = s.scalars(select(TrainingEpoch).where(TrainingEpoch.training_id == t.id)
                           .order_by(TrainingEpoch.epoch)).all()
        return answer(schemas.MetricsOut, {"training_id": t.id,
                                           "epochs": [_epoch(e) for e in epochs],
                                           "final": t.metrics})


@api.route("GET", "/trainings/{training_id:int}/curves.png",
           summary="Loss and accuracy curves (PNG)", tag=TAG_T, response="png")
def training_curves(training_id: int):
    with backend().store.session() as s:
        t = _training(s, training_id)
        if t.curves_png is None:
            raise not_found("curves of training", training_id)
        return Response(t.curves_png, mimetype="image/png")


@api.route("GET", "/trainings/{training_id:int}/model.keras",
           summary="The trained Keras model (batch size 1)", tag=TAG_T, response="keras")
def training_model(training_id: int):
    with backend().store.session() as s:
        t = _training(s, training_id)
        if t.model_keras is None:
            raise not_found("model of training", training_id)
        return Response(t.model_keras, mimetype="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="training-{t.id}.keras"'})


# ------------------------------------------------------------------------------ compilations


@api.route("POST", "/compilations",
           summary="Convert a trained model to full-integer int8 and fit-check it", tag=TAG_C,
           body=schemas.CompilationIn, response=schemas.CompilationOut, status=202)
def create_compilation():
    b = backend()
    body = parse_body(schemas.CompilationIn)
    get_profile(body.board)  # unknown_board before anything is queued
    with b.store.session() as s:
        t = _training(s, body.training_id)
        if t.state != "succeeded":
            raise conflict(f"training {t.id} is {t.state}; only a succeeded training can be "
                           "compiled", state=t.state)
        c = Compilation(training_id=t.id, board=body.board, params=body.model_dump())
        s.add(c)
        s.flush()
        out = compilation_dict(c)
    b.runner.submit("compile", out["id"])
    return answer(schemas.CompilationOut, out, 202)


def _compilation(s, compilation_id: int) -> Compilation:
    return get_or_404(s, Compilation, "compilation", compilation_id)


@api.route("GET", "/compilations", summary="List compilations", tag=TAG_C,
           response=schemas.CompilationList)
def list_compilations():
    with backend().store.session() as s:
        rows = s.scalars(select(Compilation).order_by(Compilation.id.desc())).all()
        return answer(schemas.CompilationList,
                      {"compilations": [compilation_dict(c) for c in rows]})


@api.route("GET", "/compilations/{compilation_id:int}",
           summary="A compilation: report, fit check, int8 vs float accuracy", tag=TAG_C,
           response=schemas.CompilationOut,
           query=[Query("wait", "number", description="seconds to wait for the end (<= 60)")])
def get_compilation(compilation_id: int):
    b = backend()
    _wait_for_end(b.store, Compilation, compilation_id)
    with b.store.session() as s:
        return answer(schemas.CompilationOut, compilation_dict(_compilation(s, compilation_id)))


@api.route("POST", "/compilations/{compilation_id:int}/cancel",
           summary="Cancel a compilation (kills its worker)", tag=TAG_C,
           response=schemas.CompilationOut, status=202)
def cancel_compilation(compilation_id: int):
    b = backend()
    b.runner.cancel("compile", compilation_id)
    with b.store.session() as s:
        return answer(schemas.CompilationOut,
                      compilation_dict(_compilation(s, compilation_id)), 202)


@api.route("GET", "/compilations/{compilation_id:int}/model.tflite",
           summary="The int8 artifact (only when it compiled and fits)", tag=TAG_C,
           response="tflite")
def compilation_artifact(compilation_id: int):
    from backend_stub.deploy import deployable

    with backend().store.session() as s:
        c = _compilation(s, compilation_id)
        deployable(c)
        return Response(c.artifact, mimetype="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="compilation-{c.id}.tflite"'})
