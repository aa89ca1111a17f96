"""The truth matrix: one table of scenarios run against every driver family -- the virtual
Nano 33 BLE and the Raspberry Pi driver against the real loopback sshd -- each row with the
device state, error fields, health and observed lines the bridge must show, then the same
truth again after a bridge restart.

Where the families differ the row says so: a Nano has no supervisor (a dead sketch stays
dead until the board is reset) and a virtual board lives with its driver, so a bridge
restart power-cycles it (it boots its flashed image again); a Pi runner has supervise.sh and
keeps running across bridge restarts and SSH outages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lifecycle.conftest import Rig, wait_until
from tests.lifecycle.test_reproductions import assert_runs_continuous, inference_lines

ANY = object()  # the field is not part of this row's truth


@dataclass(frozen=True)
class Expect:
    """What the device must say. Error fields are codes (a set: any of them); ``model`` is
    the rig's model key ("a", "b") or None; ``health`` the health state."""

    state: str
    model: Any = None
    last_error: Any = None
    link_error: Any = None
    health: Any = ANY
    rollback_verified: Any = ANY

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not ANY}


def summarise(rig: Rig, dev: dict[str, Any]) -> dict[str, Any]:
    models = {rig.sha(k): k for k in ("a", "b")}
    return {
        "state": dev["state"],
        "model": models.get((dev["model"] or {}).get("sha256"), (dev["model"] or {}).get(
            "sha256")),
        "last_error": (dev["last_error"] or {}).get("code"),
        "link_error": (dev["link_error"] or {}).get("code"),
        "health": (dev["health"] or {}).get("state"),
        "rollback_verified": (dev["rollback"] or {}).get("verified"),
    }


def matches(expected: Expect, actual: dict[str, Any]) -> bool:
    for key, want in expected.summary().items():
        got = actual[key]
        if isinstance(want, (set, frozenset)):
            if got not in want:
                return False
        elif got != want:
            return False
    return True


def check(rig: Rig, expected: Expect, timeout_s: float = 25.0) -> dict[str, Any]:
    """Wait until the device says ``expected`` (states settle: health is polled), then
    assert it with every field shown."""
    dev = rig.wait_dev(lambda d: matches(expected, summarise(rig, d)), timeout_s)
    actual = summarise(rig, dev)
    assert matches(expected, actual), (
        f"{rig.family}: expected {expected.summary()}\n got {actual}\n"
        f" reason: {dev['state_reason']}")
    return dev


def last_announced(lines: list[dict]) -> str | None:
    """The model hash the newest boot or status line announces."""
    for entry in reversed(lines):
        if entry["line"].get("kind") in ("boot", "status"):
            return entry["line"].get("sha")
    return None


def runs(which: str) -> Callable[[Rig, list], bool]:
    """Lines check: the device announces model ``which`` and infers, continuously."""
    def check_lines(rig: Rig, lines: list) -> bool:
        assert_runs_continuous(lines)
        return (last_announced(lines) == rig.sha(which)[:16]
                and len(inference_lines(lines)) >= 3)
    return check_lines


def quiet(rig: Rig, lines: list) -> bool:
    """Lines check: since the last error line the device inferred nothing (no verified
    model runs)."""
    errors = [i for i, e in enumerate(lines) if e["line"].get("kind") == "error"]
    tail = lines[errors[-1] + 1:] if errors else lines
    return not inference_lines(tail)


def stalled(rig: Rig, lines: list) -> bool:
    """Lines check: nothing new arrives (the runner is dead)."""
    wait_until(lambda: False, 1.0)
    return len(rig.lines()) == len(lines)


# ------------------------------------------------------------------------------ scenarios


def first_install(rig: Rig) -> None:
    assert rig.install("a")["state"] == "succeeded"


def same_model_again(rig: Rig) -> None:
    first_install(rig)
    rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 3)
    assert rig.install("a")["state"] == "succeeded"
    wait_until(lambda: False, 1.0)
    if rig.family == "pi":  # one boot line per start (a Nano re-announces its boot line)
        boots = [e for e in rig.lines() if e["line"].get("kind") == "boot"]
        assert len(boots) == 2, [e["seq"] for e in boots]


def failed_install_rolled_back(rig: Rig) -> None:
    first_install(rig)
    job = rig.install("bad")
    assert job["state"] == "failed", job


def damage_last_verified(rig: Rig) -> None:
    """Make the rollback target unusable: the Nano's verified image altered; the Pi's
    deployed model file of A overwritten."""
    if rig.family == "nano":
        image = next(rig.driver.verified_store().dir.glob("*.ino.bin"))
        data = bytearray(image.read_bytes())
        data[100] ^= 0xFF
        image.write_bytes(bytes(data))
    else:
        Path(rig.workdir, "models", rig.sha("a"), "model.tflite").write_bytes(b"\0" * 64)


def failed_install_failed_rollback(rig: Rig) -> None:
    first_install(rig)
    damage_last_verified(rig)
    job = rig.install("bad")
    assert job["state"] == "failed", job
    assert job["error"]["detail"]["rollback"]["verified"] is False


