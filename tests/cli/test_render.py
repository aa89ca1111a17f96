"""Rendering of recorded bridge JSON into what a technician reads (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from bridge.cli import render
from bridge.cli.doctor import _driver_section, render_sections, verdict
from bridge.cli.install import ProgressDisplay, load_vectors, parse_labels

REC = json.loads((Path(__file__).parent / "data" / "recorded.json").read_text())


def plain(text: str) -> str:
    return click.unstyle(text)


def test_devices_table_shows_state_model_and_error():
    out = plain(render.render_devices(REC["devices"]["devices"]))
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "DRIVER", "BOARD", "ADDRESS", "STATE", "VERIFIED",
                                "MODEL", "NOTE"]
    assert "vnano-1" in lines[1] and "running" in lines[1] and "8d4a5db2f66c0534" in lines[1]
    assert "failed (disconnected)" in lines[2] and "alloc_failed" in lines[2]
    assert render.render_devices([]).startswith("no devices")


def test_succeeded_job_says_verified_boot_with_numbers():
    out = plain(render.render_job(REC["job_succeeded"]))
    assert "verified boot: device vnano-1 booted model 8d4a5db2f66c0534" in out
    assert "arena 3,072 B, used 2,648 B" in out and "build reused" in out
    assert "skip compile" in out and "identical build cached" in out
    assert "ok   upload" in out and "0.48 s" in out


def test_hot_swapped_job_says_so_not_build_reused():
    job = json.loads(json.dumps(REC["job_succeeded"]))
    job["steps"] = [s for s in job["steps"] if s["name"] not in ("compile", "upload")]
    job["steps"].insert(-1, {"name": "hotswap_transfer", "status": "done", "detail": {}})
    out = plain(render.render_outcome(job))
    assert "hot-swapped (no compile, no upload)" in out and "build reused" not in out


def test_failed_job_is_not_success_and_shows_code_numbers_fix():
    out = plain(render.render_job(REC["job_failed"]))
    assert "verified" not in out
    assert "job j-0002 failed after 2.00 s" in out
    assert "error alloc_failed (fit): the device could not allocate a 64-byte arena" in out
    assert "needed_bytes: 2648" in out and "fix: let the bridge size the arena" in out
    assert "FAIL verify_boot" in out


def test_jobs_table():
    out = plain(render.render_jobs([REC["job_succeeded"], REC["job_failed"],
                                    REC["job_running"]]))
    rows = out.splitlines()
    assert "verified boot" in rows[1] and "alloc_failed" in rows[2]
    assert "running" in rows[3] and rows[3].split()[5] == "-"  # no duration yet


def test_observed_lines_read_as_words():
    lines = [plain(render.render_line(r)) for r in REC["observe"]["lines"]]
    assert "boot: model 8d4a5db2f66c0534 allocated its tensors (arena 3,072 B" in lines[0]
    assert "#0 square  scores [0.020 0.970 0.010]  latency 1.23 ms" in lines[1]
    assert "status: running model 8d4a5db2f66c0534, up 12 s, 345 inferences" in lines[2]
    assert "device error invoke_failed: Invoke() returned 1 (status=1)" in lines[3]
    # raw: tagged, and the escape sequence the device sent cannot drive the terminal
    assert "[raw too_long, 300 bytes cut] hello\ufffd[2Jworld" in lines[4]
    assert "\x1b" not in lines[4]


def test_inference_without_label_and_many_outputs():
    rec = {"seq": 9, "at": "bad-time", "line": {"kind": "inference", "seq": 3,
                                                 "latency_us": 50, "outputs": [0.5] * 20,
                                                 "top": 4, "label": ""}}
    out = plain(render.render_line(rec))
    assert out.startswith("--:--:--.--- #3 top 4")
    assert "(20 outputs)" in out and "0.05 ms" in out


def test_unknown_line_kind_is_shown_raw_not_crashing():
    out = plain(render.render_line({"seq": 1, "line": {"kind": "mystery", "x": 1}}))
    assert "[raw]" in out


def test_error_render_of_busy_device_names_running_job():
    err = {"code": "device_busy", "message": "device vnano-1 is busy with job j-9",
           "detail": {"running_job": {"id": "j-9", "state": "running"}, "http_status": 409},
           "class": "input"}
    out = plain(render.render_error(err))
    assert out.splitlines()[0] == ("error device_busy (input): device vnano-1 is busy "
                                   "with job j-9")
    assert "running_job: j-9" in out and "http_status" not in out


def test_progress_display_plain_lines_each_once(capsys):
    display = ProgressDisplay(tty=False)
    display.update(REC["job_running"])
    display.update(REC["job_running"])
    display.update(REC["job_succeeded"])
    display.finish()
    out = plain(capsys.readouterr().out)
    assert out.count("validate") == 1  # printed once although seen in three polls
    assert out.count("compile          started") == 1  # started, announced once
    assert "\r" not in out and "\x1b" not in out


def test_progress_display_tty_redraws_running_step(capsys):
    display = ProgressDisplay(tty=True)
    display.update(REC["job_running"])
    display.update(REC["job_running"])
    display.finish()
    out = capsys.readouterr().out
    assert out.count("\r\x1b[K") >= 2  # the spinner line is redrawn in place
    assert "compile" in out


def test_doctor_sections_verdict():
    health = REC["health"]
    sections = [_driver_section(n, i, used=(n == "virtual-nano33ble"))
                for n, i in health["drivers"].items()]
    assert verdict(sections, strict=False) == (0, 1)  # nano33ble unused: a warning
    assert verdict(sections, strict=True) == (1, 0)
    used = [_driver_section("nano33ble", health["drivers"]["nano33ble"], used=True)]
    assert verdict(used, strict=False) == (1, 0)
    out = plain(render_sections(sections, strict=False))
    assert "warn arduino-cli found: arduino-cli is not on PATH" in out
    assert "fix: install arduino-cli" in out
    # an unavailable driver with no failing check still fails
    odd = _driver_section("x", {"available": False}, used=True)
    assert verdict([odd], strict=False) == (1, 0)
    # malformed driver output is a failed check, not a crash
    bad = _driver_section("y", {"available": True, "checks": "nope"}, used=True)
    assert verdict([bad], strict=False) == (1, 0)


@pytest.mark.parametrize("value", ["a,,b", ",", " , x"])
def test_bad_labels_are_usage_errors(value):
    with pytest.raises(click.BadParameter):
        parse_labels(value)


def test_labels_parse():
    assert parse_labels("yes, no ,unknown") == ["yes", "no", "unknown"]


@pytest.mark.parametrize("content", [
    "not json", "[]", "{}", "[[1, 2], []]", '[["a"]]', "[[true]]", "[1, 2]", "[[1e999]]",
    '{"reference": [{"input": "x"}]}', "\udcff",
])
def test_bad_vectors_files_are_usage_errors(tmp_path, content):
    path = tmp_path / "v.json"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(click.BadParameter):
        load_vectors(path)


def test_vectors_from_list_object_and_sample_description(tmp_path):
    path = tmp_path / "v.json"
    path.write_text("[[1, 2.5], [3, 4]]")
    assert load_vectors(path) == ([[1.0, 2.5], [3.0, 4.0]], [])
    path.write_text('{"input_vectors": [[0.5]], "labels": ["a"]}')
    assert load_vectors(path) == ([[0.5]], ["a"])
    # the shape of samples/models/<name>.json
    path.write_text(json.dumps({"name": "shapes", "labels": ["blank", "square"], "reference": [
        {"input": [0.0, 1.0], "output": [0.9, 0.1]}, {"input": [1, 0], "output": [0, 1]}]}))
    assert load_vectors(path) == ([[0.0, 1.0], [1.0, 0.0]], ["blank", "square"])


def test_oversized_vectors_file(tmp_path):
    path = tmp_path / "big.json"
    with path.open("w") as fh:
        fh.write("[[" + "1," * (9 * 1024 * 1024) + "1]]")
    with pytest.raises(click.BadParameter, match="larger than"):
        load_vectors(path)


@pytest.mark.parametrize(("rollback", "expected"), [
    # the typed outcome (hal.driver.RollbackOutcome), the same for every driver
    ({"needed": True, "attempted": True, "verified": True,
      "running_sha256": "af5285ae154dc2400e98" + "0" * 44,
      "reason": "the previously verified model af5285ae154dc240 was flashed back and booted"},
     "rollback: done: the previously verified model af5285ae154dc240 was flashed back and "
     "booted"),
    ({"needed": False, "attempted": False, "verified": True,
      "running_sha256": "af5285ae154dc240", "reason": "the board still runs its old model"},
     "rollback: not needed: the board still runs its old model"),
    ({"needed": True, "attempted": False, "verified": False, "running_sha256": None,
      "reason": "no previously verified model"},
     "rollback: not done: no previously verified model"),
    ({"needed": True, "attempted": True, "verified": False, "running_sha256": None,
      "reason": "the rollback to af5285ae154dc240 failed: timeout"},
     "rollback: failed: the rollback to af5285ae154dc240 failed: timeout"),
    ({"needed": False, "attempted": False, "verified": False, "running_sha256": None,
      "reason": "the install stopped in its fit phase, before it changed the device"},
     "rollback: not needed: the install stopped in its fit phase"),
])
def test_error_says_what_the_device_runs_after_a_rollback(rollback, expected):
    err = {"code": "alloc_failed", "class": "fit", "message": "m",
           "detail": {"arena_bytes": 1024, "rollback": rollback}}
    out = plain(render.render_error(err))
    assert expected in out.splitlines()[-1]
    assert "arena_bytes: 1,024" in out or "arena_bytes: 1024" in out
