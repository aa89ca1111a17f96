"""The five reproductions of issue 9 (and its smaller defects), each as a test that failed
before the device lifecycle was made one: against the Pi driver on the real loopback sshd and
the virtual Nano 33 BLE, through the bridge's real app, registry, jobs and state store."""

from __future__ import annotations

import click

from bridge.cli.doctor import device_checks
from bridge.cli.render import device_note, render_device_detail, render_devices, render_error
from tests.lifecycle.conftest import wait_until


def plain(text: str) -> str:
    return click.unstyle(text)


def assert_runs_continuous(lines: list[dict]) -> None:
    """Between two boot lines the runner's inference numbers go 0, 1, 2... (or on from
    where observation joined) without a repeat or a gap: a line delivered twice, or one
    lost, breaks the count."""
    run: list[int] = []
    for entry in lines:
        line = entry["line"]
        if line.get("kind") == "boot":
            run = []
        elif line.get("kind") == "inference":
            if run:
                assert line["seq"] == run[-1] + 1, f"inference {line['seq']} after {run[-1]}"
            run.append(line["seq"])


def inference_lines(lines: list[dict]) -> list[dict]:
    return [e["line"] for e in lines if e["line"].get("kind") == "inference"]


# 1 -------------------------------------------------------------------------------------------


def test_1_device_configured_before_its_first_deployment_is_observed(make_rig):
    rig = make_rig("pi")
    dev = rig.dev()
    assert dev["state"] == "idle" and rig.lines() == []
    job = rig.install("a")
    assert job["state"] == "succeeded", job
    lines = rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 3, 20)
    assert len(inference_lines(lines)) >= 3, "observation never started after the install"
    boots = [e["line"] for e in lines if e["line"].get("kind") == "boot"]
    assert boots and boots[0]["sha"] == rig.sha("a")[:16]


def test_1b_target_unreachable_at_bridge_start_is_observed_once_reachable(make_rig):
    rig = make_rig("pi", start=False)
    rig.link_down()
    try:
        rig.start()
        dev = rig.wait_dev(lambda d: d["link_error"] is not None, 15)
        assert dev["link_error"]["code"] in ("transport_broken", "unavailable", "timeout")
        assert dev["last_error"] is None and dev["state"] == "idle"
    finally:
        rig.link_up()
    dev = rig.wait_dev(lambda d: d["link_error"] is None, 20)
    assert dev["link_error"] is None
    assert rig.install("a")["state"] == "succeeded"
    lines = rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 3, 20)
    assert len(inference_lines(lines)) >= 3


# 2 -------------------------------------------------------------------------------------------


def test_2_a_runner_whose_supervisor_gave_up_is_crashed_also_after_a_restart(make_rig):
    # the default budget start: a runner that dies within min_uptime of its start is not
    # restarted (a boot crash); killing it twice within the window exhausts a budget of 1
    rig = make_rig("pi", restart_budget=1)
    assert rig.install("a")["state"] == "succeeded"
    rig.wait_dev(lambda d: (d["health"] or {}).get("state") == "ok", 10)
    wait_until(lambda: False, 1.2)  # past min_uptime_s: the first death is restarted
    first = rig.kill_runner()
    assert wait_until(lambda: (rig.runner_pid() or first) != first, 20), rig.runner_records()
    wait_until(lambda: False, 1.2)
    rig.kill_runner()
    dev = rig.wait_dev(lambda d: d["state"] == "crashed", 15)
    assert dev["state"] == "crashed", dev
    assert dev["health"]["state"] == "crashed" and dev["health"]["exit_code"] == 137
    assert "giving up" in dev["health"]["stderr_tail"]
    assert dev["model"]["sha256"] == rig.sha("a")  # what it was running stays known
    assert "exit 137" in plain(device_note(dev))
    assert "crashed" in plain(render_devices([dev]))  # `tinyml-bridge devices`
    alive = [c for c in device_checks([dev]) if c["check"].endswith("runner alive")]
    assert alive and alive[0]["ok"] is False  # `tinyml-bridge doctor`
    rig.restart()
    dev = rig.wait_dev(lambda d: d["state"] == "crashed", 15)
    assert dev["state"] == "crashed" and dev["health"]["exit_code"] == 137


