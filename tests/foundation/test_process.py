"""hal.process.run: real subprocesses, deadlines, cancel, process-group kill."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from hal.deadline import Deadline
from hal.errors import Cancelled, InfraError
from hal.process import run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie nobody reaped yet (PID 1 of a container may not) is dead too
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _pids(text: str) -> list[int]:
    return [int(tok) for tok in text.split() if tok.isdigit()]


def test_runs_and_captures():
    res = run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
              Deadline(30))
    assert res.ok and res.returncode == 0
    assert res.stdout == "out\n" and res.stderr == "err\n"
    assert res.duration_s >= 0


def test_stdin_data():
    res = run(["cat"], Deadline(30), stdin_data=b"hello\x00world")
    assert res.stdout == "hello\x00world"


def test_nonzero_exit_and_check():
    res = run(["sh", "-c", "exit 3"], Deadline(30))
    assert res.returncode == 3 and not res.ok
    with pytest.raises(InfraError) as info:
        run(["sh", "-c", "echo boom >&2; exit 3"], Deadline(30), check=True)
    assert info.value.code == "tool_failed"
    assert info.value.detail["returncode"] == 3
    assert "boom" in info.value.detail["stderr_tail"]


def test_timeout_kills_whole_group_including_grandchild():
    started = time.monotonic()
    with pytest.raises(InfraError) as info:
        run(["sh", "-c", "sleep 60 & echo $!; sleep 60 & echo $!; wait"], Deadline(1.0))
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 10
    pids = _pids(info.value.detail["stdout_tail"])
    assert len(pids) == 2
    for pid in pids:
        assert _wait_dead(pid), f"grandchild {pid} survived the timeout"


def test_timeout_kills_grandchild_ignoring_sigterm():
    with pytest.raises(InfraError) as info:
        run(["sh", "-c", "(trap '' TERM; sleep 60) & echo $!; wait"], Deadline(0.5))
    (pid,) = _pids(info.value.detail["stdout_tail"])
    assert _wait_dead(pid, timeout=10)


def test_cancel_from_another_thread():
    deadline = Deadline(60)
    threading.Timer(0.3, deadline.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled) as info:
        run(["sh", "-c", "sleep 30 & echo $!; wait"], deadline)
    assert time.monotonic() - started < 10
    assert info.value.code == "cancelled"
    (pid,) = _pids(info.value.detail["stdout_tail"])
    assert _wait_dead(pid)


def test_cancel_through_sub_deadline():
    parent = Deadline(60)
    child = parent.sub(30, what="step")
    threading.Timer(0.2, parent.cancel).start()
    with pytest.raises(Cancelled):
        run(["sleep", "30"], child)


def test_expired_deadline_does_not_start():
    marker = Path(f"/tmp/hal-process-test-{os.getpid()}")
    deadline = Deadline(0)
    with pytest.raises(InfraError) as info:
        run(["touch", str(marker)], deadline)
    assert info.value.code == "timeout"
    assert not marker.exists()


def test_tool_missing(tmp_path):
    with pytest.raises(InfraError) as info:
        run([str(tmp_path / "no-such-tool")], Deadline(10))
    assert info.value.code == "tool_missing"
    assert info.value.retryable
    not_exec = tmp_path / "script.sh"
    not_exec.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(InfraError) as info:
        run([str(not_exec)], Deadline(10))
    assert info.value.code == "tool_missing"


def test_on_line_splits_on_carriage_returns():
    lines: list[str] = []
    res = run(["printf", "10%%\\r20%%\\r100%%\\r\\ndone\\nlast"], Deadline(30),
              on_line=lines.append)
    assert lines == ["10%", "20%", "100%", "done", "last"]
    assert res.stdout == "10%\r20%\r100%\r\ndone\nlast"


def test_on_line_gets_stderr_too_and_invalid_utf8():
    lines: list[str] = []
    run(["sh", "-c", "printf 'a\\n' ; printf 'b\\377\\n' >&2"], Deadline(30),
        on_line=lines.append)
    assert sorted(lines) == ["a", "b\ufffd"]
