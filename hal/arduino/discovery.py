"""Which Nano 33 BLE boards are attached: pyserial's port list, plus virtual-port records.

Real boards come from ``serial.tools.list_ports.comports()`` (VID 0x2341 and the profile's
sketch and bootloader PIDs), without arduino-cli. Pseudo-terminals are not listed by pyserial,
so the hardware-free board (:mod:`hal.virtual.board`) publishes itself through the second
source: a directory of small JSON records, one per live port, written while the port exists
and removed when it vanishes. The directory is ``$TINYML_VIRTUAL_PORTS`` or one the caller
passes (the virtual driver uses ``<state_dir>/virtual-ports``). A record whose owner process is
dead is ignored, so a crashed virtual board does not linger as an attached board.

Record format (``<dir>/<serial_number>.json``)::

    {"device": "/path/to/tty", "vid": 9025, "pid": 32858, "serial_number": "...",
     "location": "virtual-1", "description": "...", "owner_pid": 1234}
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from hal.boards import get_profile
from hal.deadline import Deadline

log = logging.getLogger(__name__)

ENV_VIRTUAL_PORTS = "TINYML_VIRTUAL_PORTS"
_MAX_RECORD_BYTES = 4096
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class PortInfo:
    """One attached USB serial port (pyserial's attributes, plus where it came from)."""

    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    location: str | None = None
    description: str = ""
    virtual: bool = False

    @property
    def mode(self) -> str:
        """``"sketch"``, ``"bootloader"`` or ``"unknown"`` from the PID (Nano 33 BLE profile)."""
        profile = get_profile("nano33ble")
        if self.pid in profile.usb_pids_bootloader:
            return "bootloader"
        if self.pid in profile.usb_pids_sketch:
            return "sketch"
        return "unknown"

    def to_dict(self) -> dict:
        return {**asdict(self), "mode": self.mode}


def virtual_ports_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The virtual-port directory in use: ``explicit``, else ``$TINYML_VIRTUAL_PORTS``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VIRTUAL_PORTS)
    return Path(env) if env else None


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True  # no owner recorded: trust the record
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed owner that its parent has not reaped yet is a zombie: dead for our purposes
    # (its pty is gone, and the pty number may already belong to someone else).
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state != b"Z"


def read_virtual_ports(directory: Path, serial_number: str | None = None) -> list[PortInfo]:
    """Every valid, live record in ``directory`` (malformed or oversized records skipped);
    only ``<serial_number>.json`` when a serial number is given (the fast path of lookups)."""
    out = []
    try:
        if serial_number is not None and _SAFE_NAME.match(serial_number):
            entries = [directory / f"{serial_number}.json"]
        else:
            entries = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in entries:
        try:
            if path.stat().st_size > _MAX_RECORD_BYTES:
                continue
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written or removed right now, or garbage
        if not isinstance(data, dict):
            continue
        device, vid, pid = data.get("device"), data.get("vid"), data.get("pid")
        serial = data.get("serial_number")
        if not isinstance(device, str) or not device:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (vid, pid)):
            continue
        if serial is not None and not isinstance(serial, str):
            continue
        if not _pid_alive(data.get("owner_pid")):
            continue
        out.append(
            PortInfo(
                device=device,
                vid=vid,
                pid=pid,
                serial_number=serial,
                location=str(data.get("location") or "") or None,
                description=str(data.get("description") or "")[:200],
                virtual=True,
            )
        )
    return out


def _usb_ports() -> list[PortInfo]:
    from serial.tools import list_ports  # pyserial

    out = []
    for p in list_ports.comports():
        out.append(
            PortInfo(
                device=p.device,
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number,
                location=p.location,
                description=p.description or "",
            )
        )
    return out


def list_boards(
    virtual_dir: str | os.PathLike | None = None,
    *,
    include_usb: bool = True,
    include_bootloader: bool = True,
    serial_number: str | None = None,
) -> list[PortInfo]:
    """Attached Nano 33 BLE ports (sketch PIDs, and bootloader PIDs unless excluded)."""
    profile = get_profile("nano33ble")
    pids = set(profile.usb_pids_sketch)
    if include_bootloader:
        pids |= set(profile.usb_pids_bootloader)
    ports: list[PortInfo] = []
    if include_usb:
        try:
            ports += _usb_ports()
        except Exception as exc:  # pyserial's sysfs walk can fail on odd hosts
            log.warning("listing USB serial ports failed: %s", exc)
    directory = virtual_ports_dir(virtual_dir)
    if directory is not None:
        ports += read_virtual_ports(directory, serial_number)
    return [p for p in ports if p.vid == profile.usb_vid and p.pid in pids
            and (serial_number is None or p.serial_number == serial_number)]


def find_board(
    serial_number: str,
    virtual_dir: str | os.PathLike | None = None,
    *,
    mode: str | None = "sketch",
    include_usb: bool = True,
) -> PortInfo | None:
    """The port of the board with ``serial_number`` (in ``mode`` unless None), or None."""
    for port in list_boards(virtual_dir, include_usb=include_usb, serial_number=serial_number):
        if mode is None or port.mode == mode:
            return port
    return None


def port_owner(device: str, virtual_dir: str | os.PathLike | None = None,
               *, include_usb: bool = True) -> PortInfo | None:
    """The board listed on ``device`` (compared by resolved path), or None."""
    wanted = os.path.realpath(device)
    for port in list_boards(virtual_dir, include_usb=include_usb):
        if port.device == device or os.path.realpath(port.device) == wanted:
            return port
    return None


def wait_for_board(
    serial_number: str,
    deadline: Deadline,
    virtual_dir: str | os.PathLike | None = None,
    *,
    mode: str | None = "sketch",
    include_usb: bool = True,
    poll_s: float = 0.05,
) -> PortInfo | None:
    """Poll until the board with ``serial_number`` is listed (after re-enumeration) or the
    deadline passes (None). Raises :class:`~hal.errors.Cancelled` when cancelled."""
    while True:
        port = find_board(serial_number, virtual_dir, mode=mode, include_usb=include_usb)
        if port is not None:
            return port
        if deadline.expired:
            return None
        if deadline.wait(poll_s):
            deadline.check()
