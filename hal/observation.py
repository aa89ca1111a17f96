"""Observation, owned by one place: one thread per device that reads what the device prints
and hands it to the bridge, for every driver.

The loop starts whether or not anything is deployed or the device is reachable. A driver
supplies an :class:`ObservationSource`: ``resolve()`` says where to read (None: nothing to
observe yet -- not an error, asked again later), ``read(target, ctl)`` reads and delivers
lines until told to stop, raising a classified error when the link breaks. The loop reports
link trouble once per episode, retries with backoff, tells the listener when the link works
again, switches to a new target after every verified install and rollback
(:meth:`ObservationLoop.switch`), and asks the source for the runner's health every
``health_interval_s`` (changes only are reported).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hal.errors import HalError, as_hal_error

if TYPE_CHECKING:
    from hal.driver import Health
    from hal.protocol import DeviceLine

log = logging.getLogger(__name__)

# Pauses between attempts after a link error (seconds), the last one repeated.
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# Pause between asking for a target while there is nothing to observe.
IDLE_S = (0.2, 0.5, 1.0, 2.0)


@dataclass
class Listener:
    """Where the loop's news go (any of them may be None)."""

    line: Callable[[DeviceLine], None] | None
    link_error: Callable[[HalError], None] | None = None
    health: Callable[[Health], None] | None = None
    link_ok: Callable[[], None] | None = None


class ReadControl(Protocol):
    """What a source's ``read`` gets: deliver lines, and whether to return."""

    def deliver(self, line: DeviceLine) -> None: ...

    def should_return(self) -> bool: ...

    def connected(self) -> None: ...


class ObservationSource(Protocol):
    """The driver's part of observation."""

    health_interval_s: float

    def resolve(self) -> Any | None:
        """Where to read now (a port, a log file and line), or None when there is nothing
        to observe yet. Raise a classified error when the device cannot be reached."""

    def read(self, target: Any, ctl: ReadControl) -> None:
        """Read ``target`` and ``ctl.deliver`` each line until ``ctl.should_return()``;
        call ``ctl.connected()`` once the link is open. Raise on link trouble."""

    def switch(self, target: Any) -> Any:
        """The target to read after a verified install or rollback (the source may keep
        its position when ``target`` is what it already reads)."""

    def health(self) -> Health | None:
        """The runner's liveness now, or None when it cannot tell (no I/O errors raised)."""


class ObservationLoop(threading.Thread):
    """One device's observation thread (see the module docstring)."""

    def __init__(self, device_id: str, source: ObservationSource, listener: Listener) -> None:
        super().__init__(name=f"observe-{device_id}", daemon=True)
        self.device_id = device_id
        self.source = source
        self.listener = listener
        self._stop_ev = threading.Event()
        self._wake = threading.Event()  # a switch, pause or stop: return from read()
        self._pause_req = threading.Event()
        self._released = threading.Event()
        self._released.set()
        self._next: Any = None
        self._has_next = False
        self._lock = threading.Lock()
        self._reported: str | None = None  # the link error code last reported
        self._health: Health | None = None
        self._health_thread: threading.Thread | None = None

    # -- control (any thread) ----------------------------------------------------------------

    def switch(self, target: Any = None) -> None:
        """Read ``target`` from now on (None: resolve it again)."""
        with self._lock:
            self._next, self._has_next = target, True
        self._health = None  # a new runner: report its health afresh
        self._wake.set()

    def pause(self, timeout_s: float = 3.0) -> bool:
        """Release the device (e.g. the serial port for an upload); True once the reader has
        let go, False when it did not within ``timeout_s``."""
        self._pause_req.set()
        self._wake.set()
        return self._released.wait(timeout_s)

    def resume(self) -> None:
        self._pause_req.clear()

    def stop(self) -> None:
        self._stop_ev.set()
        self._wake.set()
        if self is not threading.current_thread():
            self.join(timeout=5.0)
        thread = self._health_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    @property
    def health_state(self) -> Health | None:
        return self._health

    # -- ReadControl ---------------------------------------------------------------------

    def deliver(self, line: DeviceLine) -> None:
        """Hand a line to the listener (also used by boot verification while it reads)."""
        sink = self.listener.line
        if sink is None:
            return
        try:
            sink(line)
        except Exception:  # a broken sink must not kill observation
            log.exception("device=%s line sink failed", self.device_id)

    def should_return(self) -> bool:
        return self._stop_ev.is_set() or self._wake.is_set()

    def connected(self) -> None:
        if self._reported is not None:
            log.info("device=%s observation: link back", self.device_id)
        self._reported = None
        if self.listener.link_ok is not None:
            try:
                self.listener.link_ok()
            except Exception:
                log.exception("device=%s link sink failed", self.device_id)

    # -- the loop ------------------------------------------------------------------------------

    def _link_error(self, err: HalError) -> None:
        if err.code == self._reported:
            return
        self._reported = err.code
        log.warning("device=%s observation: %s", self.device_id, err)
        if self.listener.link_error is not None:
            try:
                self.listener.link_error(err)
            except Exception:
                log.exception("device=%s error sink failed", self.device_id)

    def start(self) -> None:
        super().start()
        if getattr(self.source, "health_interval_s", 0) > 0:
            self._health_thread = threading.Thread(
                target=self._health_loop, name=f"health-{self.device_id}", daemon=True)
            self._health_thread.start()

    def run(self) -> None:
        failures = idle = 0
        target: Any = None
        while not self._stop_ev.is_set():
            if self._pause_req.is_set():
                self._released.set()
                self._wake.clear()
                self._stop_ev.wait(0.02)
                continue
            with self._lock:
                if self._has_next:
                    target = self.source.switch(self._next) if self._next is not None else None
                    self._has_next = False
            self._wake.clear()
            try:
                if target is None:
                    target = self.source.resolve()
                if target is None:
                    # Nothing to observe yet (never deployed, board not printing a port):
                    # quiet, not an error; asked again soon.
                    if self._reported is not None:
                        self.connected()  # it answered: the link works again
                    self._wake.wait(IDLE_S[min(idle, len(IDLE_S) - 1)])
                    idle += 1
                    continue
                idle = 0
                self._released.clear()
                if self._pause_req.is_set():
                    continue
                try:
                    self.source.read(target, self)
                finally:
                    self._released.set()
                failures = 0
            except Exception as exc:  # classified and reported; the loop retries
                if self._stop_ev.is_set():
                    break
                self._link_error(as_hal_error(exc))
                target = None  # resolve again (the board may be back on another port)
                self._wake.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1

    def _health_loop(self) -> None:
        interval = float(self.source.health_interval_s)
        while not self._stop_ev.wait(interval):
            try:
                health = self.source.health()
            except Exception:  # health is best effort; link errors are the loop's business
                log.exception("device=%s health check failed", self.device_id)
                continue
            last = self._health
            if health is None or (last is not None and (health.state, health.exit_code,
                                                         health.restarts) ==
                                  (last.state, last.exit_code, last.restarts)):
                continue  # report changes only (not every new silence figure)
            self._health = health
            log.log(logging.WARNING if health.state == "crashed" else logging.INFO,
                    "device=%s health %s: %s", self.device_id, health.state, health.message)
            if self.listener.health is not None:
                try:
                    self.listener.health(health)
                except Exception:
                    log.exception("device=%s health sink failed", self.device_id)
