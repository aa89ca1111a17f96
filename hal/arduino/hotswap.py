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
from hal.driver import STEP_ROLLBACK, STEP_VERIFY, InstallContext, RollbackOutcome
from hal.errors import DeviceError, HalError, InfraError, as_hal_error
from hal.model.report import ModelReport
from hal.protocol import to_dict

if TYPE_CHECKING:
    from hal.arduino.driver import Nano33BleDriver
    from hal.arduino.sketch import SketchConfig

log = logging.getLogger(__name__)

STEP_HOTSWAP = "hotswap_transfer"
RELEASE_TIMEOUT_S = 3.0  # the observation must let go of the port within this
TRANSFER_TIMEOUT_S = 120.0  # a full 128 KB slot at real speed takes ~4 s; resends included
ROLLBACK_MIN_S = 10.0  # a slot switch back gets at least this long
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


def _firmware(driver: Nano33BleDriver, report: ModelReport, fit: FitResult, camera: bool
              ) -> tuple[str, tuple[str, ...], int, str]:
    """(firmware kind, op set, arena, reason) of the firmware a compile would build."""
    s, prof = driver.settings, driver.profile
    if not s.hotswap:
        return "exact_ops", (), 0, "the device setting hotswap is false"
    if camera:
        return "exact_ops", (), 0, ("the camera input: the hot-swap firmware feeds test "
                                    "vectors only")
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


def ask_capability(driver: Nano33BleDriver, deadline: Deadline,
                   resume: bool = True) -> hp.Capability | None:
    """The board's hot-swap capability from a HELLO (one try, 0.5 s): None when its
    firmware does not answer (not the hot-swap variant), the board is not there or the
    observation did not release the port. ``resume`` False keeps the observation paused
    (inside an install, which resumes it at its end)."""
    port = driver.locate("sketch")
    if port is None:
        return None
    try:
        if not driver.pause_observation(RELEASE_TIMEOUT_S):
            return None
        with PortLink.open(port.device) as link:
            reply = HotswapSession(link, driver.deliver_line,
                                   deadline.sub(2.0, "hot-swap hello"), tries=1).hello()
    except HalError as exc:
        log.info("device=%s hot-swap hello failed: %s", driver.device_id, exc)
        return None
    finally:
        if resume:
            driver.resume_observation()
    if reply is None:
        return None
    try:
        return capability_from_hello(reply)
    except hp.ProtocolError as exc:
        log.warning("device=%s malformed hot-swap hello: %s", driver.device_id, exc)
        return None


def plan(driver: Nano33BleDriver, report: ModelReport, fit: FitResult, payload_bytes: int,
         deadline: Deadline, camera: bool = False) -> Plan:
    """Hot-swap or compile+upload for this model on this board, and why."""
    kind, ops, arena, why = _firmware(driver, report, fit, camera)
    if camera:
        return Plan(PATH_COMPILE, kind, why, ops=ops, arena_bytes=arena)
    base = {"firmware": kind, "ops": ops, "arena_bytes": arena,
            "slot_bytes": driver.profile.hotswap_slot_bytes if kind == "hotswap" else 0}
    if not driver.settings.hotswap:
        return Plan(PATH_COMPILE, reason=why, **base)
    boot = driver.last_boot
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


# ------------------------------------------------------------------ the install's phases
# The driver (hal/arduino/driver.py) calls these from its phases when the plan is a hot-swap;
# ctx.data holds "hs_plan", "hs_config", then "hs_payload", "hs_session", "hs_slot".


def prepare(driver: Nano33BleDriver, ctx: InstallContext) -> None:
    """Nothing to build: the slot payload of the model."""
    ctx.data["hs_payload"] = payload_for(ctx.data["hs_config"])


def transfer(driver: Nano33BleDriver, ctx: InstallContext) -> None:
    """Stream the payload into the board's free slot (the running model keeps running)."""
    port = driver.locate("sketch")
    if port is None:
        raise DeviceError("device_not_found", f"board {driver.serial_number()} is not attached",
                          serial_number=driver.serial_number())
    with ctx.steps.step(STEP_HOTSWAP, port=port.device) as info:
        if not driver.pause_observation(RELEASE_TIMEOUT_S):
            raise InfraError("unavailable", f"the observation of {driver.device_id} did not "
                             f"release {port.device} within {RELEASE_TIMEOUT_S} s; nothing was "
                             "sent", port=port.device)
        link = PortLink.open(port.device)
        session = HotswapSession(link, driver.deliver_line, ctx.shielded(
            TRANSFER_TIMEOUT_S, f"hot-swap transfer to {driver.device_id}"))
        ctx.data["hs_session"] = session
        payload = ctx.data["hs_payload"]
        try:
            slot = session.send(payload, len(ctx.data["hs_config"].model),
                                ctx.data["fit"].arena_bytes)
        finally:
            info.update(session.stats.to_dict())
        info["slot"] = slot
    ctx.data["hs_slot"] = slot
    ctx.data["hs_port"] = port.device
    ctx.transferred = True


