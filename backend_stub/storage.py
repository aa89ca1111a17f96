"""The database: SQLAlchemy 2 models, the engine, and Alembic migrations.

Images, trained models, training curves and compiled artifacts are rows (``LargeBinary``:
BLOB in SQLite, ``bytea`` in PostgreSQL), so one database backup holds everything. PostgreSQL
large objects were considered and not used: a ``bytea`` column is deleted with its row (large
objects need ``lo_unlink`` triggers or ``vacuumlo`` or they leak), it is dumped by a plain
``pg_dump`` of the table, it works the same through SQLite, and every value here is small
enough for it (images are at most ``max_entry_bytes``, 16 MiB by default; models and artifacts
a few MB; ``bytea`` holds up to 1 GB).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Job states shared by trainings, compilations and deployments.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled"
)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    # Stable constraint names, so migrations can refer to them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("label_id", "filename"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class _JobColumns:
    """Columns every background job has (trainings and compilations run in a worker process;
    deployments in a thread that follows a bridge job)."""

    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Training(_JobColumns, Base):
    __tablename__ = "trainings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The model outlives its dataset: deleting a dataset keeps trained models and artifacts.
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True, index=True
    )
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    labels: Mapped[list | None] = mapped_column(JSON, nullable=True)  # class index -> name
    # {"train": [image ids], "validation": [image ids]}: compiling reuses exactly this split.
    split: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    model_keras: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    curves_png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Validation split: {"labels", "float": {"confusion", "precision", "recall", ...}}.
    per_label: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class TrainingEpoch(Base):
    """One epoch's figures, written by the worker as it trains (progress and metrics)."""

    __tablename__ = "training_epochs"
    __table_args__ = (UniqueConstraint("training_id", "epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    training_id: Mapped[int] = mapped_column(
        ForeignKey("trainings.id", ondelete="CASCADE"), index=True
    )
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Compilation(_JobColumns, Base):
    __tablename__ = "compilations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    training_id: Mapped[int] = mapped_column(
        ForeignKey("trainings.id", ondelete="CASCADE"), index=True
    )
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    board: Mapped[str] = mapped_column(String(64))
    artifact: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # {"model": ModelReport.to_dict(), "fit": FitResult.to_dict(), "accuracy": {...}}
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Validation split: {"labels", "float": {...}, "int8": {...}} (backend_stub.metrics).
    per_label: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Held-out vectors drawn evenly across labels, with expected labels and host int8 outputs
    # (backend_stub.agreement.host_vectors).
    vectors: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Bridge(Base):
    __tablename__ = "bridges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(512))
    token: Mapped[str | None] = mapped_column(String(512), nullable=True)  # never listed
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Deployment(_JobColumns, Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    compilation_id: Mapped[int | None] = mapped_column(
        ForeignKey("compilations.id", ondelete="SET NULL"), nullable=True, index=True
    )
    bridge_id: Mapped[int | None] = mapped_column(
        ForeignKey("bridges.id", ondelete="SET NULL"), nullable=True, index=True
    )
    device_id: Mapped[str] = mapped_column(String(128))
    bridge_job_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    bridge_job: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # last seen job
    # The vectors sent (image ids, expected labels, host int8 outputs) and the board's answers
    # compared with them (backend_stub.agreement).
    vectors: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    agreement: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Rollout(_JobColumns, Base):
    """One artifact to many devices across bridges: canary, then waves (rollout.py)."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    compilation_id: Mapped[int | None] = mapped_column(
        ForeignKey("compilations.id", ondelete="SET NULL"), nullable=True, index=True
    )


class RolloutTarget(Base):
    """One device of a rollout: its wave, its deployment once started, its outcome.
    States: pending, deploying, succeeded, failed, cancelled, skipped (never reached)."""

    __tablename__ = "rollout_targets"
    __table_args__ = (UniqueConstraint("rollout_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    wave: Mapped[int] = mapped_column(Integer)  # 0 is the canary wave
    bridge_id: Mapped[int | None] = mapped_column(
        ForeignKey("bridges.id", ondelete="SET NULL"), nullable=True
    )
    device_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    deployment_id: Mapped[int | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL"), nullable=True, index=True
    )
    note: Mapped[str | None] = mapped_column(String(512), nullable=True)


# ------------------------------------------------------------------------------ engine


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets WAL (the worker writes progress while the web
    process reads), a busy timeout and enforced foreign keys (cascading deletes)."""
    if _is_sqlite(url):
        db_path = make_url(url).database
        if db_path and db_path != ":memory:":
            private_sqlite_file(Path(db_path))
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # libpq's connect_timeout: an unreachable server is an error in seconds, not minutes.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


def private_sqlite_file(path: Path) -> None:
    """Create the SQLite file (and its directory) readable by its owner only: it holds the
    bridges' tokens. An existing file is tightened to 0600 (SQLite gives its -wal and -shm
    files the database file's mode)."""
    import os
    import stat

    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("database file %s was mode %o; now 0600 (it holds bridge tokens)",
                        path, mode)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
            side.chmod(0o600)


def database_error(url: str, exc: BaseException) -> Exception:
    """A database that cannot be opened at start, as one classified line (never a
    traceback): the URL without its password, the driver's first line, and a fix."""
    from hal.errors import InfraError, InputError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:
        shown = "(unparsable URL)"
    orig = getattr(exc, "orig", None) or exc
    reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
    if isinstance(exc, ModuleNotFoundError) or type(exc).__name__ in (
            "NoSuchModuleError", "ArgumentError"):
        return InputError("bad_config", f"database URL {shown}: {reason}", url=shown,
                          fix="use sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB "
                              "(psycopg 3 is installed with the backend extra)")
    fix = ("check that the directory exists and is writable by this user (set it with "
           "TINYML_BACKEND_DATA or the URL)" if shown.startswith("sqlite") else
           "check that the server runs, and the URL, user and password (give the password "
           "with TINYML_BACKEND_DB_PASSWORD_FILE, not in the URL)")
    return InfraError("unavailable", f"cannot open the database {shown}: {reason}", url=shown,
                      fix=fix)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (``alembic upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    log.info("database schema at head (%s)", engine.url.render_as_string(hide_password=True))


class Store:
    """The engine and a session factory. One per app (and one per worker process)."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        self.url = url
        try:
            self.engine = make_engine(url)
            if migrate:
                upgrade(self.engine)
        except (SQLAlchemyError, ModuleNotFoundError, OSError) as exc:
            log.debug("database start-up failed", exc_info=True)
            raise database_error(url, exc) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any exception."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
