"""The old TinyMLaaS bridge endpoints, so its backend works unchanged against this bridge.

Same paths and bodies as before (``/work/shared/reference/tinymlaas-legacy.md``), with one
deliberate change: failures are failures. ``POST /install/`` waits for the install job and
answers ``201 Success`` only when the device verifiably booted the model; any other outcome is
the JSON error body with its 4xx/5xx status.

``GET /prediction/`` maps the device's latest inference line to the old
``{"1": target score, "0": not-target score}`` shape:

* two outputs ``[a, b]``  -> ``{"0": a, "1": b}`` (class index -> score),
* one output ``[p]``      -> ``{"1": p, "0": 1 - p}`` (a sigmoid "target" probability),
* more outputs            -> one key per class index (``"0"``, ``"1"``, ``"2"``, ...).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from bridge.c_array import parse_c_array
from bridge.jobs import InstallOptions
from bridge.models import LegacyDevices, LegacyInstall, LegacyPredictionQuery
from bridge.web import json_response, runtime
from hal.boards import get_profile
from hal.errors import HalError, InputError, from_dict

legacy = Blueprint("legacy", __name__)

def _json_body(model: type) -> Any:
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise InputError("bad_request", "No device in request")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError("bad_request", f"the request body is not valid JSON: {exc}"[:300]) \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("device"), dict):
        raise InputError("bad_request", "No device in request")
    return model.model_validate(data)


def _device(serial: str):
    slot = runtime().registry.find_by_serial(serial)
    if slot is None:
        raise InputError("unknown_device", f"no device with serial {serial[:80]!r} on this "
                         "bridge", serial=serial[:80])
    return slot


@legacy.post("/install/", strict_slashes=False)
def install() -> Response:
    rt = runtime()
    body: LegacyInstall = _json_body(LegacyInstall)
    slot = _device(body.device.serial)
    model = parse_c_array(body.model, max_bytes=rt.config.legacy.max_model_bytes)
    # The old API is synchronous: wait for the verified boot (or the failure), as a
    # long-poll counted against [server] max_waits.
    with rt.long_poll():
        job = rt.jobs.submit(slot.id, model, InstallOptions())
        result = rt.jobs.wait(job.id, rt.config.jobs.timeout_s + 30, rt.stopping)
    if result["state"] == "succeeded":
        return Response("Success", status=201, mimetype="text/plain")
    if result["error"] is not None:
        raise _with_job(from_dict(result["error"]), result)
    raise InputError("cancelled", f"job {job.id} did not finish ({result['state']})",
                     job=job.id, state=result["state"])


def _with_job(error: HalError, job: dict[str, Any]) -> HalError:
    error.detail = {**error.detail, "job": job["id"], "job_state": job["state"]}
    return error


@legacy.get("/prediction/", strict_slashes=False)
def prediction() -> Response:
    body: LegacyPredictionQuery = _json_body(LegacyPredictionQuery)
    slot = _device(body.device.serial)
    entry = slot.stream.latest("inference")
    if entry is None:
        raise InputError("not_found", f"device {slot.id} has not reported an inference yet",
                         device=slot.id)
    outputs = [float(v) for v in entry.line.get("outputs", [])]
    if len(outputs) == 1:
        scores = {"1": outputs[0], "0": 1.0 - outputs[0]}
    else:
        scores = {str(i): v for i, v in enumerate(outputs)}
    return json_response(scores)


@legacy.get("/devices/")
def devices() -> Response:
    out = []
    for slot in runtime().registry.slots():
        info = slot.info()
        detail = info.get("detail") or {}
        try:
            product = get_profile(info.get("board") or slot.driver.board).title
        except HalError:
            product = str(info.get("board") or slot.driver_name)
        out.append({
            "manufacturer": str(detail.get("manufacturer")
                                or _manufacturer(str(info.get("board") or slot.driver.board))),
            "product": str(detail.get("product") or product),
            "serial": str(info.get("serial_number") or slot.id),
        })
    return json_response({"devices": out}, model=LegacyDevices)


def _manufacturer(board: str) -> str:
    if board.startswith("nano33ble"):
        return "Arduino"
    if board.startswith("rpi"):
        return "Raspberry Pi"
    return "unknown"


@legacy.get("/health/")
def health() -> Response:
    return Response("Online", status=200, mimetype="text/plain")
