"""Observation: follow the runner's log on the target over one SSH exec channel
(``tail -n +K -F``), parse it with the shared :class:`~hal.protocol.LineSplitter`, and resume
after a dropped connection from the last complete line.

Sequence numbers are line numbers in the deployment's ``runner.log`` (1-based, the file only
grows): a line is delivered once its newline arrived and counted; after a drop the follower
restarts at the next line number, so nothing is duplicated or lost (a half-received line is
simply read again whole).
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable

import paramiko

from hal.deadline import Deadline
from hal.errors import HalError, InfraError, as_hal_error
from hal.protocol import DeviceLine, LineSplitter
from hal.rpi.ssh import SshSession, quote_args

log = logging.getLogger(__name__)

# (line number, line) -- line numbers are the follower's sequence numbers.
NumberedSink = Callable[[int, DeviceLine], None]
RETRY_PAUSE_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class LogFollower:
    """Delivers every line of one log file from line ``start_line`` on, in order, exactly
    once, across reconnects, from its own thread until :meth:`stop`."""

    def __init__(
        self,
        session: SshSession,
        path: str,
        start_line: int,
        sink: NumberedSink,
        on_error: Callable[[HalError], None] | None = None,
        device_id: str = "",
    ) -> None:
        self.session = session
        self.path = path
        self.next_line = max(1, start_line)  # the next line number to deliver
        self._sink = sink
        self._on_error = on_error
        self._device_id = device_id
        self._stop = threading.Event()
        self._chan: paramiko.Channel | None = None
        self._thread = threading.Thread(target=self._loop, name=f"rpi-follow-{device_id}",
                                        daemon=True)
        self.reconnects = 0

    def start(self) -> LogFollower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following and close the channel (idempotent)."""
        self._stop.set()
        chan = self._chan
        if chan is not None:
            chan.close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._follow_once()
                failures = 0
            except Exception as exc:  # classified and reported; the loop retries
                if self._stop.is_set():
                    break
                err = as_hal_error(exc)
                log.warning("device=%s observation of %s interrupted at line %d: %s",
                            self._device_id, self.path, self.next_line, err)
                if self._on_error is not None:
                    try:
                        self._on_error(err)
                    except Exception:
                        log.exception("observation error sink failed")
                pause = RETRY_PAUSE_S[min(failures, len(RETRY_PAUSE_S) - 1)]
                failures += 1
                self._stop.wait(pause)

    def _follow_once(self) -> None:
        # A generous connect deadline; following itself has no deadline (stop() ends it).
        chan = self.session.open_channel(Deadline(30.0, what="observation connect"))
        self._chan = chan
        if self._stop.is_set():
            chan.close()
            return
        if self.reconnects or self.session.connects > 1:
            log.info("device=%s resuming %s at line %d", self._device_id, self.path,
                     self.next_line)
        self.reconnects += 1
        splitter = LineSplitter()
        try:
            chan.exec_command(
                f"exec tail -n +{self.next_line} -s 0.2 -F {quote_args([self.path])} "
                "2>/dev/null")
            while not self._stop.is_set():
                if chan.recv_ready():
                    data = chan.recv(65536)
                    if not data:
                        break
                    for line in splitter.feed(data):
                        number = self.next_line
                        self.next_line += 1
                        try:
                            self._sink(number, line)
                        except Exception:
                            log.exception("observation sink failed")
                    continue
                if chan.eof_received or chan.closed:
                    break
                if not chan.get_transport().is_active():
                    break
                select.select([chan], [], [], 0.2)
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
            if not self._stop.is_set():
                raise InfraError("transport_broken", f"observation channel broke: {exc}",
                                 path=self.path, next_line=self.next_line) from exc
        finally:
            chan.close()
            self._chan = None
        if not self._stop.is_set():
            raise InfraError("transport_broken", "observation stream ended",
                             path=self.path, next_line=self.next_line)


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (for callers and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
