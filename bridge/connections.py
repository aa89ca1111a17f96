"""Connection limits for waitress: idle and slow clients cannot take a daemon down.

Used by both daemons (the bridge's ``bridge.server`` and the backend's ``backend_stub.app``),
so it depends on nothing but waitress and :mod:`hal.errors`.

waitress reads requests on its event loop and only hands complete requests to worker threads,
so a client that connects and sends nothing (or one byte a minute) costs a socket, not a
thread. Its own protections are not enough on their own, though: at ``connection_limit`` it
simply stops accepting, so a few hundred idle sockets make ``/health`` unreachable, and its
``channel_timeout`` is an *idle* timeout that a client dribbling a byte at a time never hits.

:func:`install` adds, on the server waitress built:

* a **header timeout**: a request's header must be complete within ``header_timeout_s`` of its
  first byte (of the connection, for the first request), checked every second;
* an **idle timeout** (waitress's ``channel_timeout`` = ``idle_timeout_s``) for keep-alive
  connections and stalled bodies;
* **limits per client address and in total**, enforced at accept time by *eviction*: a new
  connection over a limit closes the oldest connection (of that client, or of anyone) that has
  no request being served -- a stalled or idle one. Only when every connection is busy is the
  new one closed instead. So a flood of idle sockets can delay a real client by at most one
  accept, never lock it out;
* waitress's own error answers (bodies far over the limit, malformed requests) as the JSON
  error body instead of plain text.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from hal.errors import make_error

log = logging.getLogger(__name__)

# Seconds between checks of the header timeout (waitress's maintenance interval).
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Limits:
    """Connection limits (the bridge's ``[server]`` keys, the backend's ``serve`` options)."""

    max_connections: int
    max_per_client: int
    header_timeout_s: float
    idle_timeout_s: float


_WAITRESS_CODES = {400: "bad_request", 413: "payload_too_large", 431: "bad_request"}


class JsonErrorTask(ErrorTask):
    """waitress's own error answers as ``{code, message, detail, class}`` (both daemons'
    error body)."""

    def execute(self) -> None:
        error = self.request.error
        code = _WAITRESS_CODES.get(error.code, "bad_request" if error.code < 500 else "internal")
        message = f"{error.reason}: {error.body}"[:300]
        detail: dict[str, Any] = {}
        if error.code == 413:
            detail["limit_bytes"] = self.channel.server.adj.max_request_body_size
        body = json.dumps(make_error(code, message, **detail).to_dict()).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"),
                                      ("Cache-Control", "no-store")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class GuardedChannel(HTTPChannel):
    """An HTTP channel that knows since when it has been waiting for a request header."""

    error_task_class = JsonErrorTask

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        self.client = str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
        # When the header now awaited began (connection start for the first request).
        self.header_since: float | None = self.creation_time
        guard: ConnectionGuard | None = getattr(server, "connection_guard", None)
        if guard is not None:
            guard.admit(server, self)

    def received(self, data: bytes) -> bool:
        if self.header_since is None and self.request is None and data:
            self.header_since = time.time()  # the first byte of the next request
        result = super().received(data)
        request = self.request
        if request is None or request.headers_finished:
            self.header_since = None
        elif self.header_since is None:
            self.header_since = time.time()
        return result

    @property
    def busy(self) -> bool:
        """A request is being served or queued, or a response is still being sent: never
        evicted, never timed out."""
        return bool(self.requests) or bool(self.total_outbufs_len)


class ConnectionGuard:
    """Admission (eviction) and the header timeout for one listening server."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def admit(self, server: BaseWSGIServer, new: GuardedChannel) -> None:
        others = [c for c in list(server.active_channels.values())
                  if c is not new and not c.will_close]
        same = [c for c in others if getattr(c, "client", None) == new.client]
        if len(same) >= self.limits.max_per_client:
            pool, which = same, "per-client"
        elif len(others) >= self.limits.max_connections:
            pool, which = others, "total"
        else:
            return
        idle = [c for c in pool if not getattr(c, "busy", True)]
        if not idle:
            self.refused += 1
            log.warning("connection from %s refused: %s connection limit reached and every "
                        "connection is busy", new.client, which)
            new.handle_close()
            return
        # Oldest first: a connection still waiting for its header since long ago, then the
        # keep-alive connection idle the longest.
        victim = min(idle, key=lambda c: (c.header_since is None,
                                          c.header_since or c.last_activity))
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 100 == 0:
            log.warning("%s connection limit reached: closed an idle connection from %s "
                        "(%d so far)", which, victim.client, self.evicted)
        victim.handle_close()

    def check_timeouts(self, server: BaseWSGIServer, now: float) -> None:
        cutoff = now - self.limits.header_timeout_s
        for channel in list(server.active_channels.values()):
            since = getattr(channel, "header_since", None)
            if since is not None and since < cutoff and not channel.busy \
                    and not channel.will_close:
                self.timed_out += 1
                channel.will_close = True


def _servers(server: Any) -> list[BaseWSGIServer]:
    sockets = getattr(server, "_map", None)
    if sockets is None:
        sockets = getattr(server, "map", None) or {}
    return [s for s in sockets.values() if isinstance(s, BaseWSGIServer)]


def waitress_options(limits: Limits) -> dict[str, Any]:
    """The ``create_server`` keywords that go with :func:`install`."""
    return {
        "channel_timeout": limits.idle_timeout_s,
        "cleanup_interval": CHECK_INTERVAL_S,
        # Ours evicts before this is reached; waitress's own limit (stop accepting) is only a
        # backstop for the event loop's other sockets.
        "connection_limit": limits.max_connections + 16,
    }


def install(server: Any, limits: Limits) -> list[ConnectionGuard]:
    """Put the guarded channel, the eviction and the header timeout on every listening socket
    of a server returned by ``waitress.create_server``."""
    guards = []
    for srv in _servers(server):
        guard = ConnectionGuard(limits)
        srv.connection_guard = guard
        srv.channel_class = GuardedChannel
        original = srv.maintenance

        def maintenance(now: float, _srv: BaseWSGIServer = srv, _guard: ConnectionGuard = guard,
                        _original: Any = original) -> None:
            _original(now)
            _guard.check_timeouts(_srv, now)

        srv.maintenance = maintenance
        guards.append(guard)
    return guards
