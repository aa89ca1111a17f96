"""The ``nano33ble`` driver: install a model on an Arduino Nano 33 BLE (Sense) with arduino-cli
and prove it booted; observe the board's lines.

An install is a sequence of logged, timed steps (:class:`hal.driver.StepRecorder`):

``validate``         analyse the model (``hal.model.analysis.analyze``).
``fit_check``        static fit against the board profile, in milliseconds, before anything is
                     compiled: a model that cannot fit never costs a compile.
``render``           render the firmware template into the device's persistent build slot.
``compile``          ``arduino-cli compile`` -- or ``skipped`` when the identical model, board,
                     template and sketch were built last time (the build slot's record).
``fit_check_build``  arduino-cli's ``text``/``data`` sizes against their maxima (plus the
                     stack/heap reserve): a build that does not fit is never uploaded.
``upload``           find the board by its USB serial number (never another board's port),
                     ``arduino-cli upload`` (1200-bps touch, bootloader, re-enumeration).
``verify_boot``      open the port as soon as it re-appears (found by serial number, or
                     ``updated_upload_port``) and wait for the boot or status line: the model
                     hash must match. Everything else is a classified error: ``wrong_model``,
                     ``alloc_failed`` (fit, with the numbers), ``boot_silent``, ``port_vanished``,
                     ``permission_denied`` (with the fix).
``rollback``         only when ``verify_boot`` failed with the new firmware on the board but
                     not running (``alloc_failed``, ``boot_silent``, ``device_error``): the
                     last *verified* build (kept in ``<device_dir>/verified/`` after every
                     verified boot) is uploaded again the same way and its model's boot is
                     verified. The original error is raised with ``detail["rollback"]``:
                     ``{"ok": true, "running_sha": ...}``, or ``ok`` false with the reason
                     (``no previously verified model`` on a first install). ``wrong_model``
                     needs none: the old firmware still runs (``"needed": false``).

Cancellation: before the upload starts a cancel stops everything (arduino-cli's process group
is killed) and the board keeps its old model. Once the upload has started it is never aborted
mid-flash: it runs under its own deadline, shielded from the cancel flag, then the boot is
verified (and rolled back if it does not run), so the board is on its old model or verified
on the new one -- and the install then reports ``cancelled`` with that state in
``detail["board_state"]`` (``new_model_verified``, ``old_model``, ``old_model_verified`` after
a rollback, or ``unknown``).
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from hal.arduino import discovery, hotswap
from hal.arduino.cli import (
    PERMISSION_FIX,
    ArduinoCli,
    BuildSlot,
    CompileResult,
    VerifiedStore,
    result_from_record,
)
from hal.arduino.serial_link import PortLink
from hal.boards import BoardProfile, fit_check, get_profile
from hal.deadline import Deadline
from hal.driver import (
    STEP_COMPILE,
    STEP_FIT,
    STEP_FIT_BUILD,
    STEP_RENDER,
    STEP_ROLLBACK,
    STEP_UPLOAD,
    STEP_VALIDATE,
    STEP_VERIFY,
    DeviceInfo,
    Discovered,
    Driver,
    DriverContext,
    DriverSettings,
    ErrorSink,
    InstallReport,
    InstallRequest,
    LineSink,
    StepRecorder,
    register_driver,
)
from hal.errors import (
    Cancelled,
    DeviceError,
    FitError,
    HalError,
    InfraError,
    as_hal_error,
)
from hal.model.report import ModelReport
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

log = logging.getLogger(__name__)

# Boot failures after which the new firmware is on the board but does not run the model.
ROLLBACK_CODES = frozenset({"alloc_failed", "boot_silent", "device_error"})
_RECENT_LINES = 200
_TOOLS_CACHE_S = 30.0
_tools_cache: dict[tuple, tuple[float, dict]] = {}
_tools_lock = threading.Lock()


class Nano33BleSettings(DriverSettings):
    """Configuration of one Nano 33 BLE. Give ``serial_number`` (preferred: it survives
    re-enumeration and port renames) or ``port``."""

    serial_number: str | None = Field(
        None, min_length=1, max_length=128,
        description="the board's USB serial number (finds it on any port, after re-enumeration)")
    port: str | None = Field(None, min_length=1, max_length=4096,
                             description="serial port path; a hint when serial_number is set")
    arduino_cli: str | None = Field(None, min_length=1, max_length=4096,
                                    description="arduino-cli executable (overrides the host's)")
    fqbn: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+"
                             r"(:[A-Za-z0-9_.=,-]+)?$",
                             description="board FQBN for compile and upload (default: the "
                             "board profile's, arduino:mbed_nano:nano33ble)")
    boot_deadline_s: float | None = Field(None, gt=0, le=600,
                                          description="seconds to wait for the boot line after "
                                          "an upload (overrides the request's)")
    compile_timeout_s: float = Field(900.0, gt=0, le=7200,
                                     description="seconds an arduino-cli compile may take")
    upload_timeout_s: float = Field(180.0, gt=0, le=3600,
                                    description="seconds an arduino-cli upload (touch, flash, "
                                    "reset) may take")
    reenumerate_timeout_s: float = Field(2.0, gt=0, le=600,
                                         description="seconds to wait for the board to be "
                                         "listed (again) before an upload")
    inference_period_ms: int | None = Field(None, ge=0, le=3_600_000,
                                            description="ms between inferences on the board "
                                            "(0: back to back; default: the template's 1000)")
    status_period_ms: int | None = Field(None, ge=100, le=3_600_000,
                                         description="ms between status lines "
                                         "(default: the template's 5000)")
    virtual_ports_dir: str | None = Field(
        None, max_length=4096, description="also list virtual boards published here"
    )
    hotswap: bool = Field(True, description="install by hot-swapping the model into a flash "
                          "slot when the board's firmware allows it, and build the hot-swap "
                          "firmware when compiling (false: the exact-ops firmware)")
    hotswap_ops: list[str] = Field(
        default_factory=lambda: ["vision", "audio", "imu"], min_length=1, max_length=32,
        description="op families (vision, audio, imu) and/or op names of the hot-swap "
        "firmware's resolver")
    hotswap_arena_bytes: int | None = Field(
        None, ge=1024, le=200_000, description="arena of the hot-swap firmware (default: the "
        "board profile's, 65536; at least the model's)")

    @model_validator(mode="after")
    def _needs_identity(self) -> Nano33BleSettings:
        if not self.serial_number and not self.port:
            raise ValueError("give serial_number (preferred) or port")
        return self


@register_driver("nano33ble")
class Nano33BleDriver(Driver):
    """One Arduino Nano 33 BLE attached over USB, programmed with arduino-cli."""

    board: ClassVar[str] = "nano33ble"
    Settings: ClassVar[type[DriverSettings]] = Nano33BleSettings
    include_usb: ClassVar[bool] = True  # the virtual driver lists only its own records

    settings: Nano33BleSettings

    def __init__(self, device_id: str, settings: DriverSettings, context: DriverContext) -> None:
        super().__init__(device_id, settings, context)
        self.profile: BoardProfile = get_profile(self.board)
        self._serial_number: str | None = self.settings.serial_number
        self._observer: _Observer | None = None
        self._obs_lock = threading.Lock()
        self._recent: collections.deque[DeviceLine] = collections.deque(maxlen=_RECENT_LINES)
        self._running_sha: str | None = None
        self._last_boot: BootLine | None = None  # its "hs" says whether hot-swap is possible
        self._last_port: str | None = self.settings.port

    # ------------------------------------------------------------------ configuration hooks

    @property
    def fqbn(self) -> str:
        return self.settings.fqbn or self.profile.fqbn or "arduino:mbed_nano:nano33ble"

    def _ports_dir(self) -> Path | None:
        """The virtual-ports directory this driver also looks in (None: USB only)."""
        return discovery.virtual_ports_dir(self.settings.virtual_ports_dir)

    def _cli_command(self) -> str | list[str]:
        return self.settings.arduino_cli or self.context.arduino_cli

    def _cli_env(self) -> dict[str, str]:
        ports = self._ports_dir()
        return {discovery.ENV_VIRTUAL_PORTS: str(ports)} if ports is not None else {}

    def cli(self) -> ArduinoCli:
        """The arduino-cli adapter this device uses."""
        return ArduinoCli(self._cli_command(), env=self._cli_env(), device_id=self.device_id)

    def _build_root(self) -> Path:
        return self.context.build_cache_dir or (self.context.state_dir / "build-cache")

    def _boot_deadline_s(self, request: InstallRequest) -> float:
        return self.settings.boot_deadline_s or request.boot_deadline_s

    # ---------------------------------------------------------------------------- ports

    def serial_number(self) -> str | None:
        """The board's USB serial number (configured, or learnt from the configured port)."""
        if self._serial_number is None and self.settings.port:
            owner = discovery.port_owner(self.settings.port, self._ports_dir(),
                                         include_usb=self.include_usb)
            if owner is not None and owner.serial_number:
                self._serial_number = owner.serial_number
        return self._serial_number

    def locate(self, mode: str | None = "sketch") -> discovery.PortInfo | None:
        """The board's current port (by serial number), or None when it is not attached."""
        serial = self.serial_number()
        if serial is None:
            return None
        port = discovery.find_board(serial, self._ports_dir(), mode=mode,
                                    include_usb=self.include_usb)
        if port is not None:
            self._last_port = port.device
        return port

    def _observe_target(self) -> str | None:
        port = self.locate("sketch")
        if port is not None:
            return port.device
        if self.serial_number() is None and self.settings.port:
            return self.settings.port if os.path.exists(self.settings.port) else None
        return None

    # ------------------------------------------------------------------------- host-wide

    @classmethod
    def check_tools(cls, context: DriverContext) -> dict[str, Any]:
        """arduino-cli found, the mbed_nano core and the TFLM library installed, the user
        allowed to open serial ports. Cached for 30 s; never raises."""
        command = cls._tools_command(context)
        key = (cls.name, tuple(command) if isinstance(command, list) else command,
               tuple(sorted(cls._tools_env(context).items())))
        with _tools_lock:
            hit = _tools_cache.get(key)
            if hit and time.monotonic() - hit[0] < _TOOLS_CACHE_S:
                return hit[1]
        result = cls._run_tool_checks(command, cls._tools_env(context))
        with _tools_lock:
            _tools_cache[key] = (time.monotonic(), result)
        return result

    @classmethod
    def _tools_command(cls, context: DriverContext) -> str | list[str]:
        return context.arduino_cli

    @classmethod
    def _tools_env(cls, context: DriverContext) -> dict[str, str]:
        return {}

    @classmethod
    def _run_tool_checks(cls, command: str | list[str], env: dict[str, str]) -> dict[str, Any]:
        cli = ArduinoCli(command, env=env)
        checks: list[dict[str, Any]] = []
        version = None
        try:
            version = cli.version(Deadline(10.0, what="arduino-cli version"))
            checks.append({"check": "arduino-cli", "ok": True, "message": f"version {version}",
                           "fix": ""})
        except HalError as exc:
            checks.append({"check": "arduino-cli", "ok": False, "message": exc.message,
                           "fix": "install arduino-cli (https://arduino.github.io/arduino-cli/) "
                           "or set arduino_cli in the configuration"})
        if version is not None:
            core = "arduino:mbed_nano"
            try:
                cores = cli.core_list(Deadline(20.0, what="arduino-cli core list"))
                ok = core in cores
                checks.append({"check": "core", "ok": ok,
                               "message": f"{core} {cores.get(core, 'not installed')}",
                               "fix": "" if ok else f"arduino-cli core install {core}"})
            except HalError as exc:
                checks.append({"check": "core", "ok": False, "message": exc.message,
                               "fix": f"arduino-cli core install {core}"})
            try:
                libs = cli.lib_list(Deadline(20.0, what="arduino-cli lib list"))
                name = next((n for n in libs if "tensorflowlite" in n.lower()), None)
                checks.append({"check": "tflm_library", "ok": name is not None,
                               "message": f"{name} {libs.get(name, '')}" if name
                               else "no TensorFlow Lite Micro library installed",
                               "fix": "" if name else "install the library named in "
                               "firmware_templates/nano33ble/README.md"})
            except HalError as exc:
                checks.append({"check": "tflm_library", "ok": False, "message": exc.message,
                               "fix": ""})
        if os.geteuid() != 0:
            import grp

            try:
                groups = {grp.getgrgid(g).gr_name for g in os.getgroups()}
            except KeyError:
                groups = set()
            ok = "dialout" in groups or "uucp" in groups
            checks.append({"check": "serial_permission", "ok": ok,
                           "message": "member of dialout" if ok else "not in the dialout group",
                           "fix": "" if ok else PERMISSION_FIX})
        return {"available": all(c["ok"] for c in checks), "version": version,
                "checks": checks}

    @classmethod
    def discover(cls, context: DriverContext) -> list[Discovered]:
        """Nano 33 BLE boards on USB (and in ``$TINYML_VIRTUAL_PORTS``), one per serial."""
        seen: dict[str, Discovered] = {}
        for port in discovery.list_boards(None, include_usb=cls.include_usb):
            if not port.serial_number or port.serial_number in seen:
                continue
            seen[port.serial_number] = Discovered(
                id=port.serial_number,
                settings={"serial_number": port.serial_number, "port": port.device},
            )
        return list(seen.values())

    # ------------------------------------------------------------------------ per device

    def info(self) -> DeviceInfo:
        port = self.locate(mode=None)
        detail: dict[str, Any] = {"fqbn": self.fqbn, "running_sha": self._running_sha}
        connected = port is not None
        if port is not None:
            detail.update(mode=port.mode, location=port.location, virtual=port.virtual)
        elif self.serial_number() is None and self.settings.port:
            # Configured by port alone and nothing lists a serial number for it (a board
            # behind a hub that hides it, a socat pty): the port is there or it is not.
            connected = _is_tty(self.settings.port)
        return DeviceInfo(
            id=self.device_id,
            driver=self.name,
            board=self.board,
            address=port.device if port else (self._last_port or ""),
            connected=connected,
            serial_number=self.serial_number(),
            detail=detail,
        )

    def recent_lines(self) -> list[DeviceLine]:
        """The last lines read from the board (observation and boot verification)."""
        return list(self._recent)

    def diagnose(self, deadline: Deadline) -> list[dict[str, Any]]:
        checks = []
        port = self.locate(mode=None)
        checks.append({"check": "attached", "ok": port is not None,
                       "message": f"{port.device} ({port.mode})" if port else
                       f"no board with serial number {self.serial_number()} is attached",
                       "fix": "" if port else "plug the board in (a data USB cable), or "
                       "double-tap reset if it is stuck"})
        if port is not None:
            try:
                PortLink.open(port.device).close()
                checks.append({"check": "port_access", "ok": True, "message": port.device,
                               "fix": ""})
            except HalError as exc:
                checks.append({"check": "port_access", "ok": False, "message": exc.message,
                               "fix": str(exc.detail.get("fix", ""))})
        return checks

    # --------------------------------------------------------------------------- install

    def _install(
        self, request: InstallRequest, deadline: Deadline, steps: StepRecorder
    ) -> InstallReport:
        from hal.arduino import sketch
        from hal.model.analysis import analyze

        profile = self.profile
        with steps.step(STEP_VALIDATE) as info:
            report = analyze(request.model, max_bytes=profile.max_model_bytes, board=self.board)
            info.update(sha256=report.sha256, size_bytes=report.size_bytes,
                        ops=list(report.ops), arena_estimate_bytes=report.arena_estimate_bytes)
        with steps.step(STEP_FIT) as info:
            fit = fit_check(report, profile, request.arena_bytes)
            info.update(fit.to_dict())
            fit.raise_if_not_fit()
            hs_plan = hs_config = None
            if self.settings.hotswap:  # which path: hot-swap or compile+upload, and why
                hs_config = sketch.config_for(report, request.model, request,
                                              fit.arena_bytes, self.board)
                hs_plan = hotswap.plan(self, report, fit, len(hotswap.payload_for(hs_config)),
                                       deadline)
                info["hotswap"] = hs_plan.to_dict()
        if hs_plan is not None and hs_plan.path == hotswap.PATH_HOTSWAP:
            return hotswap.install(self, request, report, fit, hs_plan, hs_config, steps,
                                   deadline)
        arena = fit.arena_bytes
        deadline.check()

        with steps.step(STEP_RENDER) as info:
            config = sketch.config_for(report, request.model, request, arena, self.board)
            overrides = {}
            if self.settings.inference_period_ms is not None:
                overrides["inference_period_ms"] = self.settings.inference_period_ms
            if self.settings.status_period_ms is not None:
                overrides["status_period_ms"] = self.settings.status_period_ms
            if overrides:
                config = replace(config, **overrides)
            if hs_plan is not None and hs_plan.firmware == "hotswap":
                config = hotswap.firmware_config(config, hs_plan)
                arena = config.arena_bytes
            slot = BuildSlot(self._build_root(), self.board, self.device_id,
                             config.template_version, sketch.SKETCH_NAME)
            info["changed"] = sketch.render_sketch(config, slot.sketch_dir)
            info["sketch_dir"] = str(slot.sketch_dir)
        cli = self.cli()
        key = {
            "model_sha256": report.sha256,
            "board": self.board,
            "fqbn": self.fqbn,
            "template_version": config.template_version,
            "arena_bytes": arena,
            "sketch_sha256": slot.sketch_digest(),
            "tool": cli.describe(),
        }
        compiled = False
        record = slot.cached(key)
        if record is not None:
            result = result_from_record(record)
            steps.skip(STEP_COMPILE, "identical model, board and template already built",
                       build_path=str(slot.build_path), **result.sizes())
        else:
            with slot.shared_lock(key, deadline):
                record = slot.adopt_shared(key)
                if record is not None:
                    result = result_from_record(record)
                    steps.skip(STEP_COMPILE, "identical model, board and template already "
                               "built for another board", build_path=str(slot.build_path),
                               **result.sizes())
                else:
                    slot.invalidate()
                    with steps.step(STEP_COMPILE, build_path=str(slot.build_path)) as info:
                        result = cli.compile(
                            slot.sketch_dir, self.fqbn, slot.build_path,
                            deadline.sub(self.settings.compile_timeout_s,
                                         f"compile for {self.device_id}"),
                            build_cache_path=self._build_root() / "core-cache",
                            on_line=self._tool_line("compile"),
                        )
                        info.update(result.sizes())
                    slot.save(key, result)
                    slot.publish(key)
                    compiled = True
        with steps.step(STEP_FIT_BUILD) as info:
            info.update(check_build(result, profile))
        # The last point where a cancel leaves the board untouched.
        deadline.check()

        verified_record = {
            "model_sha256": report.sha256,
            "arena_bytes": arena,
            "template_version": config.template_version,
            "board": self.board,
            "fqbn": self.fqbn,
        }
        boot, port_info = self._upload_and_verify(request, report, slot, steps, deadline,
                                                  verified_record)
        return InstallReport(
            device_id=self.device_id,
            model_sha256=report.sha256,
            boot=to_dict(boot),
            arena_bytes=arena,
            compiled=compiled,
            steps=dict(steps.durations),
            detail={
                "fit": fit.to_dict(),
                "build": {**result.sizes(), "build_path": str(slot.build_path)},
                **port_info,
            },
        )

    def _tool_line(self, what: str):
        def on_line(line: str) -> None:
            log.debug("device=%s %s: %s", self.device_id, what, line[:300])

        return on_line

    def _upload_and_verify(
        self, request: InstallRequest, report: ModelReport, slot: BuildSlot,
        steps: StepRecorder, deadline: Deadline, verified_record: dict[str, Any],
    ) -> tuple[DeviceLine, dict[str, Any]]:
        serial = self.serial_number()
        with steps.step(STEP_UPLOAD) as info:
            port = self._upload_port(deadline)
            info.update(port=port.device, serial_number=serial)
            # Nothing has touched the board yet: the last cancellable moment.
            deadline.check()
            self._pause_observation()
            try:
                try:
                    # Shielded: a fresh cancel flag, only the upload's own deadline.
                    shield = Deadline(self.settings.upload_timeout_s,
                                      what=f"upload to {self.device_id}")
                    up = self.cli().upload(port.device, self.fqbn, slot.build_path, shield,
                                           on_line=self._tool_line("upload"))
                except HalError as exc:
                    raise self._upload_failure(exc, deadline) from None
                info["updated_upload_port"] = up.updated_port
            except BaseException:
                self._resume_observation()
                raise
        try:
            try:
                with steps.step(STEP_VERIFY) as info:
                    vdeadline = Deadline(self._boot_deadline_s(request),
                                         what=f"boot verification of {self.device_id}")
                    line, port_name = self._verify_boot(
                        report.sha256, up.updated_port, vdeadline,
                        arena_estimate_bytes=report.arena_estimate_bytes)
                    info.update(port=port_name, line=to_dict(line))
            except HalError as exc:
                # The new firmware is on the board but does not run the model: put the last
                # verified one back (shielded from the cancel flag like the upload), then
                # report the original failure with what the board runs now.
                exc.detail["rollback"] = self._after_failed_boot(exc, request, steps)
                if deadline.cancelled:
                    raise self._cancelled_after_upload(exc) from None
                raise
            self._keep_verified(slot, verified_record)
        finally:
            self._resume_observation()
        if deadline.cancelled:
            raise Cancelled(
                "cancel arrived during the upload, which was finished rather than left "
                "half-flashed; the board is verified on the new model",
                board_state="new_model_verified",
                model_sha256=report.sha256,
                boot=to_dict(line),
            )
        return line, {"port": port_name, "upload_port": port.device,
                      "updated_upload_port": up.updated_port, "serial_number": serial}

    def _cancelled_after_upload(self, exc: HalError) -> Cancelled:
        rollback = exc.detail.get("rollback") or {}
        if exc.code == "wrong_model":
            state = "old_model"
        elif rollback.get("ok"):
            state = "old_model_verified"
        else:
            state = "unknown"
        return Cancelled(
            f"cancel arrived during the upload, which was finished; then boot verification "
            f"failed: {exc.message}",
            board_state=state,
            rollback=rollback,
            error=exc.to_dict(),
        )

    # -------------------------------------------------------------------------- rollback

    def verified_store(self) -> VerifiedStore:
        """Where this device keeps the last build output that booted verified."""
        return VerifiedStore(self.context.device_dir(self.name, self.device_id))

    def _keep_verified(self, slot: BuildSlot, record: dict[str, Any]) -> None:
        """Remember the build that just booted verified, to roll back to later. A failure
        here does not undo a verified install: the previous verified image (still a working
        model) stays the rollback target, and the failure is logged."""
        try:
            self.verified_store().save(slot.outputs(), record)
            log.info("device=%s kept verified image of model %s", self.device_id,
                     record.get("model_sha256", "")[:16])
        except (OSError, ValueError) as exc:
            log.warning("device=%s could not keep the verified image: %s", self.device_id, exc)

    def _after_failed_boot(
        self, exc: HalError, request: InstallRequest, steps: StepRecorder
    ) -> dict[str, Any]:
        """What the board runs after the boot verification failed with ``exc`` (rolling back
        when the new firmware is there but does not run). Never raises: the original error
        is what the caller reports."""
        if exc.code == "wrong_model":
            return {"ok": True, "needed": False, "running_sha": exc.detail.get("running_sha"),
                    "reason": "the board still runs its old model: the new firmware did not "
                    "take, so nothing was rolled back"}
        if exc.code not in ROLLBACK_CODES:
            # port_vanished / permission_denied: the board cannot be reached to re-flash it.
            return {"ok": False, "needed": True,
                    "reason": f"not attempted after {exc.code}: the board cannot be reached"}
        try:
            return self._rollback(request, steps)
        except Exception as rexc:  # never hide the original error behind the rollback's
            err = as_hal_error(rexc)
            return {"ok": False, "needed": True, "reason": err.message, "error": err.to_dict()}

    def _rollback(self, request: InstallRequest, steps: StepRecorder) -> dict[str, Any]:
        """Re-upload the last verified image (1200-bps touch, re-enumeration by serial
        number, like any upload) and verify that its model boots again."""
        try:
            stored = self.verified_store().load()
        except ValueError as damage:
            reason = f"the last verified image is damaged and was not uploaded: {damage}"
            log.warning("device=%s %s", self.device_id, reason)
            steps.skip(STEP_ROLLBACK, reason)
            return {"ok": False, "needed": True, "reason": reason}
        if stored is None:
            reason = "no previously verified model"
            steps.skip(STEP_ROLLBACK, reason)
            return {"ok": False, "needed": True, "reason": reason}
        input_dir, record = stored
        sha = str(record["model_sha256"])
        fqbn = str(record.get("fqbn") or self.fqbn)
        try:
            with steps.step(STEP_ROLLBACK, model_sha256=sha, arena_bytes=record.get(
                    "arena_bytes"), template_version=record.get("template_version")) as info:
                # Shielded deadlines: a rollback that has started always finishes.
                port = self._upload_port(Deadline(self.settings.upload_timeout_s,
                                                  what=f"rollback of {self.device_id}"))
                info["port"] = port.device
                up = self.cli().upload(
                    port.device, fqbn, input_dir,
                    Deadline(self.settings.upload_timeout_s,
                             what=f"rollback upload to {self.device_id}"),
                    on_line=self._tool_line("rollback"))
                line, port_name = self._verify_boot(
                    sha, up.updated_port,
                    Deadline(self._boot_deadline_s(request),
                             what=f"rollback boot verification of {self.device_id}"),
                    arena_estimate_bytes=record.get("arena_bytes"))
                info.update(port=port_name, line=to_dict(line))
        except HalError as rexc:
            return {"ok": False, "needed": True, "model_sha256": sha,
                    "reason": f"the rollback failed: {rexc.message}", "error": rexc.to_dict()}
        log.info("device=%s rolled back to verified model %s", self.device_id, sha[:16])
        return {"ok": True, "needed": True, "running_sha": line.sha, "model_sha256": sha,
                "arena_bytes": record.get("arena_bytes"),
                "template_version": record.get("template_version"), "boot": to_dict(line)}

    def _upload_port(self, deadline: Deadline) -> discovery.PortInfo:
        """The port to upload to: the board found by its serial number; a configured port is
        used only when it belongs to this board (never another board's port)."""
        serial = self.serial_number()
        if serial is None:
            raise DeviceError(
                "device_not_found",
                f"cannot tell which board is on {self.settings.port}: no Nano 33 BLE with a "
                "serial number is listed there; configure serial_number",
                port=self.settings.port,
            )
        wait = deadline.sub(self.settings.reenumerate_timeout_s, "finding the board")
        port = discovery.wait_for_board(serial, wait, self._ports_dir(), mode=None,
                                        include_usb=self.include_usb)
        if port is None:
            deadline.check()
            raise DeviceError("device_not_found",
                              f"no Nano 33 BLE with serial number {serial} is attached",
                              serial_number=serial,
                              attached=[p.serial_number for p in discovery.list_boards(
                                  self._ports_dir(), include_usb=self.include_usb)])
        if self.settings.port and port.device != self.settings.port:
            owner = discovery.port_owner(self.settings.port, self._ports_dir(),
                                         include_usb=self.include_usb)
            if owner is not None and owner.serial_number != serial:
                log.warning("device=%s configured port %s belongs to board %s; using %s",
                            self.device_id, self.settings.port, owner.serial_number,
                            port.device)
        self._last_port = port.device
        return port

    def _upload_failure(self, exc: HalError, deadline: Deadline) -> HalError:
        """Classify a failed upload: the board gone -> port_vanished; cancelled meanwhile ->
        cancelled with the board's state."""
        serial = self.serial_number()
        # Looked at right away: a board that dropped off the bus mid-flash is reported as
        # such even if it re-appears (on its old firmware) a moment later.
        present = (discovery.find_board(serial, self._ports_dir(), mode=None,
                                        include_usb=self.include_usb)
                   if serial is not None else None)
        err: HalError = exc
        if present is None and exc.code in ("upload_failed", "timeout", "tool_failed"):
            err = DeviceError(
                "port_vanished",
                f"the board {serial} disappeared during the upload and has not come back",
                serial_number=serial,
                upload_error=exc.to_dict(),
            )
        if deadline.cancelled:
            return Cancelled(f"cancel arrived during the upload, which then failed: "
                             f"{err.message}", board_state="unknown", error=err.to_dict())
        return err

    # ---------------------------------------------------------------------- verification

    def _verify_boot(
        self, sha256: str, hint: str | None, deadline: Deadline,
        arena_estimate_bytes: int | None = None,
    ) -> tuple[DeviceLine, str]:
        """Wait for the boot or status line of the model ``sha256`` on the board's port."""
        serial = self.serial_number()
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
            port = self.locate("sketch") if serial else None
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
                        self._deliver(line)
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
                            raise _error_line_failure(line, arena_estimate_bytes)
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

    def _deliver(self, line: DeviceLine) -> None:
        self._recent.append(line)
        if isinstance(line, BootLine):
            self._last_boot = line
        if isinstance(line, (BootLine, StatusLine)):
            self._running_sha = line.sha
        observer = self._observer
        if observer is not None:
            observer.deliver(line)

    # ----------------------------------------------------------------------- observation

    def start_observing(self, sink: LineSink, on_error: ErrorSink | None = None) -> None:
        with self._obs_lock:
            if self._observer is not None and self._observer.is_alive():
                self._observer.sink, self._observer.on_error = sink, on_error
                return
            self._observer = _Observer(self, sink, on_error)
            self._observer.start()

    def stop_observing(self) -> None:
        with self._obs_lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()

    def _pause_observation(self) -> None:
        observer = self._observer
        if observer is not None:
            observer.pause()

    def _resume_observation(self) -> None:
        observer = self._observer
        if observer is not None:
            observer.resume()


