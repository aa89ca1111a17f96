"""The ``virtual-nano33ble`` driver: the real ``nano33ble`` driver, unchanged, pointed at a
virtual board (:mod:`hal.virtual.board`) it starts for itself and at the stand-in arduino-cli
(:mod:`hal.virtual.arduino_cli`).

Everything the real driver does -- analysis, the three fit checks, rendering, the build slot
and its compile cache, finding the board by serial number, the upload, boot verification,
observation -- runs as is; only the tool command, the port directory and the board process
differ. Configure it in the bridge with ``driver = "virtual-nano33ble"`` and optionally a
``fault`` (``never_boot``, ``old_model``, ``vanish_on_upload``, ``permission_denied``,
``garbage``, ``flood``), or ``silent_models`` (the firmware of those models hard-faults at
boot while every other image boots: a failed install and its rollback on one board).
With ``hotswap = true`` it compiles the hot-swap firmware and hot-swaps later models
(:mod:`hal.arduino.hotswap`); ``hotswap_faults`` and ``hotswap_real_timing`` configure the
board's slots, ``timing = "real"`` gives the stand-in arduino-cli real-world durations.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hal.arduino import discovery
from hal.arduino.driver import Nano33BleDriver
from hal.arduino.settings import Nano33BleSettings
from hal.deadline import Deadline
from hal.driver import Discovered, DriverContext, DriverSettings, register_driver
from hal.errors import InfraError
from hal.virtual.arduino_cli import ENV as CLI_ENV

log = logging.getLogger(__name__)

Fault = Literal["never_boot", "old_model", "vanish_on_upload", "permission_denied", "garbage",
                "flood"]
_BOARD_START_S = 15.0


def stand_in_cli_command() -> list[str]:
    """The argv prefix that runs the stand-in arduino-cli with this interpreter."""
    return [sys.executable, "-m", "hal.virtual.arduino_cli"]


def default_serial_number(device_id: str) -> str:
    """A stable USB serial number for a virtual board, derived from its device id."""
    return "VN33" + hashlib.sha256(device_id.encode()).hexdigest()[:12].upper()


class VirtualNano33BleSettings(Nano33BleSettings):
    """Settings of a virtual board (plus every ``nano33ble`` setting)."""

    serial_number: str | None = Field(None, min_length=1, max_length=64,
                                      pattern=r"^[A-Za-z0-9_-]+$",
                                      description="default: derived from the device id")
    fault: Fault | None = Field(None, description="make the board misbehave on purpose: "
                                "never_boot, old_model, vanish_on_upload, permission_denied, "
                                "garbage or flood")
    silent_models: list[str] = Field(
        default_factory=list, max_length=16,
        description="model sha256 prefixes (8-64 hex) whose firmware hard-faults at boot")
    inference_period_ms: int | None = Field(200, ge=0, le=3_600_000,
                                            description="ms between inferences on the board "
                                            "(0: back to back)")
    status_period_ms: int | None = Field(1000, ge=100, le=3_600_000,
                                         description="ms between status lines")
    rename_on_touch: bool = Field(False, description="re-appear under a new port name after "
                                  "each upload, as some hosts do")
    compile_delay_s: float = Field(0.0, ge=0, le=600,
                                   description="seconds the stand-in compile takes (simulated)")
    upload_kbps: float = Field(0.0, ge=0, le=1_000_000,
                               description="throttle the flash write (0: as fast as possible)")
    host_wait_s: float = Field(2.0, ge=0, le=60,
                               description="seconds the sketch waits for the host to open the "
                               "port before printing")
    cli_format: str = Field("1.x", pattern=r"^[01]\.[0-9x]+$",
                            description="arduino-cli JSON format the stand-in speaks")
    hotswap: bool = Field(False, description="as for nano33ble, but off by default so that "
                          "the virtual board keeps today's exact-ops firmware unless asked")
    hotswap_faults: list[str] = Field(
        default_factory=list, max_length=16,
        description="hot-swap faults of the board: drop_chunk:N, drop_chunks:N, crc_error:N, "
        "crc_errors:N, power_cut:N, alloc_fail:SHA_PREFIX")
    hotswap_real_timing: bool = Field(False, description="slot writes take the nRF52840's "
                                      "page erase and word write times")
    timing: Literal["fast", "real"] = Field(
        "fast", description="real: the stand-in compile and upload take real-world durations "
        "(warm mbed compile, bossac's ~25 KB/s) unless compile_delay_s / upload_kbps are set")

    @field_validator("hotswap_faults")
    @classmethod
    def _faults(cls, value: list[str]) -> list[str]:
        from hal.virtual.hotswap_device import parse_fault

        for spec in value:
            parse_fault(spec)
        return value

    @field_validator("silent_models")
    @classmethod
    def _hex_prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not re.fullmatch(r"[0-9a-fA-F]{8,64}", prefix):
                raise ValueError(f"{prefix!r} is not a sha256 prefix of 8-64 hex digits")
        return [p.lower() for p in value]

    @model_validator(mode="after")
    def _needs_identity(self) -> VirtualNano33BleSettings:
        return self  # the serial number defaults to one derived from the device id


@register_driver("virtual-nano33ble")
class VirtualNano33BleDriver(Nano33BleDriver):
    """A Nano 33 BLE driver whose board is a local virtual board process."""

    Settings: ClassVar[type[DriverSettings]] = VirtualNano33BleSettings
    include_usb: ClassVar[bool] = False

    settings: VirtualNano33BleSettings

    def __init__(self, device_id: str, settings: DriverSettings, context: DriverContext) -> None:
        super().__init__(device_id, settings, context)
        self._serial_number = self.settings.serial_number or default_serial_number(device_id)
        self._board_dir = context.device_dir(self.name, device_id)
        self._ports = Path(context.state_dir) / "virtual-ports"
        self._ports.mkdir(parents=True, exist_ok=True)
        self._proc_lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._start_board()

    # -- hooks of the real driver ------------------------------------------------------

    def ports_dir(self) -> Path | None:
        return self._ports

    def _cli_command(self) -> str | list[str]:
        return self.settings.arduino_cli or stand_in_cli_command()

    def _cli_env(self) -> dict[str, str]:
        return {
            discovery.ENV_VIRTUAL_PORTS: str(self._ports),
            f"{CLI_ENV}_COMPILE_DELAY_S": str(self.settings.compile_delay_s),
            f"{CLI_ENV}_UPLOAD_KBPS": str(self.settings.upload_kbps),
            f"{CLI_ENV}_TIMING": self.settings.timing,
            f"{CLI_ENV}_FORMAT": self.settings.cli_format,
        }

    def upload_port(self, deadline: Deadline) -> discovery.PortInfo:
        self.ensure_board(deadline)
        return super().upload_port(deadline)

    @classmethod
    def _tools_command(cls, context: DriverContext) -> str | list[str]:
        return stand_in_cli_command()

    @classmethod
    def check_tools(cls, context: DriverContext) -> dict[str, Any]:
        result = dict(super().check_tools(context))
        checks = list(result.get("checks", []))
        # Located, not imported: the import (numpy included) would cost the daemon ~17 MB;
        # the board process imports it when it boots an image.
        try:
            found = importlib.util.find_spec("tflite_micro") is not None
        except (ImportError, ValueError):
            found = False
        checks.append({"check": "tflite_micro", "ok": found,
                       "message": "installed (imported by the board process)" if found
                       else "tflite_micro is not installed",
                       "fix": "" if found
                       else "pip install 'tinyml-bridge[analysis]' (x86_64 only)"})
        checks = [c for c in checks if c["check"] != "serial_permission"]  # ptys are ours
        result["checks"] = checks
        result["available"] = all(c["ok"] for c in checks)
        return result

    @classmethod
    def discover(cls, context: DriverContext) -> list[Discovered]:
        return []  # virtual boards exist only when configured

    # -- the board process -------------------------------------------------------------

    def _start_board(self) -> None:
        with self._proc_lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            s = self.settings
            argv = [
                sys.executable, "-m", "hal.virtual.board",
                "--serial-number", self._serial_number,
                "--ports-dir", str(self._ports),
                "--state-dir", str(self._board_dir),
                "--host-wait-s", str(s.host_wait_s),
                "--exit-with-parent", "-v",
            ]
            if s.fault:
                argv += ["--fault", s.fault]
            if s.rename_on_touch:
                argv.append("--rename-on-touch")
            for prefix in s.silent_models:
                argv += ["--silent-model", prefix]
            for spec in s.hotswap_faults:
                argv += ["--hotswap-fault", spec]
            if s.hotswap_real_timing:
                argv.append("--hotswap-real-timing")
            logf = open(self._board_dir / "board.log", "ab")  # noqa: SIM115 (owned by Popen)
            try:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                    start_new_session=True,
                )
            finally:
                logf.close()
            log.info("device=%s started virtual board sn=%s pid=%d fault=%s", self.device_id,
                     self._serial_number, self._proc.pid, s.fault)

    def ensure_board(self, deadline: Deadline) -> None:
        """Wait (within ``deadline`` and at most 15 s) until the board process has published
        its port; restart it if it died."""
        if self._proc is None or self._proc.poll() is not None:
            self._start_board()
        wait = deadline.sub(_BOARD_START_S, "virtual board start")
        port = discovery.wait_for_board(self._serial_number, wait, self._ports, mode=None,
                                        include_usb=False, poll_s=0.02)
        if port is None:
            deadline.check()
            raise InfraError(
                "unavailable",
                f"the virtual board {self._serial_number} did not publish its port",
                exit_code=self._proc.poll() if self._proc else None,
                log_tail=self._log_tail(),
            )

    def _log_tail(self) -> str:
        try:
            return (self._board_dir / "board.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    @property
    def board_pid(self) -> int | None:
        """The virtual board process id (for tests and demos)."""
        return self._proc.pid if self._proc else None

    def close(self) -> None:
        super().close()
        with self._proc_lock:
            proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