def killed_once(rig: Rig) -> None:
    first_install(rig)
    rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 3)
    if rig.family == "pi":
        wait_until(lambda: False, 1.2)  # past min_uptime_s: a crash, not a boot failure
        pid = rig.kill_runner()
        assert wait_until(lambda: (rig.runner_pid() or pid) != pid, 20), rig.runner_records()
        # supervise.sh restarts it within its budget: a second boot line arrives
        assert rig.wait_lines(lambda ls: sum(e["line"].get("kind") == "boot"
                                              for e in ls) >= 2)
    else:
        # no supervisor on an MCU: the sketch is dead until the board is reset
        rig.kill_runner()
        check(rig, Expect("crashed", model="a", health="crashed"))
        rig.board_off()
        rig.board_on()


def killed_for_good(rig: Rig) -> None:
    first_install(rig)
    rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 3)
    if rig.family == "pi":
        wait_until(lambda: False, 1.2)
        for death in range(3):  # one more death than the budget of 2 restarts
            pid = rig.kill_runner()
            if death < 2:  # restarted within the budget
                assert wait_until(lambda p=pid: (rig.runner_pid() or p) != p, 20), \
                    rig.runner_records()
    else:
        rig.kill_runner()


def unreachable_at_start(rig: Rig) -> None:
    if rig.family == "pi":
        rig.stop()
        rig.link_down()
        try:
            rig.start()
            check(rig, Expect("idle", link_error={"transport_broken", "unavailable",
                                                  "timeout"}))
        finally:
            rig.link_up()
    else:
        rig.board_off()
        check(rig, Expect("idle", link_error={"device_not_found", "port_vanished"}))
        rig.board_on()
    check(rig, Expect("idle"))
    first_install(rig)


def link_cut_while_observing(rig: Rig) -> None:
    first_install(rig)
    rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 3)
    before = len(rig.lines())
    rig.cut_link()
    rig.wait_lines(lambda ls: len(ls) > before + 5)


# --------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Row:
    name: str
    run: Callable[[Rig], None]
    expect: dict[str, Expect]
    lines: dict[str, Callable[[Rig, list], bool]] = field(default_factory=dict)
    after_restart: dict[str, Expect] = field(default_factory=dict)  # default: expect
    settings: dict[str, dict] = field(default_factory=dict)


def both(expect: Expect) -> dict[str, Expect]:
    return {"nano": expect, "pi": expect}


RUNNING_A = Expect("running", model="a", health={"ok", None})

ROWS = [
    Row("first install on an empty device, then observe", first_install,
        both(RUNNING_A), both(runs("a"))),
    Row("the same model again", same_model_again, both(RUNNING_A), both(runs("a"))),
    Row("a failed install with a verified rollback", failed_install_rolled_back,
        {"nano": Expect("running", model="a", last_error="alloc_failed",
                        rollback_verified=True),
         "pi": Expect("running", model="a", last_error="model_load_failed",
                      rollback_verified=True)},
        both(runs("a"))),
    Row("a failed install whose rollback also fails", failed_install_failed_rollback,
        {"nano": Expect("failed", model="a", last_error="alloc_failed",
                        rollback_verified=False),
         "pi": Expect("failed", model="a", last_error="model_load_failed",
                      rollback_verified=False)},
        # nothing verified runs: the Nano's new firmware is silent, the Pi's runner stopped
        both(quiet)),
    Row("the runner or sketch killed once", killed_once,
        both(Expect("running", model="a", health="ok", link_error=None)),
        both(runs("a"))),
    Row("killed for good", killed_for_good,
        both(Expect("crashed", model="a", health="crashed")),
        {"pi": stalled},
        # a bridge restart power-cycles a virtual board: it boots its flashed image again;
        # a Pi's dead runner stays dead (its supervisor gave up)
        after_restart={"nano": RUNNING_A,
                       "pi": Expect("crashed", model="a", health="crashed")},
        settings={"pi": {"restart_budget": 2}}),
    Row("the target unreachable at bridge start, reachable later", unreachable_at_start,
        both(RUNNING_A), both(runs("a"))),
    Row("the link cut while observing", link_cut_while_observing,
        both(Expect("running", model="a", link_error=None)), both(runs("a"))),
]


@pytest.mark.parametrize("family", ["nano", "pi"])
@pytest.mark.parametrize("row", ROWS, ids=[r.name.replace(" ", "-") for r in ROWS])
def test_truth_matrix(row: Row, family: str, make_rig) -> None:
    rig = make_rig(family, **row.settings.get(family, {}))
    row.run(rig)
    dev = check(rig, row.expect[family])
    if dev["health"] and dev["health"]["state"] == "crashed" and family == "pi":
        assert dev["health"]["exit_code"] == 137 and dev["health"]["stderr_tail"]
    if dev["health"] and dev["health"]["state"] == "crashed" and family == "nano":
        assert dev["health"]["silent_s"] > 0
    lines_ok = row.lines.get(family)
    if lines_ok is not None:
        wait_until(lambda: lines_ok(rig, rig.lines()), 15)
        assert lines_ok(rig, rig.lines()), [e["line"] for e in rig.lines()[-12:]]

    # A bridge restart in this state: the same truth comes back (from the state store and
    # the driver's observation and liveness checks).
    rig.restart()
    if check(rig, row.after_restart.get(family, row.expect[family]))["state"] == "running":
        assert rig.wait_lines(lambda ls: len(inference_lines(ls)) >= 2), \
            "observation did not resume after the restart"


def test_matrix_covers_the_issue_list() -> None:
    names = " / ".join(r.name for r in ROWS)
    for words in ("empty device", "same model", "verified rollback", "rollback also fails",
                  "killed once", "killed for good", "unreachable at bridge start",
                  "link cut"):
        assert words in names
