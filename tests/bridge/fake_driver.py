"""A small hal driver for bridge tests (a fake of the hal, not of the bridge).

Registered as ``test-fake``. It emits an inference line every ``period_ms``, installs in
``install_s`` seconds through the real StepRecorder, and fails on demand with any hal error
code (``fail = "alloc_failed"``). ``discover()`` lists the files in
``<state_dir>/fake-usb/``: creating a file there "plugs in" a board with that serial number.
"""

from __future__ import annotations

import hashlib
import threading

from hal.deadline import Deadline
from hal.driver import (
    STEP_COMPILE,
    STEP_FIT,
    STEP_RENDER,
    STEP_UPLOAD,
    STEP_VALIDATE,
    STEP_VERIFY,
    DeviceInfo,
    Discovered,
    Driver,
    DriverContext,
    DriverSettings,
    InstallReport,
    InstallRequest,
    StepRecorder,
    register_driver,
)
from hal.errors import Cancelled, make_error
from hal.protocol import BootLine, InferenceLine

STEPS = (STEP_VALIDATE, STEP_FIT, STEP_RENDER, STEP_COMPILE, STEP_UPLOAD, STEP_VERIFY)


class FakeSettings(DriverSettings):
    serial_number: str | None = None
    period_ms: int = 50
    install_s: float = 0.3
    fail: str | None = None
    fail_step: str = STEP_VERIFY
    outputs: list[float] = [0.25, 0.75]


@register_driver("test-fake")
class FakeDriver(Driver):
    board = "nano33ble"
    Settings = FakeSettings

    def __init__(self, device_id, settings, context):
        super().__init__(device_id, settings, context)
        self._sink = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = None
        self._n = 0

    @classmethod
    def discover(cls, context: DriverContext) -> list[Discovered]:
        folder = context.state_dir / "fake-usb"
        if not folder.is_dir():
            return []
        return [Discovered(id=p.name, settings={"serial_number": p.name, "period_ms": 0})
                for p in sorted(folder.iterdir())]

    def info(self) -> DeviceInfo:
        return DeviceInfo(id=self.device_id, driver=self.name, board=self.board,
                          address=f"fake:{self.device_id}", connected=True,
                          serial_number=self.settings.serial_number)

    def _install(self, request: InstallRequest, deadline: Deadline,
                 steps: StepRecorder) -> InstallReport:
        s = self.settings
        sha = hashlib.sha256(request.model).hexdigest()
        for name in STEPS:
            with steps.step(name) as info:
                if name == STEP_UPLOAD:
                    self._paused.set()
                try:
                    if deadline.wait(s.install_s / len(STEPS)):
                        raise Cancelled(f"install on {self.device_id} cancelled")
                    deadline.check()
                finally:
                    self._paused.clear()
                if s.fail and name == s.fail_step:
                    raise make_error(s.fail, f"fake failure {s.fail}", arena_bytes=4096)
                info["fake"] = True
        boot = BootLine(sha=sha[:16], arena_bytes=4096, used_bytes=2048, firmware="fake",
                        board=self.board)
        if self._sink is not None:
            self._sink(boot)
        return InstallReport(device_id=self.device_id, model_sha256=sha,
                             boot={"kind": "boot", "sha": sha[:16]}, arena_bytes=4096,
                             compiled=True, steps=dict(steps.durations))

    def _loop(self) -> None:
        period = self.settings.period_ms / 1000.0
        while not self._stop.wait(period):
            if self._paused.is_set() or self._sink is None:
                continue
            self._n += 1
            out = tuple(self.settings.outputs)
            self._sink(InferenceLine(seq=self._n, latency_us=1234, outputs=out,
                                     top=max(range(len(out)), key=out.__getitem__),
                                     label="yes"))

    def start_observing(self, sink, on_error=None) -> None:
        self._sink = sink
        if self.settings.period_ms > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"fake-{self.device_id}")
            self._thread.start()

    def stop_observing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
