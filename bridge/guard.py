"""Who may talk to the bridge: the token, the Host header, the browser Origin and the body
type of state-changing requests, checked before any endpoint runs.

Why more than the token: without a token (the default on loopback, and what the old
TinyMLaaS backend needs) any web page open in a browser on the bridge machine could otherwise
drive the API. Two browser paths exist, and each rule closes one:

* **DNS rebinding**: a page at ``attacker.example`` re-resolves its own name to 127.0.0.1 and
  then talks to the bridge *same-origin* (any method, any header). The browser still sends
  ``Host: attacker.example``, so a Host that is not an address or name the bridge listens as
  is refused (403 ``forbidden_origin``). IP-address literals cannot be rebound.
* **Cross-site requests**: a page may send "simple" requests without a CORS preflight:
  GET/HEAD/POST with ``text/plain``, ``application/x-www-form-urlencoded`` or
  ``multipart/form-data`` bodies. Browsers (Fetch standard) put an ``Origin`` header on every
  cross-origin request and on every POST, so a request whose ``Origin`` is neither the bridge
  itself nor in ``[server] allowed_origins`` is refused (403). As defence in depth against
  clients that omit ``Origin``, state-changing endpoints refuse ``text/plain`` and
  form-urlencoded bodies outright (415): JSON needs a preflight the bridge never grants.
  ``multipart/form-data`` stays accepted because it is how models are uploaded (the CLI and
  ``bridge.client`` use it); a browser cannot send it cross-site without ``Origin``, and the
  ``Sec-Fetch-Site: cross-site`` header that modern browsers add is refused as well.

Server-side clients (the old backend, curl, ``bridge.client``) send no ``Origin`` and name the
bridge by the address they connect to, so they pass unchanged.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from flask import g, request

from bridge.config import BridgeConfig, is_loopback_host
from bridge.web import too_large
from hal.errors import InputError

# Endpoints reachable without the token.
PUBLIC_PATHS = frozenset({"/health", "/health/"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Bodies a browser sends cross-site without a preflight; multipart is handled by Origin.
REFUSED_SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def split_host(value: str) -> str | None:
    """The host part of a ``Host`` header (port and IPv6 brackets removed, lower case), or
    None when it is malformed."""
    value = value.strip().lower()
    if not value or len(value) > 300:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            return None
        return value[1:end]
    if value.count(":") == 1:
        value, _, port = value.partition(":")
        if not port.isdigit():
            return None
    elif value.count(":") > 1:
        return None  # an IPv6 literal must be bracketed in Host
    return value.rstrip(".")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class RequestGuard:
    """``check()`` runs before every request (Flask ``before_request``)."""

    def __init__(self, config: BridgeConfig) -> None:
        server = config.server
        self.token = server.token
        self.max_request_bytes = server.max_request_bytes
        self.any_host = "*" in server.allowed_hosts
        listen = server.host.lower()
        self.wildcard = _ip(listen) is not None and _ip(listen).is_unspecified
        names = {h.lower().rstrip(".") for h in server.allowed_hosts if h != "*"}
        names |= LOOPBACK_NAMES if is_loopback_host(listen) or self.wildcard else set()
        names.add(listen)
        self.names = frozenset(names)
        self.loopback_only = is_loopback_host(listen)
        self.origins = frozenset(o.lower().rstrip("/") for o in server.allowed_origins)

    # ------------------------------------------------------------------------ rules

    def host_allowed(self, host_header: str | None) -> bool:
        """True when ``Host`` names this bridge: a configured or loopback name, the listen
        address, or (listening on a wildcard) any IP literal; a loopback-only bridge accepts
        loopback literals only."""
        if self.any_host:
            return True
        host = split_host(host_header or "")
        if host is None:
            return False
        if host in self.names:
            return True
        ip = _ip(host)
        if ip is None:
            return False
        if self.loopback_only:
            return ip.is_loopback
        return self.wildcard

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """Same origin as the bridge itself, or listed in ``[server] allowed_origins``."""
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host_header.strip().lower()

    def authorized(self) -> bool:
        """No token configured, or the request carries it."""
        if not self.token:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        given = value.strip().encode("utf-8", "replace")
        # compare_digest: the time taken does not reveal how much of the token matched.
        ok = hmac.compare_digest(given, self.token.encode())
        return scheme.lower() == "bearer" and ok

    def check(self) -> None:
        """Raise the classified refusal, or return to let the endpoint run."""
        host_header = request.headers.get("Host", "")
        if not self.host_allowed(host_header):
            raise InputError("forbidden_origin", "the Host header does not name this bridge; "
                             "add the name to [server] allowed_hosts if clients use it",
                             host=host_header[:100])
        origin = request.headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin, host_header):
            raise InputError("forbidden_origin", "requests from this browser origin are not "
                             "allowed; list it in [server] allowed_origins to allow it",
                             origin=origin[:100])
        site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
        if site in ("cross-site", "same-site") and origin is None:
            raise InputError("forbidden_origin", f"cross-site browser request refused "
                             f"(Sec-Fetch-Site: {site[:20]})")
        g.authorized = self.authorized()
        if request.path not in PUBLIC_PATHS and not g.authorized:
            raise InputError("unauthorized", "missing or wrong bearer token "
                             "(send 'Authorization: Bearer <token>')")
        if request.method in STATE_CHANGING and request.mimetype in REFUSED_SIMPLE_TYPES:
            raise InputError("unsupported_media_type", f"{request.mimetype} bodies are not "
                             "accepted on state-changing endpoints (browsers send them "
                             "cross-site); send application/json or multipart/form-data",
                             content_type=request.mimetype[:100])
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise too_large(length, self.max_request_bytes)
