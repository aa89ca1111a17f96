"""The bridge's JSON API (see ``/openapi.json``): health, devices, install jobs, observation
and live streams."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from flask import Blueprint, Response, request

import bridge
from bridge.config import valid_device_id
from bridge.jobs import InstallOptions as JobOptions
from bridge.models import (
    JOB_ID_PATTERN,
    Device,
    DeviceList,
    Health,
    InstallJson,
    InstallOptions,
    Job,
    JobList,
    Observation,
)
from bridge.openapi import build_document
from bridge.streams import sse_events
from bridge.web import json_response, runtime, validation_error
from hal.errors import InputError, make_error

api = Blueprint("api", __name__)

_JOB_ID_CHARS = set("0123456789abcdef")


# ---------------------------------------------------------------------------- helpers


def device_id_arg(device_id: str) -> str:
    """Validate a device id from the path (400 when malformed)."""
    if not valid_device_id(device_id):
        raise InputError("bad_request", "malformed device id (letters, digits, '.', '_', '-'; "
                         "at most 64 characters)", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    return device_id


def job_id_arg(job_id: str) -> str:
    if len(job_id) != 16 or not set(job_id) <= _JOB_ID_CHARS:
        raise InputError("bad_request", "malformed job id (16 lower-case hex digits)",
                         pattern=JOB_ID_PATTERN)
    return job_id


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise InputError("bad_option", f"query parameter {name} must be an integer",
                         parameter=name) from None
    if not low <= value <= high:
        raise InputError("bad_option", f"query parameter {name} must be between {low} and "
                         f"{high}", parameter=name, low=low, high=high)
    return value


def wait_arg() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    limit = runtime().config.jobs.max_wait_s
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or value > limit:
        raise InputError("bad_option", f"query parameter wait must be a number of seconds "
                         f"between 0 and {limit:g}", parameter="wait", high=limit)
    return value


def _parse_json_body() -> Any:
    raw = request.get_data(cache=False)
    if not raw:
        raise InputError("bad_request", "the request body is empty; send JSON")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError("bad_request", f"the request body is not valid JSON: {exc}"[:300]) \
            from None


def _to_job_options(opts: InstallOptions) -> JobOptions:
    return JobOptions(
        labels=tuple(opts.labels),
        input_vectors=tuple(tuple(v) for v in opts.input_vectors),
        arena_bytes=opts.arena_bytes,
        boot_deadline_s=opts.boot_deadline_s,
        input_source=opts.input_source,
    )


def decode_b64(text: str) -> bytes:
    """Standard or URL-safe base64, whitespace ignored; 400 ``bad_request`` otherwise."""
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("bad_request", "model_b64 is not valid base64") from None


def read_install_request() -> tuple[bytes, JobOptions]:
    """The model and options from a multipart or JSON install request."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("model")
        if upload is None:
            raise InputError("bad_request", "multipart field 'model' (the .tflite file) is "
                             "missing", fields=sorted(set(request.files) | set(request.form)))
        model = upload.read()
        raw_options = request.form.get("options")
        options: Any = {}
        if raw_options is not None and raw_options.strip():
            try:
                options = json.loads(raw_options)
            except (ValueError, RecursionError) as exc:
                raise InputError("bad_request", f"multipart field 'options' is not valid "
                                 f"JSON: {exc}"[:300]) from None
        if not isinstance(options, dict):
            raise InputError("bad_request", "multipart field 'options' must be a JSON object")
        try:
            parsed = InstallOptions.model_validate(options)
        except Exception as exc:
            from pydantic import ValidationError

            if isinstance(exc, ValidationError):
                raise validation_error(exc, "options") from None
            raise
        return model, _to_job_options(parsed)
    if mimetype == "application/json":
        data = _parse_json_body()
        if not isinstance(data, dict):
            raise InputError("bad_request", "the JSON body must be an object with model_b64")
        body = InstallJson.model_validate(data)
        return decode_b64(body.model_b64), _to_job_options(body)
    raise InputError("bad_request", "send the model as multipart/form-data (field 'model') or "
                     "as application/json with model_b64", content_type=mimetype[:100])


