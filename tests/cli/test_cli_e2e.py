"""The real ``tinyml-bridge`` CLI, run as subprocesses against a real bridge daemon (waitress
on a real socket) with virtual Nano 33 BLE boards (stand-in arduino-cli, pseudo-terminal, real
TFLM interpreter) and a pseudo-terminal board the test writes lines into."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.client import BridgeClient
from tests.cli.conftest import REPO, Bridge, PtyBoard, run_cli

SHAPES = REPO / "samples" / "models" / "shapes_int8.tflite"
SHAPES_DESC = REPO / "samples" / "models" / "shapes_int8.json"
HELLO = REPO / "tests" / "data" / "tflm-examples" / "hello_world_int8.tflite"


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def wait_lines(bridge: Bridge, device: str, count: int, timeout: float = 10) -> list[dict]:
    with bridge.client() as client:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lines = client.observe(device, lines=50)["lines"]
            if len(lines) >= count:
                return lines
            time.sleep(0.05)
    raise AssertionError(f"{device}: fewer than {count} lines")


# ------------------------------------------------------------------------------ devices


def test_devices_text_and_json(bridge: Bridge):
    proc = run_cli("devices", env=bridge.env())
    assert proc.returncode == 0, proc.stderr
    head, *rows = proc.stdout.splitlines()
    assert head.split()[:5] == ["ID", "DRIVER", "BOARD", "ADDRESS", "STATE"]
    assert {r.split()[0] for r in rows} == {"vnano-1", "vnano-slow", "pty-nano"}
    proc = run_cli("devices", "--json", env=bridge.env())
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert {d["id"] for d in data["devices"]} == {"vnano-1", "vnano-slow", "pty-nano"}
    proc = run_cli("devices", "vnano-1", "--json", env=bridge.env())
    assert json.loads(proc.stdout)["driver"] == "virtual-nano33ble"


def test_unknown_device_is_classified(bridge: Bridge):
    proc = run_cli("devices", "no-such-board", env=bridge.env())
    assert proc.returncode == 1
    assert "error unknown_device" in proc.stderr
    no_traceback(proc)
    proc = run_cli("observe", "../../etc", "--json", env=bridge.env())
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] in ("bad_request", "unknown_device", "not_found")


# ------------------------------------------------------------------------------ install


def test_install_wait_verified(bridge: Bridge):
    proc = run_cli("install", "vnano-1", str(SHAPES), "--vectors", str(SHAPES_DESC),
                   env=bridge.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("validate", "fit_check", "compile", "upload", "verify_boot"):
        assert step in out
    assert "verified boot: device vnano-1 booted model af5285ae154dc240" in out
    assert "\r" not in out  # not a terminal: plain lines, no redrawing
    with bridge.client() as client:
        dev = client.device("vnano-1")
    assert dev["state"] == "running" and dev["model"]["sha256"].startswith("af5285ae")
    # the labels came from the sample's description: the board prints them
    lines = wait_lines(bridge, "vnano-1", 3)
    labels = {r["line"].get("label") for r in lines if r["line"]["kind"] == "inference"}
    assert labels and labels <= {"blank", "square", "stripes"}


def test_install_failure_is_exit_1_with_code_and_numbers(bridge: Bridge):
    # shapes_int8 needs about 13 KB of arena: the board's real TFLM must refuse 1 KB.
    proc = run_cli("install", "vnano-1", str(SHAPES), "--arena", "1024", env=bridge.env())
    assert proc.returncode == 1
    assert "error alloc_failed (fit)" in proc.stdout
    assert "arena_bytes: 1024" in proc.stdout
    assert "verified boot" not in proc.stdout
    no_traceback(proc)
    proc = run_cli("install", "vnano-1", str(SHAPES), "--arena", "1024", "--json",
                   env=bridge.env())
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == "alloc_failed" and err["class"] == "fit"
    assert err["job"]["state"] == "failed" and err["job"]["report"] is None


def test_install_rejects_bad_models(bridge: Bridge, tmp_path: Path):
    png = tmp_path / "photo.tflite"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    for path, codes in ((png, ("model_not_tflite",)), (empty, ("model_empty", "bad_request"))):
        proc = run_cli("install", "vnano-1", str(path), "--json", env=bridge.env())
        assert proc.returncode == 1, proc.stdout
        assert json.loads(proc.stdout)["code"] in codes
        no_traceback(proc)
    big = tmp_path / "big.tflite"
    with big.open("wb") as fh:
        fh.truncate(9 * 1024 * 1024)
    proc = run_cli("install", "vnano-1", str(big), "--json", env=bridge.env())
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] in ("payload_too_large", "model_too_large")


def test_install_progress_on_a_terminal(bridge: Bridge):
    """On a TTY the running step is a redrawn spinner line."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "install", "vnano-1",
                             str(SHAPES)], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=bridge.env(), cwd=REPO)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        code = proc.wait(30)
    text = out.decode("utf-8", "replace")
    assert code == 0, text
    assert "\r\x1b[K" in text  # the live line was redrawn in place
    assert "verified boot" in text


