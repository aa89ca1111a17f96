"""HTTP helpers shared by the app factory and the blueprints (``api``, ``legacy``).

They live here, not in :mod:`bridge.app`, so the blueprints never import the module that
registers them (no ``app`` <-> ``api`` <-> ``legacy`` import cycle).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from hal.errors import ErrorClass, HalError, InputError, as_hal_error

if TYPE_CHECKING:  # pragma: no cover
    from bridge.runtime import Runtime

_STATUS_BY_CODE = {
    "unauthorized": 401,
    "forbidden_origin": 403,
    "unknown_device": 404,
    "unknown_job": 404,
    "not_found": 404,
    "device_busy": 409,
    "job_finished": 409,
    "cancelled": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "compile_failed": 422,
    "internal": 500,
}
_STATUS_BY_CLASS = {
    ErrorClass.INPUT: 400,
    ErrorClass.FIT: 422,
    ErrorClass.DEVICE: 503,
    ErrorClass.INFRA: 503,
    ErrorClass.BUG: 500,
}


def status_for(error: HalError) -> int:
    """The HTTP status of a classified error."""
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    return _STATUS_BY_CLASS.get(error.error_class, 500)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  model: type[BaseModel] | None = None) -> Response:
    """A JSON response; with ``model`` the body is validated against it first, so nothing
    leaves that breaks the published schema."""
    if model is not None:
        body = model.model_validate(body).model_dump(mode="json", by_alias=True)
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
    return Response(text, status=status, headers=headers, mimetype="application/json")


def error_response(error: HalError, status: int | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """The ``{code, message, detail, class}`` body of ``error`` with its status."""
    status = status or status_for(error)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tinyml-bridge"'
    if status == 503 and "retry_after_s" in error.detail:
        headers["Retry-After"] = str(int(error.detail["retry_after_s"]))
    return json_response(error.to_dict(), status, headers or None)


def runtime() -> Runtime:
    """The runtime of the current app."""
    return current_app.extensions["tinyml_bridge"]


def too_large(length: int | None, limit: int) -> InputError:
    """``payload_too_large`` naming the limit (and the declared length, if any)."""
    detail: dict[str, Any] = {"limit_bytes": limit}
    if length is not None:
        detail["content_length"] = length
    return InputError("payload_too_large", f"the request body exceeds the {limit} byte limit",
                      **detail)


def validation_error(exc: ValidationError, what: str = "request") -> InputError:
    """A pydantic error as a 400 naming each bad field."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    described = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
                 for e in errors[:20]]
    first = described[0] if described else {"field": "(body)", "message": "invalid"}
    code = "bad_request" if any(e["type"] in ("model_type", "dict_type", "missing")
                                for e in errors) else "bad_option"
    return InputError(code, f"invalid {what}: {first['field']}: {first['message']}",
                      errors=described)


def http_error(exc: HTTPException, max_request_bytes: int) -> HalError:
    """werkzeug's 4xx/5xx (routing, size, malformed body) as classified errors."""
    status = exc.code or 500
    if status == 404:
        return InputError("not_found", f"no such endpoint: {request.path[:200]}")
    if status == 405:
        return InputError("bad_request", f"method {request.method} not allowed on "
                          f"{request.path[:200]}", allowed=allowed_methods(exc))
    if status == 413:
        return too_large(request.content_length, max_request_bytes)
    if status == 401:
        return InputError("unauthorized", "missing or wrong bearer token")
    if status >= 500:
        return as_hal_error(exc)
    description = exc.description or exc.name
    return InputError("bad_request", f"{exc.name}: {description}"[:500])


def allowed_methods(exc: HTTPException) -> list[str]:
    """The methods a 405 names (werkzeug's ``valid_methods``), sorted."""
    return sorted(getattr(exc, "valid_methods", None) or [])
