"""Install jobs: one at a time per device, devices in parallel (one thread per job).

A job records every step the driver reports (with timestamps), ends ``succeeded`` only when
the driver returned a verified :class:`~hal.driver.InstallReport` for exactly the model that
was sent, and otherwise carries the classified error. Every change is written to the state
store, so a restart shows what happened (or ``interrupted`` for a job cut off mid-way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from bridge.registry import DeviceRegistry, DeviceSlot
from bridge.state import ACTIVE_STATES, StateStore
from bridge.streams import utc_now
from hal.deadline import Deadline
from hal.driver import InstallRequest
from hal.errors import Cancelled, DeviceError, HalError, InputError, as_hal_error, make_error

log = logging.getLogger(__name__)

TFLITE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class InstallOptions:
    """Validated install options (see ``bridge.models.InstallOptions`` for the wire form)."""

    labels: tuple[str, ...] = ()
    input_vectors: tuple[tuple[float, ...], ...] = ()
    arena_bytes: int | None = None
    boot_deadline_s: float = 20.0
    input_source: str = "vectors"


def check_model_bytes(model: bytes) -> str:
    """Cheap checks before a job is created (the driver's validate step does the rest).
    Returns the model's sha256."""
    if not model:
        raise InputError("model_empty", "the model file is empty")
    # A .tflite flatbuffer carries the file identifier "TFL3" at bytes 4..8.
    if len(model) < 8 or model[4:8] != TFLITE_IDENTIFIER:
        raise InputError("model_not_tflite", "the file is not a TFLite flatbuffer (no TFL3 "
                         "identifier at byte 4)", size_bytes=len(model),
                         head_hex=model[:8].hex())
    return hashlib.sha256(model).hexdigest()


def _jsonable(value: Any) -> Any:
    # Step details come from drivers; make sure they survive JSON (paths, tuples, numbers).
    return json.loads(json.dumps(value, default=str, allow_nan=False)) if value else {}


def _safe_json(value: Any) -> Any:
    try:
        return _jsonable(value)
    except (TypeError, ValueError):
        return {"unserialisable": str(value)[:500]}


class Job:
    """A job while it is alive in this process."""

    def __init__(self, device_id: str, sha256: str, timeout_s: float) -> None:
        self.id = secrets.token_hex(8)
        self.device_id = device_id
        self.model_sha256 = sha256
        self.state = "queued"
        self.created_at = utc_now()
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.steps: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.deadline = Deadline(timeout_s, what=f"job {self.id}")
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "id": self.id,
                "device_id": self.device_id,
                "state": self.state,
                "created_at": self.created_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "model_sha256": self.model_sha256,
                "steps": [dict(s) for s in self.steps],
                "report": self.report,
                "error": self.error,
            }

    def progress(self, name: str, status: str, detail: dict) -> None:
        """The driver's progress callback: one entry per step, updated when it ends."""
        now = utc_now()
        detail = _safe_json(detail)
        with self.lock:
            if status == "started":
                self.steps.append({"name": name, "status": "started", "started_at": now,
                                   "finished_at": None, "detail": detail})
                return
            for step in reversed(self.steps):
                if step["name"] == name and step["status"] == "started":
                    step.update(status=status, finished_at=now,
                                detail={**step["detail"], **detail})
                    return
            self.steps.append({"name": name, "status": status, "started_at": now,
                               "finished_at": now, "detail": detail})


