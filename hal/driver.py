"""The driver interface every target family implements: one install skeleton and one
observation, written once here and filled in by each driver.

A driver owns one device: it installs a model (declared phases of logged, timed steps ending in
a verified boot or a classified :class:`~hal.errors.HalError` carrying a typed
:class:`RollbackOutcome`) and observes the device's lines and liveness
(:mod:`hal.observation`). The bridge only ever talks to this interface; a new board family is a
new folder under ``hal/`` with a class decorated by :func:`register_driver` (the registry is
:mod:`hal.driver_registry`; drivers shipped outside this package use the entry-point group
``tinyml_bridge.drivers``). The data types are in :mod:`hal.outcomes`; all are importable from
here.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from hal.deadline import Deadline
from hal.driver_registry import build_driver, driver_names, get_driver_class, register_driver
from hal.errors import Cancelled, HalError, InputError, as_hal_error, make_error
from hal.observation import Listener, ObservationLoop, ObservationSource
from hal.outcomes import (
    DeviceInfo,
    Discovered,
    Health,
    InstallReport,
    InstallRequest,
    RollbackOutcome,
)
from hal.protocol import DeviceLine

log = logging.getLogger(__name__)

__all__ = [
    "PHASES", "DeviceInfo", "Discovered", "Driver", "DriverContext", "DriverSettings",
    "Health", "InstallContext", "InstallReport", "InstallRequest", "RollbackOutcome",
    "StepRecorder", "build_driver", "driver_names", "get_driver_class", "register_driver",
]

# The declared phases of every install, in order (hal.driver.Driver.install runs them). A phase
# records one or more named steps through the one StepRecorder; each step says its phase.
PHASE_VALIDATE = "validate"  # the model and the request, on the host (no device contact)
PHASE_FIT = "fit"  # static fit against the target (flash/RAM, disk/memory)
PHASE_PREPARE = "prepare"  # build what will be sent (render + compile, runner files)
PHASE_TRANSFER = "transfer"  # send it to the device (flash, SFTP upload, hot-swap slot)
PHASE_ACTIVATE = "activate"  # make the device run it (reset, stop old + start new runner)
PHASE_VERIFY = "verify"  # the device proves it runs the model (boot line with its hash)
PHASE_ROLLBACK = "rollback"  # after a failure that changed the device: back to the verified
PHASES = (PHASE_VALIDATE, PHASE_FIT, PHASE_PREPARE, PHASE_TRANSFER, PHASE_ACTIVATE,
          PHASE_VERIFY, PHASE_ROLLBACK)

# Step names (what jobs show), each inside one phase.
STEP_VALIDATE = "validate"
STEP_FIT = "fit_check"
STEP_RENDER = "render"
STEP_COMPILE = "compile"
STEP_FIT_BUILD = "fit_check_build"
STEP_PREFLIGHT = "preflight"
STEP_UPLOAD = "upload"
STEP_START = "start"
STEP_VERIFY = "verify_boot"
STEP_ROLLBACK = "rollback"

# (step, status, detail); status is "started", "done", "skipped" or "failed".
ProgressFn = Callable[[str, str, dict], None]
LineSink = Callable[[DeviceLine], None]
ErrorSink = Callable[[HalError], None]
HealthSink = Callable[["Health"], None]


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


@dataclass
class InstallContext:
    """One install as it moves through the phases: the request, the job's deadline, the step
    recorder, and what the phases learn (the model's hash, the arena, the proof line...).
    ``data`` is the driver's own scratch space between its phases."""

    request: InstallRequest
    deadline: Deadline
    steps: StepRecorder
    sha256: str = ""
    arena_bytes: int = 0
    compiled: bool = False
    transferred: bool = False
    boot: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    touched: bool = False  # the commit phase started: the device may have changed
    commit: str = PHASE_TRANSFER  # this install's commit phase (Driver._commit_phase)

    def shielded(self, seconds: float | None, what: str) -> Deadline:
        """A deadline with its own cancel flag: what runs once the device was touched
        (flash, start, verify, rollback) always finishes, so the device is never left
        half-changed; the job's cancel is honoured when it is over."""
        return Deadline(seconds, what=what)


class Driver(ABC):
    """One device of one target family. Thread-safe: the bridge calls ``install`` from a job
    thread while observation runs on its own thread.

    **The install skeleton.** :meth:`install` takes the device's exclusive guard and runs the
    declared phases (:data:`PHASES`) as methods a driver fills in: ``_validate``, ``_fit``,
    ``_prepare``, ``_transfer``, ``_activate``, ``_verify`` and, after a failure that changed
    the device, ``_rollback`` (returning a :class:`RollbackOutcome`; a reflash, a restart of
    the previous runner or a switch back to the previous slot, typed the same way). Cancel
    semantics are written once here: up to the install's commit phase (:meth:`_commit_phase`,
    by default :attr:`commit_phase`) a cancel stops the install
    and the device is untouched; from it on the phases run to the end (drivers use
    :meth:`InstallContext.shielded` deadlines) and a cancel that arrived meanwhile is
    reported afterwards as ``cancelled`` with what the device runs. After every verified
    install and every rollback the observation is switched (:meth:`_observation_target`).
    """

    name: ClassVar[str] = ""  # set by @register_driver
    board: ClassVar[str] = ""  # board profile name (hal.boards)
    Settings: ClassVar[type[DriverSettings]] = DriverSettings
    # The first phase that changes what the device runs. MCU flashing: "transfer"; a Linux
    # target (files land beside the running runner) or a hot-swap into an idle slot:
    # "activate".
    commit_phase: ClassVar[str] = PHASE_TRANSFER

    def __init__(self, device_id: str, settings: DriverSettings, context: DriverContext) -> None:
        self.device_id = device_id
        self.settings = settings
        self.context = context
        self._guard = threading.Lock()
        self._holder: str | None = None
        self._observation: ObservationLoop | None = None
        self._obs_lock = threading.Lock()
        self._on_health: HealthSink | None = None
        self._on_link_ok: Callable[[], None] | None = None

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

    # -- the exclusive guard (one install, restart or stop at a time) ---------------------

    @contextmanager
    def exclusive(self, holder: str) -> Iterator[None]:
        """Hold the device for ``holder`` (a job id or an action); a second holder gets
        ``InputError("device_busy")`` naming the first."""
        if not self._guard.acquire(blocking=False):
            raise InputError(
                "device_busy",
                f"device {self.device_id} is busy with job {self._holder}",
                device=self.device_id,
                running_job=self._holder,
            )
        self._holder = holder
        try:
            yield
        finally:
            self._holder = None
            self._guard.release()

    @property
    def busy(self) -> bool:
        """An install (or another exclusive action) holds the device."""
        return self._guard.locked()

    # -- the install skeleton --------------------------------------------------------------

    def install(
        self, request: InstallRequest, deadline: Deadline, progress: ProgressFn | None = None
    ) -> InstallReport:
        """Install and verify. Returns only after the device booted the new model and said
        so; every other outcome raises a classified HalError carrying a
        :class:`RollbackOutcome` in ``detail["rollback"]``. A second install while one runs
        raises ``InputError("device_busy")`` naming the running job."""
        with self.exclusive(request.job_id or "(unnamed)"):
            return self._install(request, deadline, StepRecorder(self.device_id, progress))

    def _install(
        self, request: InstallRequest, deadline: Deadline, steps: StepRecorder
    ) -> InstallReport:
        """The phases in order (drivers fill in the phase methods, not this)."""
        ctx = InstallContext(request=request, deadline=deadline, steps=steps)
        try:
            for phase in PHASES[:PHASES.index(PHASE_ROLLBACK)]:
                # Asked before each phase: what earlier phases learnt may choose the path
                # (e.g. a hot-swap into an idle slot commits only when it activates).
                ctx.commit = self._commit_phase(ctx)
                if PHASES.index(phase) >= PHASES.index(ctx.commit):
                    break
                steps.phase = phase
                getattr(self, f"_{phase}")(ctx)
                deadline.check()  # the last moments a cancel leaves the device untouched
        except BaseException as exc:
            err = as_hal_error(exc)
            err.detail.setdefault("rollback", RollbackOutcome.untouched(
                f"the install stopped in its {steps.phase} phase, before it changed the "
                "device").to_dict())
            if err is exc:
                raise
            raise err from exc
        ctx.touched = True
        try:
            return self._committed(ctx)
        finally:
            self._after_install(ctx)

    def _committed(self, ctx: InstallContext) -> InstallReport:
        """From the commit phase on: the phases run to the end, then roll back or report."""
        steps, deadline = ctx.steps, ctx.deadline
        try:
            for phase in PHASES[PHASES.index(ctx.commit):PHASES.index(PHASE_ROLLBACK)]:
                steps.phase = phase
                getattr(self, f"_{phase}")(ctx)
        except BaseException as exc:
            err = as_hal_error(exc)
            steps.phase = PHASE_ROLLBACK
            try:
                outcome = self._rollback(ctx, err)
            except Exception as rexc:  # never hide the original error behind the rollback's
                rerr = as_hal_error(rexc)
                outcome = RollbackOutcome(needed=True, attempted=True, verified=False,
                                          running_sha256=None, reason=rerr.message,
                                          error=rerr.to_dict())
            err.detail["rollback"] = outcome.to_dict()
            if outcome.attempted or outcome.verified:
                self._switch_observation(outcome.running_sha256)
            if deadline.cancelled and not isinstance(err, Cancelled):
                raise Cancelled(
                    f"cancel arrived while the device was being changed, which was finished "
                    f"rather than left half-done; then the install failed: {err.message}",
                    board_state="old_model_verified" if outcome.verified else (
                        "old_model" if not outcome.needed else "unknown"),
                    rollback=outcome.to_dict(), error=err.to_dict()) from None
            if err is exc:
                raise
            raise err from exc
        self._switch_observation(ctx.sha256)
        if not ctx.boot or not ctx.sha256:  # a driver bug must never read as a success
            raise make_error("internal", f"the {self.name} driver verified nothing")
        if deadline.cancelled:
            raise Cancelled(
                "cancel arrived while the device was being changed, which was finished rather "
                "than left half-done; the device is verified on the new model",
                board_state="new_model_verified", model_sha256=ctx.sha256, boot=ctx.boot,
                rollback=RollbackOutcome(
                    needed=False, attempted=False, verified=True, running_sha256=ctx.sha256,
                    reason="cancelled after the new model was verified", boot=ctx.boot,
                ).to_dict())
        return InstallReport(
            device_id=self.device_id, model_sha256=ctx.sha256, boot=ctx.boot,
            arena_bytes=ctx.arena_bytes, compiled=ctx.compiled, steps=dict(steps.durations),
            detail=ctx.detail, transferred=ctx.transferred)

    def _commit_phase(self, ctx: InstallContext) -> str:
        """The first phase that changes what the device runs, for this install (default:
        :attr:`commit_phase`). A driver with two paths -- a reflash, or a transfer into an
        idle slot that only a later slot switch makes live -- answers per install."""
        return self.commit_phase

    # The phases. Drivers override the ones they need; the defaults do nothing.
    def _validate(self, ctx: InstallContext) -> None:
        """Check the model and the request on the host; set ``ctx.sha256``."""
        return None

    def _fit(self, ctx: InstallContext) -> None:
        """Check the model fits the target; raise FitError with the numbers."""
        return None

    def _prepare(self, ctx: InstallContext) -> None:
        """Build what will be sent; set ``ctx.compiled``."""
        return None

    def _transfer(self, ctx: InstallContext) -> None:
        """Send it to the device; set ``ctx.transferred``."""
        return None

    def _activate(self, ctx: InstallContext) -> None:
        """Make the device run it."""
        return None

    def _verify(self, ctx: InstallContext) -> None:
        """Wait for the proof; set ``ctx.boot`` and ``ctx.arena_bytes``. There is no
        default: an install without a proof is never a success."""
        raise make_error("internal", f"the {self.name} driver has no verify phase")

    def _after_install(self, ctx: InstallContext) -> None:
        """Runs after the committed phases whatever their outcome (e.g. give the port back to
        the observation)."""
        return None

    def _rollback(self, ctx: InstallContext, error: HalError) -> RollbackOutcome:
        """After ``error`` in a phase that changed the device: bring back the last verified
        model. Never raises for a failed rollback: the outcome says so."""
        return RollbackOutcome(needed=True, attempted=False, verified=False,
                               running_sha256=None,
                               reason=f"{self.name} drivers cannot roll back")

    # -- observation (one loop per device, hal.observation) ---------------------------------

    def _observation_source(self) -> ObservationSource | None:
        """What the observation loop reads; None: this driver observes nothing."""
        return None

    def _observation_target(self, sha256: str | None) -> Any:
        """Where to read after a verified install or a rollback to ``sha256`` (None: the
        source resolves it itself)."""
        return None

    def _switch_observation(self, sha256: str | None) -> None:
        loop = self._observation
        if loop is not None:
            loop.switch(self._observation_target(sha256))

    def listen(self, *, on_health: HealthSink | None = None,
               on_link_ok: Callable[[], None] | None = None) -> None:
        """Where liveness changes and "the link works again" go (set before observing)."""
        self._on_health, self._on_link_ok = on_health, on_link_ok

    def start_observing(self, sink: LineSink, on_error: ErrorSink | None = None) -> None:
        """Start delivering the device's lines to ``sink`` from the observation thread until
        :meth:`stop_observing`, whether or not anything is deployed or the device is
        reachable: link trouble goes to ``on_error`` and reading is retried with backoff.
        Idempotent."""
        source = self._observation_source()
        if source is None:
            return
        with self._obs_lock:
            listener = Listener(sink, on_error, self._on_health, self._on_link_ok)
            loop = self._observation
            if loop is not None and loop.is_alive():
                loop.listener = listener
                return
            self._observation = ObservationLoop(self.device_id, source, listener)
            self._observation.start()

    def stop_observing(self) -> None:
        """Stop observation and release the port or connection. Idempotent."""
        with self._obs_lock:
            loop, self._observation = self._observation, None
        if loop is not None:
            loop.stop()

    def close(self) -> None:
        """Release everything (observation, connections, helper processes)."""
        self.stop_observing()


class StepRecorder:
    """Runs named steps, logging and timing each and reporting it to ``progress``; each
    step carries the install phase it belongs to (``detail["phase"]``)."""

    def __init__(self, device_id: str, progress: ProgressFn | None) -> None:
        self.device_id = device_id
        self._progress = progress
        self.durations: dict[str, float] = {}
        self.phase: str = PHASE_VALIDATE

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
        self._emit(name, "started", {"phase": self.phase, **detail})
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
        self._emit(name, "skipped", {"phase": self.phase, "reason": reason, **detail})
