"""The driver interface every target family implements, and the registry that builds drivers
from configuration by name.

A driver owns one device: it installs a model (a sequence of logged, timed steps ending in a
verified boot or a classified :class:`~hal.errors.HalError`) and observes the device's lines.
The bridge only ever talks to this interface; a new board family is a new folder under
``hal/`` with a class decorated by :func:`register_driver` (or an entry point in the group
``tinyml_bridge.drivers`` for drivers shipped outside this package).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from hal.deadline import Deadline
from hal.errors import HalError, InputError, as_hal_error
from hal.protocol import DeviceLine

log = logging.getLogger(__name__)

# Step names, in the order an MCU install runs them. Linux targets use a subset plus "start".
STEP_VALIDATE = "validate"
STEP_FIT = "fit_check"
STEP_RENDER = "render"
STEP_COMPILE = "compile"
STEP_FIT_BUILD = "fit_check_build"
STEP_PREFLIGHT = "preflight"
STEP_UPLOAD = "upload"
STEP_START = "start"
STEP_VERIFY = "verify_boot"
# After a failed boot: the last verified image is flashed back (MCU targets).
STEP_ROLLBACK = "rollback"

# (step, status, detail); status is "started", "done", "skipped" or "failed".
ProgressFn = Callable[[str, str, dict], None]
LineSink = Callable[[DeviceLine], None]
ErrorSink = Callable[[HalError], None]


class DriverSettings(BaseModel):
    """Base of every driver's settings model: unknown keys are configuration errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DriverContext:
    """Host-wide facts a driver may use (from the bridge configuration)."""

    state_dir: Path
    arduino_cli: str = "arduino-cli"
    build_cache_dir: Path | None = None

    def device_dir(self, driver: str, device_id: str) -> Path:
        """A private, persistent directory for one device of one driver."""
        path = self.state_dir / "devices" / driver / device_id
        path.mkdir(parents=True, exist_ok=True)
        return path


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
    """A verified install. There is no unverified success: failures raise HalError."""

    device_id: str
    model_sha256: str
    boot: dict  # the BootLine (or StatusLine) that proved it, via hal.protocol.to_dict
    arena_bytes: int
    compiled: bool  # False when the build (or upload, for Linux targets) was reused
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    detail: dict[str, Any] = field(default_factory=dict)  # sizes, fit numbers, port, host...

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


class Driver(ABC):
    """One device of one target family. Thread-safe: the bridge calls ``install`` from a job
    thread while observation runs on the driver's own thread."""

    name: ClassVar[str] = ""  # set by @register_driver
    board: ClassVar[str] = ""  # board profile name (hal.boards)
    Settings: ClassVar[type[DriverSettings]] = DriverSettings

    def __init__(self, device_id: str, settings: DriverSettings, context: DriverContext) -> None:
        self.device_id = device_id
        self.settings = settings
        self.context = context
        self._install_lock = threading.Lock()
        self._running_job: str | None = None

    # -- host-wide -----------------------------------------------------------------------

    @classmethod
    def check_tools(cls, context: DriverContext) -> dict[str, Any]:
        """``{"available": bool, "checks": [{"check", "ok", "message", "fix"}, ...]}``: whether
        this driver's host tools are usable (arduino-cli found, core and library installed, the
        user in ``dialout``...). Cheap enough for ``/health``; never raises."""
        return {"available": True}

    @classmethod
    def discover(cls, context: DriverContext) -> list[Discovered]:
        """Devices of this family attached right now without configuration."""
        return []

    # -- per device ----------------------------------------------------------------------

    def diagnose(self, deadline: Deadline) -> list[dict[str, Any]]:
        """Checks for ``tinyml-bridge doctor``: a list of ``{"check", "ok", "message", "fix"}``
        (port readable, host reachable, runtime importable...). Never raises for a failed
        check: a failure is an entry with ``ok`` False and a ``fix`` a technician can apply."""
        return []

    @abstractmethod
    def info(self) -> DeviceInfo:
        """Current description of the device (cheap; called on every listing)."""

    @abstractmethod
    def _install(
        self, request: InstallRequest, deadline: Deadline, steps: StepRecorder
    ) -> InstallReport:
        """Family-specific install; called with the device's install lock held."""

    def install(
        self, request: InstallRequest, deadline: Deadline, progress: ProgressFn | None = None
    ) -> InstallReport:
        """Install and verify. Returns only after the device booted the new model and said
        so; every other outcome raises a classified HalError. A second install while one runs
        raises ``InputError("device_busy")`` naming the running job."""
        if not self._install_lock.acquire(blocking=False):
            raise InputError(
                "device_busy",
                f"device {self.device_id} is busy with job {self._running_job}",
                device=self.device_id,
                running_job=self._running_job,
            )
        self._running_job = request.job_id or "(unnamed)"
        try:
            return self._install(request, deadline, StepRecorder(self.device_id, progress))
        finally:
            self._running_job = None
            self._install_lock.release()

    @abstractmethod
    def start_observing(self, sink: LineSink, on_error: ErrorSink | None = None) -> None:
        """Start delivering the device's lines to ``sink`` from a driver thread until
        :meth:`stop_observing`. Port trouble goes to ``on_error`` and reading resumes when
        the device returns. Idempotent."""

    @abstractmethod
    def stop_observing(self) -> None:
        """Stop observation and release the port or connection. Idempotent."""

    def close(self) -> None:
        """Release everything (observation, connections, helper processes)."""
        self.stop_observing()


