"""``tinyml-backend``: a real ``serve`` process on a free port, driven by the CLI commands
(in-process with click's runner for speed, and as real subprocesses for exit statuses)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from backend_stub.cli import cli
from tests.backend.conftest import BRIDGE_TOKEN, VIRTUAL_DEVICE, dataset_entries, make_zip

TOKEN = "cli-token-42"


class Served:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend_stub", "serve", "--port", "0", "--database",
             f"sqlite:///{tmp / 'cli.sqlite3'}", "--token", TOKEN],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.url = match.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    srv = Served(tmp_path_factory.mktemp("cli"), env={"TINYML_WORKER_FAULT": "raise"})
    yield srv
    assert srv.stop() == 0  # SIGTERM: clean stop


def run(served, *args: str, json_out: bool = False):
    argv = [*args, "--url", served.url, "--token", TOKEN] + (["--json"] if json_out else [])
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    return result


def test_dataset_commands(served, tmp_path):
    z = tmp_path / "pets.zip"
    z.write_bytes(make_zip(dataset_entries(("cat", "dog"), 5)))
    r = run(served, "datasets", "upload", str(z))
    assert r.exit_code == 0, r.output
    assert "dataset 1 'pets': 10 images (cat=5, dog=5)" in r.output
    r = run(served, "datasets", "list", json_out=True)
    assert json.loads(r.output)["datasets"][0]["labels"] == {"cat": 5, "dog": 5}
    out = tmp_path / "back.zip"
    r = run(served, "datasets", "download", "1", "--out", str(out))
    assert r.exit_code == 0
    with zipfile.ZipFile(out) as zf:
        assert len(zf.namelist()) == 10
    assert run(served, "datasets", "add-label", "1", "bird").exit_code == 0
    r = run(served, "datasets", "rename-label", "1", "bird", "parrot")
    assert "parrot=0" in r.output
    img = tmp_path / "p.png"
    img.write_bytes(dataset_entries(("x",), 1)["x/000.png"])
    assert run(served, "datasets", "add-image", "1", "parrot", str(img)).exit_code == 0
    r = run(served, "datasets", "images", "1", "--label", "parrot", json_out=True)
    image_id = json.loads(r.output)["images"][0]["id"]
    assert run(served, "datasets", "remove-image", "1", str(image_id)).exit_code == 0
    assert run(served, "datasets", "remove-label", "1", "parrot").exit_code == 0

    bad = tmp_path / "bad.zip"
    bad.write_bytes(make_zip({"../x.png": b"x", "cat/a.png": b"y"}))
    r = run(served, "datasets", "upload", str(bad))
    assert r.exit_code == 1
    assert "dataset_invalid" in r.output and "../x.png: '..' in the path" in r.output
    r = run(served, "datasets", "show", "999", json_out=True)
    assert r.exit_code == 1 and json.loads(r.output)["code"] == "not_found"


def test_train_failure_is_exit_1_and_plots_are_files(served, tmp_path):
    z = tmp_path / "t.zip"
    z.write_bytes(make_zip(dataset_entries(("a", "b"), 5)))
    ds = json.loads(run(served, "datasets", "upload", str(z), "--name", "t",
                        json_out=True).output)["id"]
    # The server's workers have an injected fault: the training must fail, visibly.
    r = run(served, "train", str(ds), "--epochs", "2", "--follow")
    assert r.exit_code == 1, r.output
    assert "internal: RuntimeError: injected worker fault" in r.output
    tid = json.loads(run(served, "trainings", "list", json_out=True).output)["trainings"][0]["id"]
    r = run(served, "trainings", "curves", str(tid), "--out", str(tmp_path / "c.png"))
    assert r.exit_code == 1 and "not_found" in r.output
    r = run(served, "train", str(ds), "--conv-filters", "8,x")
    assert r.exit_code == 2
    r = run(served, "train", str(ds), "--epochs", "0")
    assert r.exit_code == 2
    r = run(served, "compile", str(tid))
    assert r.exit_code == 1 and "only a succeeded training" in r.output


def test_bridge_commands(served, real_bridge):
    r = run(served, "bridges", "add", "lab", "http://user:pw@evil.example")
    assert r.exit_code == 1 and "user information" in r.output
    r = run(served, "bridges", "add", "lab", real_bridge.url, "--bridge-token", BRIDGE_TOKEN,
            json_out=True)
    assert r.exit_code == 0, r.output
    bid = json.loads(r.output)["id"]
    assert BRIDGE_TOKEN not in run(served, "bridges", "list").output
    r = run(served, "bridges", "health", str(bid))
    assert r.exit_code == 0 and "ok" in r.output
    r = run(served, "bridges", "devices", str(bid))
    assert VIRTUAL_DEVICE in r.output and "nano33ble" in r.output
    r = run(served, "observe", str(bid), VIRTUAL_DEVICE, "--lines", "5")
    assert r.exit_code == 0
    r = run(served, "deploy", "12345", "--bridge", str(bid), "--device", VIRTUAL_DEVICE)
    assert r.exit_code == 1 and "not_found" in r.output


def test_real_subprocess_exit_codes(served, tmp_path):
    base = [sys.executable, "-m", "backend_stub"]
    ok = subprocess.run([*base, "datasets", "list", "--url", served.url, "--token", TOKEN],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    denied = subprocess.run([*base, "datasets", "list", "--url", served.url, "--token", "bad",
                             "--json"], capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and json.loads(denied.stdout)["code"] == "unauthorized"
    usage = subprocess.run([*base, "datasets", "download", "1"], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "--out" in usage.stderr
    down = subprocess.run([*base, "datasets", "list", "--url", "http://127.0.0.1:1",
                           "--token", TOKEN], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "unavailable" in down.stderr
    no_token = subprocess.run([*base, "serve", "--port", "0"], capture_output=True, text=True,
                              timeout=60, env={k: v for k, v in os.environ.items()
                                               if k != "TINYML_BACKEND_TOKEN"})
    assert no_token.returncode == 2 and "token is required" in no_token.stderr
    assert "Traceback" not in denied.stderr + usage.stderr + down.stderr + no_token.stderr
