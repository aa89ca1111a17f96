"""Persistent bridge state in the state directory: job history and each device's last
verified model, in SQLite (standard library).

A job cut off by a restart or crash is marked ``interrupted`` when the next bridge opens the
store, so history never shows a job as running (or succeeded) that no process is running.
A lock file makes sure only one bridge uses a state directory at a time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from hal.errors import HalError, InfraError, make_error, storage_error

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


DB_NAME = "bridge.sqlite3"
LOCK_NAME = "bridge.lock"
# A small file deleted when the disk fills, so the writes that record a finished job (and a
# verified model) still fit; re-created at the next start.
RESERVE_NAME = "disk-reserve"
RESERVE_BYTES = 64 * 1024


def state_error(exc: BaseException, path: Path, doing: str) -> HalError:
    """A failed state read or write as a classified infrastructure error naming ``path`` and
    the fix (it is never the caller's fault and never a bug of the bridge)."""
    storage = storage_error(exc, path)
    if storage is not None:
        return storage
    text = str(exc)
    lower = text.lower()
    if isinstance(exc, PermissionError) or "unable to open" in lower or \
            "readonly" in lower:
        return InfraError("read_only", f"cannot {doing} {path}: {text}: give the bridge user "
                          f"write access to {path.parent} (and the files in it)",
                          path=str(path), fix=f"chown/chmod {path.parent} for the bridge user")
    if "not a database" in lower or "malformed" in lower or "corrupt" in lower:
        return InfraError("state_corrupt", f"{path} is not a usable SQLite database ({text}): "
                          f"stop the bridge, move it aside (mv {path} {path}.corrupt) and start "
                          "again; job history and verified models then start empty",
                          path=str(path), fix=f"mv {path} {path}.corrupt")
    if "locked" in lower or "busy" in lower:
        return InfraError("unavailable", f"{path} is locked by another process ({text}): stop "
                          "whatever else opens it", path=str(path),
                          fix="only the bridge may open its database")
    return InfraError("unavailable", f"cannot {doing} {path}: {type(exc).__name__}: {text}",
                      path=str(path), fix="check the file system the state directory is on")


class StateStore:
    """Thread-safe access to ``<state_dir>/bridge.sqlite3``.

    Every failure to open, read or write is a classified infrastructure error naming the file
    and the fix (:func:`state_error`); on a full disk the small reserve file is given up once
    so that the record of a finished job still fits. A database deleted while the bridge runs
    is noticed at the next write, logged, and re-created with everything the open (deleted)
    file still held."""

    def __init__(self, state_dir: Path, *, history: int = 1000) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise state_error(exc, self.state_dir, "create the state directory") from None
        self._lock_fd = self._take_lock()
        self.history = history
        self._lock = threading.Lock()
        self.last_error: HalError | None = None
        try:
            fresh = not self.path.exists()
            if fresh and any(self.state_dir.glob(RESERVE_NAME)):
                log.warning("state database %s is missing (deleted?): starting with an empty "
                            "job history and no verified models", self.path)
            self._db = self._open()
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        except HalError:
            self._release_lock()
            raise
        except (sqlite3.Error, OSError) as exc:
            self._release_lock()
            raise state_error(exc, self.path, "open") from None
        self._seq = int(row[0])
        self._reserve()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                             timeout=10)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed "
                                            f"(quick_check: {check[0] if check else None})")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        self._inode = os.stat(self.path).st_ino
        return db

    def _reserve(self) -> None:
        path = self.state_dir / RESERVE_NAME
        try:
            if not path.exists() or path.stat().st_size < RESERVE_BYTES:
                with open(path, "wb") as handle:
                    handle.write(b"\0" * RESERVE_BYTES)
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            log.warning("could not keep the %d byte disk reserve %s: %s", RESERVE_BYTES, path,
                        state_error(exc, path, "write"))

    def _release_reserve(self) -> bool:
        try:
            (self.state_dir / RESERVE_NAME).unlink()
        except OSError:
            return False
        log.warning("disk full under %s: released the %d byte reserve to record the job; "
                    "free space there", self.state_dir, RESERVE_BYTES)
        return True

    def _take_lock(self) -> int:
        path = self.state_dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise state_error(exc, path, "open the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InfraError("unavailable", f"another bridge is already using the state "
                             f"directory {self.state_dir} (it holds {path}): stop the other "
                             "bridge or give this one its own state_dir",
                             state_dir=str(self.state_dir), path=str(path),
                             fix="stop the other bridge or give this one its own state_dir") \
                from None
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def close(self) -> None:
        """Close the database and release the state directory."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._release_lock()

    def _write(self, sql: str, params: tuple, after: Any = None, *, final: bool = True) -> None:
        """One write (with the lock held by the caller), classified on failure; a full disk
        gives up the reserve and tries once more -- only for a ``final`` record (a job's end,
        a verified model), so progress updates cannot use up the room the outcome needs."""
        self._check_replaced()
        for attempt in (1, 2):
            try:
                self._db.execute(sql, params)
                if after is not None:
                    after()
                self.last_error = None
                return
            except sqlite3.Error as exc:
                error = state_error(exc, self.path, "write")
            if attempt == 1 and final and error.code == "disk_full" and \
                    self._release_reserve():
                continue
            self.last_error = error
            raise error

    def _check_replaced(self) -> None:
        """The database file was deleted (or replaced) under a running bridge: say so, and
        carry on in a new file holding everything the old one (still open) had."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        except OSError:
            return
        if inode == self._inode:
            return
        log.error("state database %s was deleted or replaced while the bridge runs; "
                  "re-creating it from the open copy", self.path)
        old = self._db
        try:
            jobs = old.execute("SELECT * FROM jobs").fetchall()
            models = old.execute("SELECT * FROM device_models").fetchall()
            if inode is not None:
                self.path.rename(self.path.with_name(f"{DB_NAME}.replaced"))
            self._db = self._open()
            self._db.executemany(f"INSERT OR REPLACE INTO jobs VALUES ({','.join('?' * 11)})",
                                 jobs)
            self._db.executemany("INSERT OR REPLACE INTO device_models VALUES (?,?,?,?)",
                                 models)
        except (sqlite3.Error, OSError) as exc:
            raise state_error(exc, self.path, "re-create") from None
        finally:
            if self._db is not old:
                with contextlib.suppress(sqlite3.Error):
                    old.close()

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
                self._write(
                    "UPDATE jobs SET state='interrupted', finished_at=?, error=? WHERE id=?",
                    (now, json.dumps(err), job_id),
                )
                log.warning("job=%s device=%s marked interrupted (was %s)", job_id, device_id,
                            state)
        return [r[0] for r in rows]

    def _check_room(self) -> None:
        """Refuse a new job while the state directory's file system is full (less than the
        reserve left): it could record neither its steps nor, reliably, its outcome."""
        try:
            stat = os.statvfs(self.state_dir)
        except OSError:
            return
        if stat.f_bavail * stat.f_frsize < RESERVE_BYTES:
            raise storage_error(OSError(errno.ENOSPC, "no space left"), self.path)

    def insert_job(self, job: dict[str, Any]) -> None:
        """Record a new job; ``disk_full`` when the state directory has no room for it."""
        self._check_room()
        with self._lock:
            self._write(
                "INSERT INTO jobs (id, device_id, state, created_at, started_at, finished_at,"
                " model_sha256, steps, report, error, seq) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (job["id"], job["device_id"], job["state"], job["created_at"],
                 job["started_at"], job["finished_at"], job["model_sha256"],
                 json.dumps(job["steps"]), _dump(job["report"]), _dump(job["error"]),
                 self._seq + 1),
                after=self._prune_next, final=False,
            )

    def update_job(self, job: dict[str, Any]) -> None:
        with self._lock:
            self._write(
                "UPDATE jobs SET state=?, started_at=?, finished_at=?, steps=?, report=?, "
                "error=? WHERE id=?",
                (job["state"], job["started_at"], job["finished_at"], json.dumps(job["steps"]),
                 _dump(job["report"]), _dump(job["error"]), job["id"]),
                final=job["state"] in FINAL_STATES,
            )

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise state_error(exc, self.path, "read") from None

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read(f"SELECT {_COLS} FROM jobs WHERE id=?", (job_id,))
        return _row(rows[0]) if rows else None

    def list_jobs(self, device_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        if device_id is None:
            rows = self._read(f"SELECT {_COLS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._read(f"SELECT {_COLS} FROM jobs WHERE device_id=? ORDER BY seq DESC "
                              "LIMIT ?", (device_id, limit))
        return [_row(r) for r in rows]

    def last_job(self, device_id: str) -> dict[str, Any] | None:
        jobs = self.list_jobs(device_id, 1)
        return jobs[0] if jobs else None

    def _prune_next(self) -> None:
        # Called with the lock held after an insert: count it, keep the newest `history`.
        self._seq += 1
        self._db.execute(
            "DELETE FROM jobs WHERE seq <= ? AND state NOT IN (?, ?)",
            (self._seq - self.history, *ACTIVE_STATES),
        )

    # ------------------------------------------------------------------ device models

    def set_verified_model(self, device_id: str, sha256: str, since: str, job_id: str) -> None:
        with self._lock:
            self._write(
                "INSERT INTO device_models (device_id, model_sha256, since, job_id) "
                "VALUES (?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET "
                "model_sha256=excluded.model_sha256, since=excluded.since, job_id=excluded.job_id",
                (device_id, sha256, since, job_id),
            )

    def verified_model(self, device_id: str) -> dict[str, str] | None:
        rows = self._read("SELECT model_sha256, since, job_id FROM device_models WHERE "
                          "device_id=?", (device_id,))
        row = rows[0] if rows else None
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
