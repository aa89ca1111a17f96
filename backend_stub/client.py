"""A small HTTP client of the backend API (used by ``tinyml-backend`` and scripts).

Every call has a timeout; every failure is a :class:`hal.errors.HalError` (the backend's
error JSON rebuilt with its code; ``unavailable``/``timeout``/``transport_broken`` when the
backend cannot be reached or does not answer JSON).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import requests

from hal.errors import InfraError, from_dict

DEFAULT_URL = "http://127.0.0.1:8090"
ENV_URL = "TINYML_BACKEND_URL"
FINAL = frozenset({"succeeded", "failed", "cancelled"})


class BackendClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, *, stream: bool = False,
                timeout: float | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = self.session.request(method, self.url + path, headers=headers, stream=stream,
                                        timeout=(5.0, timeout or self.timeout), **kwargs)
        except requests.Timeout:
            raise InfraError("timeout", f"the backend did not answer {method} {path} in time",
                             url=self.url) from None
        except requests.ConnectionError as exc:
            raise InfraError("unavailable", f"cannot reach the backend at {self.url}",
                             url=self.url, reason=str(exc)[:300]) from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and "code" in body:
                err = from_dict(body)
                err.detail.setdefault("http_status", resp.status_code)
                raise err
            raise InfraError("transport_broken", f"{method} {path} answered HTTP "
                             f"{resp.status_code}", body_head=resp.text[:200])
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204:
            return None
        try:
            return resp.json()
        except ValueError:
            raise InfraError("transport_broken", f"{method} {path} did not answer JSON",
                             body_head=resp.text[:200]) from None

    def download(self, path: str, out: BinaryIO) -> int:
        """Stream a binary resource into ``out``; returns the byte count."""
        resp = self.request("GET", path, stream=True, timeout=max(self.timeout, 120.0))
        n = 0
        for chunk in resp.iter_content(1 << 16):
            out.write(chunk)
            n += len(chunk)
        return n

    def upload_file(self, path: str, file: Path, params: dict | None = None,
                    content_type: str = "application/zip") -> Any:
        """POST a file as the raw body, streamed from disk."""
        with file.open("rb") as f:
            return self.json("POST", path, data=f, params=params,
                             headers={"Content-Type": content_type},
                             timeout=max(self.timeout, 600.0))

    def follow(self, path: str, poll_s: float = 5.0) -> Iterator[dict[str, Any]]:
        """Yield the resource at ``path`` each time it is polled, until it ends."""
        while True:
            body = self.json("GET", path, params={"wait": f"{poll_s:g}"},
                             timeout=poll_s + self.timeout)
            yield body
            if body.get("state") in FINAL:
                return
            time.sleep(0.2 if poll_s else 1.0)
