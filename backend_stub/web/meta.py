"""Health and the OpenAPI document (both without authentication)."""

from __future__ import annotations

import time

from flask import jsonify

from backend_stub import __version__, schemas
from backend_stub.web import answer, api, backend, openapi_document


@api.route("GET", "/health", summary="Liveness and version", tag="meta",
           response=schemas.HealthOut, auth=False)
def health():
    b = backend()
    return answer(schemas.HealthOut, {
        "status": "ok", "version": __version__,
        "uptime_s": round(time.monotonic() - b.started, 3),
        "database": b.store.engine.url.get_backend_name(),
        "jobs_running": b.runner.running_count(),
    })


@api.route("GET", "/openapi.json", summary="This OpenAPI document", tag="meta",
           response=None, auth=False)
def openapi_json():
    return jsonify(openapi_document())
