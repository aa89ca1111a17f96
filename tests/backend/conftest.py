"""Backend fixtures: a real PostgreSQL cluster (session), apps on SQLite and PostgreSQL, a
real waitress server, and builders of image zips (good and hostile)."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend_stub.config import BackendConfig, DatasetLimits

PASSWORD_ROLE = "tinyml_pw"
PG_BIN = Path(os.environ.get("TINYML_PG_BIN", "/usr/lib/postgresql/15/bin"))
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ------------------------------------------------------------------------------ PostgreSQL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A throw-away PostgreSQL cluster owned by the ``postgres`` user (tests run as root,
    and PostgreSQL refuses to run as root), listening on 127.0.0.1 and a private socket."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="tinyml-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.sock.mkdir()
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
        self._ids = itertools.count(1)

    def _run(self, *argv: str, timeout: float = 60) -> None:
        cmd = [str(PG_BIN / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}\n"
                               f"{proc.stderr}")

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL is not installed ({PG_BIN}/initdb missing); "
                               "run scripts/setup.sh")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        # One role must give a real password (wrong-password and password-file tests); the
        # first matching line wins, so it goes before initdb's trust lines.
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
                       + hba.read_text())
        # The server runs in the foreground as our child and gets SIGQUIT (immediate
        # shutdown) if this process dies, so a killed test run leaves no cluster behind.
        self._log = open(self.base / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.sock), "-h", "127.0.0.1", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=self._demote_and_tie_to_parent)
        import time

        import psycopg2

        end = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                 dbname="postgres", connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("PostgreSQL did not start:\n" + (
                        self.base / "server.log").read_text(errors="replace")) from None
                time.sleep(0.1)

    def _demote_and_tie_to_parent(self) -> None:
        """In the child before exec: become ``postgres`` (it refuses to run as root), then
        ask the kernel for SIGQUIT when the parent dies (set after setuid, which clears it)."""
        import ctypes
        import pwd

        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        ctypes.CDLL(None).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG

    def stop(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def password_database(self, password: str) -> str:
        """A fresh database owned by :data:`PASSWORD_ROLE`, which logs in with ``password``
        (scram-sha-256); its URL without the password."""
        import psycopg2

        url = self.new_database()
        name = url.rsplit("/", 1)[1]
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"SELECT 1 FROM pg_roles WHERE rolname = '{PASSWORD_ROLE}'")
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f"{verb} ROLE {PASSWORD_ROLE} LOGIN PASSWORD %s", (password,))
            cur.execute(f'ALTER DATABASE "{name}" OWNER TO {PASSWORD_ROLE}')
        conn.close()
        return f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{self.port}/{name}"

    def url(self, db: str = "postgres") -> str:
        # Exactly the README's URL form (SQLAlchemy maps postgresql:// to psycopg 3).
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg2

        name = f"t{os.getpid()}_{next(self._ids)}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'backend.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()


# ------------------------------------------------------------------------------ apps

SMALL_LIMITS = DatasetLimits(min_images_per_label=3)


def make_config(db_url: str, **overrides) -> BackendConfig:
    return replace(BackendConfig(database_url=db_url, token=TOKEN, limits=SMALL_LIMITS),
                   **overrides)


@pytest.fixture
def make_app():
    """Build apps (closed at teardown): ``make_app(db_url, **config overrides)``."""
    from backend_stub.app import create_app

    apps = []

    def build(db_url: str, **overrides):
        app = create_app(make_config(db_url, **overrides))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["tinyml_backend"].close()


@pytest.fixture
def app(make_app, db_url):
    return make_app(db_url)


@pytest.fixture
def client(app):
    """The Flask test client with the bearer token on every request."""
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    return c


@pytest.fixture
def sqlite_app(make_app, tmp_path):
    return make_app(f"sqlite:///{tmp_path / 'backend.sqlite3'}")


@pytest.fixture
def sqlite_client(sqlite_app):
    c = sqlite_app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    return c


class LiveServer:
    """An app served by waitress on a real socket, in a thread."""

    def __init__(self, app) -> None:
        from waitress.server import create_server

        self.app = app
        self.server = create_server(app, host="127.0.0.1", port=0, threads=4,
                                    max_request_body_size=1 << 31)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.run()
        except OSError:
            if not self._closing.is_set():  # closing the sockets ends select() with EBADF
                raise

    def close(self) -> None:
        self._closing.set()
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture
def live_server(sqlite_app) -> Iterator[LiveServer]:
    server = LiveServer(sqlite_app)
    yield server
    server.close()


# ------------------------------------------------------------------------------ data


def png_bytes(width: int = 16, height: int = 16, seed: int = 0, mode: str = "L",
              level: int | None = None, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    arr = rng.integers(0, 100, shape, dtype=np.uint8)
    if level is not None:
        arr = (arr + level).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=None).convert(mode).save(buf, fmt)
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], *, attrs: dict[str, int] | None = None,
             compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``name -> bytes``; ``attrs`` sets an entry's Unix mode (symlinks, devices)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            mode = (attrs or {}).get(name)
            info.external_attr = (mode if mode is not None else stat.S_IFREG | 0o644) << 16
            if mode is not None:
                info.create_system = 3
            zf.writestr(info, data)
    return buf.getvalue()


def dataset_entries(labels=("cat", "dog"), per_label: int = 4, size: int = 16,
                    prefix: str = "") -> dict[str, bytes]:
    """``<label>/<n>.png`` images; each label has its own brightness so it can be learnt."""
    out = {}
    for k, label in enumerate(labels):
        for i in range(per_label):
            out[f"{prefix}{label}/{i:03d}.png"] = png_bytes(size, size, seed=100 * k + i,
                                                            level=k * 150)
    return out


def upload(client, name: str, entries_or_bytes, **kw):
    data = entries_or_bytes if isinstance(entries_or_bytes, bytes) else make_zip(
        entries_or_bytes, **kw)
    return client.post(f"/datasets?name={name}", data=data, content_type="application/zip")


# ------------------------------------------------------------------------------ bridges

BRIDGE_TOKEN = "bridge-token-abcdef0123"
VIRTUAL_DEVICE = "vnano-1"


class RealBridge:
    """A real ``tinyml-bridge serve --config <tmp> --port 0`` child process with
    ``virtual-nano33ble`` devices (by default one, ``vnano-1``); ``devices`` maps a device
    name to its extra driver settings (e.g. ``{"fault": "never_boot"}``, ``{"upload_kbps":
    40}``)."""

    def __init__(self, work: Path, devices: dict[str, dict] | None = None) -> None:
        from bridge.client import LocalBridge

        self.devices = devices or {VIRTUAL_DEVICE: {}}
        work.mkdir(parents=True, exist_ok=True)
        config = work / "bridge.toml"
        tables = ""
        for name, settings in self.devices.items():
            extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
            tables += f'[[devices]]\nname = "{name}"\ndriver = "virtual-nano33ble"\n{extra}'
        config.write_text(
            f'state_dir = "{work / "state"}"\n'
            "[server]\nhost = \"127.0.0.1\"\nport = 0\n"
            f'token = "{BRIDGE_TOKEN}"\n'
            "[discovery]\ndrivers = []\n" + tables,
            encoding="utf-8",
        )
        self.local = LocalBridge(config, log_path=work / "bridge.log")
        self.url = self.local.start()
        self.pid = self.local.pid
        self._wait_connected()

    def _wait_connected(self, timeout: float = 30.0) -> None:
        import time

        import requests

        end = time.monotonic() + timeout
        waiting = set(self.devices)
        while time.monotonic() < end:
            for name in sorted(waiting):
                r = requests.get(f"{self.url}/devices/{name}", timeout=5,
                                 headers={"Authorization": f"Bearer {BRIDGE_TOKEN}"})
                if r.status_code == 200 and r.json().get("connected"):
                    waiting.discard(name)
            if not waiting:
                return
            time.sleep(0.1)
        raise RuntimeError(f"virtual boards {sorted(waiting)} never connected:\n" +
                           "\n".join(list(self.local.output)[-30:]))

    def stop(self) -> int:
        return self.local.stop(timeout=20)


@pytest.fixture(scope="module")
def real_bridge(tmp_path_factory) -> Iterator[RealBridge]:
    bridge = RealBridge(tmp_path_factory.mktemp("bridge"))
    yield bridge
    bridge.stop()
