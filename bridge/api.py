"""The bridge's JSON API (see ``/openapi.json``): health, devices, install jobs, observation
and live streams."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from flask import Blueprint, Response, g, request

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
# The published bounds of ?wait= and ?lines= (bridge.openapi); larger configured limits cap.
MAX_WAIT_PARAM = 86400
MAX_LINES_PARAM = 1_000_000


# ---------------------------------------------------------------------------- helpers


def device_id_arg(device_id: str) -> str:
    """Validate a device id from the path (400 when malformed)."""
    if not valid_device_id(device_id):
        raise InputError("bad_request", "malformed device id (letters, digits, '.', '_', '-'; "
                         "at most 64 characters)", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    return device_id


def job_id_arg(job_id: str) -> str:
    """A job id from the path; one that cannot be a job id names no job (404)."""
    if len(job_id) != 16 or not set(job_id) <= _JOB_ID_CHARS:
        raise InputError("unknown_job", f"no job {job_id[:64]!r} (a job id is 16 lower-case "
                         "hex digits)", job=job_id[:64], pattern=JOB_ID_PATTERN)
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
    if not math.isfinite(value) or value < 0 or value > MAX_WAIT_PARAM:
        raise InputError("bad_option", f"query parameter wait must be a number of seconds "
                         f"between 0 and {MAX_WAIT_PARAM}", parameter="wait",
                         high=MAX_WAIT_PARAM)
    # Longer than [jobs] max_wait_s is allowed and capped, as documented.
    return min(value, limit)


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
        unknown = sorted((set(request.files) | set(request.form)) - {"model", "options"})
        if unknown:
            raise InputError("bad_request", f"unknown multipart field {unknown[0][:40]!r}; "
                             "send 'model' and optionally 'options'",
                             fields=[f[:40] for f in unknown[:10]])
        for field in ("model", "options"):
            count = len(request.files.getlist(field)) + len(request.form.getlist(field))
            if count > 1:
                raise InputError("bad_request", f"multipart field {field!r} appears {count} "
                                 "times; send it once", field=field, count=count)
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

    drivers = rt.driver_tools()
    if not g.get("authorized", False):
        # Public: whether each driver works, not where its tools live.
        drivers = {name: {"available": bool(info.get("available"))}
                   for name, info in drivers.items()}
    body = {
        "status": "stopping" if rt.stopping.is_set() else "ok",
        "version": bridge.__version__,
        "uptime_s": round(time.monotonic() - rt.started, 3),
        "drivers": drivers,
        "streams": {"active": rt.streams.active, "limit": rt.streams.limit},
        "waits": {"active": rt.waits.active, "limit": rt.waits.limit},
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
    if wait <= 0:
        model, options = read_install_request()
        return job_response(rt.jobs.submit(slot.id, model, options).to_dict(), 202)
    # Take the long-poll slot first: refused, the client retries without a job created.
    with rt.long_poll():
        model, options = read_install_request()
        job = rt.jobs.submit(slot.id, model, options)
        result = rt.jobs.wait(job.id, wait, rt.stopping)
    if result["state"] not in ("queued", "running"):
        return job_response(result, 200)
    return job_response(result, 202)


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
    if wait <= 0:
        return job_response(rt.jobs.get(job_id))
    current = rt.jobs.get(job_id)  # 404 before a slot is taken
    if current["state"] not in ("queued", "running"):
        return job_response(current)
    with rt.long_poll():
        return job_response(rt.jobs.wait(job_id, wait, rt.stopping))


@api.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    return job_response(runtime().jobs.cancel(job_id_arg(job_id)), 202)


@api.get("/devices/<device_id>/observe")
def observe(device_id: str) -> Response:
    rt = runtime()
    slot = rt.registry.get(device_id_arg(device_id))
    # More than the buffer holds is not an error: the answer has what there is.
    count = min(int_arg("lines", 50, 1, MAX_LINES_PARAM), rt.config.observe.buffer_lines)
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
