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
import re
from typing import Any

from flask import Blueprint, Response, request

from bridge.app import json_response, runtime
from bridge.jobs import InstallOptions
from bridge.models import LegacyDevices, LegacyInstall, LegacyPredictionQuery
from hal.boards import get_profile
from hal.errors import HalError, InputError, from_dict

legacy = Blueprint("legacy", __name__)

_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_LINE_COMMENT = re.compile(r"//[^\n]*")
_ARRAY = re.compile(
    r"(?:unsigned\s+char|uint8_t|char|int8_t)\s+(?P<name>[A-Za-z_]\w*)\s*\[\s*\d*\s*\]"
    r"[^={;]*=\s*\{(?P<body>[^{}]*)\}\s*;"
)
_LEN = re.compile(r"\bint\s+(?P<name>[A-Za-z_]\w*_len)\s*=\s*(?P<value>\d+)\s*;")
_HEX_BYTE = re.compile(r"^0[xX][0-9a-fA-F]{1,2}$")
_DEC_BYTE = re.compile(r"^\d{1,3}$")


def parse_c_array(source: str, *, max_bytes: int) -> bytes:
    """The bytes of the first ``unsigned char NAME[] = {...};`` array in C ``source``.

    Elements are hex (``0x1C``) or decimal (``28``) bytes separated by commas; comments and a
    trailing comma are allowed. Anything else -- an element that is not a byte, a missing
    array, a ``NAME_len`` that disagrees with the element count, more than ``max_bytes``
    bytes -- is a ``bad_request`` naming what and where."""
    if len(source) > max_bytes * 6 + 65536:  # "0xAB, " is 6 characters per byte
        raise InputError("payload_too_large", f"the model source exceeds the limit of "
                         f"{max_bytes} model bytes", limit_bytes=max_bytes)
    if "\x00" in source:
        raise InputError("bad_request", "the model source contains NUL characters")
    text = _LINE_COMMENT.sub("", _BLOCK_COMMENT.sub(" ", source))
    match = _ARRAY.search(text)
    if match is None:
        raise InputError("bad_request", "the model is not C source with an array like "
                         "'const unsigned char model_tflite[] = {0x1C, 0x00, ...};'")
    elements = [e.strip() for e in match.group("body").split(",")]
    if elements and elements[-1] == "":
        elements.pop()  # trailing comma
    if len(elements) > max_bytes:
        raise InputError("payload_too_large", f"the model array has {len(elements)} bytes, "
                         f"more than the limit of {max_bytes}", limit_bytes=max_bytes,
                         size_bytes=len(elements))
    out = bytearray(len(elements))
    for index, element in enumerate(elements):
        if _HEX_BYTE.match(element):
            out[index] = int(element, 16)
        elif _DEC_BYTE.match(element) and int(element) <= 255:
            out[index] = int(element)
        else:
            raise InputError("bad_request", f"element {index} of array "
                             f"{match.group('name')} is not a byte: {element[:20]!r}",
                             index=index, element=element[:20])
    declared = _LEN.search(text)
    if declared is not None and int(declared.group("value")) != len(out):
        raise InputError("bad_request", f"{declared.group('name')} = {declared.group('value')}"
                         f" but the array has {len(out)} bytes",
                         declared=int(declared.group("value")), actual=len(out))
    return bytes(out)


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
    job = rt.jobs.submit(slot.id, model, InstallOptions())
    # The old API is synchronous: wait for the verified boot (or the failure).
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
