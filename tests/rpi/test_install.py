"""Installs through the rpi driver onto the sshd "Pi", where the runner runs the real LiteRT
interpreter: verified boots, skipped uploads, rollbacks and every classified failure."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hal.deadline import Deadline
from hal.driver import InstallRequest
from hal.errors import Cancelled, DeviceError, FitError, InfraError, InputError
from hal.protocol import InferenceLine, StatusLine
from hal.rpi.observe import wait_for
from tests.rpi.conftest import model, reference, user_uid
from tests.rpi.sshd import USERS, as_user


def sine_request(**kw) -> InstallRequest:
    ref = reference("sine_int8")
    return InstallRequest(model=model("sine_int8.tflite"),
                          input_vectors=tuple(tuple(r["input"]) for r in ref["reference"]),
                          **kw)


def log_of(drv, sha: str) -> list[str]:
    return Path(f"{drv._facts.workdir}/models/{sha}/runner.log").read_text().splitlines()


def serving(drv, sha: str, timeout: float = 5.0) -> bool:
    """The runner of ``sha`` is alive and still printing new lines."""
    status = drv.runner_status(Deadline(10))
    if status["state"] != "running" or status["current"] != sha:
        return False
    before = len(log_of(drv, sha))
    return wait_for(lambda: len(log_of(drv, sha)) > before, timeout)


def test_install_verifies_and_outputs_match_the_reference(make_driver):
    drv = make_driver()
    events = []
    rep = drv.install(sine_request(job_id="j1"), Deadline(60),
                      progress=lambda s, st, d: events.append((s, st)))
    ref = reference("sine_int8")
    assert rep.model_sha256 == ref["sha256"]
    assert rep.boot["sha"] == ref["sha256"][:16]
    assert rep.compiled is True and rep.detail["upload_skipped"] is False
    assert rep.detail["runtime"] == "ai_edge_litert" and rep.detail["arch"] == "x86_64"
    assert rep.detail["supervisor"] == "process"
    assert [e for e in events if e[1] != "started"] == [
        ("validate", "done"), ("preflight", "done"), ("upload", "done"), ("start", "done"),
        ("verify_boot", "done")]
    assert serving(drv, rep.model_sha256)
    infs = [x for x in map(__import__("hal.protocol").protocol.parse_line,
                           log_of(drv, rep.model_sha256)) if isinstance(x, InferenceLine)]
    for line in infs[:len(ref["reference"])]:
        assert line.outputs == pytest.approx(ref["reference"][line.seq % 6]["output"],
                                             abs=1e-4)


def test_redeploy_skips_the_upload_and_switching_models_prunes(make_driver):
    drv = make_driver(keep_deployments=2)
    first = drv.install(sine_request(), Deadline(60))
    again = drv.install(sine_request(), Deadline(60))
    assert again.compiled is False and again.detail["upload_skipped"] is True
    assert "upload" in again.steps and again.steps["upload"] == 0.0
    # New labels for the same model: only the settings travel; the model upload is skipped.
    relabel = drv.install(sine_request(labels=("y",)), Deadline(60))
    assert relabel.detail["upload_skipped"] is True and relabel.compiled is True
    hello = drv.install(InstallRequest(model=model("hello_world_int8.tflite")), Deadline(60))
    assert hello.detail["previous"] == first.model_sha256
    person = drv.install(InstallRequest(model=model("arduino_magic_wand.tflite")), Deadline(60))
    assert person.detail["pruned"] == [first.model_sha256]
    models = sorted(os.listdir(f"{drv._facts.workdir}/models"))
    assert models == sorted([hello.model_sha256, person.model_sha256])
    assert os.readlink(f"{drv._facts.workdir}/current") == f"models/{person.model_sha256}"
    assert serving(drv, person.model_sha256)


def test_model_that_fails_to_load_rolls_back_to_the_previous(make_driver):
    drv = make_driver()
    good = drv.install(sine_request(), Deadline(60))
    with pytest.raises(DeviceError) as info:
        drv.install(InstallRequest(model=model("person_detect_vela.tflite")), Deadline(60))
    err = info.value
    assert err.code == "model_load_failed"
    assert "ethos-u" in err.detail["interpreter_message"]
    assert err.detail["rollback"]["verified"] is True
    assert err.detail["rollback"]["running_sha256"] == good.model_sha256
    assert err.detail["rollback"]["attempted"] is True
    assert serving(drv, good.model_sha256)


def test_first_install_failing_leaves_nothing_running(make_driver):
    drv = make_driver()
    with pytest.raises(DeviceError, match="model_load_failed") as info:
        drv.install(InstallRequest(model=model("audio_preprocessor_int8.tflite")),
                    Deadline(60))
    rollback = info.value.detail["rollback"]
    assert (rollback["needed"], rollback["attempted"], rollback["verified"],
            rollback["running_sha256"]) == (True, False, False, None)
    assert drv.runner_status(Deadline(10))["state"] == "stopped"


def test_runner_crash_after_boot_is_a_crash_not_a_timeout(make_driver, crashing_python):
    hello = model("hello_world_int8.tflite")
    import hashlib

    bad_sha = hashlib.sha256(hello).hexdigest()
    drv = make_driver(python=crashing_python(bad_sha))
    good = drv.install(sine_request(), Deadline(60))
    started = time.monotonic()
    with pytest.raises(DeviceError) as info:
        drv.install(InstallRequest(model=hello, boot_deadline_s=30), Deadline(60))
    assert time.monotonic() - started < 10
    err = info.value
    assert err.code == "runner_crashed"
    assert err.detail["exit_status"] == 128 + 11  # SIGSEGV
    assert err.detail["booted"] is True
    assert err.detail["lines"][0]["kind"] == "boot"
    assert err.detail["rollback"]["verified"] is True
    assert serving(drv, good.model_sha256)


def test_wrong_model_running_is_detected(make_driver):
    drv = make_driver()
    rep = drv.install(sine_request(), Deadline(60))
    # Someone replaced the model file on the target behind the bridge's back.
    target = Path(f"{drv._facts.workdir}/models/{rep.model_sha256}/model.tflite")
    target.write_bytes(model("hello_world_int8.tflite"))
    with pytest.raises(DeviceError) as info:
        drv.restart(Deadline(30))
    assert info.value.code == "wrong_model"
    assert info.value.detail["expected"] == rep.model_sha256[:16]
    # A new install notices the damaged deployment and uploads it again.
    again = drv.install(sine_request(), Deadline(60))
    assert again.detail["upload_skipped"] is False


def test_runtime_missing_is_found_before_anything_is_copied(make_driver):
    drv = make_driver(python="/usr/bin/python3")
    with pytest.raises(DeviceError) as info:
        drv.install(sine_request(), Deadline(60))
    err = info.value
    assert err.code == "runtime_missing"
    assert err.detail["arch"] == "x86_64" and err.detail["numpy"] is None
    assert "install_runtime" in err.detail["fix"]
    assert os.listdir(f"{drv._facts.workdir}/models") == []


def test_python_that_does_not_exist(make_driver):
    drv = make_driver(python="/nonexistent/python3")
    with pytest.raises(DeviceError, match="runtime_missing"):
        drv.install(sine_request(), Deadline(60))


def test_install_runtime_uses_a_venv_and_reports_the_step(make_driver):
    # Offline pip (--no-index) cannot fetch the wheel: the attempt is made in <workdir>/venv,
    # reported as its own step, and fails with pip's message -- never silently.
    drv = make_driver(python="/usr/bin/python3", install_runtime=True,
                      pip_args=["--no-index"])
    events = []
    with pytest.raises(DeviceError) as info:
        drv.install(sine_request(), Deadline(120),
                    progress=lambda s, st, d: events.append((s, st)))
    assert info.value.code == "runtime_missing"
    assert "pip install" in info.value.message
    assert ("install_runtime", "failed") in events
    assert os.access(f"{drv._facts.workdir}/venv/bin/python", os.X_OK)


def _facts(arch: str, python: tuple[int, int, int], **runtimes):
    from hal.rpi.preflight import TargetFacts

    return TargetFacts(arch=arch, python=python, executable="/usr/bin/python3",
                       runtimes={"ai_edge_litert": None, "tflite_runtime": None, **runtimes},
                       numpy=None, workdir="/w", writable=True, write_error="", free_disk=1,
                       mem_available=1, mem_total=1, deployment={}, current=None,
                       venv_python=None, tools={}, systemd={})


def test_pip_packages_follow_the_wheels_that_exist():
    from hal.rpi.preflight import choose_runtime, pip_packages

    # Bookworm (3.11) on 64-bit: LiteRT, which has cp310-cp314 wheels for aarch64/x86_64.
    assert pip_packages(_facts("aarch64", (3, 11, 2))) == ["ai-edge-litert", "numpy"]
    # No LiteRT wheels for 3.9 or armv7l: the last tflite-runtime, which needs numpy<2.
    assert pip_packages(_facts("aarch64", (3, 9, 2))) == ["tflite-runtime==2.14.0", "numpy<2"]
    assert pip_packages(_facts("armv7l", (3, 11, 2))) == ["tflite-runtime==2.14.0", "numpy<2"]
    # armv7l with 3.12: nothing installable -- said before any NumPy advice or pip attempt.
    for call in (choose_runtime, pip_packages):
        with pytest.raises(DeviceError) as info:
            call(_facts("armv7l", (3, 12, 1)))
        assert info.value.code == "target_unsupported"
    # ... unless an interpreter is there anyway (built from source): then NumPy is the gap.
    with pytest.raises(DeviceError, match="runtime_missing") as info:
        choose_runtime(_facts("armv7l", (3, 12, 1), tflite_runtime="2.14.0"))
    assert "pip install 'numpy<2'" in info.value.detail["fix"]


@pytest.mark.timeout(420)  # above the install's own 300 s deadline, which must fire first
def test_install_runtime_installs_litert_into_a_venv_from_the_index(make_driver):
    # The real success path: pip on the "Pi" reaches a real package index (PyPI or the
    # machine's mirrors, through the site-wide pip configuration) as the unprivileged SSH
    # user. Downloads ~40 MB (ai-edge-litert, numpy, protobuf, ...) on a cold pip cache.
    drv = make_driver(python="/usr/bin/python3", install_runtime=True)
    ref = reference("sine_int8")
    events = []
    rep = drv.install(sine_request(), Deadline(300),
                      progress=lambda s, st, d: events.append((s, st, d)))
    workdir = drv._facts.workdir
    venv_python = f"{workdir}/venv/bin/python"
    assert [(s, st) for s, st, _ in events if st != "started"] == [
        ("validate", "done"), ("install_runtime", "done"), ("preflight", "done"),
        ("upload", "done"), ("start", "done"), ("verify_boot", "done")]
    step = next(d for s, st, d in events if (s, st) == ("install_runtime", "done"))
    assert step["venv"] == f"{workdir}/venv" and step["status"] == 0
    assert step["packages"] == ["ai-edge-litert", "numpy"]  # Python 3.11 on x86_64
    assert step["runtimes"]["ai_edge_litert"] and step["numpy"]
    # Verified: the runner booted from the venv with the model's hash.
    assert rep.boot["sha"] == ref["sha256"][:16]
    assert rep.detail["runtime"] == "ai_edge_litert" and rep.detail["python"] == venv_python
    status = drv.runner_status(Deadline(10))
    runner_pid = status["pids"][-1]
    cmdline = Path(f"/proc/{runner_pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].decode() == venv_python and b"runner.py" in cmdline[2]
    assert os.stat(f"/proc/{runner_pid}").st_uid == user_uid()
    # The venv is the SSH user's, and nothing was installed for the system or the user.
    site = Path(workdir) / "venv" / "lib" / "python3.11" / "site-packages"
    assert (site / "ai_edge_litert").stat().st_uid == user_uid()
    assert (site / "numpy").stat().st_uid == user_uid()
    for mod in ("numpy", "ai_edge_litert"):
        res = as_user(USERS[0], ["/usr/bin/python3", "-c", f"import {mod}"])
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, res
    user_site = as_user(USERS[0], ["/usr/bin/python3", "-c",
                                   "import site; print(site.getusersitepackages())"])
    assert not list(Path(user_site.stdout.strip()).glob("numpy*"))
    marker = (site / "numpy" / "__init__.py").stat().st_mtime_ns

    # Same driver again: the venv is reused, pip does not run.
    events.clear()
    again = drv.install(sine_request(), Deadline(60),
                        progress=lambda s, st, d: events.append((s, st, d)))
    runtime_events = [(st, d) for s, st, d in events if s == "install_runtime"]
    assert [st for st, _ in runtime_events] == ["skipped"]
    assert "already installed" in runtime_events[0][1]["reason"]
    assert again.detail["python"] == venv_python and again.detail["upload_skipped"] is True

    # A restarted bridge (new driver, same workdir) finds the venv instead of installing.
    fresh = make_driver(workdir=workdir, python="/usr/bin/python3", install_runtime=True)
    assert fresh.runner_status(Deadline(10))["current"] == rep.model_sha256
    assert fresh.restart(Deadline(30)).boot.sha == ref["sha256"][:16]
    events.clear()
    third = fresh.install(sine_request(labels=("y",)), Deadline(60),
                          progress=lambda s, st, d: events.append((s, st, d)))
    assert [st for s, st, _ in events if s == "install_runtime"] == ["skipped"]
    assert third.detail["python"] == venv_python and third.boot["sha"] == ref["sha256"][:16]
    assert (site / "numpy" / "__init__.py").stat().st_mtime_ns == marker


def test_workdir_not_writable(make_driver, sshd):
    locked = sshd.homes[USERS[0]] / "tests" / "locked"
    locked.mkdir(exist_ok=True)
    os.chown(locked, 0, 0)
    os.chmod(locked, 0o755)
    drv = make_driver(workdir=str(locked / "tinyml"))
    with pytest.raises(DeviceError) as info:
        drv.install(sine_request(), Deadline(60))
    assert info.value.code == "target_not_writable"
    assert "Permission denied" in info.value.detail["error"]


def test_disk_reserve_larger_than_the_free_space(make_driver):
    drv = make_driver(disk_reserve_bytes=1 << 60)
    with pytest.raises(FitError) as info:
        drv.install(sine_request(), Deadline(60))
    d = info.value.detail
    assert info.value.code == "fit_disk"
    assert d["disk_needed_bytes"] > d["free_disk_bytes"] > 0


def test_memory_estimate_larger_than_available(make_driver):
    drv = make_driver(runtime_memory_bytes=1 << 60)
    with pytest.raises(FitError) as info:
        drv.install(sine_request(), Deadline(60))
    assert info.value.code == "fit_memory"
    assert info.value.detail["memory_needed_bytes"] > info.value.detail["mem_available_bytes"]


@pytest.fixture
def small_tmpfs(sshd):
    """A 700 KB tmpfs owned by the test user (a nearly full SD card)."""
    path = sshd.homes[USERS[0]] / "tests" / f"tmpfs-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    uid = __import__("pwd").getpwnam(USERS[0]).pw_uid
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=700k,uid={uid},mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_on_a_real_small_filesystem(make_driver, small_tmpfs):
    drv = make_driver(workdir=str(small_tmpfs / "w"), disk_reserve_bytes=0)
    # person_detect (300 KB; LiteRT refuses it, but it never gets that far) + 256 KB slack
    # fits the 700 KB preflight check ...
    person = InstallRequest(model=model("person_detect.tflite"))
    filler = small_tmpfs / "filler"

    def fill_the_disk(sent: int, total: int) -> None:
        # ... but something else fills the disk while the upload runs.
        if not filler.exists():
            filler.write_bytes(b"\0" * (600 << 10))

    drv.on_upload_progress = fill_the_disk
    with pytest.raises(FitError) as info:
        drv.install(person, Deadline(60))
    assert info.value.code == "fit_disk"
    assert "No space left" in info.value.message
    # Nothing half-written stays behind.
    assert [p for p in os.listdir(small_tmpfs / "w" / "models")] == []
    filler.unlink()
    # With the space back, but a reserve the card cannot give: refused before the upload.
    drv2 = make_driver(workdir=str(small_tmpfs / "w"), disk_reserve_bytes=500 << 10)
    with pytest.raises(FitError) as info:
        drv2.install(person, Deadline(60))
    assert info.value.detail["free_disk_bytes"] < info.value.detail["disk_needed_bytes"]


def test_connection_cut_during_upload_keeps_the_previous_serving(make_driver, sshd):
    drv = make_driver()
    good = drv.install(sine_request(), Deadline(60))
    cut = []

    def cut_midway(sent: int, total: int) -> None:
        if not cut and sent > total // 3:
            cut.append(sshd.cut_connections())
            wait_for(lambda: not drv.session.connected, 5)

    drv.on_upload_progress = cut_midway
    with pytest.raises(InfraError) as info:
        drv.install(InstallRequest(model=model("arduino_magic_wand.tflite")), Deadline(60))
    assert cut and cut[0] > 0
    assert info.value.code == "transport_broken" and info.value.retryable
    drv.on_upload_progress = None
    assert serving(drv, good.model_sha256)  # reconnects by itself
    rep = drv.install(InstallRequest(model=model("arduino_magic_wand.tflite")), Deadline(60))
    assert rep.detail["upload_skipped"] is False
    assert drv.session.connects >= 2


def test_cancel_during_upload_keeps_the_previous_serving(make_driver):
    drv = make_driver()
    good = drv.install(sine_request(), Deadline(60))
    deadline = Deadline(60)
    drv.on_upload_progress = lambda sent, total: deadline.cancel()
    with pytest.raises(Cancelled):
        drv.install(InstallRequest(model=model("arduino_magic_wand.tflite")), deadline)
    drv.on_upload_progress = None
    assert serving(drv, good.model_sha256)


def test_two_installs_to_the_same_pi_second_is_refused(make_driver):
    drv = make_driver()
    in_upload = threading.Event()
    release = threading.Event()

    def hold(sent: int, total: int) -> None:
        in_upload.set()
        release.wait(20)

    drv.on_upload_progress = hold
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "rep", drv.install(sine_request(job_id="first"), Deadline(60))))
    t.start()
    assert in_upload.wait(20)
    with pytest.raises(InputError) as info:
        drv.install(InstallRequest(model=model("hello_world_int8.tflite"), job_id="second"),
                    Deadline(60))
    assert info.value.code == "device_busy"
    assert info.value.detail["running_job"] == "first"
    release.set()
    t.join(30)
    assert result["rep"].boot["sha"]


def test_installs_to_two_pis_in_parallel(make_driver):
    a = make_driver(device_id="pi-a")
    b = make_driver(device_id="pi-b", user=USERS[1])
    results, errors = {}, []

    def go(drv, req):
        try:
            results[drv.device_id] = drv.install(req, Deadline(60))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(a, sine_request())),
               threading.Thread(target=go, args=(b, InstallRequest(
                   model=model("arduino_magic_wand.tflite"))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results["pi-a"].detail["user"] == USERS[0]
    assert results["pi-b"].detail["user"] == USERS[1]
    assert serving(a, results["pi-a"].model_sha256)
    assert serving(b, results["pi-b"].model_sha256)


def test_bad_requests_are_refused_before_connecting(make_driver):
    drv = make_driver()
    with pytest.raises(InputError) as info:
        drv.install(InstallRequest(model=b"\x00" * 100), Deadline(10))
    assert info.value.code.startswith("model_")
    # the one validation of input vectors (hal.vectors), the same code and limit as a Nano's
    with pytest.raises(InputError, match="bad_option"):
        drv.install(sine_request().__class__(model=model("sine_int8.tflite"),
                                             input_vectors=((1.0, 2.0),)), Deadline(10))
    with pytest.raises(InputError, match="exceed 256") as info:
        drv.install(InstallRequest(model=model("sine_int8.tflite"),
                                   input_vectors=((0.5,),) * 257), Deadline(10))
    assert info.value.detail["limit"] == 256
    with pytest.raises(InputError, match="bad_option"):
        drv.install(InstallRequest(model=model("sine_int8.tflite"),
                                   input_source="file:relative; rm -rf ~"), Deadline(10))
    assert drv.session.connects == 0


def test_runner_survives_the_session_and_a_new_driver_finds_it(make_driver):
    drv = make_driver()
    rep = drv.install(sine_request(), Deadline(60))
    workdir = drv._facts.workdir
    drv.close()  # the bridge goes away
    again = make_driver(workdir=workdir)  # the bridge restarted
    status = again.runner_status(Deadline(10))
    assert status["state"] == "running" and status["current"] == rep.model_sha256
    assert serving(again, rep.model_sha256)
    again.stop_runner(Deadline(10))
    assert again.runner_status(Deadline(10))["state"] == "stopped"
    boot = again.restart(Deadline(30))
    assert boot.boot.sha == rep.model_sha256[:16]


def test_stdin_source_under_supervision(make_driver):
    drv = make_driver(input_source="stdin")
    rep = drv.install(sine_request(), Deadline(60))
    assert rep.detail["confirm"]["kind"] == "status"
    fifo = f"{drv._facts.workdir}/run/input"
    fd = os.open(fifo, os.O_WRONLY)  # the runner holds the read end open
    os.write(fd, b"[1.5707]\n[oops\n")
    os.close(fd)
    from hal.protocol import parse_line

    def lines():
        return [parse_line(x) for x in log_of(drv, rep.model_sha256)]

    assert wait_for(lambda: any(isinstance(x, InferenceLine) for x in lines()), 20), lines()
    inf = next(x for x in lines() if isinstance(x, InferenceLine))
    assert inf.outputs[0] == pytest.approx(1.0, abs=0.05), lines()
    assert wait_for(lambda: any(x.kind == "error" and x.code == "bad_input"
                                for x in lines()), 20), lines()
    assert any(isinstance(x, StatusLine) for x in lines())
