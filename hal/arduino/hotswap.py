"""Hot-swap installs on a Nano 33 BLE: the decision between hot-swap and compile+upload, the
hot-swap firmware's configuration, and the install that streams a model into a flash slot of
the running firmware (steps ``hotswap_transfer`` and ``verify_boot``).

The decision (:func:`plan`) is made after the static fit check, per model:

* hot-swap when the device setting ``hotswap`` is true, the board advertises the capability
  (its boot line's ``hs`` object, or a HELLO answer), the model's ops are in the board's op
  set, and the model's slot payload and arena fit the board's slot and arena;
* otherwise compile and upload -- of the **hot-swap firmware** (op set = the configured
  families plus the model's ops, arena = the larger of the configured and the model's), so
  that the next install can be hot-swapped; of the exact-ops firmware of before when the
  setting is false or the hot-swap firmware would not fit.

The fit report (step ``fit_check``, key ``hotswap``) says which path was chosen and why.
A failed hot-swap never reflashes: the firmware falls back to the previous slot by itself
when the new model fails to allocate or faults at boot, and otherwise the host switches the
slot back (ACTIVATE of the previous slot), both verified by the previous model's boot line.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from hal.arduino import hotswap_protocol as hp
from hal.arduino.hotswap_link import HotswapSession, capability_from_hello
from hal.arduino.serial_link import PortLink
from hal.boards import FitResult
from hal.deadline import Deadline
from hal.driver import STEP_ROLLBACK, STEP_VERIFY, InstallReport, InstallRequest, StepRecorder
from hal.errors import DeviceError, HalError, as_hal_error
from hal.model.report import ModelReport
from hal.protocol import BootLine, to_dict

if TYPE_CHECKING:
    from hal.arduino.driver import Nano33BleDriver
    from hal.arduino.sketch import SketchConfig

log = logging.getLogger(__name__)

STEP_HOTSWAP = "hotswap_transfer"
PATH_HOTSWAP = "hotswap"
PATH_COMPILE = "compile_upload"


@dataclass(frozen=True)
class Plan:
    """The install path for one model, with the reason and the numbers behind it."""

    path: str  # PATH_HOTSWAP or PATH_COMPILE
    firmware: str  # what a compile builds: "hotswap" or "exact_ops" (the template of before)
    reason: str
    ops: tuple[str, ...] = ()  # the hot-swap firmware's op set
    arena_bytes: int = 0  # the hot-swap firmware's arena
    slot_bytes: int = 0
    capability: dict[str, Any] | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ops"] = list(self.ops)
        return out


def payload_for(config: SketchConfig) -> bytes:
    """The slot payload of a model: the flatbuffer, its labels and input vectors exactly as
    the firmware copies them into the input tensor."""
    from hal.arduino import sketch

    return hp.SlotPayload(model=config.model, labels=config.labels,
                          vectors=sketch.input_tensor_bytes(config)).pack()


def firmware_config(config: SketchConfig, plan_: Plan) -> SketchConfig:
    """The sketch configuration of the hot-swap firmware compiled with ``config``'s model."""
    return replace(config, hotswap=True, ops=plan_.ops, arena_bytes=plan_.arena_bytes,
                   slot_bytes=plan_.slot_bytes)


def _firmware(driver: Nano33BleDriver, report: ModelReport, fit: FitResult
              ) -> tuple[str, tuple[str, ...], int, str]:
    """(firmware kind, op set, arena, reason) of the firmware a compile would build."""
    s, prof = driver.settings, driver.profile
    if not s.hotswap:
        return "exact_ops", (), 0, "the device setting hotswap is false"
    if not prof.hotswap_slot_bytes:
        return "exact_ops", (), 0, f"board {prof.name} has no hot-swap firmware"
    try:
        ops = tuple(sorted(set(hp.op_set(tuple(s.hotswap_ops))) | set(report.ops)))
    except hp.ProtocolError as exc:
        return "exact_ops", (), 0, f"the op set does not fit the firmware: {exc}"
    if len(ops) > hp.MAX_OPSET:
        return "exact_ops", (), 0, (f"op set plus the model's ops are {len(ops)} ops, over "
                                    f"{hp.MAX_OPSET}")
    arena = max(s.hotswap_arena_bytes or prof.hotswap_arena_bytes, fit.arena_bytes)
    if prof.ram_bytes is not None and (prof.baseline_ram_bytes + arena + prof.ram_reserve_bytes
                                       > prof.ram_bytes):
        arena = fit.arena_bytes  # the configured arena does not fit: the model's own
    extra_ops = max(0, len(ops) - len(report.ops))
    flash = (fit.flash_needed_bytes + extra_ops * prof.hotswap_flash_per_op_bytes
             + 2 * prof.hotswap_slot_bytes)
    if prof.flash_bytes is not None and flash > prof.flash_bytes:
        return "exact_ops", (), 0, (f"the hot-swap firmware ({flash} B with two slots of "
                                    f"{prof.hotswap_slot_bytes} B) would not fit the "
                                    f"{prof.flash_bytes} B flash")
    return "hotswap", ops, arena, ""


