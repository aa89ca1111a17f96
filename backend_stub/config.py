"""Backend settings: the database, the token, and every limit, each with a default.

Environment variables (each also a ``tinyml-backend serve`` option; the option wins):

* ``TINYML_BACKEND_DATA``: directory of the default SQLite file (``backend.sqlite3``).
* ``TINYML_BACKEND_DB_URL``: SQLAlchemy database URL (``sqlite:///...``, ``postgresql://...``).
* ``TINYML_BACKEND_DB_PASSWORD`` / ``TINYML_BACKEND_DB_PASSWORD_FILE``: the database password,
  so it never has to be part of a URL on a command line (``ps`` shows those).
* ``TINYML_BACKEND_TOKEN``: the bearer token clients must send.
* ``TINYML_BACKEND_ALLOWED_HOSTS`` / ``TINYML_BACKEND_ALLOWED_ORIGINS``: comma-separated.
* ``TINYML_BACKEND_URL``: where the CLI finds the backend (``backend_stub.client``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_DB_URL = "TINYML_BACKEND_DB_URL"
ENV_TOKEN = "TINYML_BACKEND_TOKEN"
ENV_DATA_DIR = "TINYML_BACKEND_DATA"
ENV_DB_PASSWORD = "TINYML_BACKEND_DB_PASSWORD"
ENV_DB_PASSWORD_FILE = "TINYML_BACKEND_DB_PASSWORD_FILE"
ENV_ALLOWED_HOSTS = "TINYML_BACKEND_ALLOWED_HOSTS"
ENV_ALLOWED_ORIGINS = "TINYML_BACKEND_ALLOWED_ORIGINS"
# Names a browser on this machine reaches the backend by when it listens on loopback. A
# request naming any other host (DNS rebinding) is refused unless the name is configured.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


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
    # Host header names accepted (port ignored; "*" accepts any). Loopback names by default;
    # `serve --host ADDR` adds ADDR, `--allowed-host NAME` adds names.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    # Origin header values accepted (e.g. "https://ui.example"); any other Origin is refused.
    allowed_origins: tuple[str, ...] = ()
    # Connections (bridge.connections, as for the bridge's [server]): idle and slow clients
    # are bounded per client address and in total (a new connection over a limit closes the
    # oldest idle one), and a request header must be complete within header_timeout_s.
    max_connections: int = 256
    max_connections_per_client: int = 64
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0  # keep-alive connections and stalled bodies
    # Concurrent long-polls (`?wait=`); each holds a worker thread, so `serve` adds this many
    # to `threads`. One beyond the limit gets 503 with Retry-After.
    max_waits: int = 16


def env_list(name: str) -> tuple[str, ...]:
    """A comma-separated environment variable as a tuple of stripped, non-empty items."""
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


def read_secret_file(path: str | Path, what: str) -> str:
    """The first line of a small secret file (a password or token file), bounded."""
    from hal.errors import InputError

    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as exc:
        raise InputError("bad_config", f"cannot read the {what} file {path}: {exc.strerror}",
                         path=str(path)) from None
    if len(data) > 4096:
        raise InputError("bad_config", f"the {what} file {path} is larger than 4 KiB; it "
                         "must hold only the secret", path=str(path))
    text = data.decode("utf-8", "replace").strip().splitlines()
    if not text or not text[0].strip():
        raise InputError("bad_config", f"the {what} file {path} is empty", path=str(path))
    return text[0].strip()


def database_password(password_file: str | None = None) -> str | None:
    """The database password from ``password_file``, else $TINYML_BACKEND_DB_PASSWORD_FILE,
    else $TINYML_BACKEND_DB_PASSWORD; None when none is given."""
    path = password_file or os.environ.get(ENV_DB_PASSWORD_FILE)
    if path:
        return read_secret_file(path, "database password")
    return os.environ.get(ENV_DB_PASSWORD) or None


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` set (a password already in the URL is kept)."""
    if not password:
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)
