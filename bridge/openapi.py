"""The OpenAPI 3.1 document of the bridge, generated from the pydantic models in
:mod:`bridge.models` plus the route table below.

It is served at ``/openapi.json`` and committed as ``bridge/openapi.json``; a test fails when
the two drift. Regenerate with ``python -m bridge.openapi > bridge/openapi.json``.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

import bridge
from bridge.config import DEVICE_ID_PATTERN
from bridge.models import (
    JOB_ID_PATTERN,
    Device,
    DeviceList,
    ErrorBody,
    Health,
    InstallJson,
    InstallOptions,
    Job,
    JobList,
    LegacyDevices,
    LegacyInstall,
    LegacyPredictionQuery,
    Observation,
)

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _text(description: str, schema: dict[str, Any] | None = None,
          media: str = "text/plain") -> dict:
    return {"description": description,
            "content": {media: {"schema": schema or {"type": "string"}}}}


_ERROR = _ref("ErrorBody")


def _err(description: str) -> dict:
    return _json(_ERROR, description)


_DEVICE_ID = {"name": "device_id", "in": "path", "required": True,
              "description": "Device id (the configured name or a board's USB serial number).",
              "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN, "maxLength": 64}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": JOB_ID_PATTERN}}
_WAIT = {"name": "wait", "in": "query", "required": False,
         "description": "Block up to this many seconds until the job ends (capped by "
                        "[jobs] max_wait_s).",
         "schema": {"type": "number", "minimum": 0, "maximum": 86400}}

_COMMON = {
    "401": _err("Missing or wrong bearer token (`unauthorized`)."),
    "413": _err("Request body over the size limit (`payload_too_large`)."),
    "default": _err("Any other failure, classified: 400 input, 404 unknown, 409 conflict, "
                    "422 fit, 503 device or infrastructure unavailable, 500 bug."),
}


def _op(op_id: str, summary: str, responses: dict[str, Any], *, tags: list[str],
        params: list | None = None, body: dict | None = None, public: bool = False,
        description: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": tags}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    op["responses"] = {**responses, **({} if public else {"401": _COMMON["401"]}),
                       "413": _COMMON["413"], "default": _COMMON["default"]}
    if public:
        op["security"] = []
    return op


def _paths() -> dict[str, Any]:
    job = _ref("Job")
    location = {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}}
    install_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {"type": "string", "contentMediaType": "application/octet-stream",
                                  "minLength": 8, "pattern": "^[ -~]{4}TFL3",
                                  "description": "The .tflite file (a TFLite flatbuffer: "
                                                 "bytes 4..8 are its identifier TFL3)."},
                        "options": {**_ref("InstallOptions"),
                                    "description": "InstallOptions as a JSON string."},
                    },
                    "additionalProperties": False,
                },
                "encoding": {"options": {"contentType": "application/json"}},
            },
            "application/json": {"schema": _ref("InstallJson")},
        },
    }
    legacy_tags = ["legacy TinyMLaaS"]
    return {
        "/health": {"get": _op(
            "health", "Version, uptime and each driver's tool availability.",
            {"200": _json(_ref("Health"), "The bridge is up.")}, tags=["bridge"], public=True)},
        "/openapi.json": {"get": _op(
            "openapi", "This document.",
            {"200": _json({"type": "object"}, "The OpenAPI document.")}, tags=["bridge"])},
        "/devices": {"get": _op(
            "list_devices", "Configured and discovered devices.",
            {"200": _json(_ref("DeviceList"), "Every device.")}, tags=["devices"])},
        "/devices/{device_id}": {"get": _op(
            "get_device", "One device.",
            {"200": _json(_ref("Device"), "The device."),
             "404": _err("No such device (`unknown_device`).")},
            tags=["devices"], params=[_DEVICE_ID])},
        "/devices/{device_id}/install": {"post": _op(
            "install", "Install a .tflite model on the device (as a job).",
            {"202": _json(job, "Job accepted (or still running after ?wait).", location),
             "200": _json(job, "With ?wait: the job ended within the wait."),
             "400": _err("Bad model or options."),
             "404": _err("No such device (`unknown_device`)."),
             "409": _err("The device is busy with another job (`device_busy`; "
                         "detail.running_job).")},
            tags=["jobs"], params=[_DEVICE_ID, _WAIT], body=install_body,
            description="Send the model either as multipart/form-data (file field `model`, "
                        "optional JSON field `options`) or as JSON with `model_b64` and the "
                        "options. The job ends `succeeded` only after the device booted the "
                        "model and announced its hash.")},
        "/jobs": {"get": _op(
            "list_jobs", "Recent jobs, newest first.",
            {"200": _json(_ref("JobList"), "The jobs.")}, tags=["jobs"],
            params=[{"name": "device", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}])},
        "/jobs/{job_id}": {
            "get": _op("get_job", "One job with its steps, report or error.",
                       {"200": _json(job, "The job."),
                        "404": _err("No such job (`unknown_job`).")},
                       tags=["jobs"], params=[_JOB_ID, _WAIT]),
            "delete": _op("cancel_job", "Cancel a queued or running job.",
                          {"202": _json(job, "Cancellation requested."),
                           "404": _err("No such job (`unknown_job`)."),
                           "409": _err("The job already ended (`job_finished`).")},
                          tags=["jobs"], params=[_JOB_ID]),
        },
        "/devices/{device_id}/observe": {"get": _op(
            "observe", "The device's most recent lines.",
            {"200": _json(_ref("Observation"), "Lines, oldest first."),
             "404": _err("No such device (`unknown_device`).")},
            tags=["observe"], params=[_DEVICE_ID, {
                "name": "lines", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000000}}])},
        "/devices/{device_id}/stream": {"get": _op(
            "stream", "Server-Sent Events of the device's live lines.",
            {"200": _text("`id: SEQ`, `event: line`, `data: {seq, at, line}`; "
                          "`event: dropped` with `{count}` when this client lost lines; "
                          "`: ping` comments.", media="text/event-stream"),
             "404": _err("No such device (`unknown_device`)."),
             "503": _err("Too many streams or shutting down (`unavailable`).")},
            tags=["observe"], params=[_DEVICE_ID, {
                "name": "Last-Event-ID", "in": "header", "required": False,
                "schema": {"type": "string", "pattern": r"^\d{1,18}$"}}, {
                "name": "since", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 0}}])},
        "/install/": {"post": _op(
            "legacy_install", "Old bridge: install a model given as C source; waits.",
            {"201": _text("`Success`: the device verifiably booted the model."),
             "400": _err("No device, or the C source is not a byte array."),
             "404": _err("No device with that serial.")},
            tags=legacy_tags, body={"required": True, "content": {
                "application/json": {"schema": _ref("LegacyInstall")}}})},
        "/prediction/": {"get": _op(
            "legacy_prediction", "Old bridge: scores of the latest inference.",
            {"200": _json({"type": "object", "additionalProperties": {"type": "number"}},
                          '{"1": target score, "0": not-target score} (class index -> '
                          "score)."),
             "404": _err("No such device, or no inference yet.")},
            tags=legacy_tags, body={"required": True, "content": {
                "application/json": {"schema": _ref("LegacyPredictionQuery")}}})},
        "/devices/": {"get": _op(
            "legacy_devices", "Old bridge: attached devices.",
            {"200": _json(_ref("LegacyDevices"), "The devices.")}, tags=legacy_tags)},
        "/health/": {"get": _op(
            "legacy_health", "Old bridge: liveness.", {"200": _text("`Online`.")},
            tags=legacy_tags, public=True)},
    }


def _schemas() -> dict[str, Any]:
    requests = [InstallOptions, InstallJson, LegacyInstall, LegacyPredictionQuery]
    responses = [ErrorBody, Health, Device, DeviceList, Job, JobList, Observation,
                 LegacyDevices]
    _, top = models_json_schema(
        [(m, "validation") for m in requests] + [(m, "serialization") for m in responses],
        ref_template=_REF,
    )
    schemas = dict(sorted(top["$defs"].items()))
    # What the HTTP layer checks before it creates a job, so a schema-valid body is accepted:
    # a .tflite carries "TFL3" at bytes 4..8, which in base64 is characters 5..11 below.
    # (The server also takes URL-safe base64 and whitespace; the document shows the canonical
    # form.)
    model_b64 = schemas["InstallJson"]["properties"]["model_b64"]
    model_b64["pattern"] = (r"^[A-Za-z0-9+/]{5}[FVl1]RGTD[MNOP](?:=|[A-Za-z0-9+/]"
                            r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?)$")
    model_b64["minLength"] = 12
    return schemas


@cache
def build_document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each process; do not mutate)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tinyml-bridge",
            "version": bridge.__version__,
            "description": "Install TinyML models on attached boards and Raspberry Pis, "
                           "verify they booted, and watch them run. Errors are always "
                           "`{code, message, detail, class}`.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def render() -> str:
    """The committed file's exact text."""
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
