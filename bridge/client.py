"""A small HTTP client of the bridge API (see the API contract in the README).

Used by the technician CLI, by scripts and by the backend (backend_stub), which talks to
bridges only through this class::

    from bridge.client import BridgeClient

    client = BridgeClient("http://127.0.0.1:5000", token="a-long-enough-secret")
    job = client.install("nano-1", Path("model.tflite").read_bytes(), labels=["yes", "no"])
    job = client.wait_job(job["id"], timeout=300)

Every call has a timeout. Every failure is a :class:`hal.errors.HalError`: the bridge's own
error JSON is rebuilt with :func:`hal.errors.from_dict` (so ``code`` is the bridge's code), a
bridge that cannot be reached is ``InfraError("unavailable")``, a call that outlives its
timeout is ``InfraError("timeout")``, and an answer that is not the bridge's JSON is
``InfraError("transport_broken")``. The HTTP status, when there was one, is in
``error.detail["http_status"]``.

A server that is not a bridge cannot make a method fail any other way: every answer must be a
JSON object, and the fields a method unpacks (``devices``, ``jobs``) must be lists.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import requests

from hal.errors import HalError, InfraError, InputError, from_dict

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/tinyml-bridge/bridge.toml")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000  # the daemon's default (the old TinyMLaaS bridge port)
DEFAULT_TIMEOUT_S = 10.0
# Longer than the bridge's keep-alive ping (~15 s), so a silent stream means a dead connection.
STREAM_READ_TIMEOUT_S = 45.0
# Job states after which nothing changes any more.
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})

ENV_URL = "TINYML_BRIDGE_URL"
ENV_TOKEN = "TINYML_BRIDGE_TOKEN"
ENV_TOKEN_FILE = "TINYML_BRIDGE_TOKEN_FILE"
ENV_CONFIG = "TINYML_BRIDGE_CONFIG"


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class ClientSettings:
    """Where the bridge is and how to authenticate, with where each value came from."""

    url: str
    token: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # "url"/"token" -> "flag", "env"...


def _read_token_file(path: Path, origin: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(
            "bad_option", f"cannot read the token file {path} ({origin}): {exc.strerror}",
            path=str(path),
        ) from None
    if not token:
        raise InputError("bad_option", f"the token file {path} ({origin}) is empty",
                         path=str(path))
    return token


def _server_table(config: Path) -> dict[str, Any]:
    """The ``[server]`` table of a bridge config file, read leniently: a remote client needs
    only the address and token, not a config that validates on this machine."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError("bad_config", f"cannot read {config}: {exc.strerror}",
                         path=str(config)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError("bad_config", f"{config} is not valid TOML: {exc}",
                         path=str(config)) from None
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise InputError("bad_config", f"{config}: [server] must be a table", path=str(config))
    return server


