"""The Flask application factory: HTTP in, ``hal`` calls out, errors as JSON.

The web layer translates requests to calls on the registry and job manager and errors to
``{code, message, detail, class}`` bodies with the right status; it holds no device logic.
The shared helpers are in :mod:`bridge.web`, the request guard (token, Host, Origin, content
type) in :mod:`bridge.guard`, the runtime in :mod:`bridge.runtime`.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from bridge.api import api
from bridge.config import BridgeConfig
from bridge.guard import RequestGuard
from bridge.legacy import legacy
from bridge.registry import DeviceRegistry
from bridge.runtime import Runtime
from bridge.web import (
    allowed_methods,
    error_response,
    http_error,
    json_response,
    status_for,
    validation_error,
)
from hal.errors import CODES, HalError, make_error

log = logging.getLogger(__name__)


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
    guard = RequestGuard(config)
    app.before_request(guard.check)

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
        headers = None
        if exc.code == 405:  # RFC 9110: a 405 names the methods the resource supports
            headers = {"Allow": ", ".join(allowed_methods(exc))}
        return error_response(http_error(exc, config.server.max_request_bytes),
                              exc.code or 500, headers)

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        # The traceback stays in the server log; the client gets a classified bug.
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(make_error("internal", "internal error; see the bridge log",
                                         path=request.path[:200]), 500)

    app.register_blueprint(api)
    if config.legacy.enabled:
        app.register_blueprint(legacy)
    return app


__all__ = ["CODES", "Runtime", "create_app", "error_response", "json_response", "status_for"]
