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
from typing import TYPE_CHECKING

import paramiko

from hal.deadline import Deadline
from hal.errors import HalError, InfraError, as_hal_error
from hal.protocol import DeviceLine, LineSplitter
from hal.rpi.ssh import SshSession, quote_args

if TYPE_CHECKING:
    from hal.driver import Health
    from hal.observation import ReadControl
    from hal.rpi.driver import RpiDriver

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
        if self.reconnects or self.session.connects > 1:
            log.info("device=%s resuming %s at line %d", self._device_id, self.path,
                     self.next_line)
        self.reconnects += 1

        def deliver(number: int, line: DeviceLine) -> None:
            self.next_line = number + 1
            try:
                self._sink(number, line)
            except Exception:
                log.exception("observation sink failed")

        tail_log(self.session, self.path, self.next_line, deliver, self._stop.is_set,
                 on_channel=self._set_chan)

    def _set_chan(self, chan: paramiko.Channel | None) -> None:
        self._chan = chan


def tail_log(session: SshSession, path: str, first_line: int,
             deliver: NumberedSink, should_return: Callable[[], bool],
             on_channel: Callable[[paramiko.Channel | None], None] | None = None,
             on_open: Callable[[], None] | None = None) -> None:
    """Follow ``path`` from line ``first_line`` over one exec channel (``tail -n +K -F``),
    delivering each complete line with its number, until ``should_return()``. Raises
    ``transport_broken`` when the channel breaks or ends on its own."""
    # A generous connect deadline; following itself has no deadline (should_return ends it).
    chan = session.open_channel(Deadline(30.0, what="observation connect"))
    if on_channel is not None:
        on_channel(chan)
    number = max(1, first_line)
    splitter = LineSplitter()
    try:
        if should_return():
            return
        chan.exec_command(f"exec tail -n +{number} -s 0.2 -F {quote_args([path])} "
                          "2>/dev/null")
        if on_open is not None:
            on_open()
        while not should_return():
            if chan.recv_ready():
                data = chan.recv(65536)
                if not data:
                    break
                for line in splitter.feed(data):
                    deliver(number, line)
                    number += 1
                continue
            if chan.eof_received or chan.closed:
                break
            if not chan.get_transport().is_active():
                break
            select.select([chan], [], [], 0.2)
    except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
        if not should_return():
            raise InfraError("transport_broken", f"observation channel broke: {exc}",
                             path=path, next_line=number) from exc
    finally:
        chan.close()
        if on_channel is not None:
            on_channel(None)
    if not should_return():
        raise InfraError("transport_broken", "observation stream ended", path=path,
                         next_line=number)


class RunnerLogSource:
    """The Pi driver's :class:`~hal.observation.ObservationSource`: the current deployment's
    ``runner.log``, resumed by line number after a drop (no gap, no duplicate), kept in place
    when an install or restart switches to the log it already reads (the same model again),
    and the runner's liveness from the supervisor's records."""

    def __init__(self, driver: RpiDriver) -> None:
        self.driver = driver
        self.health_interval_s = driver.settings.health_interval_s
        self.positions: dict[str, int] = {}  # log path -> next line number to deliver
        self.reading: str | None = None  # the log read last (a switch to it keeps its place)
        self.delivered = 0  # lines delivered (for tests and logs)

    def resolve(self) -> tuple[str, int] | None:
        found = self.driver.current_log(Deadline(30.0, what="observation start"))
        if found is None:
            return None  # nothing deployed yet: not an error
        path, count = found
        if path in self.positions:
            return path, self.positions[path]
        if self.driver.busy:
            # An install or restart is switching runners: it hands over the exact first
            # line of the new run (switch); starting at the log's end now could skip it.
            return None
        return path, count + 1

    def switch(self, target: tuple[str, int]) -> tuple[str, int]:
        path, start = target
        if path == self.reading and path in self.positions:
            return path, self.positions[path]  # the same log goes on: keep reading it
        self.positions[path] = start
        return path, start

    def read(self, target: tuple[str, int], ctl: ReadControl) -> None:
        path, start = target
        self.positions[path] = start
        self.reading = path

        def deliver(number: int, line: DeviceLine) -> None:
            self.positions[path] = number + 1
            self.delivered += 1
            self.driver.last_line_number = number
            ctl.deliver(line)

        tail_log(self.driver.session, path, start, deliver, ctl.should_return,
                 on_open=ctl.connected)

    def health(self) -> Health | None:
        return self.driver.runner_health(Deadline(20.0, what="liveness check"))


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (for callers and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
