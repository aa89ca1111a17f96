"""Issue 10 items 3 and 5: full disks, read-only and broken state files. Real small tmpfs
mounts (the tests run as root, as CI does); every failure is a classified infrastructure
error naming the path and the fix, a job always ends and wakes its waiters, and a verified
install is never reported as anything else."""

from __future__ import annotations

import contextlib
import errno
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge.conftest import TFLM_MODEL, BridgeProcess, config_text

MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4
SLOW = """
[[devices]]
name = "fake1"
driver = "test-fake"
serial_number = "SN0001"
install_s = 3.0
"""


def files(model: bytes = MODEL) -> dict:
    return {"model": ("model.tflite", model, "application/octet-stream")}


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                          str(path)], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator:
    """``tmpfs(name, size)`` -> a fresh tmpfs mounted at tmp_path/name, unmounted after."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "1m") -> Path:
        path = tmp_path / name
        _mount(path, size)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write zeros into ``directory`` until its file system is full."""
    path = directory / name
    with open(path, "ab", buffering=0) as handle:
        chunk = b"\0" * 4096
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Small writes may still fit in the last partial block: take those too.
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as handle:
        while True:
            handle.write(b"\0")
    return path


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, timeout=30)


def start_fails(workdir: Path, text: str, **kw) -> str:
    proc = BridgeProcess(workdir, text, **kw)
    with pytest.raises(RuntimeError) as err:
        proc.start()
    assert proc.proc.returncode == 1
    message = str(err.value)
    assert "Traceback" not in message and "internal" not in message, message
    return message


# -------------------------------------------------------------- item 5: state files


