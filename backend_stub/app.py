"""The backend's Flask application factory and its production server (waitress).

``create_app(config)`` migrates the database (``alembic upgrade head``), starts the job runner
and registers the views. Every answer is JSON (or the file asked for); every failure is the
``hal.errors`` wire form ``{"code", "message", "detail", "class"}``. All endpoints but
``/health`` and ``/openapi.json`` need ``Authorization: Bearer <token>``.

``serve`` bounds idle and slow connections with :mod:`bridge.connections` (the bridge's own
protection) and gives long-polls (``?wait=``) their own capped share of the worker threads, so
neither can keep ``/health`` and ordinary requests from answering.

TensorFlow is never imported here: trainings and compilations run in worker processes.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

from backend_stub.config import BackendConfig
from backend_stub.runner import JobRunner
from backend_stub.storage import Store
from hal.errors import (
    BugError,
    ErrorClass,
    HalError,
    InputError,
    make_error,
)

log = logging.getLogger(__name__)

# Status by code; otherwise by class (input 400, fit 422, device 502, infrastructure 503).
STATUS_BY_CODE = {
    "unauthorized": 401,
    "not_found": 404,
    "unknown_device": 404,
    "unknown_job": 404,
    "device_busy": 409,
    "payload_too_large": 413,
    "bad_option": 422,
    "dataset_invalid": 422,
    "unknown_board": 422,
    "compile_failed": 422,
    "cancelled": 409,
    "timeout": 504,
}
STATUS_BY_CLASS = {
    ErrorClass.INPUT: 400,
    ErrorClass.FIT: 422,
    ErrorClass.DEVICE: 502,
    ErrorClass.INFRA: 503,
    ErrorClass.BUG: 500,
}


def status_for(err: HalError) -> int:
    """The HTTP status of an error (an explicit ``http_status`` attribute wins)."""
    explicit = getattr(err, "http_status", None)
    if explicit:
        return int(explicit)
    return STATUS_BY_CODE.get(err.code, STATUS_BY_CLASS[err.error_class])


def error_response(err: HalError, status: int | None = None) -> Response:
    """The ``{code, message, detail, class}`` body of ``err`` (503s say when to retry)."""
    status = status or status_for(err)
    resp = Response(json.dumps(err.to_dict()), status=status, mimetype="application/json")
    if status == 503 and "retry_after_s" in err.detail:
        resp.headers["Retry-After"] = str(int(err.detail["retry_after_s"]))
    return resp


def wants_to_wait() -> bool:
    """True when the current request asks to be held (``?wait=S`` with S > 0). A malformed
    value is not a wait: the view refuses it at once."""
    try:
        wait = float(request.args.get("wait", "0"))
    except ValueError:
        return False
    return not math.isnan(wait) and wait > 0


@dataclass
class Backend:
    """What the views share: the store, the configuration and the job runners."""

    config: BackendConfig
    store: Store
    runner: JobRunner
    started: float = field(default_factory=time.monotonic)
    deployments: object = None  # backend_stub.deploy.DeploymentRunner
    rollouts: object = None  # backend_stub.rollout.RolloutRunner

    def close(self) -> None:
        """Kill running workers, stop following bridge jobs (they are re-attached at the
        next start), release the database."""
        self.runner.shutdown()
        if self.rollouts is not None:
            self.rollouts.shutdown()
        self.store.dispose()


def create_app(config: BackendConfig | None = None) -> Flask:
    """Build the app: migrate the database, start the job runner, register the views."""
    from backend_stub.deploy import DeploymentRunner
    from backend_stub.rollout import RolloutRunner
    from backend_stub.web import api, guard, register_views

    config = config or BackendConfig()
    store = Store(config.database_url, migrate=config.migrate)
    runner = JobRunner(store, config)
    backend = Backend(config=config, store=store, runner=runner)
    backend.deployments = DeploymentRunner(store, config)
    backend.rollouts = RolloutRunner(store, config, backend.deployments)
    runner.start()
    # Deployments and rollouts a previous process was following: re-attached to the
    # bridges' jobs (in the background; a bridge that is down does not delay the start).
    backend.rollouts.recover()

    app = Flask("backend_stub")
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_upload_bytes
    app.json.sort_keys = False
    app.extensions["tinyml_backend"] = backend
    guard.install(app, config)  # Host, Origin and content type, before authentication
    register_views(app)
    public = api.public_rules()

    @app.before_request
    def _authenticate():
        if config.token is None or request.url_rule is None:
            return None  # no auth configured, or a 404/405 answered by the error handler
        if request.url_rule.rule in public:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), config.token.encode()):
            return error_response(InputError(
                "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)"))
        return None

    # A long-poll holds a worker thread while it waits: at most max_waits at once (serve adds
    # that many threads), one beyond is refused rather than queued behind the others.
    waits = threading.BoundedSemaphore(config.max_waits)

    @app.before_request
    def _long_poll_slot():
        if request.url_rule is None or not wants_to_wait():
            return None
        if not waits.acquire(blocking=False):
            return error_response(make_error(
                "unavailable", f"too many requests waiting for jobs ({config.max_waits}); "
                "retry later or poll without ?wait", limit=config.max_waits, retry_after_s=2))
        g.long_poll_slot = True
        return None

    @app.teardown_request
    def _release_long_poll_slot(_exc):
        if g.pop("long_poll_slot", False):
            waits.release()

    @app.errorhandler(HalError)
    def _hal_error(err: HalError):
        if err.error_class is ErrorClass.BUG:
            log.error("%s %s: %s", request.method, request.path, err)
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = {401: "unauthorized", 404: "not_found", 413: "payload_too_large"}.get(
            exc.code or 400, "bad_request")
        detail = {"http_status": exc.code}
        if exc.code == 405:
            detail["allowed"] = sorted(getattr(exc, "valid_methods", None) or [])
        err = InputError(code, exc.description or exc.name, **detail)
        resp = error_response(err, exc.code or 400)
        if exc.code == 405:
            resp.headers["Allow"] = ", ".join(detail["allowed"])
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("%s %s failed", request.method, request.path)
        return error_response(BugError("internal", f"{type(exc).__name__}: {exc}"))

    log.info("backend ready (database %s)", store.engine.url.render_as_string(hide_password=True))
    return app


def serve(app: Flask, host: str, port: int, *, threads: int = 8,
          on_bound=None) -> None:
    """Serve ``app`` with waitress until interrupted. ``port`` 0 picks a free port; the
    bound ``(host, port)`` is passed to ``on_bound`` (the CLI prints it).

    ``threads`` serve ordinary requests; ``config.max_waits`` more serve long-polls. Idle and
    slow connections are bounded by the ``config`` connection limits (:mod:`bridge.connections`).
    """
    from waitress.server import create_server

    from bridge.connections import Limits, waitress_options
    from bridge.connections import install as install_limits

    backend: Backend = app.extensions["tinyml_backend"]
    config = backend.config
    limits = Limits(max_connections=config.max_connections,
                    max_per_client=config.max_connections_per_client,
                    header_timeout_s=config.header_timeout_s,
                    idle_timeout_s=config.idle_timeout_s)
    server = create_server(
        app, host=host, port=port, threads=threads + config.max_waits,
        # Uploads go to waitress's own temporary file past 512 KB, never all into memory.
        max_request_body_size=config.limits.max_upload_bytes + 1,
        clear_untrusted_proxy_headers=True, ident="tinyml-backend",
        **waitress_options(limits),
    )
    install_limits(server, limits)
    bound = server.effective_host, server.effective_port
    if on_bound:
        on_bound(bound)
    log.info("serving on http://%s:%s (threads=%d, max_waits=%d, max_connections=%d, "
             "per client %d, header timeout %gs)", *bound, threads, config.max_waits,
             config.max_connections, config.max_connections_per_client,
             config.header_timeout_s)
    try:
        server.run()
    finally:
        backend.close()


__all__ = ["Backend", "create_app", "serve", "status_for"]
