"""Per-label metrics views: confusion matrix and per-label precision and recall of a training
(float model) and of a compilation (float and int8), as JSON and as a PNG drawn from the
stored JSON (backend_stub.metrics)."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from backend_stub import schemas
from backend_stub.datasets import get_or_404, not_found
from backend_stub.metrics import confusion_png
from backend_stub.storage import Compilation, Training
from backend_stub.web import Query, answer, api, backend
from hal.errors import InputError

TAG_T, TAG_C = "trainings", "compilations"


def _training_metrics(training_id: int) -> dict[str, Any]:
    with backend().store.session() as s:
        t = get_or_404(s, Training, "training", training_id)
        if not t.per_label:
            raise not_found("per-label metrics of training", training_id)
        return {"training_id": t.id, **t.per_label}


def _compilation_metrics(compilation_id: int) -> dict[str, Any]:
    with backend().store.session() as s:
        c = get_or_404(s, Compilation, "compilation", compilation_id)
        if not c.per_label:
            raise not_found("per-label metrics of compilation", compilation_id)
        return {"training_id": c.training_id, "compilation_id": c.id, **c.per_label}


def _png(data: dict[str, Any], model: str, title: str) -> Response:
    return Response(confusion_png(data[model], f"{title} ({model})"), mimetype="image/png")


@api.route("GET", "/trainings/{training_id:int}/per-label",
           summary="Confusion matrix and per-label precision and recall (validation split)",
           tag=TAG_T, response=schemas.PerLabelOut)
def training_per_label(training_id: int):
    return answer(schemas.PerLabelOut, _training_metrics(training_id))


@api.route("GET", "/trainings/{training_id:int}/confusion.png",
           summary="The float model's confusion matrix (PNG)", tag=TAG_T, response="png")
def training_confusion(training_id: int):
    return _png(_training_metrics(training_id), "float", f"training {training_id}")


@api.route("GET", "/compilations/{compilation_id:int}/per-label",
           summary="Confusion matrices and per-label precision and recall, float and int8",
           tag=TAG_C, response=schemas.PerLabelOut)
def compilation_per_label(compilation_id: int):
    return answer(schemas.PerLabelOut, _compilation_metrics(compilation_id))


@api.route("GET", "/compilations/{compilation_id:int}/confusion.png",
           summary="A confusion matrix of the compilation (PNG)", tag=TAG_C, response="png",
           query=[Query("model", description="int8 (default) or float")])
def compilation_confusion(compilation_id: int):
    model = request.args.get("model", "int8")
    if model not in ("int8", "float"):
        raise InputError("bad_option", f"query parameter model={model[:32]!r} must be int8 or "
                         "float", parameter="model")
    return _png(_compilation_metrics(compilation_id), model, f"compilation {compilation_id}")