# 3 -------------------------------------------------------------------------------------------


def test_3_verified_rollback_on_a_pi_is_running_and_the_cli_says_so(make_rig):
    rig = make_rig("pi")
    assert rig.install("a")["state"] == "succeeded"
    job = rig.install("b", boot_deadline_s=0.01)
    assert job["state"] == "failed" and job["error"]["code"] == "timeout", job["error"]
    rollback = job["error"]["detail"]["rollback"]
    assert rollback["attempted"] and rollback["verified"]
    assert rollback["running_sha256"] == rig.sha("a")
    dev = rig.dev()
    assert dev["state"] == "running" and dev["model"]["sha256"] == rig.sha("a")
    assert dev["last_error"]["code"] == "timeout" and dev["rollback"]["verified"]
    text = plain(render_error(dev["last_error"]))
    assert "rollback: done" in text and "unknown reason" not in text
    assert current_link(rig).endswith(rig.sha("a"))  # `current` still points to A


def current_link(rig) -> str:
    import os

    return os.readlink(os.path.join(rig.workdir, "current"))


# 4 -------------------------------------------------------------------------------------------


def test_4_reinstalling_the_running_model_duplicates_no_line(make_rig):
    rig = make_rig("pi")
    assert rig.install("a")["state"] == "succeeded"
    rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 3, 20)
    assert rig.install("a")["state"] == "succeeded"
    wait_until(lambda: False, 1.5)  # let both runners' lines arrive
    lines = rig.lines()
    boots = [e for e in lines if e["line"].get("kind") == "boot"]
    assert len(boots) == 2, [e["line"] for e in boots]  # one per start, never repeated
    assert_runs_continuous(lines)
    seqs = [e["seq"] for e in lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


# 5 -------------------------------------------------------------------------------------------


def test_5_a_failed_jobs_error_survives_the_link_coming_back(make_rig):
    rig = make_rig("pi")
    assert rig.install("a")["state"] == "succeeded"
    rig.link_down()
    try:
        job = rig.install("b", wait_s=60)
        assert job["state"] == "failed"
        code = job["error"]["code"]
        assert code in ("transport_broken", "unavailable", "timeout"), job["error"]
    finally:
        rig.link_up()
    dev = rig.wait_dev(lambda d: d["link_error"] is None and d["connected"], 20)
    assert dev["last_error"] is not None and dev["last_error"]["code"] == code
    assert dev["link_error"] is None
    # it failed before touching the Pi: the old model still runs, and the note says why not
    assert dev["rollback"]["needed"] is False and dev["state"] == "running"
    assert code in plain(render_device_detail(dev))


# smaller defects -------------------------------------------------------------------------


def test_a_never_deployed_pi_shows_no_error(make_rig):
    rig = make_rig("pi")
    wait_until(lambda: False, 1.0)  # observation and liveness have run
    dev = rig.dev()
    assert dev["state"] == "idle"
    assert dev["last_error"] is None and dev["link_error"] is None
    assert (dev["health"] or {}).get("state") in (None, "none")


def test_a_blank_nano_after_a_normal_start_shows_no_error(make_rig):
    rig = make_rig("nano")
    wait_until(lambda: False, 4.0)  # past the not-found grace; a blank board prints nothing
    dev = rig.dev()
    assert dev["state"] == "idle", dev
    assert dev["last_error"] is None and dev["link_error"] is None, dev
    assert dev["connected"] is True


def test_cli_prints_an_ssh_port_as_a_number():
    err = {"code": "transport_broken", "class": "infrastructure", "message": "m",
           "detail": {"host": "127.0.0.1", "port": 38011, "pid": 123456,
                      "free_bytes": 38011}}
    text = plain(render_error(err))
    assert "port: 38011" in text and "pid: 123456" in text
    assert "free_bytes: 38,011" in text  # quantities keep their separators