def _url_for(host: str, port: int) -> str:
    # A daemon listening on every interface is reached locally over loopback.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def resolve_settings(
    url: str | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
    config: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> ClientSettings:
    """Settle the bridge URL and token. Precedence: arguments (CLI flags), then the
    environment (``TINYML_BRIDGE_URL``, ``TINYML_BRIDGE_TOKEN``, ``TINYML_BRIDGE_TOKEN_FILE``),
    then the config file's ``[server]`` table (``host``, ``port``, ``token``, ``token_file``;
    the file given, else ``TINYML_BRIDGE_CONFIG``, else ``/etc/tinyml-bridge/bridge.toml`` if it
    exists), then ``http://127.0.0.1:5000`` without a token."""
    env = os.environ if env is None else env
    sources: dict[str, str] = {}

    server: dict[str, Any] = {}
    config_path: Path | None = None
    if config is not None:
        config_path = Path(config)
        server = _server_table(config_path)
    elif env.get(ENV_CONFIG):
        config_path = Path(env[ENV_CONFIG])
        server = _server_table(config_path)
    elif DEFAULT_CONFIG.is_file():
        config_path = DEFAULT_CONFIG
        try:
            server = _server_table(DEFAULT_CONFIG)
        except InputError as exc:  # an unreadable system config must not block --url use
            log.debug("ignoring %s: %s", DEFAULT_CONFIG, exc)
            server = {}

    if url:
        sources["url"] = "flag"
    elif env.get(ENV_URL):
        url, sources["url"] = env[ENV_URL], "env"
    elif server.get("host") is not None or server.get("port") is not None:
        port = server.get("port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or port <= 0:
            raise InputError("bad_config", f"{config_path}: [server] port must be a port number"
                             " (a daemon started with port 0 is reached with --url)",
                             path=str(config_path))
        url, sources["url"] = _url_for(str(server.get("host", DEFAULT_HOST)), port), "config"
    else:
        url, sources["url"] = _url_for(DEFAULT_HOST, DEFAULT_PORT), "default"
    url = url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise InputError("bad_option", f"the bridge URL must be http:// or https://, not {url!r}")

    if token:
        sources["token"] = "flag"
    elif token_file:
        token, sources["token"] = _read_token_file(Path(token_file), "--token-file"), "flag"
    elif env.get(ENV_TOKEN):
        token, sources["token"] = env[ENV_TOKEN], "env"
    elif env.get(ENV_TOKEN_FILE):
        token = _read_token_file(Path(env[ENV_TOKEN_FILE]), ENV_TOKEN_FILE)
        sources["token"] = "env"
    elif server.get("token"):
        token, sources["token"] = str(server["token"]), "config"
    elif server.get("token_file"):
        # Taken as written, as the daemon does (relative to the working directory).
        path = Path(str(server["token_file"]))
        token, sources["token"] = _read_token_file(path, str(config_path)), "config"
    else:
        token, sources["token"] = None, "none"
    return ClientSettings(url=url, token=token, sources=sources)


# -------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class StreamEvent:
    """One Server-Sent Event of ``/devices/{id}/stream``.

    ``event`` is ``"line"`` (``data`` = ``{"seq", "at", "line"}``), ``"dropped"``
    (``data`` = ``{"count"}``: this subscriber fell behind and lost that many lines), or
    ``"reconnected"`` (made up by the client after it resumed a broken stream; ``data`` =
    ``{"after_seq", "error"}``)."""

    event: str
    data: dict[str, Any]
    id: str | None = None


class BridgeClient:
    """The bridge's HTTP API as methods returning the decoded JSON (dicts as in the contract).

    ``timeout`` bounds every call (connect and each read); ``connect_timeout``, if given,
    bounds the connect separately. ``follow_redirects=False`` turns any 3xx into
    ``transport_broken`` (the bridge API never redirects, and a caller holding a token for
    one host may not want it sent anywhere else); ``trust_env=False`` ignores proxies and
    ``.netrc`` from the environment. Thread-safe for concurrent calls only if each thread
    uses its own client (``requests.Session`` is not thread-safe)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float | None = None,
        follow_redirects: bool = True,
        trust_env: bool = True,
        user_agent: str = "tinyml-bridge-client",
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.follow_redirects = follow_redirects
        self._session = requests.Session()
        self._session.trust_env = trust_env
        self._session.headers["User-Agent"] = user_agent
        self._session.headers["Accept"] = "application/json"
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_settings(cls, settings: ClientSettings, **kwargs: Any) -> BridgeClient:
        return cls(settings.url, settings.token, **kwargs)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        ok: Sequence[int] = (200,),
        **kwargs: Any,
    ) -> requests.Response:
        """One call; ``timeout`` is the read timeout (default: the client's). The connect is
        bounded by ``connect_timeout``, else by the client's ``timeout``."""
        url = self.url + path
        read = self.timeout if timeout is None else timeout
        connect = self.timeout if self.connect_timeout is None else self.connect_timeout
        kwargs.setdefault("allow_redirects", self.follow_redirects)
        try:
            resp = self._session.request(method, url, timeout=(connect, read), **kwargs)
        except requests.exceptions.Timeout:
            same = connect == read
            raise InfraError(
                "timeout", f"the bridge at {self.url} did not answer {method} {path} within "
                + (f"{read:g} s" if same else f"{connect:g} s (connect) / {read:g} s (read)"),
                url=self.url, timeout_s=read if same else [connect, read],
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise InfraError(
                "unavailable", f"cannot reach the bridge at {self.url}: {_reason(exc)}",
                url=self.url, fix="check that the bridge runs (tinyml-bridge serve) and the "
                "URL (--url or TINYML_BRIDGE_URL)",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise InfraError("transport_broken", f"{method} {url} failed: {exc}",
                             url=self.url) from None
        if resp.status_code not in ok:
            raise self._error(resp, method, path)
        return resp

    def _error(self, resp: requests.Response, method: str, path: str) -> HalError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            err = from_dict(body)
        else:
            snippet = resp.text[:200].strip()
            err = InfraError(
                "transport_broken",
                f"{method} {path} answered HTTP {resp.status_code} without a bridge error "
                f"(is {self.url} a tinyml bridge?)",
                url=self.url, body=snippet,
            )
        err.detail.setdefault("http_status", resp.status_code)
        return err

    def _json(self, resp: requests.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):  # every answer of the bridge API is a JSON object
            raise InfraError(
                "transport_broken",
                f"{resp.request.method} {resp.url} answered HTTP {resp.status_code} with "
                f"something that is not a JSON object (is {self.url} a tinyml bridge?)",
                url=self.url, body=resp.text[:200],
            )
        return body

    def _list(self, body: dict[str, Any], key: str) -> list[Any]:
        value = body.get(key)
        if not isinstance(value, list):
            raise InfraError("transport_broken", f"the answer of {self.url} has no {key!r} list "
                             "(is it a tinyml bridge?)", url=self.url, body=str(body)[:200])
        return value

    def _get(self, path: str, params: dict | None = None, timeout: float | None = None) -> Any:
        return self._json(self._request("GET", path, params=params, timeout=timeout))

    # -- API -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: version, uptime and each driver's tool checks (no token needed)."""
        return self._get("/health")

    def devices(self) -> list[dict[str, Any]]:
        """``GET /devices``: every device the bridge knows."""
        return self._list(self._get("/devices"), "devices")

    def device(self, device_id: str) -> dict[str, Any]:
        """``GET /devices/{id}``."""
        return self._get(f"/devices/{_seg(device_id)}")

    def install(
        self,
        device_id: str,
        model: bytes,
        *,
        labels: Sequence[str] | None = None,
        input_vectors: Sequence[Sequence[float]] | None = None,
        arena_bytes: int | None = None,
        boot_deadline_s: float | None = None,
        input_source: str | None = None,
        wait: float | None = None,
        multipart: bool = True,
    ) -> dict[str, Any]:
        """``POST /devices/{id}/install``: start a job; returns the Job (ended only if ``wait``
        seconds were enough). The model goes as a multipart upload (or base64 JSON)."""
        options: dict[str, Any] = {}
        if labels:
            options["labels"] = list(labels)
        if input_vectors:
            options["input_vectors"] = [list(v) for v in input_vectors]
        if arena_bytes is not None:
            options["arena_bytes"] = arena_bytes
        if boot_deadline_s is not None:
            options["boot_deadline_s"] = boot_deadline_s
        if input_source is not None:
            options["input_source"] = input_source
        params = {"wait": f"{wait:g}"} if wait else None
        # The server may hold the request for up to `wait` seconds before answering.
        timeout = self.timeout + (wait or 0.0)
        path = f"/devices/{_seg(device_id)}/install"
        if multipart:
            files = {
                "model": ("model.tflite", model, "application/octet-stream"),
                "options": (None, json.dumps(options), "application/json"),
            }
            resp = self._request("POST", path, params=params, files=files, timeout=timeout,
                                 ok=(200, 202))
        else:
            body = {"model_b64": base64.b64encode(model).decode("ascii"), **options}
            resp = self._request("POST", path, params=params, json=body, timeout=timeout,
                                 ok=(200, 202))
        return self._json(resp)

    def job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """``GET /jobs/{id}`` (``wait``: let the bridge hold the answer until the job ends)."""
        params = {"wait": f"{wait:g}"} if wait else None
        return self._get(f"/jobs/{_seg(job_id)}", params=params,
                         timeout=self.timeout + (wait or 0.0))

    def jobs(self, device: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """``GET /jobs``: recent jobs, newest first."""
        params: dict[str, Any] = {}
        if device:
            params["device"] = device
        if limit:
            params["limit"] = limit
        return self._list(self._get("/jobs", params=params or None), "jobs")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: request cancellation; returns the Job."""
        return self._json(self._request("DELETE", f"/jobs/{_seg(job_id)}", ok=(200, 202)))

    def observe(self, device_id: str, lines: int | None = None) -> dict[str, Any]:
        """``GET /devices/{id}/observe``: the most recent parsed lines and ``last_seq``."""
        params = {"lines": lines} if lines is not None else None
        return self._get(f"/devices/{_seg(device_id)}/observe", params=params)

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.25,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until the job ends; ``on_update`` sees every answer (for a
        progress display). Returns the final Job; ``InfraError("timeout")`` if ``timeout``
        seconds pass first (the job keeps running on the bridge)."""
        started = time.monotonic()
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.get("state") in FINAL_STATES:
                return job
            if timeout is not None and time.monotonic() - started >= timeout:
                raise InfraError(
                    "timeout", f"job {job_id} did not end within {timeout:g} s "
                    f"(still {job.get('state')} on the bridge)", job_id=job_id,
                    timeout_s=timeout,
                )
            time.sleep(poll_s)

    def stream(
        self,
        device_id: str,
        *,
        since: int | None = None,
        reconnect: bool = True,
        max_reconnect_s: float = 5.0,
        read_timeout: float = STREAM_READ_TIMEOUT_S,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[StreamEvent]:
        """``GET /devices/{id}/stream``: live Server-Sent Events, forever (until the caller
        stops iterating or ``should_stop()`` is true at a line boundary).

        ``since``: resume after that sequence number. A dropped connection is resumed with
        ``Last-Event-ID`` (the last seq seen), backing off up to ``max_reconnect_s``; each
        resume yields a ``"reconnected"`` event. With ``reconnect=False`` the first failure
        raises. HTTP errors (401, 404...) always raise: retrying would not fix them."""
        last_id: str | None = None if since is None else str(since)
        backoff = 0.2
        path = f"/devices/{_seg(device_id)}/stream"
        pending_error: str | None = None
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                resp = self._request("GET", path, headers=headers, stream=True,
                                     timeout=read_timeout)
            except InfraError as exc:
                if not reconnect or exc.code not in ("unavailable", "timeout"):
                    raise
                if should_stop is not None and should_stop():
                    return
                log.info("stream of %s: %s; retrying in %.1fs", device_id, exc, backoff)
                pending_error = pending_error or str(exc)
                time.sleep(backoff)
                backoff = min(max_reconnect_s, backoff * 2)
                continue
            try:
                if pending_error is not None:
                    yield StreamEvent("reconnected", {"after_seq": _int_or_none(last_id),
                                                      "error": pending_error})
                    pending_error = None
                backoff = 0.2
                for event in _parse_sse(resp):
                    if event.id is not None:
                        last_id = event.id
                    yield event
                    if should_stop is not None and should_stop():
                        return
                # The server closed the stream (e.g. it is shutting down).
                error = "the bridge closed the stream"
            except (requests.exceptions.RequestException, OSError) as exc:
                error = f"stream broke: {_reason(exc)}"
            finally:
                resp.close()
            if not reconnect:
                raise InfraError("transport_broken", f"stream of {device_id}: {error}",
                                 url=self.url, last_seq=_int_or_none(last_id))
            if should_stop is not None and should_stop():
                return
            log.info("stream of %s: %s; resuming after seq %s", device_id, error, last_id)
            pending_error = error
            time.sleep(backoff)
            backoff = min(max_reconnect_s, backoff * 2)


def _parse_sse(resp: requests.Response) -> Iterator[StreamEvent]:
    """Parse a text/event-stream body incrementally (each chunk as it arrives)."""
    buf = b""
    event, data_lines, event_id = "message", [], None
    # chunk_size=None: yield bytes as soon as they arrive, not after filling a buffer.
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            raw, buf = buf[:nl], buf[nl + 1 :]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if line == "":
                if data_lines:
                    text = "\n".join(data_lines)
                    try:
                        data = json.loads(text)
                    except ValueError:
                        data = {"text": text}
                    if not isinstance(data, dict):
                        data = {"value": data}
                    yield StreamEvent(event, data, event_id)
                event, data_lines, event_id = "message", [], None
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data_lines.append(value)
            elif name == "id":
                event_id = value


def _seg(value: str) -> str:
    """A path segment, percent-encoded so an id can never change the path."""
    from urllib.parse import quote

    return quote(str(value), safe="")


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 exception, without the URL noise."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host",
                   "timed out", "Connection reset", "Network is unreachable",
                   "Temporary failure in name resolution", "Connection aborted"):
        if marker in text:
            return marker.lower()
    return text[:200]


# ------------------------------------------------------------------------- local daemon

_URL_RE = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


class LocalBridge:
    """A bridge daemon run as a child process (``tinyml-bridge serve --config FILE
    --port 0``), for demos, tests and benchmarks::

        with LocalBridge(config_path) as bridge:
            client = BridgeClient(bridge.url, token)
            ...
        assert bridge.returncode == 0   # stopped with SIGTERM

    The chosen port is read from the daemon's log (the first ``http://host:port`` with a
    non-zero port), then ``/health`` is polled until it answers. Output is kept in
    :attr:`output` (bounded) and, if given, copied to ``log_path``."""

    def __init__(
        self,
        config: str | Path,
        *,
        args: Sequence[str] = ("--port", "0"),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        start_timeout: float = 20.0,
        keep_lines: int = 5000,
    ) -> None:
        self.config = Path(config)
        self.argv = [sys.executable, "-m", "bridge.cli", "serve", "--config", str(self.config),
                     *args]
        self.env = env
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout = start_timeout
        self.output: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.url: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None  # monotonic time of exec
        self.ready_s: float | None = None  # exec -> /health answered
        self._url_seen = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        log_file = self.log_path.open("a", encoding="utf-8") if self.log_path else None
        try:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.output.append(line)
                if log_file:
                    log_file.write(line + "\n")
                    log_file.flush()
                if self.url is None:
                    match = _URL_RE.search(line)
                    if match and int(match.group(2)) != 0:
                        host = match.group(1)
                        if host in ("0.0.0.0", "[::]"):
                            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
                        self.url = f"http://{host}:{match.group(2)}"
                        self._url_seen.set()
        finally:
            if log_file:
                log_file.close()
            self._url_seen.set()  # wake start() if the process died first

    def start(self) -> str:
        """Start the daemon; returns its URL once ``/health`` answers. A daemon that exits or
        stays silent is ``InfraError("unavailable")`` with its last output."""
        if self.env is None:
            # The config file is explicit: a TINYML_BRIDGE_* of the caller's shell (a remote
            # bridge's URL or token) must not leak into this daemon.
            env = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_BRIDGE_")}
        else:
            env = dict(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True,
                                        name=f"bridge-log-{self.process.pid}")
        self._reader.start()
        deadline = self.started_at + self.start_timeout
        self._url_seen.wait(self.start_timeout)
        if self.url is None:
            self._fail_start("did not print the URL it listens on")
        while True:
            if self.process.poll() is not None:
                self._fail_start(f"exited with status {self.process.returncode}")
            try:
                resp = requests.get(self.url + "/health", timeout=1.0)
                if resp.status_code == 200:
                    break
            except requests.exceptions.RequestException:
                pass
            if time.monotonic() > deadline:
                self._fail_start(f"did not answer /health within {self.start_timeout:g} s")
            time.sleep(0.01)
        self.ready_s = time.monotonic() - self.started_at
        log.info("bridge pid %s ready at %s after %.3fs", self.process.pid, self.url,
                 self.ready_s)
        return self.url

    def _fail_start(self, why: str) -> NoReturn:
        tail = list(self.output)[-20:]
        self.stop(timeout=5.0)
        raise InfraError("unavailable", f"the bridge daemon {why}", argv=self.argv,
                         output="\n".join(tail))

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to ``timeout`` s (then SIGKILL the process group); returns the
        exit status (negative: killed by that signal)."""
        proc = self.process
        if proc is None:
            return 0
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("bridge pid %s ignored SIGTERM for %.0fs; killing", proc.pid,
                            timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Helpers the daemon started in its session must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(5)
        self.returncode = proc.returncode
        return proc.returncode

    def __enter__(self) -> LocalBridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
