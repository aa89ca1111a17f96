"""The device registry: configured devices plus boards discovered on the host.

Each device is a :class:`DeviceSlot`: its ``hal`` driver, its observation stream, the job
running on it (if any), its last verified model and its last error. Discovery re-runs every
``[discovery] interval_s`` seconds on a background thread, so a board plugged in later appears
without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bridge.config import BridgeConfig, DeviceConfig, valid_device_id
from bridge.state import StateStore
from bridge.streams import DeviceStream, utc_now
from hal.driver import (
    Discovered,
    Driver,
    Health,
    RollbackOutcome,
    build_driver,
    get_driver_class,
)
from hal.errors import HalError, InputError, as_hal_error
from hal.protocol import DeviceLine, ErrorLine

log = logging.getLogger(__name__)

# Setting keys that identify a physical device: a discovered board matching a configured
# device on one of these is that device, not a new one.
_IDENTITY_KEYS = ("serial_number", "port", "host")
INFO_TTL_S = 0.5
# Finished jobs replayed at start to restore a device's state (a failure that never touched
# the device leaves the state an earlier job set).
RESTORE_JOBS = 20


class DeviceSlot:
    """One device as the bridge tracks it. Every field below ``lock`` is written under it
    (job threads, observation threads and requests all touch them).

    Three separate sources of "why", never overwriting each other: ``last_error`` is the last
    job's error (written only when a job ends), ``link_error`` the observation's port or SSH
    trouble (cleared when the link works again), ``health`` the runner's liveness."""

    def __init__(self, device_id: str, driver: Driver, *, configured: bool,
                 settings: dict[str, Any], stream: DeviceStream) -> None:
        self.id = device_id
        self.driver = driver
        self.driver_name = driver.name
        self.configured = configured
        self.settings = settings
        self.stream = stream
        self.lock = threading.Lock()
        self.job_id: str | None = None
        self.model: dict[str, str] | None = None  # last verified {"sha256","since","job_id"}
        self.last_outcome: str | None = None  # state of the last finished job
        self.last_error: dict[str, Any] | None = None  # the last job's error
        self.rollback: RollbackOutcome | None = None  # what the last failed job left running
        self.failed = False  # the last install left no verified model running
        self.link_error: dict[str, Any] | None = None
        self.health: dict[str, Any] | None = None
        self.observing = False
        self._info_cache: tuple[float, dict[str, Any]] | None = None
        self._info_refresh = threading.Lock()

    # -- from the driver's observation thread -----------------------------------------------

    def on_line(self, line: DeviceLine) -> None:
        self.stream.publish(line)
        if isinstance(line, ErrorLine):
            log.info("device=%s error line code=%s", self.id, line.code)

    def on_link_error(self, error: HalError) -> None:
        with self.lock:
            self.link_error = {**error.to_dict(), "at": utc_now()}
        log.warning("device=%s link error %s: %s", self.id, error.code, error.message)

    def on_link_ok(self) -> None:
        with self.lock:
            was, self.link_error = self.link_error, None
        if was is not None:
            log.info("device=%s link works again (was %s)", self.id, was.get("code"))

    def on_health(self, health: Health) -> None:
        with self.lock:
            self.health = {**health.to_dict(), "at": utc_now()}

    # -- from jobs ----------------------------------------------------------------------------

    def job_finished(self, state: str, sha256: str, error: dict[str, Any] | None, now: str,
                     job_id: str) -> dict[str, str] | None:
        """Record a finished job (clears ``job_id``). Returns the device's new verified model
        record when it changed (to persist), else None.

        A success makes the model verified. A failure reads the driver's typed
        :class:`RollbackOutcome`: a verified rollback (or a board that kept its old model)
        leaves the device running that model; a failure that never touched the device leaves
        it as it was; anything else (a failed rollback, none possible, an interrupted job)
        leaves it ``failed``."""
        with self.lock:
            self.job_id = None
            return self._apply_job(state, sha256, error, now, job_id)

    def _apply_job(self, state: str, sha256: str, error: dict[str, Any] | None, now: str,
                   job_id: str) -> dict[str, str] | None:
        self.last_outcome = state
        if state == "succeeded":
            self.model = {"sha256": sha256, "since": now, "job_id": job_id}
            self.failed, self.last_error, self.rollback, self.health = False, None, None, None
            return self.model
        self.last_error = error
        rb = self.rollback = rollback_of(error)
        if rb is None:
            self.failed = True
            return None
        if rb.verified and rb.running_sha256:
            self.health = None  # a new runner: liveness is asked again
            if self.model is not None and rb.runs(self.model["sha256"]):
                self.failed = False
                return None
            if len(rb.running_sha256) == 64:
                self.model = {"sha256": rb.running_sha256, "since": now, "job_id": job_id}
                self.failed = False
                return self.model
            self.failed = True  # it runs a model this bridge never verified
            return None
        if not rb.needed:
            return None  # untouched: the device is as it was
        self.failed = True
        return None

    def restore(self, model: dict[str, str] | None, jobs: list[dict[str, Any]]) -> None:
        """At start: the persisted verified model and the recent jobs' outcomes (newest
        first, as the store lists them), replayed oldest first."""
        with self.lock:
            for job in reversed(jobs):
                if job["state"] not in ("queued", "running"):
                    self._apply_job(job["state"], job["model_sha256"], job.get("error"),
                                    job.get("finished_at") or "", job["id"])
            self.model = model  # the persisted record is the truth about the model

    def info(self) -> dict[str, Any]:
        """The driver's description; a driver that fails here is shown disconnected.
        Cached for :data:`INFO_TTL_S`: a busy listing endpoint must not rescan ports for
        every request, and half a second is well below what a hot-plug takes anyway."""
        now = time.monotonic()
        cached = self._info_cache
        if cached is not None and now - cached[0] < INFO_TTL_S:
            return cached[1]
        # One thread refreshes; under load the others answer from the stale copy instead of
        # all rescanning the ports at once (a stampede that once took p99 past a second).
        if not self._info_refresh.acquire(blocking=cached is None):
            return cached[1]
        try:
            return self._refresh_info()
        finally:
            self._info_refresh.release()

    def _refresh_info(self) -> dict[str, Any]:
        now = time.monotonic()
        try:
            info = self.driver.info()
            # Plain attribute reads: dataclasses.asdict deep-copies and costs more than the
            # port scan itself.
            data = {"id": info.id, "driver": info.driver, "board": info.board,
                    "address": info.address, "connected": info.connected,
                    "serial_number": info.serial_number, "detail": info.detail}
        except Exception as exc:  # a broken driver must not break the listing
            err = as_hal_error(exc)
            log.warning("device=%s info() failed: %s", self.id, err)
            data = {"id": self.id, "driver": self.driver_name, "board": self.driver.board,
                    "address": "", "connected": False, "serial_number": None,
                    "detail": {"error": err.to_dict()}}
        self._info_cache = (now, data)
        return data

    def state(self) -> tuple[str, str]:
        """The device's state (see README "Device states") and a sentence saying why."""
        with self.lock:
            job_id, model, health = self.job_id, self.model, self.health
            failed, error, rb = self.failed, self.last_error, self.rollback
        if job_id is not None:
            return "installing", f"job {job_id} is installing a model"
        if health is not None and health.get("state") == "crashed":
            return "crashed", str(health.get("message") or "the runner stopped")
        if failed:
            why = f"the last install failed ({(error or {}).get('code', 'unknown')})"
            if rb is not None:
                why += f"; rollback: {rb.reason}"
            return "failed", why
        if model is not None:
            why = f"model {model['sha256'][:16]} verified"
            if rb is not None and error is not None:
                why += f"; the last install failed ({error.get('code')}) and {rb.reason}"
            return "running", why
        return "idle", "no verified model on this device"

    def describe(self) -> dict[str, Any]:
        """The API's Device object."""
        info = self.info()
        state, reason = self.state()
        with self.lock:
            model = None
            if self.model is not None:
                model = {"sha256": self.model["sha256"], "since": self.model["since"]}
            last_error, link_error = self.last_error, self.link_error
            health, rb, job_id = self.health, self.rollback, self.job_id
        return {
            "id": self.id,
            "driver": self.driver_name,
            "board": info.get("board") or self.driver.board,
            "address": str(info.get("address") or ""),
            "connected": bool(info.get("connected")),
            "serial_number": info.get("serial_number"),
            "state": state,
            "state_reason": reason,
            "model": model,
            "last_error": _public_error(last_error),
            "link_error": _public_error(link_error),
            "health": dict(health) if health is not None else None,
            "rollback": rb.to_dict() if rb is not None and last_error is not None else None,
            "job_id": job_id,
        }


