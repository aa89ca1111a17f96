"""Boot verification of a Nano 33 BLE: after an upload the board must print a boot (or
status) line with the new model's hash within the boot deadline. Outcomes: verified (the only
success), ``wrong_model``, ``alloc_failed`` (with numbers), ``device_error``, ``boot_silent``,
``port_vanished``, ``permission_denied`` (with the fix).
"""

from __future__ import annotations

from typing import Protocol

from hal.arduino import discovery
from hal.arduino.serial_link import PortLink
from hal.deadline import Deadline
from hal.errors import DeviceError, FitError, HalError, InfraError
from hal.protocol import (
    BootLine,
    DeviceLine,
    ErrorLine,
    LineSplitter,
    RawLine,
    StatusLine,
    sha_matches,
    to_dict,
)


class BoardAccess(Protocol):
    """What boot verification needs from the driver."""

    def serial_number(self) -> str | None: ...

    def locate(self, mode: str | None = "sketch") -> discovery.PortInfo | None: ...

    def deliver_line(self, line: DeviceLine) -> None: ...


def verify_boot(
    board: BoardAccess, sha256: str, hint: str | None, deadline: Deadline,
    arena_estimate_bytes: int | None = None,
) -> tuple[DeviceLine, str]:
    """Wait for the boot or status line of the model ``sha256`` on the board's port (found
    by serial number as it re-appears; ``hint`` is the port arduino-cli reported). Every line
    read is also handed to ``board.deliver_line`` (observation sees the boot). Returns the
    proof line and the port; raises a classified error for every other outcome."""
    serial = board.serial_number()
    window = deadline.remaining()
    ever_opened = False
    present_at_end = False
    raw_lines = 0
    raw_samples: list[str] = []
    inference_lines = 0
    vanished = 0
    while True:
        if deadline.expired:
            break
        deadline.check()
        port = board.locate("sketch") if serial else None
        if port is None and hint and serial is None:
            port_name = hint
        elif port is None:
            present_at_end = False
            deadline.wait(0.02)
            continue
        else:
            port_name = port.device
        try:
            link = PortLink.open(port_name)
        except DeviceError as exc:
            if exc.code == "permission_denied":
                raise
            deadline.wait(0.05)  # not there yet / briefly unusable (issue 2334)
            continue
        except InfraError:
            deadline.wait(0.05)
            continue
        ever_opened = True
        present_at_end = True
        splitter = LineSplitter()
        try:
            while not deadline.expired:
                try:
                    data = link.read(deadline.poll_timeout(0.1))
                except DeviceError:
                    vanished += 1
                    present_at_end = False
                    break
                for line in splitter.feed(data):
                    board.deliver_line(line)
                    if isinstance(line, RawLine):
                        raw_lines += 1
                        if len(raw_samples) < 5:
                            raw_samples.append(line.text[:120])
                        continue
                    if isinstance(line, (BootLine, StatusLine)):
                        if sha_matches(line.sha, sha256):
                            return line, port_name
                        raise DeviceError(
                            "wrong_model",
                            f"the board runs model {line.sha}, not the installed "
                            f"{sha256[:16]}: the old firmware is still there",
                            expected_sha=sha256[:16],
                            running_sha=line.sha,
                            line=to_dict(line),
                        )
                    if isinstance(line, ErrorLine):
                        raise error_line_failure(line, arena_estimate_bytes)
                    inference_lines += 1
                if deadline.cancelled:
                    deadline.check()
        finally:
            link.close()
    seconds = round(window, 1)
    if not ever_opened or not present_at_end:
        raise DeviceError(
            "port_vanished",
            f"the board's port did not come back (or vanished again) within {seconds} s "
            "after the upload",
            serial_number=serial,
            ever_opened=ever_opened,
            vanished=vanished,
        )
    raise DeviceError(
        "boot_silent",
        f"the board printed no protocol line within {seconds} s after the upload: most "
        "likely a hard fault (out of RAM or stack) or a sketch that never started",
        serial_number=serial,
        raw_lines=raw_lines,
        raw_samples=raw_samples,
        inference_lines=inference_lines,
        hint="unplug and replug the board; if it stays silent, try a smaller arena or model",
    )


def error_line_failure(line: ErrorLine, arena_estimate_bytes: int | None) -> HalError:
    numbers = dict(line.numbers)
    if line.code == "alloc_failed":
        arena = numbers.get("arena")
        return FitError(
            "alloc_failed",
            f"the board could not allocate the tensor arena ({arena} B): AllocateTensors() "
            f"failed; the model needs a bigger arena than was compiled in",
            arena_bytes=arena,
            arena_estimate_bytes=arena_estimate_bytes,
            device_message=line.message,
            **{k: v for k, v in numbers.items() if k != "arena"},
        )
    return DeviceError(
        "device_error",
        f"the board reported {line.code}: {line.message}",
        device_code=line.code,
        device_message=line.message,
        **numbers,
    )

