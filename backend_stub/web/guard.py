"""Browser safety without relying on the token: what a web page on this machine could make a
browser send is refused before any view runs.

* **Host**: the ``Host`` header must name an address or name the backend listens as
  (``BackendConfig.allowed_hosts``: the loopback names by default, plus ``serve --host`` and
  ``--allowed-host``). A page on ``attacker.example`` that re-binds its DNS name to 127.0.0.1
  still sends ``Host: attacker.example``: refused (400).
* **Origin**: a request carrying an ``Origin`` header is refused (403) unless that origin is
  in ``BackendConfig.allowed_origins``. Browsers send ``Origin`` on every cross-origin request
  and on every POST; the backend serves no web pages of its own, so no origin is trusted
  unless configured.
* **Content type**: state-changing requests (POST, PUT, PATCH, DELETE) with a CORS-"simple"
  content type (``text/plain``, ``application/x-www-form-urlencoded``,
  ``multipart/form-data``) are refused (415): those are the bodies a browser sends cross-site
  without asking first (no preflight). The API takes JSON, ``application/zip`` and
  ``application/octet-stream`` only.
"""

from __future__ import annotations

from flask import Flask, request

from backend_stub.config import BackendConfig
from hal.errors import InputError

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded",
                          "multipart/form-data"})


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower case, without port or trailing dot
    (``[::1]:8090`` -> ``::1``)."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def check_request(config: BackendConfig) -> None:
    """Raise the refusal for the current request, if any (see the module docstring)."""
    allowed = {h.lower().strip("[]") for h in config.allowed_hosts}
    host = host_name(request.headers.get("Host", ""))
    if "*" not in allowed and host not in allowed:
        err = InputError(
            "bad_request", f"Host {host or '(none)'!r} is not a name this backend answers to",
            host=host, allowed_hosts=sorted(allowed),
            fix="reach the backend by one of these names, or add the name with "
                "`serve --allowed-host NAME` (TINYML_BACKEND_ALLOWED_HOSTS)")
        err.http_status = 400  # type: ignore[attr-defined]
        raise err
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") not in {
            o.rstrip("/") for o in config.allowed_origins}:
        err = InputError(
            "bad_request", f"requests from web pages at {origin[:200]!r} are not accepted",
            origin=origin[:200],
            fix="add the origin with `serve --allowed-origin ORIGIN` "
                "(TINYML_BACKEND_ALLOWED_ORIGINS) if that page is yours")
        err.http_status = 403  # type: ignore[attr-defined]
        raise err
    if request.method in STATE_CHANGING and request.mimetype in SIMPLE_TYPES:
        err = InputError(
            "bad_request", f"Content-Type {request.mimetype} is not accepted by "
            f"{request.method} requests (send application/json, application/zip or "
            "application/octet-stream)", content_type=request.mimetype)
        err.http_status = 415  # type: ignore[attr-defined]
        raise err


def install(app: Flask, config: BackendConfig) -> None:
    """Run :func:`check_request` before every request (before authentication)."""

    @app.before_request
    def _guard():
        check_request(config)
