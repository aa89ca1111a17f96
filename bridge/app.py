"""The Flask application factory: HTTP in, ``hal`` calls out, errors as JSON.

The web layer translates requests to calls on the registry and job manager and errors to
``{code, message, detail, class}`` bodies with the right status; it holds no device logic.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from bridge.config import BridgeConfig
from bridge.jobs import JobManager
from bridge.registry import DeviceRegistry
from bridge.state import StateStore
from bridge.streams import StreamLimiter
from hal.driver import get_driver_class
from hal.errors import CODES, ErrorClass, HalError, InputError, as_hal_error, make_error

log = logging.getLogger(__name__)

# Endpoints reachable without the token.
PUBLIC_PATHS = frozenset({"/health", "/health/"})

_STATUS_BY_CODE = {
    "unauthorized": 401,
    "unknown_device": 404,
    "unknown_job": 404,
    "not_found": 404,
    "device_busy": 409,
    "job_finished": 409,
    "cancelled": 409,
    "payload_too_large": 413,
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


def error_response(error: HalError, status: int | None = None) -> Response:
    status = status or status_for(error)
    headers = {"WWW-Authenticate": 'Bearer realm="tinyml-bridge"'} if status == 401 else None
    return json_response(error.to_dict(), status, headers)


class Runtime:
    """What the HTTP layer needs: config, state, devices, jobs, and the stop flag."""

    def __init__(self, config: BridgeConfig, registry: DeviceRegistry | None = None) -> None:
        self.config = config
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.streams = StreamLimiter(config.server.max_streams)
        store = registry.store if registry is not None else None
        self.store = store or StateStore(config.state_dir, history=config.jobs.history)
        self.jobs_recovered = self._recover()
        if registry is None:
            registry = DeviceRegistry(config, self.store)
            registry.start()
        elif registry.store is None:
            registry.store = self.store
        self.registry = registry
        self.jobs = JobManager(registry, self.store, timeout_s=config.jobs.timeout_s,
                               max_wait_s=config.jobs.max_wait_s)
        self._tools: dict[str, tuple[float, dict[str, Any]]] = {}
        self._tools_lock = threading.Lock()
        self._closed = False

    def _recover(self) -> list[str]:
        from bridge.streams import utc_now

        return self.store.mark_interrupted(utc_now())

    def driver_tools(self, ttl_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """``check_tools`` of each driver in use, cached for ``ttl_s`` (it may run tools)."""
        out = {}
        now = time.monotonic()
        for name in self.registry.driver_names():
            with self._tools_lock:
                cached = self._tools.get(name)
            if cached is not None and now - cached[0] < ttl_s:
                out[name] = cached[1]
                continue
            try:
                result = dict(get_driver_class(name).check_tools(self.registry.context))
                result.setdefault("available", False)
            except Exception as exc:  # a driver whose module cannot load is "unavailable"
                result = {"available": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            result = json.loads(json.dumps(result, default=str))
            with self._tools_lock:
                self._tools[name] = (now, result)
            out[name] = result
        return out

    def close(self, grace_s: float | None = None) -> None:
        """Stop: cancel jobs (waiting up to ``grace_s``), end streams, release devices."""
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        self.jobs.shutdown(self.config.server.shutdown_grace_s if grace_s is None else grace_s)
        self.registry.close()
        self.store.close()


def runtime() -> Runtime:
    """The runtime of the current app."""
    from flask import current_app

    return current_app.extensions["tinyml_bridge"]


def create_app(config: BridgeConfig, *, registry: DeviceRegistry | None = None) -> Flask:
    """Build the bridge application. Without ``registry`` it opens the state directory,
    builds the configured drivers, starts observing and discovery; ``app.extensions
    ["tinyml_bridge"].close()`` stops all that."""
    app = Flask("bridge")
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = config.server.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    rt = Runtime(config, registry)
    app.extensions["tinyml_bridge"] = rt

    @app.before_request
    def _guard() -> None:
        if request.path not in PUBLIC_PATHS and config.server.token:
            header = request.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            given = value.strip().encode("utf-8", "replace")
            # compare_digest: the time taken does not reveal how much of the token matched.
            ok = hmac.compare_digest(given, config.server.token.encode())
            if scheme.lower() != "bearer" or not ok:
                raise InputError("unauthorized", "missing or wrong bearer token "
                                 "(send 'Authorization: Bearer <token>')")
        length = request.content_length
        if length is not None and length > config.server.max_request_bytes:
            raise _too_large(length, config.server.max_request_bytes)

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(HalError)
    def _hal_error(exc: HalError) -> Response:
        return error_response(exc)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return error_response(validation_error(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(http_error(exc, config), exc.code or 500)

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        # The traceback stays in the server log; the client gets a classified bug.
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(make_error("internal", "internal error; see the bridge log",
                                         path=request.path[:200]), 500)

    from bridge.api import api
    from bridge.legacy import legacy

    app.register_blueprint(api)
    if config.legacy.enabled:
        app.register_blueprint(legacy)
    return app


def _too_large(length: int | None, limit: int) -> InputError:
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


def http_error(exc: HTTPException, config: BridgeConfig) -> HalError:
    """werkzeug's 4xx/5xx (routing, size, malformed body) as classified errors."""
    status = exc.code or 500
    if status == 404:
        return InputError("not_found", f"no such endpoint: {request.path[:200]}")
    if status == 405:
        return InputError("bad_request", f"method {request.method} not allowed on "
                          f"{request.path[:200]}", allowed=sorted(exc.valid_methods or [])
                          if hasattr(exc, "valid_methods") else [])
    if status == 413:
        return _too_large(request.content_length, config.server.max_request_bytes)
    if status == 401:
        return InputError("unauthorized", "missing or wrong bearer token")
    if status >= 500:
        return as_hal_error(exc)
    code = "bad_request"
    description = exc.description or exc.name
    return InputError(code, f"{exc.name}: {description}"[:500])


__all__ = ["CODES", "Runtime", "create_app", "error_response", "json_response", "status_for"]
