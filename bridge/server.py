"""Run the bridge under waitress (a production WSGI server that also runs on a Raspberry Pi).

* Prints ``tinyml-bridge listening on http://HOST:PORT`` on stdout once the socket listens
  (with port 0 the kernel picks a free port; this line names the real one).
* Tells systemd it is ready (``READY=1`` on ``$NOTIFY_SOCKET``, plain socket, no dependency).
* On SIGTERM/SIGINT: stops accepting, cancels running jobs (waiting up to
  ``[server] shutdown_grace_s``), ends live streams, closes every device port, exits 0.

Waitress serves each request on a worker thread; a live stream holds its thread for as long
as the client listens, a long-poll (``?wait=``, legacy ``POST /install/``) until the job ends.
The pool is therefore ``[server] threads`` for ordinary requests plus ``max_streams`` plus
``max_waits``; a stream or long-poll beyond its limit is refused with 503, so neither can
starve the rest of the API. Idle and slow connections are bounded by
:mod:`bridge.connections`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any, TextIO

from bridge.app import create_app
from bridge.config import BridgeConfig
from bridge.connections import Limits, waitress_options
from bridge.connections import install as install_limits
from hal.errors import InfraError, InputError

log = logging.getLogger(__name__)

LISTENING_PREFIX = "tinyml-bridge listening on "


def configure_logging(verbosity: int = 0) -> None:
    """One line per event on stderr. Under systemd (``$JOURNAL_STREAM``) journald adds the
    timestamp, so the line starts with the level."""
    level = logging.DEBUG if verbosity >= 2 else logging.INFO
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    # waitress logs every queue-depth warning at WARNING; its INFO lines are just "Serving".
    logging.getLogger("waitress").setLevel(logging.WARNING)


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd's notify socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message.split("=")[0], exc)
        return False


def check_exposure(config: BridgeConfig, insecure: bool) -> None:
    """Refuse a non-loopback address without a token unless ``insecure`` is explicit."""
    if config.is_loopback() or config.server.token:
        return
    if insecure:
        log.warning("listening on %s WITHOUT a token (--insecure): anyone who can reach this "
                    "address can install models", config.server.host)
        return
    raise InputError(
        "bad_config",
        f"refusing to listen on {config.server.host} without a token: set [server] token or "
        "token_file (or TINYML_BRIDGE_TOKEN), or pass --insecure to accept the risk",
        host=config.server.host,
    )


def pool_size(config: BridgeConfig) -> int:
    """Worker threads: ordinary requests, plus one per allowed stream and long-poll, so
    neither can starve the rest of the API (both are capped; one beyond gets 503)."""
    server = config.server
    return server.threads + server.max_streams + server.max_waits


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listen_addresses(server: Any) -> list[tuple[str, int]]:
    if hasattr(server, "effective_listen"):
        return [(h, int(p)) for h, p in server.effective_listen]
    return [(server.effective_host, int(server.effective_port))]


class _Stop(SystemExit):
    """Raised from the signal handler to unwind waitress's loop (it catches SystemExit)."""


def run(config: BridgeConfig, *, insecure: bool = False, out: TextIO | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status (0 after a clean stop)."""
    from waitress import create_server

    out = out or sys.stdout
    check_exposure(config, insecure)
    app = create_app(config)
    rt = app.extensions["tinyml_bridge"]
    srv_cfg = config.server
    limits = Limits(max_connections=srv_cfg.max_connections,
                    max_per_client=srv_cfg.max_connections_per_client,
                    header_timeout_s=srv_cfg.header_timeout_s,
                    idle_timeout_s=srv_cfg.idle_timeout_s)
    try:
        server = create_server(
            app,
            host=srv_cfg.host,
            port=srv_cfg.port,
            threads=pool_size(config),
            # Lets a streaming response notice a gone client (waitress.client_disconnected).
            channel_request_lookahead=1,
            # waitress answers bodies far over the limit itself (JSON 413, see
            # bridge.connections); up to 4x the limit they reach Flask, which answers too.
            max_request_body_size=srv_cfg.max_request_bytes * 4,
            outbuf_high_watermark=1024 * 1024,
            ident="tinyml-bridge",
            clear_untrusted_proxy_headers=True,
            **waitress_options(limits),
        )
        install_limits(server, limits)
    except OSError as exc:
        rt.close(grace_s=0)
        raise InfraError("unavailable", f"cannot listen on {srv_cfg.host}:{srv_cfg.port}: "
                         f"{exc.strerror or exc}", host=srv_cfg.host, port=srv_cfg.port) \
            from None
    except BaseException:
        rt.close(grace_s=0)
        raise

    addresses = _listen_addresses(server)
    stopping = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping["signal"] is not None:
            log.info("signal=%s ignored: already stopping", signal.Signals(signum).name)
            return
        stopping["signal"] = signum
        log.info("signal=%s: stopping", signal.Signals(signum).name)
        rt.stopping.set()  # ends live streams and ?wait requests within a second
        raise _Stop(0)

    previous: dict[int, Any] = {}
    try:
        # A signal may arrive anywhere from here on: everything below is inside the try.
        with contextlib.suppress(_Stop):
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
            # Announced only now: a SIGTERM right after the line is a clean stop.
            for host, port in addresses:
                log.info("listening on %s (devices=%d, threads=%d, max_streams=%d, "
                         "max_waits=%d, auth=%s)", _url(host, port), len(rt.registry.slots()),
                         srv_cfg.threads, srv_cfg.max_streams, srv_cfg.max_waits,
                         "token" if srv_cfg.token else "none")
                print(f"{LISTENING_PREFIX}{_url(host, port)}", file=out, flush=True)
            sd_notify(f"READY=1\nSTATUS=listening on {_url(*addresses[0])}\n"
                      f"MAINPID={os.getpid()}")
            server.run()  # returns after _Stop, having shut its worker threads down
    finally:
        sd_notify("STOPPING=1")
        # Stop accepting first, then let jobs end, then release devices.
        with contextlib.suppress(Exception):
            server.close()
        rt.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