def job_response(job: dict[str, Any], status: int = 200) -> Response:
    headers = {"Location": f"/jobs/{job['id']}"} if status == 202 else None
    return json_response(job, status, headers, model=Job)


# ---------------------------------------------------------------------------- routes


@api.get("/health")
def health() -> Response:
    rt = runtime()
    import time

    body = {
        "status": "stopping" if rt.stopping.is_set() else "ok",
        "version": bridge.__version__,
        "uptime_s": round(time.monotonic() - rt.started, 3),
        "drivers": rt.driver_tools(),
        "streams": {"active": rt.streams.active, "limit": rt.streams.limit},
    }
    return json_response(body, model=Health)


@api.get("/openapi.json")
def openapi() -> Response:
    return json_response(build_document())


@api.get("/devices")
def devices() -> Response:
    slots = runtime().registry.slots()
    return json_response({"devices": [s.describe() for s in slots]}, model=DeviceList)


@api.get("/devices/<device_id>")
def device(device_id: str) -> Response:
    slot = runtime().registry.get(device_id_arg(device_id))
    return json_response(slot.describe(), model=Device)


@api.post("/devices/<device_id>/install")
def install(device_id: str) -> Response:
    rt = runtime()
    slot = rt.registry.get(device_id_arg(device_id))
    wait = wait_arg()
    model, options = read_install_request()
    job = rt.jobs.submit(slot.id, model, options)
    if wait > 0:
        result = rt.jobs.wait(job.id, wait, rt.stopping)
        if result["state"] not in ("queued", "running"):
            return job_response(result, 200)
        return job_response(result, 202)
    return job_response(job.to_dict(), 202)


@api.get("/jobs")
def jobs() -> Response:
    rt = runtime()
    device_id = request.args.get("device")
    if device_id is not None:
        device_id_arg(device_id)
    limit = int_arg("limit", 50, 1, 1000)
    return json_response({"jobs": rt.jobs.list(device_id, limit)}, model=JobList)


@api.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    rt = runtime()
    job_id_arg(job_id)
    wait = wait_arg()
    result = rt.jobs.wait(job_id, wait, rt.stopping) if wait > 0 else rt.jobs.get(job_id)
    return job_response(result)


@api.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    return job_response(runtime().jobs.cancel(job_id_arg(job_id)), 202)


@api.get("/devices/<device_id>/observe")
def observe(device_id: str) -> Response:
    rt = runtime()
    slot = rt.registry.get(device_id_arg(device_id))
    count = int_arg("lines", 50, 1, rt.config.observe.buffer_lines)
    entries = slot.stream.recent(count)
    body = {"device_id": slot.id, "lines": [e.to_dict() for e in entries],
            "last_seq": slot.stream.last_seq}
    return json_response(body, model=Observation)


def _since() -> int | None:
    raw = request.headers.get("Last-Event-ID")
    name = "Last-Event-ID"
    if raw is None:
        raw, name = request.args.get("since"), "since"
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise InputError("bad_option", f"{name} must be a sequence number (an integer >= 0)",
                         parameter=name) from None
    if value < 0:
        raise InputError("bad_option", f"{name} must be >= 0", parameter=name)
    return value


@api.get("/devices/<device_id>/stream")
def stream(device_id: str) -> Response:
    rt = runtime()
    slot = rt.registry.get(device_id_arg(device_id))
    since = _since()
    if rt.stopping.is_set():
        raise make_error("unavailable", "the bridge is shutting down")
    if not rt.streams.acquire():
        raise make_error("unavailable", f"too many live streams ({rt.streams.limit}); "
                         "raise [server] max_streams or use /observe",
                         limit=rt.streams.limit)
    try:
        sub = slot.stream.subscribe(since)
    except BaseException:
        rt.streams.release()
        raise
    released = []

    def release() -> None:
        # Runs when the server closes the response, even if the body was never iterated.
        if not released:
            released.append(True)
            slot.stream.unsubscribe(sub)
            rt.streams.release()

    body = sse_events(slot.stream, sub, ping_s=rt.config.observe.ping_s,
                      disconnected=request.environ.get("waitress.client_disconnected"),
                      stopping=rt.stopping)
    response = Response(body, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(release)
    return response