def test_no_wait_jobs_and_cancel(bridge: Bridge):
    # A model no other test compiles: identical builds are reused, and this one must
    # really sit in the (30 s) compile when it is cancelled.
    proc = run_cli("install", "vnano-slow", str(HELLO), "--no-wait", "--json",
                   env=bridge.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = json.loads(proc.stdout)["id"]
    # a second install on the busy device is refused, naming the running job
    proc = run_cli("install", "vnano-slow", str(HELLO), "--json", env=bridge.env())
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == "device_busy" and job_id in json.dumps(err["detail"])
    # the job is listed while it runs
    proc = run_cli("jobs", "--device", "vnano-slow", env=bridge.env())
    assert proc.returncode == 0 and job_id in proc.stdout
    with bridge.client() as client:  # let it reach the (30 s) compile
        deadline = time.monotonic() + 20
        running: list[str] = []
        while running != ["compile"] and time.monotonic() < deadline:
            time.sleep(0.1)
            running = [s["name"] for s in client.job(job_id)["steps"]
                       if s["status"] == "started"]
    assert running == ["compile"]
    proc = run_cli("cancel", job_id, "--wait", "--wait-timeout", "30", env=bridge.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"job {job_id} cancelled" in proc.stdout
    proc = run_cli("jobs", job_id, "--json", env=bridge.env())
    job = json.loads(proc.stdout)
    assert job["state"] == "cancelled" and job["report"] is None
    # cancelling an ended job is a classified failure
    proc = run_cli("cancel", job_id, env=bridge.env())
    assert proc.returncode == 1 and "error" in proc.stderr
    no_traceback(proc)
    proc = run_cli("jobs", "--json", "--limit", "50", env=bridge.env())
    assert job_id in [j["id"] for j in json.loads(proc.stdout)["jobs"]]


# ------------------------------------------------------------------------------ observe


def test_observe_readable_lines(bridge: Bridge, pty_board: PtyBoard):
    pty_board.write('{"t":"boot","v":1,"sha":"8d4a5db2f66c0534","arena":3072,"used":2648,'
                    '"fw":"1.0.0","board":"nano33ble"}')
    pty_board.inference("square", (0.02, 0.97, 0.01))
    pty_board.write('{"t":"err","code":"invoke_failed","msg":"Invoke() returned 1"}')
    pty_board.write(b"Mbed OS \xe2\x9c\x93 hello \x1b[31m")
    wait_lines(bridge, "pty-nano", 4)
    proc = run_cli("observe", "pty-nano", "--lines", "4", env=bridge.env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    assert "boot: model 8d4a5db2f66c0534 allocated its tensors (arena 3,072 B" in lines[0]
    assert "square  scores [0.020 0.970 0.010]  latency 1.50 ms" in lines[1]
    assert "device error invoke_failed: Invoke() returned 1" in lines[2]
    assert "[raw] Mbed OS \u2713 hello" in lines[3] and "\x1b" not in lines[3]
    proc = run_cli("observe", "pty-nano", "--lines", "2", "--json", env=bridge.env())
    data = json.loads(proc.stdout)
    assert [r["line"]["kind"] for r in data["lines"]] == ["error", "raw"]


def test_observe_follow_streams_live_lines(bridge: Bridge, pty_board: PtyBoard):
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "observe", "pty-nano",
                             "--follow", "--lines", "0", "--for", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=bridge.env(), cwd=REPO)
    try:
        assert "following pty-nano" in proc.stderr.readline()
        sent = [pty_board.inference(f"live{i}") for i in range(3)]
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    got = [ln for ln in out.splitlines() if "live" in ln]
    assert len(got) == 3, out  # nothing before --lines 0's start, nothing twice
    for i, (n, line) in enumerate(zip(sent, got, strict=True)):
        assert f"#{n} live{i}" in line


def test_observe_follow_count_json(bridge: Bridge, pty_board: PtyBoard):
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "observe", "pty-nano",
                             "--follow", "--lines", "0", "--count", "2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=bridge.env(), cwd=REPO)
    try:
        time.sleep(1.5)
        for i in range(4):
            pty_board.inference(f"count{i}")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2
    assert [r["line"]["label"] for r in records] == ["count0", "count1"]


# ------------------------------------------------------------------------------- doctor


def test_doctor_remote_and_local(bridge: Bridge):
    proc = run_cli("doctor", "--json", env=bridge.env())
    report = json.loads(proc.stdout)
    names = [s["section"] for s in report["sections"]]
    assert any(n.startswith("bridge http://127.0.0.1") for n in names)
    assert "driver virtual-nano33ble" in names and "driver nano33ble" in names
    # exit status follows the checks: 1 exactly when one failed
    assert proc.returncode == (1 if report["failures"] else 0)
    bridge_checks = report["sections"][0]["checks"]
    assert [c["check"] for c in bridge_checks] == ["bridge reachable", "token"]
    assert all(c["ok"] for c in bridge_checks)
    virtual = next(s for s in report["sections"] if s["section"] == "driver virtual-nano33ble")
    assert virtual["available"] and all(c["ok"] for c in virtual["checks"])
    # local: the drivers' own checks through hal; owned devices are not opened twice
    proc = run_cli("doctor", "--config", str(bridge.config), env=bridge.env())
    assert "driver virtual-nano33ble (local)" in proc.stdout
    assert "devices owned by the running bridge (local)" in proc.stdout
    assert proc.returncode in (0, 1)
    no_traceback(proc)


def test_doctor_all_ok_exits_0_and_failure_exits_1(tmp_path: Path):
    """A bridge with only a virtual board passes; one whose Nano port is missing fails."""
    from bridge.client import LocalBridge
    from tests.cli.conftest import write_config

    token = "doctor-token-0123456789"
    good = write_config(tmp_path / "good.toml", tmp_path / "s1", token,
                        '[[devices]]\nname = "v1"\ndriver = "virtual-nano33ble"\n')
    with LocalBridge(good, log_path=tmp_path / "good.log") as daemon:
        env = Bridge(daemon, token, good).env()
        proc = run_cli("doctor", env=env)
        assert proc.returncode == 0, proc.stdout
        assert "0 failed" in proc.stdout
    # Daemon stopped: local checks only, with a device whose port does not exist.
    bad = write_config(tmp_path / "bad.toml", tmp_path / "s2", token,
                       '[[devices]]\nname = "gone"\ndriver = "nano33ble"\n'
                       'port = "/dev/ttyACM-does-not-exist"\n')
    proc = run_cli("doctor", "--config", str(bad), "--no-remote", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    gone = next(s for s in report["sections"] if s["section"].startswith("device gone"))
    assert any(not c["ok"] and c["fix"] for c in gone["checks"])


# ------------------------------------------------------------------ usage and connection


@pytest.mark.parametrize("args", [
    ("install",),
    ("install", "vnano-1"),
    ("install", "vnano-1", "/no/such/model.tflite"),
    ("install", "vnano-1", str(HELLO), "--arena", "-5"),
    ("install", "vnano-1", str(HELLO), "--labels", "a,,b"),
    ("observe", "vnano-1", "--count", "3"),
    ("observe", "vnano-1", "--lines", "lots"),
    ("devices", "--timeout", "soon"),
    ("jobs", "--limit", "0"),
    ("cancel",),
    ("doctor", "--local"),
    ("no-such-command",),
])
def test_bad_usage_exits_2(args):
    proc = run_cli(*args, env={**os.environ, "TINYML_BRIDGE_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert "Usage:" in proc.stderr or "Error" in proc.stderr
    no_traceback(proc)


def test_bad_vectors_file_exits_2(tmp_path):
    bad = tmp_path / "v.json"
    bad.write_text('{"input_vectors": [["x"]]}')
    proc = run_cli("install", "vnano-1", str(HELLO), "--vectors", str(bad))
    assert proc.returncode == 2 and "vector 0" in proc.stderr


def test_unreachable_bridge_is_exit_1_with_a_clear_message():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for args in (("devices",), ("install", "x", str(HELLO)), ("observe", "x", "--follow"),
                 ("jobs",), ("cancel", "0123456789abcdef")):
        proc = run_cli(*args, "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
        assert proc.returncode == 1, (args, proc.stderr)
        assert f"cannot reach the bridge at http://127.0.0.1:{port}" in proc.stderr
        no_traceback(proc)
    proc = run_cli("doctor", "--url", f"http://127.0.0.1:{port}")
    assert proc.returncode == 1 and "FAIL bridge reachable" in proc.stdout


def test_wrong_or_missing_token_is_exit_1(bridge: Bridge, tmp_path: Path):
    proc = run_cli("devices", env=bridge.env(TINYML_BRIDGE_TOKEN="wrong-token-0123456789"))
    assert proc.returncode == 1 and "error unauthorized" in proc.stderr
    no_traceback(proc)
    env = bridge.env()
    del env["TINYML_BRIDGE_TOKEN"]
    proc = run_cli("devices", "--json", env=env)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == "unauthorized"
    proc = run_cli("doctor", env=env)
    assert proc.returncode == 1 and "FAIL token: unauthorized" in proc.stdout


def test_connection_from_token_file_and_config(bridge: Bridge, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(bridge.token + "\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TINYML_BRIDGE_")}
    proc = run_cli("devices", "--url", bridge.url, "--token-file", str(token_file), env=base)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("devices", env={**base, "TINYML_BRIDGE_URL": bridge.url,
                                   "TINYML_BRIDGE_TOKEN_FILE": str(token_file)})
    assert proc.returncode == 0, proc.stderr
    port = int(bridge.url.rsplit(":", 1)[1])
    client_cfg = tmp_path / "client.toml"
    client_cfg.write_text(f'[server]\nhost = "0.0.0.0"\nport = {port}\n'
                          f'token_file = "{token_file}"\n')
    proc = run_cli("devices", "--config", str(client_cfg), env=base)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("devices", env={**base, "TINYML_BRIDGE_CONFIG": str(client_cfg)})
    assert proc.returncode == 0, proc.stderr


def test_help_on_every_command_has_examples():
    for cmd in ("devices", "install", "observe", "jobs", "cancel", "doctor"):
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0
        assert "Examples:" in proc.stdout and f"tinyml-bridge {cmd}" in proc.stdout
        assert "--json" in proc.stdout and "--url" in proc.stdout


# --------------------------------------------------------------------------------- demo


def test_demo_end_to_end():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("TINYML_BRIDGE_")})
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "verified boot: device vnano-1 booted model" in out
    assert "error alloc_failed (fit)" in out
    assert "bridge exited with status 0" in out
    assert "demo done" in out


def test_follow_survives_a_bridge_restart(tmp_path: Path):
    """observe --follow resumes after the daemon restarts (same port), says so, and goes on
    printing the board's new lines."""
    from bridge.client import LocalBridge
    from tests.cli.conftest import write_config

    board = PtyBoard()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "restart-token-0123456789"
    config = write_config(tmp_path / "bridge.toml", tmp_path / "state", token,
                          f'[[devices]]\nname = "p1"\ndriver = "nano33ble"\n'
                          f'port = "{board.port}"\n')
    first = LocalBridge(config, args=("--port", str(port)), log_path=tmp_path / "1.log")
    first.start()
    second = None
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "observe", "p1", "--follow",
                             "--lines", "0", "--count", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=Bridge(first, token, config).env(), cwd=REPO)
    try:
        assert "following p1" in proc.stderr.readline()
        board.inference("before")
        deadline = time.monotonic() + 10
        with BridgeClient(first.url, token) as client:
            while not any(r["line"].get("label") == "before"
                          for r in client.observe("p1", lines=5)["lines"]):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(0.5)  # the stream delivered it
        assert first.stop(timeout=20) == 0
        second = LocalBridge(config, args=("--port", str(port)), log_path=tmp_path / "2.log")
        second.start()
        # the client reconnects within its back-off; then the board speaks again
        time.sleep(3)
        board.inference("after")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        if second is not None:
            assert second.stop(timeout=20) == 0
        board.close()
    assert proc.returncode == 0, err
    labels = [ln for ln in out.splitlines() if "before" in ln or "after" in ln]
    assert len(labels) == 2 and "before" in labels[0] and "after" in labels[1], out
    assert "reconnected after" in err
