"""Flashing a Nano 33 BLE: the build-size check before any upload, the upload itself (only
after the observation confirmed it released the port), the classification of a failed upload,
the verified-image store, and the rollback to the last verified image.

Rollback runs only when boot verification failed with the new firmware on the board but not
running (``alloc_failed``, ``boot_silent``, ``device_error``): the last *verified* build is
uploaded again the same way and its boot verified. ``wrong_model`` needs none (the old
firmware still runs); after ``port_vanished`` / ``permission_denied`` the board cannot be
reached. Every outcome is a :class:`hal.driver.RollbackOutcome`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal.arduino import discovery
from hal.arduino.boot import verify_boot
from hal.arduino.build_slot import BuildSlot
from hal.arduino.cli_output import CompileResult, UploadResult
from hal.boards import BoardProfile
from hal.deadline import Deadline
from hal.driver import STEP_ROLLBACK, InstallContext, RollbackOutcome
from hal.errors import DeviceError, FitError, HalError, InfraError, as_hal_error
from hal.protocol import to_dict

if TYPE_CHECKING:
    from hal.arduino.driver import Nano33BleDriver

log = logging.getLogger(__name__)

# Boot failures after which the new firmware is on the board but does not run the model.
ROLLBACK_CODES = frozenset({"alloc_failed", "boot_silent", "device_error"})
# How long the observation may take to let go of the port before an upload.
RELEASE_TIMEOUT_S = 3.0


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


def upload(driver: Nano33BleDriver, port: discovery.PortInfo, fqbn: str, input_dir: Path,
           deadline: Deadline, what: str, ctx: InstallContext | None = None) -> UploadResult:
    """Upload ``input_dir`` to ``port``. The observation is paused first and the upload starts
    only once it confirmed it released the port; otherwise nothing is uploaded and the
    install fails with ``unavailable`` (the board untouched). Marks ``ctx`` as flashing the
    moment the tool starts. The caller resumes the observation."""
    if not driver.pause_observation(RELEASE_TIMEOUT_S):
        raise InfraError(
            "unavailable",
            f"the observation of {driver.device_id} did not release {port.device} within "
            f"{RELEASE_TIMEOUT_S} s; nothing was uploaded",
            port=port.device, release_timeout_s=RELEASE_TIMEOUT_S)
    if ctx is not None:
        ctx.data["upload_started"] = True
    return driver.cli().upload(port.device, fqbn, input_dir, deadline,
                               on_line=driver.tool_line(what))


def upload_failure(driver: Nano33BleDriver, exc: HalError) -> HalError:
    """Classify a failed upload: the board gone -> port_vanished."""
    serial = driver.serial_number()
    # Looked at right away: a board that dropped off the bus mid-flash is reported as
    # such even if it re-appears (on its old firmware) a moment later.
    present = (discovery.find_board(serial, driver.ports_dir(), mode=None,
                                    include_usb=driver.include_usb)
               if serial is not None else None)
    if present is None and exc.code in ("upload_failed", "timeout", "tool_failed"):
        return DeviceError(
            "port_vanished",
            f"the board {serial} disappeared during the upload and has not come back",
            serial_number=serial,
            upload_error=exc.to_dict(),
        )
    return exc


def keep_verified(driver: Nano33BleDriver, slot: BuildSlot, record: dict[str, Any]) -> None:
    """Remember the build that just booted verified, to roll back to later. A failure here
    does not undo a verified install: the previous verified image (still a working model)
    stays the rollback target, and the failure is logged."""
    try:
        driver.verified_store().save(slot.outputs(), record)
        log.info("device=%s kept verified image of model %s", driver.device_id,
                 record.get("model_sha256", "")[:16])
    except (OSError, ValueError) as exc:
        log.warning("device=%s could not keep the verified image: %s", driver.device_id, exc)


def rollback(driver: Nano33BleDriver, ctx: InstallContext, exc: HalError) -> RollbackOutcome:
    """What the board runs after ``exc`` (rolling back when the new firmware is there but
    does not run). Never raises: the original error is what the install reports."""
    if not ctx.data.get("upload_started"):
        return RollbackOutcome.untouched(f"the upload never started ({exc.code}): the board "
                                         "keeps its firmware")
    if exc.code == "wrong_model":
        running = exc.detail.get("running_sha")
        return RollbackOutcome(
            needed=False, attempted=False, verified=running is not None,
            running_sha256=str(running) if running else None,
            reason="the board still runs its old model: the new firmware did not take, so "
            "nothing was rolled back")
    if exc.code not in ROLLBACK_CODES:
        return RollbackOutcome(
            needed=True, attempted=False, verified=False, running_sha256=None,
            reason=f"not attempted after {exc.code}: the board cannot be reached")
    try:
        return _reflash_verified(driver, ctx)
    except Exception as rexc:  # never hide the original error behind the rollback's
        err = as_hal_error(rexc)
        return RollbackOutcome(needed=True, attempted=True, verified=False,
                               running_sha256=None, reason=err.message, error=err.to_dict())


def _reflash_verified(driver: Nano33BleDriver, ctx: InstallContext) -> RollbackOutcome:
    """Re-upload the last verified image (1200-bps touch, re-enumeration by serial number,
    like any upload) and verify that its model boots again."""
    steps = ctx.steps
    try:
        stored = driver.verified_store().load()
    except ValueError as damage:
        reason = f"the last verified image is damaged and was not uploaded: {damage}"
        log.warning("device=%s %s", driver.device_id, reason)
        steps.skip(STEP_ROLLBACK, reason)
        return RollbackOutcome(needed=True, attempted=False, verified=False,
                               running_sha256=None, reason=reason)
    if stored is None:
        reason = "no previously verified model"
        steps.skip(STEP_ROLLBACK, reason)
        return RollbackOutcome(needed=True, attempted=False, verified=False,
                               running_sha256=None, reason=reason)
    input_dir, record = stored
    sha = str(record["model_sha256"])
    fqbn = str(record.get("fqbn") or driver.fqbn)
    timeout = driver.settings.upload_timeout_s
    try:
        with steps.step(STEP_ROLLBACK, model_sha256=sha, arena_bytes=record.get(
                "arena_bytes"), template_version=record.get("template_version")) as info:
            # Shielded deadlines: a rollback that has started always finishes.
            port = driver.upload_port(ctx.shielded(timeout, f"rollback of {driver.device_id}"))
            info["port"] = port.device
            up = upload(driver, port, fqbn, input_dir,
                        ctx.shielded(timeout, f"rollback upload to {driver.device_id}"),
                        "rollback")
            line, port_name = verify_boot(
                driver, sha, up.updated_port,
                ctx.shielded(driver.boot_deadline_s(ctx.request),
                             f"rollback boot verification of {driver.device_id}"),
                arena_estimate_bytes=record.get("arena_bytes"))
            info.update(port=port_name, line=to_dict(line))
    except HalError as rexc:
        return RollbackOutcome(needed=True, attempted=True, verified=False,
                               running_sha256=None,
                               reason=f"the rollback to {sha[:16]} failed: {rexc.message}",
                               error=rexc.to_dict())
    log.info("device=%s rolled back to verified model %s", driver.device_id, sha[:16])
    return RollbackOutcome(needed=True, attempted=True, verified=True, running_sha256=sha,
                           reason=f"the previously verified model {sha[:16]} was flashed "
                           "back and booted", boot=to_dict(line))