def rollback_of(error: dict[str, Any] | None) -> RollbackOutcome | None:
    """The typed rollback outcome a failed job's error carries (also inside a cancel's
    ``cause``), or None."""
    detail = (error or {}).get("detail")
    for _ in range(3):
        if not isinstance(detail, dict):
            return None
        found = RollbackOutcome.from_dict(detail.get("rollback"))
        if found is not None:
            return found
        cause = detail.get("cause") or detail.get("error")
        detail = cause.get("detail") if isinstance(cause, dict) else None
    return None


def _public_error(err: dict[str, Any] | None) -> dict[str, Any] | None:
    if err is None:
        return None
    return {k: err[k] for k in ("code", "message", "detail", "class") if k in err}


class DeviceRegistry:
    """All devices of this bridge, by id."""

    def __init__(self, config: BridgeConfig, store: StateStore | None = None) -> None:
        self.config = config
        self.store = store
        self.context = config.driver_context()
        self._slots: dict[str, DeviceSlot] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._discovery_warned: set[str] = set()

    # -------------------------------------------------------------------- life cycle

    def start(self, *, discovery: bool = True) -> None:
        """Build the configured drivers, start observing, and start discovery."""
        for dev in self.config.devices:
            self._add_configured(dev)
        if discovery and self.config.discovery.drivers:
            self.scan()
            if self.config.discovery.interval_s > 0:
                self._thread = threading.Thread(target=self._discovery_loop,
                                                name="bridge-discovery", daemon=True)
                self._thread.start()

    def _add_configured(self, dev: DeviceConfig) -> None:
        try:
            driver = build_driver(dev.driver, dev.name, dev.settings, self.context)
        except HalError:
            raise
        except Exception as exc:  # a driver constructor failing is a bug in that driver
            raise as_hal_error(exc) from exc
        self.add(driver, configured=True, settings=dev.settings)

    def add(self, driver: Driver, *, configured: bool, settings: dict[str, Any] | None = None,
            observe: bool = True) -> DeviceSlot:
        """Register a built driver and start observing it."""
        obs = self.config.observe
        slot = DeviceSlot(driver.device_id, driver, configured=configured,
                          settings=dict(settings or {}),
                          stream=DeviceStream(driver.device_id, obs.buffer_lines,
                                              obs.subscriber_queue))
        if self.store is not None:
            slot.restore(self.store.verified_model(slot.id),
                         self.store.list_jobs(slot.id, RESTORE_JOBS))
        with self._lock:
            if slot.id in self._slots:
                raise InputError("bad_config", f"device id {slot.id!r} is used twice")
            self._slots[slot.id] = slot
        log.info("device=%s driver=%s added (%s)", slot.id, slot.driver_name,
                 "configured" if configured else "discovered")
        if observe:
            self.start_observing(slot)
        return slot

    def start_observing(self, slot: DeviceSlot) -> None:
        """Start the driver's observation (always, whether or not anything is deployed or
        the device is reachable: the driver's loop retries and reports link trouble)."""
        try:
            slot.driver.listen(on_health=slot.on_health, on_link_ok=slot.on_link_ok)
            slot.driver.start_observing(slot.on_line, slot.on_link_error)
            slot.observing = True
        except Exception as exc:
            slot.on_link_error(as_hal_error(exc))

    def close(self) -> None:
        """Stop discovery, end every stream and release every driver (ports, connections)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for slot in self.slots():
            slot.stream.close()
            try:
                slot.driver.close()
                log.info("device=%s closed", slot.id)
            except Exception:
                log.exception("device=%s close failed", slot.id)

    # ------------------------------------------------------------------- discovery

    def _discovery_loop(self) -> None:
        while not self._stop.wait(self.config.discovery.interval_s):
            self.scan()

    def scan(self) -> list[str]:
        """Run every discovery driver once; return the ids of newly added devices."""
        added = []
        for name in self.config.discovery.drivers:
            try:
                cls = get_driver_class(name)
                found = cls.discover(self.context)
            except Exception as exc:  # a missing or broken driver must not stop the bridge
                if name not in self._discovery_warned:
                    self._discovery_warned.add(name)
                    log.warning("discovery driver=%s unavailable: %s", name, exc)
                continue
            for item in found:
                if self._adopt(name, item):
                    added.append(item.id)
        return added

    def _known(self, driver_name: str, item: Discovered) -> bool:
        # Any driver: a board configured as e.g. virtual-nano33ble is not also a nano33ble.
        if item.id in self._slots:
            return True
        for slot in self._slots.values():
            for key in _IDENTITY_KEYS:
                value = item.settings.get(key)
                if value is not None and slot.settings.get(key) == value:
                    return True
        return False

    def _adopt(self, driver_name: str, item: Discovered) -> bool:
        with self._lock:
            if self._known(driver_name, item):
                return False
        if not valid_device_id(item.id):
            if ("id", item.id) not in self._discovery_warned:
                self._discovery_warned.add(("id", item.id))  # type: ignore[arg-type]
                log.warning("discovery driver=%s found a device with an unusable id %r; name "
                            "it in a [[devices]] table", driver_name, item.id[:80])
            return False
        try:
            driver = build_driver(driver_name, item.id, item.settings, self.context)
            self.add(driver, configured=False, settings=item.settings)
        except Exception as exc:
            log.warning("device=%s discovered by driver=%s but not usable: %s", item.id,
                        driver_name, exc)
            return False
        return True

    # ---------------------------------------------------------------------- lookup

    def get(self, device_id: str) -> DeviceSlot:
        """The device with that id, or ``InputError("unknown_device")`` (404)."""
        slot = self._slots.get(device_id) if isinstance(device_id, str) else None
        if slot is None:
            shown = device_id[:80] if isinstance(device_id, str) else repr(device_id)
            raise InputError("unknown_device", f"no device {shown!r} on this bridge",
                             device=shown)
        return slot

    def slots(self) -> list[DeviceSlot]:
        with self._lock:
            return sorted(self._slots.values(), key=lambda s: s.id)

    def find_by_serial(self, serial: str) -> DeviceSlot | None:
        """The device whose USB serial number (or id) is ``serial`` (legacy API)."""
        for slot in self.slots():
            if slot.id == serial:
                return slot
        for slot in self.slots():
            if slot.info().get("serial_number") == serial:
                return slot
        return None

    def driver_names(self) -> list[str]:
        """Drivers in use: configured, discovered, and discovery drivers."""
        names = {s.driver_name for s in self.slots()} | set(self.config.discovery.drivers)
        return sorted(names)