def test_corrupt_database_is_a_start_up_error_naming_file_and_fix(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = state / "bridge.sqlite3"
    db.write_bytes(b"this is not a database, it was overwritten by something" * 100)
    message = start_fails(tmp_path, config_text(state))
    assert "state_corrupt" in message and str(db) in message
    assert f"mv {db} {db}.corrupt" in message


def test_truncated_database_pages_are_corrupt_too(tmp_path, start_bridge):
    state = tmp_path / "state"
    bridge = start_bridge(config_text(state))
    assert bridge.post("/devices/fake1/install?wait=15", files=files()).json()["state"] \
        == "succeeded"
    assert bridge.stop() == 0
    db = state / "bridge.sqlite3"
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page
    db.write_bytes(bytes(data))
    message = start_fails(tmp_path, config_text(state))
    assert "state_corrupt" in message and str(db) in message


def test_read_only_state_dir_is_a_start_up_error_naming_file_and_fix(tmp_path, tmpfs,
                                                                      start_bridge):
    state = tmpfs("state", "4m")
    bridge = start_bridge(config_text(state))
    assert bridge.stop() == 0
    remount(state, "ro")
    message = start_fails(tmp_path, config_text(state))
    assert "read_only" in message and str(state / "bridge.lock") in message
    assert "read-write" in message or "write access" in message
    # An empty read-only directory the same.
    empty = tmpfs("empty", "1m")
    remount(empty, "ro")
    message = start_fails(tmp_path, config_text(empty))
    assert "read_only" in message and str(empty) in message


def test_state_dir_locked_by_another_bridge(tmp_path, start_bridge):
    state = tmp_path / "state"
    first = start_bridge(config_text(state))
    message = start_fails(tmp_path, config_text(state))
    assert "another bridge" in message and str(state / "bridge.lock") in message
    assert first.get("/health").status_code == 200


def test_missing_database_starts_fresh_with_a_warning(tmp_path, start_bridge):
    state = tmp_path / "state"
    bridge = start_bridge(config_text(state))
    assert bridge.stop() == 0
    (state / "bridge.sqlite3").unlink()
    for extra in ("bridge.sqlite3-wal", "bridge.sqlite3-shm"):
        with contextlib.suppress(FileNotFoundError):
            (state / extra).unlink()
    again = start_bridge(config_text(state))
    assert again.get("/jobs").json()["jobs"] == []
    assert f"state database {state / 'bridge.sqlite3'} is missing" in again.log()


def test_database_deleted_while_running_is_recreated_with_its_contents(tmp_path,
                                                                       start_bridge):
    state = tmp_path / "state"
    bridge = start_bridge(config_text(state))
    first = bridge.post("/devices/fake1/install?wait=15", files=files()).json()
    assert first["state"] == "succeeded"
    (state / "bridge.sqlite3").unlink()
    second = bridge.post("/devices/fake2/install?wait=15", files=files()).json()
    assert second["state"] == "succeeded"
    assert "was deleted or replaced while the bridge runs" in bridge.log()
    assert bridge.stop() == 0
    again = start_bridge(config_text(state))
    jobs = {j["id"]: j["state"] for j in again.get("/jobs").json()["jobs"]}
    assert jobs == {first["id"]: "succeeded", second["id"]: "succeeded"}
    assert again.get("/devices/fake1").json()["model"]["sha256"] == first["model_sha256"]


# ----------------------------------------------------------------- item 3: full disks


def test_disk_full_during_a_job_never_turns_success_into_a_lie(tmp_path, tmpfs, start_bridge):
    """The reproduction: SQLite on a 1 MB tmpfs, filled while a job runs."""
    state = tmpfs("state", "1m")
    bridge = start_bridge(config_text(state, SLOW))
    job = bridge.post("/devices/fake1/install", files=files()).json()
    fill(state)
    done = bridge.get(f"/jobs/{job['id']}?wait=45").json()
    assert done["state"] == "succeeded", done  # the device verified it: that is the truth
    device = bridge.get("/devices/fake1").json()
    assert device["state"] == "running" and device["model"]["sha256"] == job["model_sha256"]
    # Waiting on the finished job does not block; the next install is a clean 503.
    assert bridge.get(f"/jobs/{job['id']}?wait=45").json()["state"] == "succeeded"
    refused = bridge.post("/devices/fake1/install", files=files())
    assert refused.status_code == 503, refused.text
    error = refused.json()
    assert error["code"] == "disk_full" and error["class"] == "infrastructure"
    assert str(state / "bridge.sqlite3") in error["message"] and error["detail"]["fix"]
    started = time.monotonic()
    assert bridge.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10  # under the grace: no job was left hanging
    again = start_bridge(config_text(state, SLOW))
    stored = again.get(f"/jobs/{job['id']}").json()
    assert stored["state"] == "succeeded"
    assert again.get("/devices/fake1").json()["model"]["sha256"] == job["model_sha256"]


def test_disk_full_without_reserve_still_ends_the_job_truthfully(tmp_path, tmpfs,
                                                                 start_bridge):
    state = tmpfs("state", "1m")
    bridge = start_bridge(config_text(state, SLOW))
    job = bridge.post("/devices/fake1/install", files=files()).json()
    (state / "disk-reserve").unlink()
    fill(state)
    done = bridge.get(f"/jobs/{job['id']}?wait=45").json()
    assert done["state"] == "succeeded", done
    device = bridge.get("/devices/fake1").json()
    assert device["state"] == "running" and device["model"]["sha256"] == job["model_sha256"]
    # The outcome is true; that it could not be recorded is said beside it.
    assert device["last_error"] is None
    assert device["state_error"]["code"] == "disk_full"
    assert str(state / "bridge.sqlite3") in device["state_error"]["message"]
    assert "could not be saved" in bridge.log()
    # Space again: the record is written at the next job, the history tells the truth.
    (state / "filler").unlink()
    later = bridge.post("/devices/fake1/install?wait=45", files=files(MODEL + b"2")).json()
    assert later["state"] == "succeeded"
    assert f"job={job['id']} saved now" in bridge.log()
    assert bridge.get("/devices/fake1").json()["state_error"] is None
    assert bridge.stop(signal.SIGTERM) == 0
    assert f"job={job['id']} device=fake1 interrupted by shutdown" not in bridge.log()
    again = start_bridge(config_text(state, SLOW))
    assert again.get(f"/jobs/{job['id']}").json()["state"] == "succeeded"


def test_disk_full_during_compile_is_infrastructure(tmp_path, tmpfs):
    """The reproduction: ENOSPC while compiling was `compile_failed` (input) and the job
    stayed running forever; the next install got 500."""
    cache = tmpfs("build-cache", "256k")
    devices = '[[devices]]\nname = "vnano"\ndriver = "virtual-nano33ble"\n'
    text = config_text(tmp_path / "state", devices, extra=f'[arduino]\nbuild_cache = "{cache}"')
    bridge = BridgeProcess(tmp_path, text, fake=False).start()
    try:
        fill(cache)
        resp = bridge.post("/devices/vnano/install?wait=120", files=files(TFLM_MODEL.read_bytes()))
        job = resp.json()
        assert resp.status_code == 200 and job["state"] == "failed", job
        assert job["error"]["code"] == "disk_full", job["error"]
        assert job["error"]["class"] == "infrastructure" and job["error"]["detail"]["fix"]
        again = bridge.post("/devices/vnano/install?wait=120",
                            files=files(TFLM_MODEL.read_bytes()))
        assert again.status_code == 200 and again.json()["error"]["code"] == "disk_full"
        # Space again: the same install goes through.
        (cache / "filler").unlink()
        ok = bridge.post("/devices/vnano/install?wait=120", files=files(TFLM_MODEL.read_bytes()))
        assert ok.json()["state"] == "succeeded", ok.json()
    finally:
        assert bridge.stop() == 0
    assert "Traceback" not in bridge.log()


def test_read_only_build_cache_is_infrastructure(tmp_path, tmpfs):
    cache = tmpfs("build-cache", "4m")
    remount(cache, "ro")
    devices = '[[devices]]\nname = "vnano"\ndriver = "virtual-nano33ble"\n'
    text = config_text(tmp_path / "state", devices, extra=f'[arduino]\nbuild_cache = "{cache}"')
    bridge = BridgeProcess(tmp_path, text, fake=False).start()
    try:
        resp = bridge.post("/devices/vnano/install?wait=120", files=files(TFLM_MODEL.read_bytes()))
        job = resp.json()
        assert job["state"] == "failed", job
        assert job["error"]["code"] == "read_only" and job["error"]["class"] == "infrastructure"
        assert job["error"]["detail"]["fix"]
        assert bridge.get("/devices/vnano").json()["job_id"] is None
    finally:
        assert bridge.stop() == 0
    assert "Traceback" not in bridge.log()
