"""What goes into and comes out of a driver: the install request, the verified report, the
typed rollback outcome, the runner's health, and how a device is listed. Plain data, shared by
every driver and the bridge (re-exported by :mod:`hal.driver`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class InstallRequest:
    """What to install. ``input_vectors`` are in the model's real (dequantised) units; the
    driver quantises them with the input tensor's scale and zero point."""

    model: bytes
    labels: tuple[str, ...] = ()
    input_vectors: tuple[tuple[float, ...], ...] = ()
    arena_bytes: int | None = None  # override of estimate + margin
    boot_deadline_s: float = 20.0
    input_source: str = "vectors"  # "vectors"; drivers may accept more ("camera", "stdin")
    job_id: str | None = None  # named in "device_busy" errors


@dataclass(frozen=True)
class InstallReport:
    """A verified install. There is no unverified success: failures raise HalError.

    Every field means the same for every driver:

    ``boot``         the line (boot, or status) that proved the model runs (hal.protocol form).
    ``arena_bytes``  the tensor arena the device reported (MCU) or its runner allocated.
    ``compiled``     a new artefact was built for this install rather than reused: the MCU
                     firmware was compiled (not taken from the build cache); on a Linux target
                     the deployment directory was written (not found complete on the target).
    ``transferred``  bytes were sent to the device (a flash, an upload of files).
    ``steps``        seconds per recorded step; ``detail`` the driver's numbers.
    """

    device_id: str
    model_sha256: str
    boot: dict  # the BootLine (or StatusLine) that proved it, via hal.protocol.to_dict
    arena_bytes: int
    compiled: bool
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    detail: dict[str, Any] = field(default_factory=dict)  # sizes, fit numbers, port, host...
    transferred: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RollbackOutcome:
    """What a failed install left the device running; every failed install carries one in
    ``error.detail["rollback"]`` and the bridge and CLI read it the same way for every driver.

    ``needed``     the failed install had changed (or may have changed) what the device runs.
                   False: it failed before touching the device, which runs what it ran.
    ``attempted``  a rollback (re-flash, restart of the previous runner, slot switch) ran.
    ``verified``   ``running_sha256`` was seen running afterwards (its boot or status line).
    ``running_sha256``  the model that runs now: the full sha256 or (from a device line) at
                   least its 16-hex prefix; None when nothing runs or it is unknown.
    ``reason``     why, in words (always set).
    """

    needed: bool
    attempted: bool
    verified: bool
    running_sha256: str | None
    reason: str
    error: dict[str, Any] | None = None  # the rollback's own classified failure
    boot: dict[str, Any] | None = None  # the line that verified it

    @classmethod
    def untouched(cls, reason: str) -> RollbackOutcome:
        """The install failed before it changed anything on the device."""
        return cls(needed=False, attempted=False, verified=False, running_sha256=None,
                   reason=reason)

    @classmethod
    def from_dict(cls, data: Any) -> RollbackOutcome | None:
        """Read the wire form back (None when ``data`` is not one)."""
        if not isinstance(data, dict) or "verified" not in data:
            return None
        sha = data.get("running_sha256")
        return cls(needed=bool(data.get("needed")), attempted=bool(data.get("attempted")),
                   verified=bool(data.get("verified")),
                   running_sha256=str(sha) if sha else None,
                   reason=str(data.get("reason") or ""),
                   error=data.get("error") if isinstance(data.get("error"), dict) else None,
                   boot=data.get("boot") if isinstance(data.get("boot"), dict) else None)

    def runs(self, sha256: str | None) -> bool:
        """True when this outcome proves the device runs model ``sha256`` (full or prefix)."""
        if not (self.verified and self.running_sha256 and sha256):
            return False
        a, b = self.running_sha256.lower(), sha256.lower()
        return len(a) >= 16 and len(b) >= 16 and (a.startswith(b) or b.startswith(a))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Health:
    """Liveness of what runs on the device, as the observation last saw it.

    ``state``: ``ok`` (it runs, or a supervisor restarted it within its budget), ``crashed``
    (the runner exited and its supervisor gave up, or the sketch stopped printing its status
    lines for ``silent_periods`` periods), ``none`` (nothing is deployed).
    """

    state: str
    message: str = ""
    exit_code: int | None = None
    stderr_tail: str = ""
    restarts: int = 0
    silent_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the bridge lists it."""

    id: str
    driver: str
    board: str  # board profile name
    address: str  # serial port path or host:port
    connected: bool
    serial_number: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Discovered:
    """A device found without configuration (e.g. a board plugged into USB)."""

    id: str
    settings: dict[str, Any]
