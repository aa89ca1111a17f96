"""The backend against browsers on the same machine and broken database settings (issue 10,
items 2 and 7): Host and Origin checks and CORS-simple content types on a live server
without a token; ``postgresql://`` exactly as the README writes it, against the real
PostgreSQL server; database errors at start as one classified line; the SQLite file 0600;
the database password from a file or the environment, never on the command line."""

from __future__ import annotations

import http.client
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.backend.conftest import LiveServer, dataset_entries, make_zip

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def open_server(make_app, tmp_path):
    """A live server WITHOUT a token (the case a web page could exploit)."""
    app = make_app(f"sqlite:///{tmp_path / 'open.sqlite3'}", token=None,
                   allowed_origins=("https://ui.example",))
    server = LiveServer(app)
    yield server
    server.close()


def _raw(server: LiveServer, method: str, path: str, body: bytes, headers: dict) -> tuple:
    """One request with exactly these headers (requests would set Host itself)."""
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers,
                        skip_accept_encoding=True)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        import json

        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _datasets(server: LiveServer) -> list:
    return requests.get(f"{server.url}/datasets", timeout=10).json()["datasets"]


def test_cross_site_requests_without_a_token_are_refused(open_server):
    """Reproductions: a multipart upload with a foreign Origin and `Host: attacker.example`,
    and bodies sent as text/plain (both what a browser sends cross-site without a
    preflight). Before: the text/plain upload created a dataset."""
    zip_body = make_zip(dataset_entries(("a", "b"), 3))
    boundary = "XyZ"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; "
                 f"filename=\"d.zip\"\r\nContent-Type: application/zip\r\n\r\n").encode() \
        + zip_body + f"\r\n--{boundary}--\r\n".encode()
    status, body = _raw(open_server, "POST", "/datasets?name=evil", multipart, {
        "Host": "attacker.example", "Origin": "http://attacker.example",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 400 and body["code"] == "bad_request", body
    assert "attacker.example" in body["message"] and body["detail"]["fix"]

    # DNS rebinding alone (no Origin): the Host names no address the backend listens as.
    status, body = _raw(open_server, "POST", "/datasets?name=evil", zip_body, {
        "Host": "attacker.example:8090", "Content-Type": "application/zip"})
    assert status == 400 and "Host" in body["message"], body

    # A foreign Origin with a right Host and a JSON-ish type.
    status, body = _raw(open_server, "POST", "/datasets?name=evil", zip_body, {
        "Host": "127.0.0.1", "Origin": "http://attacker.example",
        "Content-Type": "application/zip"})
    assert status == 403 and body["code"] == "bad_request", body

    # CORS-simple content types on state-changing endpoints.
    for ctype in ("text/plain", "text/plain; charset=utf-8",
                  "application/x-www-form-urlencoded"):
        status, body = _raw(open_server, "POST", "/datasets?name=evil", zip_body, {
            "Host": "127.0.0.1", "Content-Type": ctype})
        assert status == 415 and body["code"] == "bad_request", (ctype, body)
    status, body = _raw(open_server, "POST", "/bridges",
                        b'{"name": "x", "url": "http://10.0.0.1"}',
                        {"Host": "localhost", "Content-Type": "text/plain"})
    assert status == 415, body
    assert _datasets(open_server) == []
    assert requests.get(f"{open_server.url}/bridges", timeout=10).json()["bridges"] == []

    # What is allowed: loopback names (with ports, IPv6 in brackets), the allow-listed
    # origin, and the API's own content types.
    for host in ("127.0.0.1:1234", "localhost", "LOCALHOST.", "[::1]:8090"):
        status, body = _raw(open_server, "GET", "/health", b"", {"Host": host})
        assert status == 200, (host, body)
    status, body = _raw(open_server, "POST", "/datasets?name=ok", zip_body, {
        "Host": "127.0.0.1", "Origin": "https://ui.example",
        "Content-Type": "application/zip"})
    assert status == 201, body
    assert [d["name"] for d in _datasets(open_server)] == ["ok"]


def test_allowed_hosts_configurable(make_app, tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'h.sqlite3'}",
                   allowed_hosts=("backend.lab.example",))
    c = app.test_client()
    assert c.get("/health", headers={"Host": "backend.lab.example:8090"}).status_code == 200
    assert c.get("/health", headers={"Host": "localhost"}).status_code == 400
    anyhost = make_app(f"sqlite:///{tmp_path / 'a.sqlite3'}", allowed_hosts=("*",))
    assert anyhost.test_client().get("/health",
                                     headers={"Host": "x.example"}).status_code == 200


def test_405_names_the_allowed_methods(sqlite_client):
    r = sqlite_client.put("/health")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS"


# ------------------------------------------------------------------------------ database


def _serve(args: list[str], env: dict | None = None, timeout: float = 60):
    """``tinyml-backend serve`` as a real process; returns (proc, url or None)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend_stub", "serve", "--port", "0", "--token",
         "hardening-token-1", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, **(env or {})}, start_new_session=True)
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    return proc, match.group(1) if match else None


def _stop(proc) -> int:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    finally:
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.postgres
def test_postgresql_url_exactly_as_in_the_readme(postgres, tmp_path):
    """Reproduction: `postgresql://` (the README's form) crashed with ModuleNotFoundError
    psycopg. The alembic command line and `serve` both take it."""
    url = postgres.new_database()
    assert url.startswith("postgresql://")
    alembic = subprocess.run(
        [str(Path(sys.executable).with_name("alembic")), "-c",
         "backend_stub/migrations/alembic.ini", "-x", f"url={url}", "upgrade", "head"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert alembic.returncode == 0, alembic.stderr
    proc, base = _serve(["--database", url])
    try:
        assert base, proc.stderr.read()
        health = requests.get(f"{base}/health", timeout=10).json()
        assert health["database"] == "postgresql"
    finally:
        assert _stop(proc) == 0


@pytest.mark.postgres
def test_database_password_from_a_file_or_the_environment(postgres, tmp_path):
    secret = "s3cret-Pw-for-tests"
    url = postgres.password_database(secret)
    pw_file = tmp_path / "db.password"
    pw_file.write_text(secret + "\n")
    pw_file.chmod(0o600)
    for extra, env in ((["--database-password-file", str(pw_file)], {}),
                       ([], {"TINYML_BACKEND_DB_PASSWORD_FILE": str(pw_file)}),
                       ([], {"TINYML_BACKEND_DB_PASSWORD": secret})):
        proc, base = _serve(["--database", url, *extra], env)
        try:
            assert base, proc.stderr.read()
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert secret.encode() not in cmdline  # `ps` never shows it
            assert requests.get(f"{base}/health", timeout=10).json()["database"] == "postgresql"
        finally:
            assert _stop(proc) == 0


@pytest.mark.postgres
def test_database_errors_at_start_are_one_classified_line(postgres, tmp_path):
    """Reproduction: a wrong password or an unreachable database printed ~146 lines of
    traceback."""
    url = postgres.password_database("right-password-1")
    cases = {
        "password authentication failed": (["--database", url],
                                           {"TINYML_BACKEND_DB_PASSWORD": "wrong"}),
        "Connection refused": (["--database", "postgresql://u@127.0.0.1:1/x"], {}),
        "bad_config": (["--database", "mysql://u@127.0.0.1/x"], {}),
        "cannot read the database password file": (
            ["--database", url, "--database-password-file", str(tmp_path / "missing")], {}),
    }
    for needle, (args, env) in cases.items():
        proc, base = _serve(args, env)
        assert base is None
        code = proc.wait(60)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        lines = err.strip().splitlines()
        assert code == 1, (needle, err)
        assert len(lines) == 1 and lines[0].startswith("error "), (needle, err)
        assert needle in lines[0] and "Traceback" not in err, (needle, err)
        assert "wrong" not in lines[0]  # never the password


def test_sqlite_file_is_private(tmp_path):
    """Reproduction: the SQLite file (it holds bridge tokens) was created 0644."""
    data = tmp_path / "state"
    proc, base = _serve([], {"TINYML_BACKEND_DATA": str(data)})
    try:
        assert base, proc.stderr.read()
        r = requests.post(f"{base}/bridges", json={"name": "b", "url": "http://10.0.0.1",
                                                   "token": "bridge-secret-token"},
                          headers={"Authorization": "Bearer hardening-token-1"}, timeout=10)
        assert r.status_code == 201
    finally:
        assert _stop(proc) == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = sorted(data.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files]

    # A file left 0644 by an older version is tightened at start.
    db = data / "backend.sqlite3"
    db.chmod(0o644)
    proc, base = _serve([], {"TINYML_BACKEND_DATA": str(data)})
    try:
        assert base, proc.stderr.read()
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
    finally:
        assert _stop(proc) == 0


def test_documented_name_rules_and_existing_labels(sqlite_client):
    """Names given through the API follow the documented pattern (Unicode letters, spaces,
    ASCII punctuation but '/' and '\\'); a label read from a zip folder (archive rules) can
    always be looked up, renamed and removed by its name."""
    from tests.backend.conftest import upload

    c = sqlite_client
    ds = upload(c, "café:1", dataset_entries(("a;b", "été"), 3)).get_json()
    assert ds["name"] == "café:1", ds
    for bad in (".x", " x", "x ", "a/b", "\u200bx", "x" * 65):
        r = c.post(f"/datasets/{ds['id']}/labels", json={"name": bad})
        assert r.status_code == 422 and r.get_json()["code"] == "bad_option", (bad, r.get_json())
    r = c.patch(f"/datasets/{ds['id']}/labels/a;b", json={"name": "a b (c)"})
    assert r.status_code == 200 and "a b (c)" in r.get_json()["labels"], r.get_json()
    assert c.delete(f"/datasets/{ds['id']}/labels/été").status_code == 200
    assert c.delete(f"/datasets/{ds['id']}/labels/nope").status_code == 404
