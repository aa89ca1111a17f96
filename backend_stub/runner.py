"""Runs trainings and compilations as worker processes, outside the web process.

Each job is ``python -m backend_stub.worker <kind> <id>`` started through
:func:`hal.process.run`, in its own session: cancelling a job (or its deadline passing) kills
the worker's whole process group. The worker writes its progress and its result into the
database; when it exits without having recorded an end (killed, crashed, out of memory) the
runner marks the job failed with the exit status and the tail of its output, so a job never
stays "running" forever and the web process is never affected.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
from typing import Any

from sqlalchemy import select, update

from backend_stub.config import ENV_DB_URL, BackendConfig
from backend_stub.datasets import conflict, not_found
from backend_stub.storage import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    Compilation,
    Store,
    Training,
    utcnow,
)
from hal.deadline import Deadline
from hal.errors import Cancelled, HalError, InfraError
from hal.process import run

log = logging.getLogger(__name__)

KINDS: dict[str, type] = {"train": Training, "compile": Compilation}


def finish(store: Store, kind: str, job_id: int, state: str, error: dict | None = None,
           **values: Any) -> bool:
    """Record a job's end, only if it is still running (or queued): the first end wins, so
    a cancel racing with the worker's own result never overwrites it. True if recorded."""
    model = KINDS[kind]
    with store.session() as s:
        res = s.execute(update(model).where(model.id == job_id,
                                            model.state.in_((QUEUED, RUNNING)))
                        .values(state=state, error=error, finished_at=utcnow(), **values))
        return res.rowcount == 1


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class JobRunner:
    """A queue of worker jobs, ``config.max_parallel_jobs`` at a time."""

    def __init__(self, store: Store, config: BackendConfig) -> None:
        self.store = store
        self.config = config
        self._queue: queue.Queue[tuple[str, int]] = queue.Queue()
        self._active: dict[tuple[str, int], Deadline] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Recover after a restart, then start the dispatch threads."""
        self._recover()
        for i in range(max(1, self.config.max_parallel_jobs)):
            t = threading.Thread(target=self._loop, name=f"job-runner-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _recover(self) -> None:
        for kind, model in KINDS.items():
            with self.store.session() as s:
                rows = s.execute(select(model.id, model.state).where(
                    model.state.in_((QUEUED, RUNNING)))).all()
            for job_id, state in rows:
                if state == RUNNING:
                    # Its worker belonged to a previous backend process; it was killed with it
                    # (or is orphaned) and its result can no longer be trusted.
                    finish(self.store, kind, job_id, FAILED, InfraError(
                        "interrupted", "the backend restarted while the job was running").to_dict())
                    log.warning("%s job %d marked interrupted after a restart", kind, job_id)
                else:
                    self._queue.put((kind, job_id))

    def submit(self, kind: str, job_id: int) -> None:
        log.info("%s job %d queued", kind, job_id)
        self._queue.put((kind, job_id))

    def running_count(self) -> int:
        with self._lock:
            return len(self._active)

    def cancel(self, kind: str, job_id: int) -> None:
        """Cancel a queued or running job. Running workers are killed (process group);
        the dispatch thread records the end. 409 if the job has ended already."""
        model = KINDS[kind]
        with self.store.session() as s:
            row = s.get(model, job_id)
            if row is None:
                raise not_found(kind, job_id)
            state = row.state
        if state not in (QUEUED, RUNNING):
            raise conflict(f"{kind} job {job_id} has ended already ({state})", state=state)
        if state == QUEUED and finish(self.store, kind, job_id, CANCELLED,
                                      Cancelled("cancelled before it started").to_dict()):
            log.info("%s job %d cancelled while queued", kind, job_id)
            return
        with self._lock:
            deadline = self._active.get((kind, job_id))
        if deadline is not None:
            log.info("%s job %d: cancelling, killing its worker", kind, job_id)
            deadline.cancel()
            return
        raise conflict(f"{kind} job {job_id} has ended already ({state})", state=state)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop dispatching and kill running workers; their jobs end as ``interrupted``."""
        self._stopping.set()
        with self._lock:
            active = list(self._active.values())
        for d in active:
            d.cancel()
        for t in self._threads:
            t.join(timeout=timeout_s)

    # -- dispatch --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                kind, job_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._run(kind, job_id)
            except Exception:  # the dispatcher must survive anything a job does
                log.exception("%s job %d: runner failure", kind, job_id)
                finish(self.store, kind, job_id, FAILED,
                       {"code": "internal", "message": "the job runner failed", "detail": {},
                        "class": "bug"})

    def _chained_compilation(self, kind: str, job_id: int) -> int | None:
        """The compilation a training runs in its own worker after training, if any."""
        if kind != "train":
            return None
        with self.store.session() as s:
            t = s.get(Training, job_id)
            return (t.params or {}).get("compilation_id") if t is not None else None

    def _end_chained(self, training_id: int, compilation_id: int,
                     outcome: tuple[str, dict | None]) -> None:
        """A chained compilation the worker did not end: the training's end decides."""
        with self.store.session() as s:
            t = s.get(Training, training_id)
            t_state, t_error = (t.state, t.error) if t is not None else (FAILED, None)
        if t_state in (FAILED, CANCELLED) and t_error:
            err = {**t_error, "message": f"training {training_id} did not succeed: "
                                         f"{t_error.get('message')}"}
            state = CANCELLED if t_state == CANCELLED else FAILED
        else:
            state, err = outcome
        finish(self.store, "compile", compilation_id, state, err)

    def _run(self, kind: str, job_id: int) -> None:
        model = KINDS[kind]
        with self.store.session() as s:
            res = s.execute(update(model).where(model.id == job_id, model.state == QUEUED)
                            .values(state=RUNNING, started_at=utcnow()))
            if res.rowcount != 1:
                return  # cancelled (or deleted) while queued
        chained = self._chained_compilation(kind, job_id)
        timeout = (self.config.training_timeout_s if kind == "train"
                   else self.config.compile_timeout_s)
        if chained is not None:
            timeout += self.config.compile_timeout_s
        deadline = Deadline(timeout, what=f"{kind} job {job_id}")
        with self._lock:
            self._active[(kind, job_id)] = deadline
            if chained is not None:  # cancelling the compilation kills the shared worker
                self._active[("compile", chained)] = deadline
        env = {**os.environ, ENV_DB_URL: self.store.url, **self.config.worker_env,
               "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "backend_stub.worker", kind, str(job_id)]
        log.info("%s job %d: worker starting", kind, job_id)
        outcome: tuple[str, dict | None]
        try:
            result = run(argv, deadline, env=env,
                         on_line=lambda line: log.debug("%s job %d worker: %s", kind, job_id,
                                                        line))
            if result.ok:
                outcome = (FAILED, {
                    "code": "internal", "class": "bug",
                    "message": "the worker exited without recording a result",
                    "detail": {"stderr_tail": result.stderr[-2000:]}})
            else:
                outcome = (FAILED, InfraError(
                    "interrupted", f"the worker process {_exit_text(result.returncode)}",
                    returncode=result.returncode,
                    stderr_tail=result.stderr[-2000:]).to_dict())
        except Cancelled as exc:
            if self._stopping.is_set():
                outcome = (FAILED, InfraError("interrupted", "the backend stopped while the "
                                              "job was running").to_dict())
            else:
                outcome = (CANCELLED, Cancelled(f"{kind} job {job_id} cancelled; worker "
                                                "killed", after_s=exc.detail.get("after_s")
                                                ).to_dict())
        except HalError as exc:  # timeout, or the interpreter vanished
            outcome = (FAILED, exc.to_dict())
        finally:
            with self._lock:
                self._active.pop((kind, job_id), None)
                if chained is not None:
                    self._active.pop(("compile", chained), None)
        if chained is not None:
            self._end_chained(job_id, chained, outcome)
        # Only takes effect when the worker did not record its own end.
        if finish(self.store, kind, job_id, outcome[0], outcome[1]):
            log.warning("%s job %d %s: %s", kind, job_id, outcome[0],
                        (outcome[1] or {}).get("message"))
        else:
            with self.store.session() as s:
                log.info("%s job %d ended: %s", kind, job_id, s.get(model, job_id).state)
