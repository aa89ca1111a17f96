"""Observation of a Nano 33 BLE: the :class:`~hal.observation.ObservationSource` that reads the
board's serial port (found again by USB serial number after every re-enumeration) and tells
whether the sketch still lives.

Liveness: the sketch prints a status line every ``status_period_ms`` (and inference lines in
between). A board whose port is open but which printed nothing for ``silent_periods`` status
periods has stopped (a hard fault, a hung sketch): its health is ``crashed`` until it prints
again. A board that never printed one of our lines since the port was opened and that never
booted a verified model of ours (a blank board, another sketch) is ``none``, not crashed; one
that did (a bridge restarted next to a dead sketch) is crashed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from hal.arduino.serial_link import PortLink
from hal.driver import Health
from hal.errors import DeviceError
from hal.protocol import BootLine, DeviceLine, LineSplitter, RawLine, StatusLine

if TYPE_CHECKING:
    from hal.arduino.driver import Nano33BleDriver
    from hal.observation import ReadControl

log = logging.getLogger(__name__)

# The template's status period when the settings do not override it (firmware default).
TEMPLATE_STATUS_PERIOD_MS = 5000
# A board not attached at start is reported only after this long: a board (or a virtual
# board process) that is just enumerating is not "not found".
NOT_FOUND_GRACE_S = 3.0


class SerialSource:
    """Reads the board's port for the observation loop (see the module docstring)."""

    def __init__(self, driver: Nano33BleDriver) -> None:
        self.driver = driver
        period_ms = driver.settings.status_period_ms or TEMPLATE_STATUS_PERIOD_MS
        self.status_period_s = period_ms / 1000.0
        self.silent_limit_s = driver.settings.silent_periods * self.status_period_s
        self.health_interval_s = max(0.1, min(1.0, self.status_period_s / 2))
        self._created = time.monotonic()
        self._had_port = False
        self._lock = threading.Lock()
        self._opened_at: float | None = None  # while the port is open
        self._last_line_at: float | None = None  # last protocol line while open

    def resolve(self) -> str | None:
        d = self.driver
        device = d.observe_target()
        if device is not None:
            return device
        if not self._had_port and time.monotonic() - self._created < NOT_FOUND_GRACE_S:
            return None
        code = "port_vanished" if self._had_port else "device_not_found"
        raise DeviceError(
            code,
            f"board {d.serial_number() or d.settings.port} "
            + ("vanished" if self._had_port else "is not attached")
            + "; observation resumes when it is back",
            serial_number=d.serial_number(),
        )

    def switch(self, target: str | None) -> str | None:
        return target

    def read(self, target: str, ctl: ReadControl) -> None:
        link = PortLink.open(target)
        self._had_port = True
        ctl.connected()
        with self._lock:
            self._opened_at, self._last_line_at = time.monotonic(), None
        splitter = LineSplitter()
        try:
            while not ctl.should_return():
                for line in splitter.feed(link.read(0.1)):
                    self._seen(line)
                    self.driver.deliver_line(line)
        except DeviceError:
            for line in splitter.flush():
                self.driver.deliver_line(line)
            raise
        finally:
            link.close()
            with self._lock:
                self._opened_at = None

    def _seen(self, line: DeviceLine) -> None:
        if not isinstance(line, RawLine):
            with self._lock:
                self._last_line_at = time.monotonic()

    def health(self) -> Health | None:
        if self.driver.busy:
            return None  # an install has the port
        with self._lock:
            opened, last = self._opened_at, self._last_line_at
        if opened is None:
            return None  # not reading: the link error says why
        now = time.monotonic()
        if last is None:
            if now - opened <= self.silent_limit_s:
                return None  # just opened: give it its periods
            if self.driver.running_sha is None and not self.driver.has_verified_model():
                return Health("none", "the board prints none of our lines: nothing of ours "
                              "runs (a blank board, or another sketch)")
            last = opened
        silent = now - last
        if silent > self.silent_limit_s:
            return Health("crashed", f"the board printed nothing for {silent:.1f} s "
                          f"({self.silent_limit_s / self.status_period_s:.0f} status periods "
                          f"of {self.status_period_s:g} s): the sketch stopped",
                          silent_s=round(silent, 1))
        return Health("ok", "the board prints its lines")


def running_sha_of(line: DeviceLine) -> str | None:
    """The model hash a boot or status line announces."""
    return line.sha if isinstance(line, (BootLine, StatusLine)) else None
