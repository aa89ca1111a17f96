"""Bridges: address validation, and the backend's policy for calling a bridge.

The backend talks to bridges only over HTTP, through the bridge package's one client,
:class:`bridge.client.BridgeClient` (never its server modules). That client bounds every call
and classifies every failure as a :class:`~hal.errors.HalError` (the bridge's own error JSON
rebuilt with its code; ``unavailable``, ``timeout``, ``transport_broken``). On top of it the
backend adds what is its own: timeouts from :class:`BackendConfig`, no redirects and no proxy
from the environment (the token registered for a bridge must reach only that host), and a
bridge refusing that token reported as a bad gateway, not as the caller's 401.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from backend_stub.config import BackendConfig
from backend_stub.names import BRIDGE_URL_PATTERN
from bridge.client import BridgeClient
from hal.errors import HalError, InputError

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(\d+|0x[0-9a-f]*)$")


def _bad_url(url: str, problem: str) -> InputError:
    return InputError("bad_option", f"invalid bridge URL {url!r}: {problem}", url=url,
                      field="url", expected="http(s)://host[:port] with a host name, an IPv4 "
                                            "address or a bracketed IPv6 address")


def validate_bridge_url(url: str) -> str:
    """Check a bridge address and return its normal form ``scheme://host[:port]``.

    Accepted: scheme ``http`` or ``https``; a host name (RFC 1123 labels), a dotted-quad IPv4
    address or a bracketed IPv6 address; any port 1-65535 (none means the scheme's default;
    nothing is appended). Rejected with the reason: other schemes, user information, paths
    other than ``/``, queries, fragments, white space or control characters, non-ASCII
    characters, and numeric host forms that are not a dotted quad (``127.1``, ``0x7f.0.0.1``).
    """
    if not isinstance(url, str) or not url:
        raise _bad_url(str(url), "empty")
    if len(url) > 512:
        raise _bad_url(url[:64] + "...", "longer than 512 characters")
    if not url.isascii():
        raise _bad_url(url, "non-ASCII characters (write an internationalised host name in "
                            "its xn-- form)")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _bad_url(url, "white space or control characters")
    if "\\" in url:
        raise _bad_url(url, "backslash")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad_url(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _bad_url(url, f"scheme {parts.scheme or '(none)'!r}; only http and https")
    if not parts.netloc:
        raise _bad_url(url, "no host")
    if "@" in parts.netloc:
        raise _bad_url(url, "user information (user:password@) is not allowed; register the "
                            "token separately")
    if parts.path not in ("", "/"):
        raise _bad_url(url, f"a path ({parts.path!r}); give the bridge's base address only")
    if parts.query or "?" in url:
        raise _bad_url(url, "a query string")
    if parts.fragment or "#" in url:
        raise _bad_url(url, "a fragment")
    try:
        port = parts.port
    except ValueError:
        raise _bad_url(url, "the port must be a number from 1 to 65535") from None
    if port is not None and not 1 <= port <= 65535:
        raise _bad_url(url, "the port must be a number from 1 to 65535")
    if parts.netloc.endswith(":"):
        raise _bad_url(url, "empty port")
    host = (parts.hostname or "").lower()
    if not host:
        raise _bad_url(url, "no host")
    if parts.netloc.startswith("["):
        if "%" in host:
            raise _bad_url(url, "IPv6 zone ids (%...) are not supported; use a routable address")
        try:
            addr = ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_url(url, f"{host!r} is not an IPv6 address") from None
        host_text = f"[{addr.compressed}]"
    elif ":" in host:
        raise _bad_url(url, "an IPv6 address must be in brackets")
    else:
        labels = host.split(".")
        if _NUMERIC_LABEL.match(labels[-1]):
            try:
                addr4 = ipaddress.IPv4Address(host)
            except ValueError:
                raise _bad_url(url, f"{host!r} is neither a dotted-quad IPv4 address nor a "
                                    "host name") from None
            host_text = str(addr4)
        else:
            # No total-length rule: a name DNS cannot resolve is reported when it is used.
            if not all(_LABEL.match(label) for label in labels):
                raise _bad_url(url, f"{host!r} is not a valid host name (letters, digits and "
                                    "'-' in dot-separated labels)")
            host_text = host
    if not re.fullmatch(BRIDGE_URL_PATTERN, url):
        # What is left (e.g. an IPv6 address with an embedded IPv4 part, a last label that
        # starts with a digit) is refused too, so the API accepts exactly its documented form.
        raise _bad_url(url, f"not of the documented form {BRIDGE_URL_PATTERN}")
    return f"{scheme}://{host_text}" + (f":{port}" if port is not None else "")


@contextmanager
def bridge_client(url: str, token: str | None, config: BackendConfig) -> Iterator[BridgeClient]:
    """A :class:`~bridge.client.BridgeClient` for a registered bridge, closed on exit.

    Errors the bridge answered with (those with ``detail["http_status"]``) get
    ``detail["bridge"]``; its ``unauthorized`` means the token *registered for the bridge* is
    wrong, so it becomes a 502 for our caller, whose own token was fine."""
    client = BridgeClient(url, token, timeout=config.bridge_read_timeout_s,
                          connect_timeout=config.bridge_connect_timeout_s,
                          follow_redirects=False, trust_env=False, user_agent="tinyml-backend")
    try:
        yield client
    except HalError as err:
        if "http_status" in err.detail:
            err.detail.setdefault("bridge", url)
            if err.code == "unauthorized":
                err.message = "the bridge refused the token registered for it"
                err.http_status = 502  # type: ignore[attr-defined]  # not the caller's token
        raise
    finally:
        client.close()