class StepRecorder:
    """Runs named steps, logging and timing each and reporting it to ``progress``."""

    def __init__(self, device_id: str, progress: ProgressFn | None) -> None:
        self.device_id = device_id
        self._progress = progress
        self.durations: dict[str, float] = {}

    def _emit(self, step: str, status: str, detail: dict) -> None:
        if self._progress is not None:
            try:
                self._progress(step, status, detail)
            except Exception:  # a broken progress sink must not break an install
                log.exception("progress callback failed")

    @contextmanager
    def step(self, name: str, **detail: Any) -> Iterator[dict]:
        """``with steps.step("compile") as info: ...`` -- put result numbers into ``info``."""
        info: dict[str, Any] = dict(detail)
        log.info("device=%s step=%s started", self.device_id, name)
        self._emit(name, "started", dict(detail))
        started = time.monotonic()
        try:
            yield info
        except BaseException as exc:
            seconds = time.monotonic() - started
            self.durations[name] = seconds
            err = as_hal_error(exc)
            log.warning("device=%s step=%s failed after %.3fs: %s", self.device_id, name,
                        seconds, err)
            self._emit(name, "failed", {**info, "seconds": seconds, "error": err.to_dict()})
            raise
        seconds = time.monotonic() - started
        self.durations[name] = seconds
        log.info("device=%s step=%s done in %.3fs", self.device_id, name, seconds)
        self._emit(name, "done", {**info, "seconds": seconds})

    def skip(self, name: str, reason: str, **detail: Any) -> None:
        """Record a step that did not need to run (e.g. compile on a cache hit)."""
        log.info("device=%s step=%s skipped: %s", self.device_id, name, reason)
        self.durations[name] = 0.0
        self._emit(name, "skipped", {"reason": reason, **detail})


# ------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, type[Driver]] = {}
# Built-in families, imported on first use so that e.g. paramiko loads only when needed.
_BUILTIN_MODULES = {
    "nano33ble": "hal.arduino.driver",
    "virtual-nano33ble": "hal.virtual.driver",
    "rpi": "hal.rpi.driver",
}
_ENTRY_POINT_GROUP = "tinyml_bridge.drivers"


def register_driver(name: str) -> Callable[[type[Driver]], type[Driver]]:
    """Class decorator: make a driver buildable from configuration as ``driver = name``."""

    def deco(cls: type[Driver]) -> type[Driver]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def driver_names() -> list[str]:
    """Every driver name that can be configured."""
    names = set(_REGISTRY) | set(_BUILTIN_MODULES)
    names |= {ep.name for ep in entry_points(group=_ENTRY_POINT_GROUP)}
    return sorted(names)


def get_driver_class(name: str) -> type[Driver]:
    """The driver class registered as ``name``; ``InputError("unknown_driver")`` if none."""
    if name not in _REGISTRY:
        if name in _BUILTIN_MODULES:
            importlib.import_module(_BUILTIN_MODULES[name])
        else:
            for ep in entry_points(group=_ENTRY_POINT_GROUP):
                if ep.name == name:
                    ep.load()
    if name not in _REGISTRY:
        raise InputError(
            "unknown_driver", f"no driver registered as {name!r}", known=driver_names()
        )
    return _REGISTRY[name]


def build_driver(
    name: str, device_id: str, settings: dict[str, Any], context: DriverContext
) -> Driver:
    """Validate ``settings`` against the driver's model and build the driver."""
    cls = get_driver_class(name)
    return cls(device_id, cls.Settings.model_validate(settings), context)
