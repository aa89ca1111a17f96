"""Storage on SQLite and PostgreSQL: migrations match the models, blobs round-trip, the
worker's progress writes are visible to the web process, cascades hold."""

from __future__ import annotations

import os

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from backend_stub.storage import (
    Base,
    Dataset,
    Image,
    Label,
    Store,
    Training,
    TrainingEpoch,
)


def test_migrations_create_exactly_the_models(db_url):
    store = Store(db_url)  # runs `alembic upgrade head`
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], diff
            tables = set(inspect(conn).get_table_names())
        assert {"alembic_version", "datasets", "labels", "images", "trainings",
                "training_epochs", "compilations", "bridges", "deployments", "rollouts",
                "rollout_targets"} <= tables
        Store(db_url).dispose()  # a second upgrade is a no-op
    finally:
        store.dispose()


def test_blobs_round_trip_and_cascade(db_url):
    store = Store(db_url)
    blob = os.urandom(3 << 20)  # 3 MiB of incompressible bytes, every byte value
    try:
        with store.session() as s:
            ds = Dataset(name="d")
            s.add(ds)
            s.flush()
            lb = Label(dataset_id=ds.id, name="a")
            s.add(lb)
            s.flush()
            s.add(Image(label_id=lb.id, filename="x.png", format="PNG", width=1, height=1,
                        mode="L", size_bytes=len(blob), sha256="0" * 64, data=blob))
            s.add(Training(dataset_id=ds.id, params={"epochs": 1}))
        with store.session() as s:
            assert s.scalar(select(Image.data)) == blob
            s.delete(s.scalar(select(Dataset)))
        with store.session() as s:
            # Labels and images go with the dataset (ON DELETE CASCADE); the training stays,
            # without its dataset (ON DELETE SET NULL).
            assert s.scalar(select(func.count()).select_from(Image)) == 0
            assert s.scalar(select(func.count()).select_from(Label)) == 0
            assert s.scalar(select(Training.dataset_id)) is None
    finally:
        store.dispose()


def test_another_process_sees_progress_writes(db_url):
    """The worker is another process with its own engine: its committed epochs are visible
    to the web process's engine while the job runs."""
    import subprocess
    import sys

    web = Store(db_url)
    try:
        with web.session() as s:
            t = Training(params={})
            s.add(t)
            s.flush()
            tid = t.id
        code = (
            "import sys; from backend_stub.storage import Store, TrainingEpoch\n"
            "s = Store(sys.argv[1], migrate=False)\n"
            "with s.session() as x: x.add(TrainingEpoch(training_id=int(sys.argv[2]), epoch=1,"
            " loss=0.5))\n"
        )
        subprocess.run([sys.executable, "-c", code, db_url, str(tid)], check=True, timeout=60)
        with web.session() as s:
            assert s.scalar(select(TrainingEpoch.loss).where(
                TrainingEpoch.training_id == tid)) == 0.5
    finally:
        web.dispose()