def verify(driver: Nano33BleDriver, ctx: InstallContext) -> None:
    """Switch to the new slot (ACTIVATE) and wait for its model's boot line."""
    session: HotswapSession = ctx.data["hs_session"]
    slot = ctx.data["hs_slot"]
    boot_s = driver.boot_deadline_s(ctx.request)
    with ctx.steps.step(STEP_VERIFY, slot=slot) as info:
        session.deadline = ctx.shielded(boot_s, f"hot-swap of {driver.device_id}")
        ctx.data["hs_activated"] = True
        session.activate(slot)
        line = session.wait_boot(ctx.sha256, ctx.shielded(
            boot_s, f"boot verification of {driver.device_id}"))
        info.update(line=to_dict(line))
    plan_: Plan = ctx.data["hs_plan"]
    cap = plan_.capability or {}
    ctx.boot = to_dict(line)
    ctx.arena_bytes = line.arena_bytes
    ctx.detail = {"path": PATH_HOTSWAP, "fit": ctx.data["fit"].to_dict(), "hotswap": {
        "slot": slot, "previous_slot": cap.get("slot"), **session.stats.to_dict()},
        "port": ctx.data["hs_port"], "serial_number": driver.serial_number()}


def close(ctx: InstallContext) -> None:
    """Give the port back (before the observation resumes)."""
    session = ctx.data.pop("hs_session", None)
    if session is not None:
        session.link.close()


def rollback(driver: Nano33BleDriver, ctx: InstallContext, exc: HalError) -> RollbackOutcome:
    """What runs after a failed hot-swap. Before the switch nothing was stopped (after a power
    cut the board reboots its model): a HELLO says what runs. After it, the firmware's own
    fall-back when it gave the new model up, else a slot switch back (ACTIVATE of the
    previous slot). Never raises."""
    cap = (ctx.data["hs_plan"].capability or {})
    previous = (int(cap.get("slot", hp.BUILTIN_SLOT)), str(cap.get("running_sha") or ""))
    fallback = exc.detail.pop("fallback", None)
    if fallback:
        return RollbackOutcome(needed=True, attempted=True, verified=True,
                               running_sha256=fallback["running_sha"], reason=fallback["reason"])
    if not ctx.data.get("hs_activated"):
        return _after_transfer_failure(driver, ctx, previous, exc)
    session: HotswapSession | None = ctx.data.get("hs_session")
    if session is None:
        return RollbackOutcome(needed=True, attempted=False, verified=False,
                               running_sha256=None, reason="the port is gone")
    return _switch_back(driver, ctx, session, previous)


def _after_transfer_failure(driver: Nano33BleDriver, ctx: InstallContext,
                            previous: tuple[int, str], exc: HalError) -> RollbackOutcome:
    close(ctx)
    why = f"the transfer failed ({exc.code}) before the switch"
    cap = ask_capability(driver, ctx.shielded(6.0, "hot-swap check"), resume=False)
    if cap is None and exc.code == "port_vanished":  # power cut: give the board time to boot
        ctx.shielded(3.0, "board restart").wait(2.0)
        cap = ask_capability(driver, ctx.shielded(6.0, "hot-swap check"), resume=False)
    if cap is None:
        return RollbackOutcome(needed=False, attempted=False, verified=False,
                               running_sha256=previous[1] or None,
                               reason=f"{why}; the board did not answer afterwards")
    sha = str(cap.extra.get("sha") or "")
    same = bool(previous[1]) and sha[:16] == previous[1][:16]
    return RollbackOutcome(
        needed=False, attempted=False, verified=bool(sha), running_sha256=sha or None,
        reason=f"{why}: the board was not switched and " + (
            "keeps running its model" if same else f"runs {sha[:16]}"))


def _switch_back(driver: Nano33BleDriver, ctx: InstallContext, session: HotswapSession,
                 previous: tuple[int, str]) -> RollbackOutcome:
    slot, sha = previous
    # its own, generous deadline: a rollback that has started always finishes
    boot_s = max(driver.boot_deadline_s(ctx.request), ROLLBACK_MIN_S)
    try:
        with ctx.steps.step(STEP_ROLLBACK, slot=slot, model_sha256=sha,
                            kind="slot_switch") as info:
            session.deadline = ctx.shielded(boot_s, f"rollback of {driver.device_id}")
            session.backlog.clear()
            session.activate(slot)
            line = session.wait_boot(sha, ctx.shielded(boot_s, "rollback boot verification"))
            info.update(line=to_dict(line))
    except Exception as rexc:  # never hide the original error behind the rollback's
        err = as_hal_error(rexc)
        return RollbackOutcome(needed=True, attempted=True, verified=False,
                               running_sha256=None, reason=f"the slot switch back to slot "
                               f"{slot} failed: {err.message}", error=err.to_dict())
    return RollbackOutcome(needed=True, attempted=True, verified=True, running_sha256=line.sha,
                           reason=f"switched back to slot {slot} (no reflash)",
                           boot=to_dict(line))