class JobManager:
    """Creates, runs, cancels and reports jobs."""

    def __init__(self, registry: DeviceRegistry, store: StateStore, *, timeout_s: float = 1800,
                 max_wait_s: float = 3600) -> None:
        self.registry = registry
        self.store = store
        self.timeout_s = timeout_s
        self.max_wait_s = max_wait_s
        self._live: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closing = False

    # ---------------------------------------------------------------------- submit

    def submit(self, device_id: str, model: bytes, options: InstallOptions) -> Job:
        """Create and start a job; ``device_busy`` (409) if the device has one running."""
        slot = self.registry.get(device_id)
        sha = check_model_bytes(model)
        if self._closing:
            raise make_error("unavailable", "the bridge is shutting down")
        job = Job(slot.id, sha, self.timeout_s)
        with slot.lock:
            if slot.job_id is not None:
                raise InputError("device_busy", f"device {slot.id} is busy with job "
                                 f"{slot.job_id}", device=slot.id, running_job=slot.job_id)
            slot.job_id = job.id
        try:
            self.store.insert_job(job.to_dict())
        except Exception:
            with slot.lock:
                slot.job_id = None
            raise
        with self._lock:
            self._live[job.id] = job
        request = InstallRequest(
            model=model,
            labels=options.labels,
            input_vectors=options.input_vectors,
            arena_bytes=options.arena_bytes,
            boot_deadline_s=options.boot_deadline_s,
            input_source=options.input_source,
            job_id=job.id,
        )
        log.info("job=%s device=%s created model=%s size=%d", job.id, slot.id, sha[:16],
                 len(model))
        job.thread = threading.Thread(target=self._run, args=(job, slot, request),
                                      name=f"job-{job.id}", daemon=True)
        job.thread.start()
        return job

    def _run(self, job: Job, slot: DeviceSlot, request: InstallRequest) -> None:
        with job.lock:
            job.state = "running"
            job.started_at = utc_now()
        self._save(job)
        log.info("job=%s device=%s running", job.id, slot.id)

        def progress(name: str, status: str, detail: dict) -> None:
            job.progress(name, status, detail)
            # hal already logs each step with the device id; this line adds the job id.
            log.debug("job=%s device=%s step=%s %s", job.id, slot.id, name, status)
            self._save(job)

        report = error = None
        try:
            job.deadline.check()
            result = slot.driver.install(request, job.deadline, progress)
            # Trust, but verify: the report must be about the model we sent.
            if result.model_sha256 != job.model_sha256:
                raise DeviceError("wrong_model", "the driver verified a different model than "
                                  "the one sent", expected=job.model_sha256,
                                  reported=result.model_sha256)
            report = _safe_json(result.to_dict())
        except BaseException as exc:  # classify everything; a job never dies silently
            error = as_hal_error(exc)
            if not isinstance(exc, HalError):
                log.exception("job=%s device=%s crashed", job.id, slot.id)
        self._finish(job, slot, report, error)

    def _finish(self, job: Job, slot: DeviceSlot, report: dict | None,
                error: HalError | None) -> None:
        now = utc_now()
        with job.lock:
            if job.state not in ACTIVE_STATES:  # already marked interrupted at shutdown
                return
            job.finished_at = now
            if error is None:
                job.state, job.report = "succeeded", report
            else:
                cancelled = isinstance(error, Cancelled) or job.deadline.cancelled
                job.state = "cancelled" if cancelled else "failed"
                if cancelled and not isinstance(error, Cancelled):
                    error = Cancelled(f"job {job.id} cancelled", cause=error.to_dict())
                job.error = error.to_dict()
        self._save(job)
        # The device's state follows from the job's outcome (and the driver's typed
        # rollback outcome): hal.driver.RollbackOutcome, read in one place.
        model = slot.job_finished(job.state, job.model_sha256, job.error, now, job.id)
        if model is not None:
            self.store.set_verified_model(slot.id, model["sha256"], model["since"],
                                          model["job_id"])
        job.done.set()
        with self._lock:
            self._live.pop(job.id, None)
        if error is None:
            log.info("job=%s device=%s succeeded model=%s", job.id, slot.id,
                     job.model_sha256[:16])
        else:
            log.warning("job=%s device=%s %s: %s", job.id, slot.id, job.state, error)

    def _save(self, job: Job) -> None:
        try:
            self.store.update_job(job.to_dict())
        except Exception:
            log.exception("job=%s could not be saved", job.id)

    # ---------------------------------------------------------------------- query

    def get(self, job_id: str) -> dict[str, Any]:
        """The job (live or from history); ``unknown_job`` (404) if none."""
        with self._lock:
            live = self._live.get(job_id)
        if live is not None:
            return live.to_dict()
        stored = self.store.get_job(job_id)
        if stored is None:
            raise InputError("unknown_job", f"no job {job_id[:64]!r}", job=job_id[:64])
        return stored

    def wait(self, job_id: str, seconds: float, stopping: threading.Event | None = None
             ) -> dict[str, Any]:
        """The job after it ended or ``seconds`` passed (capped by ``max_wait_s``)."""
        with self._lock:
            live = self._live.get(job_id)
        if live is not None and seconds > 0:
            limit = Deadline(min(seconds, self.max_wait_s))
            while not live.done.wait(min(0.5, limit.remaining())):
                if limit.expired or (stopping is not None and stopping.is_set()):
                    break
        return self.get(job_id)

    def list(self, device_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        jobs = self.store.list_jobs(device_id, limit)
        with self._lock:
            live = dict(self._live)
        # The store is written at each step; prefer the in-memory object for running jobs.
        return [live[j["id"]].to_dict() if j["id"] in live else j for j in jobs]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Request cancellation; ``job_finished`` (409) if the job already ended."""
        with self._lock:
            live = self._live.get(job_id)
        if live is None:
            job = self.get(job_id)  # 404 if unknown
            raise InputError("job_finished", f"job {job_id} already ended ({job['state']})",
                             job=job_id, state=job["state"])
        live.deadline.cancel()
        log.info("job=%s device=%s cancel requested", live.id, live.device_id)
        return live.to_dict()

    def active(self) -> list[Job]:
        with self._lock:
            return list(self._live.values())

    def shutdown(self, grace_s: float) -> None:
        """Cancel every running job and wait up to ``grace_s`` for them to stop; a job still
        running after that is recorded as interrupted."""
        self._closing = True
        jobs = self.active()
        for job in jobs:
            job.deadline.cancel()
            log.info("job=%s device=%s cancelled for shutdown", job.id, job.device_id)
        limit = Deadline(grace_s)
        for job in jobs:
            job.done.wait(limit.remaining())
        for job in jobs:
            if job.done.is_set():
                continue
            with job.lock:
                job.state = "interrupted"
                job.finished_at = utc_now()
                job.error = make_error("interrupted", f"job {job.id} did not stop within "
                                       f"{grace_s}s of shutdown", device=job.device_id).to_dict()
            self._save(job)
            log.warning("job=%s device=%s interrupted by shutdown", job.id, job.device_id)