def _is_tty(path: str) -> bool:
    """True when ``path`` exists and is a character device (a serial port or pty); the port
    is not opened (opening a serial port can reset a board)."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _error_line_failure(line: ErrorLine, arena_estimate_bytes: int | None) -> HalError:
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


def check_build(result: CompileResult, profile: BoardProfile) -> dict[str, Any]:
    """Check arduino-cli's section sizes against their maxima (and the RAM the stack and heap
    need beyond static data). Returns the numbers; raises ``FitError`` (``fit_flash`` /
    ``fit_ram``) with every number, or ``InfraError("tool_failed")`` when arduino-cli reported
    no sizes (an unchecked build is never uploaded)."""
    if result.text_bytes is None or result.data_bytes is None:
        raise InfraError(
            "tool_failed",
            "arduino-cli reported no section sizes for the build; refusing to upload a build "
            "whose fit is unchecked",
            compiler_out_tail=result.compiler_out[-1000:],
        )
    text_max = result.text_max or profile.flash_bytes
    data_max = result.data_max or profile.ram_bytes
    reserve = profile.ram_reserve_bytes
    numbers = {
        "text_bytes": result.text_bytes,
        "text_max": text_max,
        "data_bytes": result.data_bytes,
        "data_max": data_max,
        "ram_reserve_bytes": reserve,
        "sizes_from": result.sizes_from,
    }
    if text_max is not None and result.text_bytes > text_max:
        raise FitError(
            "fit_flash",
            f"the build's program ({result.text_bytes} B) exceeds the board's flash "
            f"({text_max} B) by {result.text_bytes - text_max} B",
            over_bytes=result.text_bytes - text_max,
            **numbers,
        )
    if data_max is not None and result.data_bytes + reserve > data_max:
        raise FitError(
            "fit_ram",
            f"static RAM {result.data_bytes} B + stack/heap reserve {reserve} B = "
            f"{result.data_bytes + reserve} B > {data_max} B: the board would hard-fault",
            over_bytes=result.data_bytes + reserve - data_max,
            **numbers,
        )
    return numbers


class _Observer(threading.Thread):
    """Reads the board's lines and hands them to the sink; survives the board vanishing
    (reports ``port_vanished``, then resumes when it is back, found again by serial number)
    and pauses while an install has the port."""

    def __init__(self, driver: Nano33BleDriver, sink: LineSink,
                 on_error: ErrorSink | None) -> None:
        super().__init__(name=f"observe-{driver.device_id}", daemon=True)
        self.driver = driver
        self.sink = sink
        self.on_error = on_error
        self._stop_ev = threading.Event()
        self._pause_req = threading.Event()
        self._released = threading.Event()
        self._released.set()

    def deliver(self, line: DeviceLine) -> None:
        try:
            self.sink(line)
        except Exception:  # a broken sink must not kill observation
            log.exception("device=%s line sink failed", self.driver.device_id)

    def _error(self, err: HalError) -> None:
        log.warning("device=%s observe: %s", self.driver.device_id, err)
        if self.on_error is not None:
            try:
                self.on_error(err)
            except Exception:
                log.exception("device=%s error sink failed", self.driver.device_id)

    def pause(self, timeout_s: float = 3.0) -> None:
        """Release the port (for an upload) and wait until the reader has let go."""
        self._pause_req.set()
        self._released.wait(timeout_s)

    def resume(self) -> None:
        self._pause_req.clear()

    def stop(self) -> None:
        self._stop_ev.set()
        if self is not threading.current_thread():
            self.join(timeout=3.0)

    def run(self) -> None:
        d = self.driver
        reported: str | None = None  # the error code last reported (report each state once)
        had_port = False
        while not self._stop_ev.is_set():
            if self._pause_req.is_set():
                self._released.set()
                self._stop_ev.wait(0.05)
                continue
            try:
                device = d._observe_target()
            except Exception as exc:
                self._error(as_hal_error(exc))
                self._stop_ev.wait(1.0)
                continue
            if device is None:
                if reported is None:
                    code = "port_vanished" if had_port else "device_not_found"
                    self._error(DeviceError(
                        code,
                        f"board {d.serial_number() or d.settings.port} "
                        + ("vanished" if had_port else "is not attached")
                        + "; observation resumes when it is back",
                        serial_number=d.serial_number(),
                    ))
                    reported = code
                self._stop_ev.wait(0.1)
                continue
            self._released.clear()
            if self._pause_req.is_set():
                self._released.set()
                continue
            try:
                link = PortLink.open(device)
            except HalError as exc:
                self._released.set()
                if exc.code != reported and exc.code != "port_vanished":
                    self._error(exc)
                    reported = exc.code
                self._stop_ev.wait(1.0 if exc.code == "permission_denied" else 0.1)
                continue
            if reported is not None:
                log.info("device=%s observe: port %s back", d.device_id, device)
            reported = None
            had_port = True
            splitter = LineSplitter()
            try:
                while not self._stop_ev.is_set() and not self._pause_req.is_set():
                    data = link.read(0.1)
                    for line in splitter.feed(data):
                        d._deliver(line)
            except HalError as exc:
                for line in splitter.flush():
                    d._deliver(line)
                self._error(exc)
                reported = exc.code
            finally:
                link.close()
                self._released.set()