def ask_capability(driver: Nano33BleDriver, deadline: Deadline) -> hp.Capability | None:
    """The board's hot-swap capability from a HELLO (one try, 0.5 s): None when its
    firmware does not answer (not the hot-swap variant) or the board is not there."""
    port = driver.locate("sketch")
    if port is None:
        return None
    driver._pause_observation()
    try:
        with PortLink.open(port.device) as link:
            reply = HotswapSession(link, driver._deliver, deadline.sub(2.0, "hot-swap hello"),
                                   tries=1).hello()
    except HalError as exc:
        log.info("device=%s hot-swap hello failed: %s", driver.device_id, exc)
        return None
    finally:
        driver._resume_observation()
    if reply is None:
        return None
    try:
        return capability_from_hello(reply)
    except hp.ProtocolError as exc:
        log.warning("device=%s malformed hot-swap hello: %s", driver.device_id, exc)
        return None


def plan(driver: Nano33BleDriver, report: ModelReport, fit: FitResult, payload_bytes: int,
         deadline: Deadline) -> Plan:
    """Hot-swap or compile+upload for this model on this board, and why."""
    kind, ops, arena, why = _firmware(driver, report, fit)
    base = {"firmware": kind, "ops": ops, "arena_bytes": arena,
            "slot_bytes": driver.profile.hotswap_slot_bytes if kind == "hotswap" else 0}
    if not driver.settings.hotswap:
        return Plan(PATH_COMPILE, reason=why, **base)
    boot = driver._last_boot
    cap = None
    if boot is None or boot.hotswap is not None:  # never seen a boot line, or a hot-swap one
        cap = ask_capability(driver, deadline)
    if cap is None:
        return Plan(PATH_COMPILE, reason="the board does not advertise hot-swap (its firmware "
                    "is not the hot-swap variant, or it did not answer)"
                    + (f"; and {why}" if why else ""), **base)
    numbers = {"payload_bytes": payload_bytes, "slot_capacity": hp.slot_capacity(
        cap.slot_bytes), "arena_needed": fit.arena_bytes, "arena_bytes": cap.arena_bytes}
    capd = {**cap.to_wire(), "arena": cap.arena_bytes, "running_sha": cap.extra.get("sha")}
    missing = sorted(set(report.ops) - set(cap.ops))
    reason = ""
    if missing:
        reason = f"ops not in the board's op set: {', '.join(missing)}"
    elif payload_bytes > hp.slot_capacity(cap.slot_bytes):
        reason = (f"the model's slot payload ({payload_bytes} B) exceeds the slot "
                  f"({hp.slot_capacity(cap.slot_bytes)} B)")
    elif fit.arena_bytes > cap.arena_bytes:
        reason = (f"the model needs an arena of {fit.arena_bytes} B, the firmware has "
                  f"{cap.arena_bytes} B")
    if reason:
        return Plan(PATH_COMPILE, reason=reason, capability=capd,
                    numbers={**numbers, "missing_ops": missing}, **base)
    return Plan(PATH_HOTSWAP, reason="the board's hot-swap firmware has the model's ops, and "
                "its slot and arena fit the model", capability=capd, numbers=numbers, **base)


# ------------------------------------------------------------------------------ install


