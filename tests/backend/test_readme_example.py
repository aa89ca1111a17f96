"""The worked example of backend_stub/README.md, executed as written (marker ``train``: it
trains a real model): the block between ``<!-- worked-example:begin -->`` and ``-end -->`` is
run by bash in an empty directory against the real processes it starts (a bridge with a
virtual board, the backend, its TensorFlow workers). Only the two port numbers are replaced by
free ones, so several test runs on one machine do not collide; everything else is the README's
text, so the README and this test cannot drift."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "backend_stub" / "README.md"


def worked_example() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- worked-example:begin -->\n```sh\n(.*?)```\n"
                      r"<!-- worked-example:end -->", text, re.S)
    assert block, "backend_stub/README.md lost its worked-example markers"
    return block.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_block_uses_the_documented_defaults():
    """Not train-marked: the example names the real default ports and every command the
    CLI has (a renamed command breaks this at once, not only in the train suite)."""
    from click.testing import CliRunner

    from backend_stub.cli import cli
    from bridge.config import BridgeConfig

    script = worked_example()
    assert "--port 8090" in script and "http://127.0.0.1:8090" in script
    assert "port = 5000" in script and "http://127.0.0.1:5000" in script
    assert BridgeConfig().server.port == 5000
    serve = next(p for p in cli.commands["serve"].params if p.name == "port")
    assert serve.default == 8090
    for line in script.splitlines():
        if line.startswith("tinyml-backend "):
            words = line.split("#")[0].split()[1:]
            path = [w for w in words[:2] if not w.startswith("-") and not w[0].isdigit()]
            r = CliRunner().invoke(cli, [*path, "--help"])
            assert r.exit_code == 0, (line, r.output)


@pytest.mark.train
@pytest.mark.timeout(900)
def test_worked_example_runs_as_written(tmp_path):
    backend_port, bridge_port = _free_port(), _free_port()
    script = worked_example().replace("8090", str(backend_port)).replace(
        "5000", str(bridge_port))
    work = tmp_path / "example"
    work.mkdir()
    (work / "example.sh").write_text("set -euo pipefail\n" + script, encoding="utf-8")
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYML_",))}
    env.update(HOME=str(work), PATH=f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=str(REPO))
    log = work / "output.log"
    # Output to a file: the background servers keep their copy of it open after bash ends.
    with log.open("wb") as out_file:
        proc = subprocess.Popen(["bash", "example.sh"], cwd=work, env=env,
                                stdout=out_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        proc.wait(timeout=840)
    finally:
        # The background bridge and backend belong to the script's process group.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGTERM:
                import time

                time.sleep(3)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out[-6000:]
    assert "wrote shapes.zip: 60 48x48 images" in out
    assert "epoch 10/10" in out
    assert re.search(r"compilation 1 succeeded for nano33ble", out), out[-4000:]
    assert "verified boot on nano-1" in out
    assert re.search(r"rollout 1 succeeded: 1 device", out), out[-4000:]
    assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG"
    db = work / "tinyml-backend" / "backend.sqlite3"
    assert db.exists() and (db.stat().st_mode & 0o777) == 0o600
