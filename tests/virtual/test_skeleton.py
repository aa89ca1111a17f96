"""The one install skeleton (hal.driver.Driver.install): declared phases recorded by the one
step recorder, the exclusive guard, cancel semantics and typed rollback outcomes written
once. Shown twice: with the virtual Nano 33 BLE (a full driver filling in every phase), and
with a ten-line driver written against the skeleton, which gets all of it for free."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from hal.deadline import Deadline
from hal.driver import (
    PHASE_ACTIVATE,
    PHASES,
    Driver,
    DriverContext,
    DriverSettings,
    InstallContext,
    InstallRequest,
    RollbackOutcome,
    build_driver,
    register_driver,
)
from hal.errors import (
    BugError,
    Cancelled,
    DeviceError,
    HalError,
    InfraError,
    InputError,
    make_error,
)
from hal.observation import Listener, ObservationLoop
from tests.virtual.helpers import HELLO_ARENA, model
from tests.virtual.test_rollback import flashed_sha, install_a, sha

SPEECH = model("arduino_micro_speech")
HELLO = model("hello_world_int8")


def recorder(progress: list):
    return lambda step, status, detail: progress.append((step, status, detail))


def test_the_virtual_driver_runs_the_declared_phases_in_order(make_driver):
    driver = make_driver()
    progress: list = []
    report = driver.install(InstallRequest(model=HELLO, arena_bytes=HELLO_ARENA),
                            Deadline(60), recorder(progress))
    started = [(step, detail["phase"]) for step, status, detail in progress
               if status in ("started", "skipped")]
    assert started == [("validate", "validate"), ("fit_check", "fit"), ("render", "prepare"),
                       ("compile", "prepare"), ("fit_check_build", "prepare"),
                       ("upload", "transfer"), ("verify_boot", "verify")]
    phases = [p for _, p in started]
    assert phases == sorted(phases, key=PHASES.index)  # never out of the declared order
    # every InstallReport field means the same for every driver
    assert report.compiled and report.transferred and report.boot["sha"] == sha(HELLO)[:16]
    assert report.arena_bytes == HELLO_ARENA


def test_a_failure_before_the_commit_phase_leaves_the_device_untouched(make_driver):
    driver = make_driver()
    install_a(driver)
    with pytest.raises(HalError) as ei:  # an arena over the board's RAM: the fit phase
        driver.install(InstallRequest(model=SPEECH, arena_bytes=10 << 20), Deadline(30))
    assert ei.value.code == "fit_ram"
    rollback = RollbackOutcome.from_dict(ei.value.detail["rollback"])
    assert not rollback.needed and not rollback.attempted and "fit phase" in rollback.reason
    assert flashed_sha(driver) == sha(HELLO)


class _StuckSource:
    """An observation source stuck in a blocking read: it ignores the request to return (as
    a reader wedged in a driver call would) for ``hold_s`` seconds."""

    health_interval_s = 0.0

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s

    def resolve(self):
        return "stuck"

    def switch(self, target):
        return target

    def read(self, target, ctl) -> None:
        time.sleep(self.hold_s)

    def health(self):
        return None


def test_upload_starts_only_after_the_observation_released_the_port(make_driver):
    driver = make_driver()
    install_a(driver)
    loop = ObservationLoop(driver.device_id, _StuckSource(hold_s=8.0), Listener(None))
    driver._observation = loop
    loop.start()
    try:
        with pytest.raises(InfraError) as ei:
            driver.install(InstallRequest(model=SPEECH), Deadline(60))
    finally:
        driver._observation = None
        loop.stop()
    assert ei.value.code == "unavailable" and "did not release" in ei.value.message
    assert ei.value.detail["rollback"]["needed"] is False  # nothing was uploaded
    assert flashed_sha(driver) == sha(HELLO)


# ------------------------------------------------------------- a new driver, for free


class _TinySettings(DriverSettings):
    fail_in: str | None = None  # a phase to fail in
    hold_s: float = 0.0  # how long the transfer takes


@register_driver("test-skeleton-tiny")
class _TinyDriver(Driver):
    """A target that "flashes" by remembering the model: only the phases it needs."""

    board = "nano33ble"
    Settings = _TinySettings
    commit_phase = PHASE_ACTIVATE

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.running: str | None = None
        self.in_transfer = threading.Event()

    def info(self):
        raise NotImplementedError

    def _maybe_fail(self, phase: str) -> None:
        if self.settings.fail_in == phase:
            raise make_error("device_error", f"failed in {phase}")

    def _validate(self, ctx: InstallContext) -> None:
        with ctx.steps.step("validate"):
            ctx.sha256 = hashlib.sha256(ctx.request.model).hexdigest()

    def _transfer(self, ctx: InstallContext) -> None:
        self.in_transfer.set()
        ctx.deadline.wait(self.settings.hold_s)
        ctx.transferred = True

    def _activate(self, ctx: InstallContext) -> None:
        ctx.data["previous"], self.running = self.running, ctx.sha256
        self._maybe_fail("activate")

    def _verify(self, ctx: InstallContext) -> None:
        self._maybe_fail("verify")
        ctx.boot = {"kind": "boot", "sha": self.running[:16]}

    def _rollback(self, ctx: InstallContext, error) -> RollbackOutcome:
        self.running = ctx.data["previous"]
        return RollbackOutcome(needed=True, attempted=True, verified=self.running is not None,
                               running_sha256=self.running, reason="put the previous back")


def tiny(tmp_path, **settings) -> _TinyDriver:
    return build_driver("test-skeleton-tiny", "tiny", settings, DriverContext(tmp_path))


def test_a_new_driver_gets_the_guard_and_typed_outcomes_for_free(tmp_path):
    drv = tiny(tmp_path, hold_s=2.0)
    first = threading.Thread(target=drv.install, args=(
        InstallRequest(model=b"A", job_id="job-a"), Deadline(10)))
    first.start()
    assert drv.in_transfer.wait(5)
    with pytest.raises(InputError) as ei:  # the exclusive guard, written once
        drv.install(InstallRequest(model=b"B", job_id="job-b"), Deadline(10))
    assert ei.value.code == "device_busy" and ei.value.detail["running_job"] == "job-a"
    first.join(10)
    assert drv.running == hashlib.sha256(b"A").hexdigest()

    drv.settings.hold_s, drv.settings.fail_in = 0.0, "verify"
    with pytest.raises(DeviceError) as ei:
        drv.install(InstallRequest(model=b"B"), Deadline(10))
    rollback = RollbackOutcome.from_dict(ei.value.detail["rollback"])
    assert rollback.verified and rollback.runs(hashlib.sha256(b"A").hexdigest())


def test_a_cancel_before_the_commit_phase_stops_after_it_finishes(tmp_path):
    drv = tiny(tmp_path, hold_s=5.0)
    deadline = Deadline(30)
    threading.Timer(0.2, deadline.cancel).start()
    with pytest.raises(Cancelled) as ei:  # cancelled in transfer: before the device changed
        drv.install(InstallRequest(model=b"A"), deadline)
    assert ei.value.detail["rollback"]["needed"] is False and drv.running is None

    # a cancel arriving once the device is being changed: finished, verified, then reported
    drv.settings.hold_s = 0.0
    deadline = Deadline(30)
    original = drv._activate

    def activate_and_cancel(ctx):
        original(ctx)
        deadline.cancel()

    drv._activate = activate_and_cancel
    with pytest.raises(Cancelled) as ei:
        drv.install(InstallRequest(model=b"B"), deadline)
    assert ei.value.detail["board_state"] == "new_model_verified"
    assert RollbackOutcome.from_dict(ei.value.detail["rollback"]).runs(
        hashlib.sha256(b"B").hexdigest())


def test_a_driver_without_a_verify_phase_never_succeeds(tmp_path):
    @register_driver("test-skeleton-unverified")
    class _Unverified(_TinyDriver):
        def _verify(self, ctx):  # forgets to prove anything
            return None

    drv = build_driver("test-skeleton-unverified", "u", {}, DriverContext(tmp_path))
    with pytest.raises(BugError) as ei:
        drv.install(InstallRequest(model=b"A"), Deadline(10))
    assert ei.value.code == "internal"


@pytest.mark.parametrize(("vectors", "words"), [
    (((0.5,),) * 257, "exceed 256"),
    (((0.5, 1.0),), "has 2 values"),
    (((float("nan"),),), "not a finite number"),
    (((float("inf"),),), "not a finite number"),
    (((10**400,),), "not a finite number"),
    (((True,),), "not a number"),
    ((("1",),), "not a number"),
    (((None,),), "not a number"),
    (([[0.5]],), "not a number"),
    (("x",), "is a str, not a list"),
    (((3.5e38,),), "out of float32 range"),
])
def test_one_validation_of_input_vectors_for_every_driver(vectors, words):
    from hal.vectors import check_input_vectors

    with pytest.raises(InputError) as ei:
        check_input_vectors(vectors, 1, (1, 1), "float32")
    assert ei.value.code == "bad_option" and words in ei.value.message
    check_input_vectors(((0.5,),) * 256, 1, (1, 1), "float32")  # the limit itself is fine


def test_nano_liveness_setting_is_validated(context):
    from pydantic import ValidationError

    for bad in (1, 0, -3, 10**6, "often", None):
        with pytest.raises(ValidationError):
            build_driver("virtual-nano33ble", "v", {"silent_periods": bad}, context)
