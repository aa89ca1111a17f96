"""The ``nano33ble`` driver: install a model on an Arduino Nano 33 BLE (Sense) with arduino-cli
and prove it booted; observe the board's lines and whether its sketch still lives.

The install is :meth:`hal.driver.Driver.install`'s skeleton; this driver fills in its phases
with these steps (:class:`hal.driver.StepRecorder`):

validate  ``validate``         analyse the model (``hal.model.analysis.analyze``).
fit       ``fit_check``        static fit against the board profile, in milliseconds, before
                               anything is compiled: a model that cannot fit never costs one.
prepare   ``render``           the firmware template into the device's build slot.
          ``compile``          ``arduino-cli compile`` -- or ``skipped`` when the identical
                               model, board, template and sketch were built already.
          ``fit_check_build``  arduino-cli's ``text``/``data`` sizes against their maxima: a
                               build that does not fit is never uploaded.
transfer  ``upload``           find the board by its USB serial number (never another board's
                               port), ``arduino-cli upload`` (touch, bootloader, reset).
verify    ``verify_boot``      the boot or status line with the model's hash (hal.arduino.boot).
rollback  ``rollback``         the last verified image flashed back (hal.arduino.flash).

The commit phase is ``transfer``: before it a cancel stops everything (arduino-cli's process
group is killed) and the board keeps its model; from it on the upload, the verification and
any rollback run to the end under their own deadlines (never a half-flashed board) and a
cancel is reported afterwards with what the board runs (``detail["board_state"]``).

Modules: ``settings`` (configuration), ``tools`` (host tool checks), ``boot`` (boot
verification), ``flash`` (build check, upload, rollback), ``observe`` (the serial observation
source with liveness), ``build_slot`` and ``verified`` (the build cache and the verified-image
store), ``cli`` (the arduino-cli adapter), ``discovery`` and ``serial_link`` (ports).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from hal.arduino import discovery, flash, hotswap, tools
from hal.arduino.boot import verify_boot
from hal.arduino.build_slot import BuildSlot, result_from_record
from hal.arduino.cli import ArduinoCli
from hal.arduino.observe import SerialSource, running_sha_of
from hal.arduino.serial_link import PortLink
from hal.arduino.settings import Nano33BleSettings
from hal.arduino.verified import VerifiedStore
from hal.boards import BoardProfile, fit_check, get_profile
from hal.deadline import Deadline
from hal.driver import (
    STEP_COMPILE,
    STEP_FIT,
    STEP_FIT_BUILD,
    STEP_RENDER,
    STEP_UPLOAD,
    STEP_VALIDATE,
    STEP_VERIFY,
    DeviceInfo,
    Discovered,
    Driver,
    DriverContext,
    DriverSettings,
    InstallContext,
    InstallRequest,
    RollbackOutcome,
    register_driver,
)
from hal.errors import DeviceError, HalError
from hal.protocol import BootLine, DeviceLine, to_dict

log = logging.getLogger(__name__)

__all__ = ["Nano33BleDriver", "Nano33BleSettings"]


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
        # What this driver learns about its board, written by install and observation
        # threads alike: one lock.
        self._state_lock = threading.Lock()
        self._serial_number: str | None = self.settings.serial_number
        self._running_sha: str | None = None
        self._last_boot: BootLine | None = None  # its "hs" says whether hot-swap is possible
        self._last_port: str | None = self.settings.port

    # ------------------------------------------------------------------ configuration hooks

    @property
    def fqbn(self) -> str:
        return self.settings.fqbn or self.profile.fqbn or "arduino:mbed_nano:nano33ble"

    @property
    def running_sha(self) -> str | None:
        """The model hash the board last announced (boot or status line)."""
        with self._state_lock:
            return self._running_sha

    @property
    def last_boot(self) -> BootLine | None:
        """The boot line the board last printed (its ``hotswap`` field: the capability)."""
        with self._state_lock:
            return self._last_boot

    def ports_dir(self) -> Path | None:
        """The virtual-ports directory this driver also looks in (None: USB only)."""
        return discovery.virtual_ports_dir(self.settings.virtual_ports_dir)

    def _cli_command(self) -> str | list[str]:
        return self.settings.arduino_cli or self.context.arduino_cli

    def _cli_env(self) -> dict[str, str]:
        ports = self.ports_dir()
        return {discovery.ENV_VIRTUAL_PORTS: str(ports)} if ports is not None else {}

    def cli(self) -> ArduinoCli:
        """The arduino-cli adapter this device uses."""
        return ArduinoCli(self._cli_command(), env=self._cli_env(), device_id=self.device_id)

    def _build_root(self) -> Path:
        return self.context.build_cache_dir or (self.context.state_dir / "build-cache")

    def boot_deadline_s(self, request: InstallRequest) -> float:
        return self.settings.boot_deadline_s or request.boot_deadline_s

    def tool_line(self, what: str):
        """A line sink for arduino-cli's output (debug log)."""
        def on_line(line: str) -> None:
            log.debug("device=%s %s: %s", self.device_id, what, line[:300])

        return on_line

    # ---------------------------------------------------------------------------- ports

    def serial_number(self) -> str | None:
        """The board's USB serial number (configured, or learnt from the configured port)."""
        if self._serial_number is None and self.settings.port:
            owner = discovery.port_owner(self.settings.port, self.ports_dir(),
                                         include_usb=self.include_usb)
            if owner is not None and owner.serial_number:
                self._serial_number = owner.serial_number
        return self._serial_number

    def locate(self, mode: str | None = "sketch") -> discovery.PortInfo | None:
        """The board's current port (by serial number), or None when it is not attached."""
        serial = self.serial_number()
        if serial is None:
            return None
        port = discovery.find_board(serial, self.ports_dir(), mode=mode,
                                    include_usb=self.include_usb)
        if port is not None:
            with self._state_lock:
                self._last_port = port.device
        return port

    def observe_target(self) -> str | None:
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
        allowed to open serial ports (hal.arduino.tools). Cached for 30 s; never raises."""
        return tools.tool_checks(cls.name, cls._tools_command(context),
                                 cls._tools_env(context))

    @classmethod
    def _tools_command(cls, context: DriverContext) -> str | list[str]:
        return context.arduino_cli

    @classmethod
    def _tools_env(cls, context: DriverContext) -> dict[str, str]:
        return {}

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
        detail: dict[str, Any] = {"fqbn": self.fqbn, "running_sha": self.running_sha}
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

    def _validate(self, ctx: InstallContext) -> None:
        from hal.model.analysis import analyze

        with ctx.steps.step(STEP_VALIDATE) as info:
            report = analyze(ctx.request.model, max_bytes=self.profile.max_model_bytes,
                             board=self.board)
            info.update(sha256=report.sha256, size_bytes=report.size_bytes,
                        ops=list(report.ops), arena_estimate_bytes=report.arena_estimate_bytes)
        ctx.sha256, ctx.data["report"] = report.sha256, report

    def _fit(self, ctx: InstallContext) -> None:
        with ctx.steps.step(STEP_FIT) as info:
            fit = fit_check(ctx.data["report"], self.profile, ctx.request.arena_bytes,
                            vectors=len(ctx.request.input_vectors), labels=ctx.request.labels,
                            camera=ctx.request.input_source == "camera")
            info.update(fit.to_dict())
            fit.raise_if_not_fit()
            ctx.data["fit"], ctx.arena_bytes = fit, fit.arena_bytes
            if self.settings.hotswap:  # which path: hot-swap or compile+upload, and why
                from hal.arduino import sketch

                config = sketch.config_for(ctx.data["report"], ctx.request.model, ctx.request,
                                           fit.arena_bytes, self.board)
                plan = hotswap.plan(self, ctx.data["report"], fit,
                                    len(hotswap.payload_for(config)), ctx.deadline,
                                    camera=config.input_source == "camera")
                info["hotswap"] = plan.to_dict()
                ctx.data.update(hs_plan=plan, hs_config=config)

    def _hot_swapping(self, ctx: InstallContext) -> bool:
        plan = ctx.data.get("hs_plan")
        return plan is not None and plan.path == hotswap.PATH_HOTSWAP

    def _prepare(self, ctx: InstallContext) -> None:
        """Render, compile (or reuse the build), and check the build's sizes."""
        from hal.arduino import sketch

        if self._hot_swapping(ctx):
            return hotswap.prepare(self, ctx)
        report, request, steps, deadline = (ctx.data["report"], ctx.request, ctx.steps,
                                            ctx.deadline)
        arena = ctx.arena_bytes
        with steps.step(STEP_RENDER) as info:
            config = sketch.config_for(report, request.model, request, arena, self.board)
            overrides = {}
            if self.settings.inference_period_ms is not None:
                overrides["inference_period_ms"] = self.settings.inference_period_ms
            if self.settings.status_period_ms is not None:
                overrides["status_period_ms"] = self.settings.status_period_ms
            if overrides:
                config = replace(config, **overrides)
            plan = ctx.data.get("hs_plan")
            if plan is not None and plan.firmware == "hotswap":  # the next install is fast
                config = hotswap.firmware_config(config, plan)
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
                            on_line=self.tool_line("compile"),
                        )
                        info.update(result.sizes())
                    slot.save(key, result)
                    slot.publish(key)
                    ctx.compiled = True
        with steps.step(STEP_FIT_BUILD) as info:
            info.update(flash.check_build(result, self.profile))
        ctx.data.update(slot=slot, result=result, verified_record={
            "model_sha256": report.sha256,
            "arena_bytes": arena,
            "template_version": config.template_version,
            "board": self.board,
            "fqbn": self.fqbn,
        })

    def _transfer(self, ctx: InstallContext) -> None:
        """The upload (commit phase: it runs to the end under its own deadline)."""
        if self._hot_swapping(ctx):
            return hotswap.transfer(self, ctx)
        slot: BuildSlot = ctx.data["slot"]
        timeout = self.settings.upload_timeout_s
        with ctx.steps.step(STEP_UPLOAD) as info:
            port = self.upload_port(ctx.shielded(timeout, f"finding {self.device_id}"))
            info.update(port=port.device, serial_number=self.serial_number())
            try:
                up = flash.upload(self, port, self.fqbn, slot.build_path,
                                  ctx.shielded(timeout, f"upload to {self.device_id}"),
                                  "upload", ctx)
            except HalError as exc:
                raise flash.upload_failure(self, exc) from None
            info["updated_upload_port"] = up.updated_port
        ctx.transferred = True
        ctx.data.update(port=port, upload=up)

    def _verify(self, ctx: InstallContext) -> None:
        if self._hot_swapping(ctx):
            return hotswap.verify(self, ctx)
        report, up, port = ctx.data["report"], ctx.data["upload"], ctx.data["port"]
        with ctx.steps.step(STEP_VERIFY) as info:
            line, port_name = verify_boot(
                self, report.sha256, up.updated_port,
                ctx.shielded(self.boot_deadline_s(ctx.request),
                             f"boot verification of {self.device_id}"),
                arena_estimate_bytes=report.arena_estimate_bytes)
            info.update(port=port_name, line=to_dict(line))
        flash.keep_verified(self, ctx.data["slot"], ctx.data["verified_record"])
        ctx.boot = to_dict(line)
        ctx.detail = {
            "fit": ctx.data["fit"].to_dict(),
            "build": {**ctx.data["result"].sizes(),
                      "build_path": str(ctx.data["slot"].build_path)},
            "port": port_name, "upload_port": port.device,
            "updated_upload_port": up.updated_port, "serial_number": self.serial_number(),
        }

    def _rollback(self, ctx: InstallContext, error: HalError) -> RollbackOutcome:
        if self._hot_swapping(ctx):
            return hotswap.rollback(self, ctx, error)  # a slot switch, never a reflash
        return flash.rollback(self, ctx, error)

    def _after_install(self, ctx: InstallContext) -> None:
        hotswap.close(ctx)
        self.resume_observation()

    def verified_store(self) -> VerifiedStore:
        """Where this device keeps the last build output that booted verified."""
        return VerifiedStore(self.context.device_dir(self.name, self.device_id))

    def has_verified_model(self) -> bool:
        """A model of ours booted verified on this board at some point."""
        return self.verified_store().load_record() is not None

    # ---------------------------------------------------------------------------- ports

    def upload_port(self, deadline: Deadline) -> discovery.PortInfo:
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
        port = discovery.wait_for_board(serial, wait, self.ports_dir(), mode=None,
                                        include_usb=self.include_usb)
        if port is None:
            deadline.check()
            raise DeviceError("device_not_found",
                              f"no Nano 33 BLE with serial number {serial} is attached",
                              serial_number=serial,
                              attached=[p.serial_number for p in discovery.list_boards(
                                  self.ports_dir(), include_usb=self.include_usb)])
        if self.settings.port and port.device != self.settings.port:
            owner = discovery.port_owner(self.settings.port, self.ports_dir(),
                                         include_usb=self.include_usb)
            if owner is not None and owner.serial_number != serial:
                log.warning("device=%s configured port %s belongs to board %s; using %s",
                            self.device_id, self.settings.port, owner.serial_number,
                            port.device)
        with self._state_lock:
            self._last_port = port.device
        return port

    # ----------------------------------------------------------------------- observation

    def deliver_line(self, line: DeviceLine) -> None:
        """A line read from the board (observation or boot verification)."""
        sha = running_sha_of(line)
        if sha is not None:
            with self._state_lock:
                self._running_sha = sha
                if isinstance(line, BootLine):
                    self._last_boot = line
        loop = self._observation
        if loop is not None:
            loop.deliver(line)

    def _observation_source(self) -> SerialSource:
        return SerialSource(self)

    def pause_observation(self, timeout_s: float) -> bool:
        """Ask the observation to release the port; True once it did (or none runs)."""
        loop = self._observation
        return True if loop is None else loop.pause(timeout_s)

    def resume_observation(self) -> None:
        loop = self._observation
        if loop is not None:
            loop.resume()


def _is_tty(path: str) -> bool:
    """True when ``path`` exists and is a character device (a serial port or pty); the port
    is not opened (opening a serial port can reset a board)."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
