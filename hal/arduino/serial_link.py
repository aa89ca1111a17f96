"""Opening and reading a board's serial port with deadlines, and classifying port trouble.

A port that cannot be opened for lack of permission is ``DeviceError("permission_denied")``
with the fix (dialout group or udev rule); a port that disappears (unplugged, re-enumerating,
board reset) is ``DeviceError("port_vanished")``. Reads never block past the caller's bound.

**DTR.** The Nano 33 BLE's USB serial (mbed ``USBCDC``/``USBSerial``) sends nothing unless the
host asserts DTR: ``Serial`` is false and ``write`` drops the data while DTR is low. Once the
port is open, every 64-byte packet waits until the host reads, so a host that holds the port
open without reading stalls the sketch's ``loop()``. Hence: :meth:`PortLink.open` asserts DTR
(and RTS) on every open and drops it on close, and the driver holds a board's port open only
inside a loop that reads it (boot verification, observation) -- never between steps.

A pseudo-terminal (the virtual board's port) has no modem lines: ``TIOCMBIS``/``TIOCMGET``
fail with ``ENOTTY`` and packet mode (``TIOCPKT``) reports only flow control, and socat's
pty pairs emulate no modem lines either. So on a pty the line is emulated through the one
state both ends share, the terminal attributes: the host sets the unused control character
``VSWTC`` (Linux ignores it) to :data:`DTR_MARK`, and the virtual board reads it from its
master side (:func:`emulated_dtr`) while the port is open. :meth:`PortLink.close` clears it,
as closing a real port drops DTR; only the host does (a board clearing it when it sees a
hang-up could erase the mark of a host that opened in between). A host killed while holding
the port leaves the mark set until the next close or re-enumeration.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import stat
import struct
import termios

import serial

from hal.arduino.cli_output import PERMISSION_FIX
from hal.errors import DeviceError, InfraError

log = logging.getLogger(__name__)

# Native USB CDC ignores the rate; anything but 1200 (which would reset the board) will do.
BAUDRATE = 115200
_READ_CHUNK = 4096


# The emulated DTR line of a pty (see the module docstring): VSWTC is unused by Linux.
DTR_CC = termios.VSWTC
DTR_MARK = b"D"


def _modem_bits(fd: int, request: int, bits: int) -> bool:
    """TIOCMBIS/TIOCMBIC on a real tty; False when the device has no modem lines (a pty)."""
    try:
        fcntl.ioctl(fd, request, struct.pack("I", bits))
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            return False
        raise


def _set_emulated_dtr(fd: int, on: bool) -> None:
    attrs = termios.tcgetattr(fd)
    value = DTR_MARK if on else b"\0"
    if attrs[6][DTR_CC] != value:
        attrs[6][DTR_CC] = value
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


def assert_dtr(fd: int) -> str:
    """Raise DTR and RTS on the open port ``fd``: ``"modem"`` on a real tty, ``"emulated"``
    on a pty (no modem lines; the virtual board reads the mark instead)."""
    if _modem_bits(fd, termios.TIOCMBIS, termios.TIOCM_DTR | termios.TIOCM_RTS):
        return "modem"
    _set_emulated_dtr(fd, True)
    return "emulated"


def drop_dtr(fd: int) -> None:
    """Lower DTR (what closing the port does on a real tty); never raises."""
    with contextlib.suppress(OSError, termios.error):
        if not _modem_bits(fd, termios.TIOCMBIC, termios.TIOCM_DTR):
            _set_emulated_dtr(fd, False)


def emulated_dtr(fd: int) -> bool:
    """Whether the host side of the pty whose end ``fd`` is has asserted the emulated DTR."""
    try:
        return termios.tcgetattr(fd)[6][DTR_CC] == DTR_MARK
    except termios.error:
        return False


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

    def __init__(self, device: str, ser: serial.Serial, dtr: str = "modem") -> None:
        self.device = device
        self._ser = ser
        self._fd = ser.fileno()
        self.dtr = dtr  # "modem" (a real tty) or "emulated" (a pty)

    @classmethod
    def open(cls, device: str) -> PortLink:
        """Open ``device`` raw at :data:`BAUDRATE` and assert DTR (the board sends nothing
        otherwise). Callers read it continuously while it is open (see the module docstring).

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
        ser = serial.Serial(None, BAUDRATE, timeout=0, write_timeout=1.0)
        ser.dtr = True  # applied by open(): asserted from the first moment
        ser.rts = True
        ser.port = device
        try:
            ser.open()
            dtr = assert_dtr(ser.fileno())
        except serial.SerialException as exc:
            raise cls._classify_open(device, exc) from None
        except (OSError, termios.error) as exc:
            with contextlib.suppress(Exception):
                ser.close()
            raise cls._classify_open(device, exc) from None
        return cls(device, ser, dtr)

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
        if self._ser.is_open:
            drop_dtr(self._fd)
        with contextlib.suppress(Exception):
            self._ser.close()

    def __enter__(self) -> PortLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