def install(driver: Nano33BleDriver, request: InstallRequest, report: ModelReport,
            fit: FitResult, plan_: Plan, config: SketchConfig, steps: StepRecorder,
            deadline: Deadline) -> InstallReport:
    """Stream the model into the board's free slot, switch to it and verify its boot."""
    payload = payload_for(config)
    cap = plan_.capability or {}
    previous = (int(cap.get("slot", hp.BUILTIN_SLOT)), str(cap.get("running_sha") or ""))
    port = driver.locate("sketch")
    if port is None:
        raise DeviceError("device_not_found", f"board {driver.serial_number()} is not attached",
                          serial_number=driver.serial_number())
    driver._pause_observation()
    try:
        try:
            link = PortLink.open(port.device)
        except HalError as exc:
            exc.detail["rollback"] = _unchanged(previous, "the port did not open")
            raise
        with link:
            session = HotswapSession(link, driver._deliver, deadline)
            with steps.step(STEP_HOTSWAP, port=port.device) as info:
                try:
                    slot = session.send(payload, len(config.model), fit.arena_bytes)
                except HalError as exc:
                    info.update(session.stats.to_dict())
                    exc.detail["rollback"] = _after_transfer_failure(driver, previous, exc)
                    raise
                info.update(slot=slot, **session.stats.to_dict())
            deadline.check()  # the last moment a cancel leaves the board as it was
            line = _activate_and_verify(driver, session, request, report, slot, previous,
                                        steps)
    finally:
        driver._resume_observation()
    return InstallReport(
        device_id=driver.device_id, model_sha256=report.sha256, boot=to_dict(line),
        arena_bytes=int(cap.get("arena") or plan_.arena_bytes), compiled=False,
        steps=dict(steps.durations),
        detail={"path": PATH_HOTSWAP, "fit": fit.to_dict(), "hotswap": {
            "slot": slot, "previous_slot": previous[0], **session.stats.to_dict()},
            "port": port.device, "serial_number": driver.serial_number()})


def _unchanged(previous: tuple[int, str], why: str, verified: bool = False) -> dict:
    return {"ok": verified, "attempted": False, "needed": False, "verified": verified,
            "running_sha": previous[1][:16] or None, "slot": previous[0],
            "reason": f"{why}: the board was not switched and keeps running its model"}


def _after_transfer_failure(driver: Nano33BleDriver, previous: tuple[int, str],
                            exc: HalError) -> dict:
    """What runs after a failed transfer (the running model was never stopped; after a
    power cut the board reboots it): asked with a HELLO when the board answers."""
    cap = ask_capability(driver, Deadline(6.0, what="hot-swap check after a failure"))
    if cap is None and exc.code == "port_vanished":  # power cut: give the board time to boot
        Deadline(3.0).wait(2.0)
        cap = ask_capability(driver, Deadline(6.0, what="hot-swap check after a failure"))
    if cap is None:
        return {**_unchanged(previous, f"the transfer failed ({exc.code})"), "verified": False,
                "ok": False, "reason": "the transfer failed and the board did not answer "
                "afterwards: what it runs is unknown"}
    sha = str(cap.extra.get("sha") or "")
    same = bool(previous[1]) and sha[:16] == previous[1][:16]
    out = _unchanged((cap.slot, sha), f"the transfer failed ({exc.code})", verified=same)
    if not same:
        out["reason"] = f"the transfer failed ({exc.code}); the board runs {sha[:16]}"
    return out


def _activate_and_verify(driver: Nano33BleDriver, session: HotswapSession,
                         request: InstallRequest, report: ModelReport, slot: int,
                         previous: tuple[int, str], steps: StepRecorder) -> BootLine:
    # From here on a cancel no longer interrupts: the switch is verified or undone.
    boot_s = driver._boot_deadline_s(request)
    with steps.step(STEP_VERIFY, slot=slot) as info:
        try:
            session.deadline = Deadline(boot_s, what=f"hot-swap of {driver.device_id}")
            session.activate(slot)
            line = session.wait_boot(report.sha256, Deadline(
                boot_s, what=f"boot verification of {driver.device_id}"))
        except HalError as exc:
            fallback = exc.detail.pop("fallback", None)
            exc.detail["rollback"] = ({**fallback, "ok": True, "needed": True}
                                      if fallback else
                                      _switch_back(driver, session, previous, boot_s, steps))
            raise
        info.update(line=to_dict(line))
    return line


def _switch_back(driver: Nano33BleDriver, session: HotswapSession, previous: tuple[int, str],
                 boot_s: float, steps: StepRecorder) -> dict:
    """Rollback after a failed switch: ACTIVATE the previous slot and verify its model."""
    slot, sha = previous
    try:
        with steps.step(STEP_ROLLBACK, slot=slot, model_sha256=sha, kind="slot_switch") as info:
            session.deadline = Deadline(boot_s, what=f"rollback of {driver.device_id}")
            session.backlog.clear()
            session.activate(slot)
            line = session.wait_boot(sha, Deadline(boot_s, what="rollback boot verification"))
            info.update(line=to_dict(line))
    except Exception as rexc:  # never hide the original error behind the rollback's
        err = as_hal_error(rexc)
        return {"ok": False, "attempted": True, "needed": True, "verified": False,
                "by": "host", "slot": slot, "reason": f"the slot switch back failed: "
                f"{err.message}", "error": err.to_dict()}
    return {"ok": True, "attempted": True, "needed": True, "verified": True, "by": "host",
            "slot": slot, "running_sha": line.sha, "boot": to_dict(line),
            "reason": f"switched back to slot {slot}"}
