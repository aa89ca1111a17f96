"""The worker process: ``python -m backend_stub.worker {train|compile} ID``.

Started by :class:`backend_stub.runner.JobRunner`, one process per job, with the database URL
in ``TINYML_BACKEND_DB_URL``. It is the only place TensorFlow is imported. It records its pid,
its progress and its end (succeeded or failed with a classified error) in the database and
exits 0 once an end is recorded; any other exit is reported by the runner.

``TINYML_WORKER_FAULT`` (tests only; the backend passes it on from ``worker_env``) injects a
failure after the job's data is loaded and before TensorFlow is imported: ``raise`` (an
unexpected exception), ``exit`` (the process dies with status 3) or ``hang`` (sleeps, to be
cancelled).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from backend_stub.config import ENV_DB_URL
from backend_stub.runner import KINDS, finish
from backend_stub.storage import FAILED, Store
from hal.errors import as_hal_error

log = logging.getLogger("backend_stub.worker")

ENV_FAULT = "TINYML_WORKER_FAULT"


def inject_fault() -> None:
    """Fail on purpose when the tests ask for it (see the module docstring)."""
    fault = os.environ.get(ENV_FAULT, "")
    if fault == "raise":
        raise RuntimeError("injected worker fault")
    if fault == "exit":
        os._exit(3)
    if fault == "hang":
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in KINDS or not args[1].isdigit():
        print("usage: python -m backend_stub.worker {train|compile} ID", file=sys.stderr)
        return 2
    kind, job_id = args[0], int(args[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {kind}-{job_id}: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    url = os.environ.get(ENV_DB_URL)
    if not url:
        print(f"{ENV_DB_URL} is not set", file=sys.stderr)
        return 2
    store = Store(url, migrate=False)
    try:
        if _run_job(store, kind, job_id) and kind == "train":
            chained = _claim_chained(store, job_id)
            if chained is not None:
                _run_job(store, "compile", chained)
    finally:
        store.dispose()
    return 0


def _run_job(store: Store, kind: str, job_id: int) -> bool:
    """Run one job; record a classified failure. True if it succeeded."""
    try:
        if kind == "train":
            from backend_stub.training import run_training

            run_training(store, job_id, inject_fault)
        else:
            from backend_stub.compiling import run_compilation

            run_compilation(store, job_id, inject_fault)
        return True
    except BaseException as exc:  # every end is recorded, classified
        err = as_hal_error(exc)
        if err.code == "internal":
            log.exception("%s job %d crashed", kind, job_id)
        else:
            log.error("%s job %d failed: %s", kind, job_id, err)
        finish(store, kind, job_id, FAILED, err.to_dict())
        return False


def _claim_chained(store: Store, training_id: int) -> int | None:
    """Start the compilation chained to a training, unless it was cancelled meanwhile."""
    from sqlalchemy import update

    from backend_stub.storage import QUEUED, RUNNING, Compilation, Training, utcnow

    with store.session() as s:
        t = s.get(Training, training_id)
        cid = (t.params or {}).get("compilation_id") if t is not None else None
        if cid is None:
            return None
        res = s.execute(update(Compilation).where(Compilation.id == cid,
                                                  Compilation.state == QUEUED)
                        .values(state=RUNNING, started_at=utcnow()))
        return cid if res.rowcount == 1 else None


if __name__ == "__main__":
    sys.exit(main())
