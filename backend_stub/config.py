"""Backend settings: the database, the token, and every limit, each with a default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_DB_URL = "TINYML_BACKEND_DB_URL"
ENV_TOKEN = "TINYML_BACKEND_TOKEN"
ENV_DATA_DIR = "TINYML_BACKEND_DATA"


def default_data_dir() -> Path:
    """Where the default SQLite file lives: $TINYML_BACKEND_DATA or ~/.local/state/..."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    return Path.home() / ".local" / "state" / "tinyml-backend"


def default_database_url() -> str:
    """$TINYML_BACKEND_DB_URL, else a SQLite file in the data directory."""
    env = os.environ.get(ENV_DB_URL)
    if env:
        return env
    return f"sqlite:///{default_data_dir() / 'backend.sqlite3'}"


@dataclass(frozen=True)
class DatasetLimits:
    """What an uploaded dataset archive may contain. Every limit is checked while reading,
    never trusted from the zip headers."""

    max_upload_bytes: int = 1 << 30  # the zip file itself
    max_entries: int = 50_000
    max_total_uncompressed_bytes: int = 2 << 30
    max_entry_bytes: int = 16 << 20  # one decompressed image file
    max_compression_ratio: float = 100.0  # decompressed / compressed, per entry
    max_width: int = 4096
    max_height: int = 4096
    max_pixels: int = 4096 * 4096
    min_width: int = 8
    min_height: int = 8
    min_labels: int = 2
    min_images_per_label: int = 5
    formats: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF", "WEBP")
    max_listed_problems: int = 200  # offending entries listed in one error


@dataclass(frozen=True)
class BackendConfig:
    """Everything :func:`backend_stub.app.create_app` needs."""

    database_url: str = field(default_factory=default_database_url)
    token: str | None = None  # None: no authentication (only with --insecure-no-auth)
    limits: DatasetLimits = field(default_factory=DatasetLimits)
    max_parallel_jobs: int = 1  # TensorFlow workers at once; each uses every core
    training_timeout_s: float = 6 * 3600.0
    compile_timeout_s: float = 1800.0
    # Extra environment for worker processes (tests use it for fault injection).
    worker_env: dict[str, str] = field(default_factory=dict)
    bridge_connect_timeout_s: float = 5.0
    bridge_read_timeout_s: float = 30.0
    deploy_timeout_s: float = 900.0  # one deployment, install through verified boot
    migrate: bool = True  # run `alembic upgrade head` when the app starts
