"""Opening and reading a board's serial port with deadlines, and classifying port trouble.

A port that cannot be opened for lack of permission is ``DeviceError("permission_denied")``
with the fix (dialout group or udev rule); a port that disappears (unplugged, re-enumerating,
board reset) is ``DeviceError("port_vanished")``. Reads never block past the caller's bound.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import stat

import serial

from hal.arduino.cli import PERMISSION_FIX
from hal.errors import DeviceError, InfraError

log = logging.getLogger(__name__)

# Native USB CDC ignores the rate; anything but 1200 (which would reset the board) will do.
BAUDRATE = 115200
_READ_CHUNK = 4096


def _permission_error(device: str, why: str) -> DeviceError:
    return DeviceError(
        "permission_denied",
        f"no permission to open {device}: {why}",
        port=device,
        fix=PERMISSION_FIX,
    )


def _vanished(device: str, why: str) -> DeviceError:
    return DeviceError("port_vanished", f"port {device} vanished: {why}", port=device)


class PortLink:
    """An open serial port. Use :meth:`open`; close with :meth:`close` (or ``with``)."""

    def __init__(self, device: str, ser: serial.Serial) -> None:
        self.device = device
        self._ser = ser
        self._fd = ser.fileno()

    @classmethod
    def open(cls, device: str) -> PortLink:
        """Open ``device`` raw at :data:`BAUDRATE`.

        Raises ``permission_denied`` (with the fix), ``port_vanished`` when the path is gone
        or the device disappeared while opening, or ``InfraError("unavailable")`` when it is
        busy (right after an upload the port is briefly unusable: arduino-cli issue 2334)."""
        try:
            st = os.stat(device)
        except FileNotFoundError:
            raise _vanished(device, "no such device") from None
        except PermissionError as exc:
            raise _permission_error(device, str(exc)) from None
        # A node nobody may read or write is a permission problem even for root (who would
        # otherwise override it): refusing here makes root-run services and CI see what every
        # other user sees, and the technician gets the same fix.
        if stat.S_ISCHR(st.st_mode) and not st.st_mode & 0o666:
            raise _permission_error(device, f"mode {stat.filemode(st.st_mode)}")
        try:
            ser = serial.Serial(device, BAUDRATE, timeout=0, write_timeout=1.0)
        except serial.SerialException as exc:
            raise cls._classify_open(device, exc) from None
        except OSError as exc:
            raise cls._classify_open(device, exc) from None
        return cls(device, ser)

    @staticmethod
    def _classify_open(device: str, exc: BaseException) -> Exception:
        err = getattr(exc, "errno", None)
        text = str(exc)
        if err in (errno.EACCES, errno.EPERM) or "ermission denied" in text:
            return _permission_error(device, text)
        if err in (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO) or any(
            s in text for s in ("No such file", "No such device", "Input/output error")
        ):
            return _vanished(device, text)
        return InfraError("unavailable", f"cannot open {device}: {text}", port=device)

    def read(self, timeout_s: float) -> bytes:
        """Up to a few KB that arrived within ``timeout_s`` (b"" if none). Raises
        ``port_vanished`` when the device went away."""
        try:
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout_s))
        except (OSError, ValueError) as exc:
            raise _vanished(self.device, str(exc)) from None
        if not ready:
            return b""
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except OSError as exc:
            raise _vanished(self.device, exc.strerror or str(exc)) from None
        if not data:
            # readable but empty: hang-up (USB unplug / pty master closed)
            raise _vanished(self.device, "hang-up")
        return data

    def write(self, data: bytes) -> None:
        """Write ``data`` (bounded by the port's write timeout)."""
        try:
            self._ser.write(data)
        except (serial.SerialException, OSError) as exc:
            raise _vanished(self.device, str(exc)) from None

    def close(self) -> None:
        """Close the port; never raises."""
        # closing a vanished port may fail; there is nothing to do about it
        with contextlib.suppress(Exception):
            self._ser.close()

    def __enter__(self) -> PortLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
