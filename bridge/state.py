"""Persistent bridge state in the state directory: job history and each device's last
verified model, in SQLite (standard library).

A job cut off by a restart or crash is marked ``interrupted`` when the next bridge opens the
store, so history never shows a job as running (or succeeded) that no process is running.
A lock file makes sure only one bridge uses a state directory at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from hal.errors import InfraError, make_error

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    model_sha256 TEXT NOT NULL,
    steps TEXT NOT NULL DEFAULT '[]',
    report TEXT,
    error TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_device ON jobs (device_id, seq);
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS device_models (
    device_id TEXT PRIMARY KEY,
    model_sha256 TEXT NOT NULL,
    since TEXT NOT NULL,
    job_id TEXT NOT NULL
);
"""

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")


class StateStore:
    """Thread-safe access to ``<state_dir>/bridge.sqlite3``."""

    def __init__(self, state_dir: Path, *, history: int = 1000) -> None:
        self.state_dir = Path(state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise InfraError("unavailable", f"cannot create the state directory "
                             f"{self.state_dir}: {exc.strerror}", state_dir=str(self.state_dir),
                             fix="create it and give the bridge user write access") from None
        self._lock_fd = self._take_lock()
        self.history = history
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.state_dir / "bridge.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        self._seq = int(row[0])

    def _take_lock(self) -> int:
        path = self.state_dir / "bridge.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InfraError("unavailable", f"another bridge is already using the state "
                             f"directory {self.state_dir}", state_dir=str(self.state_dir),
                             fix="stop the other bridge or give this one its own state_dir") \
                from None
        return fd

    def close(self) -> None:
        """Close the database and release the state directory."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -------------------------------------------------------------------------- jobs

    def mark_interrupted(self, now: str) -> list[str]:
        """Mark every job left queued/running by a previous process as interrupted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device_id, state FROM jobs WHERE state IN (?, ?)", ACTIVE_STATES
            ).fetchall()
            for job_id, device_id, state in rows:
                err = make_error("interrupted", f"job {job_id} was {state} when the bridge "
                                 "stopped; its outcome is unknown", device=device_id,
                                 previous_state=state).to_dict()
                self._db.execute(
                    "UPDATE jobs SET state='interrupted', finished_at=?, error=? WHERE id=?",
                    (now, json.dumps(err), job_id),
                )
                log.warning("job=%s device=%s marked interrupted (was %s)", job_id, device_id,
                            state)
        return [r[0] for r in rows]

    def insert_job(self, job: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self._db.execute(
                "INSERT INTO jobs (id, device_id, state, created_at, started_at, finished_at,"
                " model_sha256, steps, report, error, seq) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (job["id"], job["device_id"], job["state"], job["created_at"],
                 job["started_at"], job["finished_at"], job["model_sha256"],
                 json.dumps(job["steps"]), _dump(job["report"]), _dump(job["error"]),
                 self._seq),
            )
            self._prune()

    def update_job(self, job: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state=?, started_at=?, finished_at=?, steps=?, report=?, "
                "error=? WHERE id=?",
                (job["state"], job["started_at"], job["finished_at"], json.dumps(job["steps"]),
                 _dump(job["report"]), _dump(job["error"]), job["id"]),
            )

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list_jobs(self, device_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            if device_id is None:
                rows = self._db.execute(
                    f"SELECT {_COLS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {_COLS} FROM jobs WHERE device_id=? ORDER BY seq DESC LIMIT ?",
                    (device_id, limit),
                ).fetchall()
        return [_row(r) for r in rows]

    def last_job(self, device_id: str) -> dict[str, Any] | None:
        jobs = self.list_jobs(device_id, 1)
        return jobs[0] if jobs else None

    def _prune(self) -> None:
        # Called with the lock held: keep the newest `history` finished jobs.
        self._db.execute(
            "DELETE FROM jobs WHERE seq <= ? AND state NOT IN (?, ?)",
            (self._seq - self.history, *ACTIVE_STATES),
        )

    # ------------------------------------------------------------------ device models

    def set_verified_model(self, device_id: str, sha256: str, since: str, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO device_models (device_id, model_sha256, since, job_id) "
                "VALUES (?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET "
                "model_sha256=excluded.model_sha256, since=excluded.since, job_id=excluded.job_id",
                (device_id, sha256, since, job_id),
            )

    def verified_model(self, device_id: str) -> dict[str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT model_sha256, since, job_id FROM device_models WHERE device_id=?",
                (device_id,),
            ).fetchone()
        if row is None:
            return None
        return {"sha256": row[0], "since": row[1], "job_id": row[2]}


_COLS = ("id, device_id, state, created_at, started_at, finished_at, model_sha256, steps, "
         "report, error")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _row(row: tuple) -> dict[str, Any]:
    (job_id, device_id, state, created, started, finished, sha, steps, report, error) = row
    return {
        "id": job_id,
        "device_id": device_id,
        "state": state,
        "created_at": created,
        "started_at": started,
        "finished_at": finished,
        "model_sha256": sha,
        "steps": json.loads(steps),
        "report": json.loads(report) if report else None,
        "error": json.loads(error) if error else None,
    }
