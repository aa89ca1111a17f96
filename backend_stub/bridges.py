"""Bridges: address validation and a small HTTP client of the bridge API.

The backend talks to bridges only over HTTP. Every call has a connect and a read timeout,
redirects are never followed (the token must not travel to another host), and every failure
is a classified :class:`~hal.errors.HalError`: the bridge's own error JSON is rebuilt with its
code, an unreachable bridge is ``unavailable``, a slow one ``timeout``, an answer that is not
the bridge's JSON ``transport_broken``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from hal.errors import InfraError, InputError, from_dict

log = logging.getLogger(__name__)

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
            if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
                raise _bad_url(url, f"{host!r} is not a valid host name (letters, digits and "
                                    "'-' in dot-separated labels)")
            host_text = host
    return f"{scheme}://{host_text}" + (f":{port}" if port is not None else "")


class BridgeClient:
    """Calls one bridge's HTTP API (see the bridge API contract)."""

    def __init__(self, url: str, token: str | None, *, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy from the environment sees the token

    def close(self) -> None:
        self._session.close()

    def _call(self, method: str, path: str, *, read_timeout_s: float | None = None,
              **kwargs: Any) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = (self.connect_timeout_s, read_timeout_s or self.read_timeout_s)
        where = f"{method} {self.url}{path}"
        try:
            resp = self._session.request(method, self.url + path, headers=headers,
                                         timeout=timeout, allow_redirects=False, **kwargs)
        except requests.Timeout:
            raise InfraError("timeout", f"the bridge did not answer {where} in time",
                             bridge=self.url, timeout_s=list(timeout)) from None
        except requests.ConnectionError as exc:
            raise InfraError("unavailable", f"cannot reach the bridge at {self.url}",
                             bridge=self.url, reason=str(exc)[:300]) from None
        except requests.RequestException as exc:
            raise InfraError("transport_broken", f"{where} failed: {exc}",
                             bridge=self.url) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            if isinstance(body, dict) and "code" in body:
                err = from_dict(body)
            else:
                err = InfraError("transport_broken",
                                 f"{where} answered HTTP {resp.status_code} without an error "
                                 "body", body_head=resp.text[:200])
            err.detail.setdefault("http_status", resp.status_code)
            err.detail.setdefault("bridge", self.url)
            if err.code == "unauthorized":
                err.message = "the bridge refused the token registered for it"
                err.http_status = 502  # type: ignore[attr-defined]  # not the caller's token
            raise err
        if 300 <= resp.status_code < 400 or not isinstance(body, dict):
            raise InfraError("transport_broken",
                             f"{where} answered HTTP {resp.status_code} with something that is "
                             "not the bridge's JSON", bridge=self.url,
                             body_head=resp.text[:200])
        return body

    def health(self) -> tuple[dict[str, Any], float]:
        """The bridge's ``/health`` and the round-trip time in milliseconds."""
        t0 = time.monotonic()
        body = self._call("GET", "/health")
        return body, round((time.monotonic() - t0) * 1000, 1)

    def devices(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/devices").get("devices", []))

    def device(self, device_id: str) -> dict[str, Any]:
        return self._call("GET", f"/devices/{_seg(device_id)}")

    def install(self, device_id: str, model: bytes, options: dict[str, Any]) -> dict[str, Any]:
        """Start an install job (multipart: ``model`` file + ``options`` JSON)."""
        return self._call(
            "POST", f"/devices/{_seg(device_id)}/install",
            files={"model": ("model.tflite", model, "application/octet-stream")},
            data={"options": json.dumps(options)},
        )

    def job(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """A bridge job; with ``wait_s`` the bridge holds the answer until the job ends."""
        params = {"wait": f"{wait_s:g}"} if wait_s > 0 else None
        return self._call("GET", f"/jobs/{_seg(job_id)}", params=params,
                          read_timeout_s=wait_s + self.read_timeout_s)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/jobs/{_seg(job_id)}")

    def observe(self, device_id: str, lines: int) -> dict[str, Any]:
        return self._call("GET", f"/devices/{_seg(device_id)}/observe",
                          params={"lines": str(lines)})


def _seg(value: str) -> str:
    """A path segment, percent-encoded (ids come from users and bridges)."""
    from urllib.parse import quote

    return quote(str(value), safe="")
