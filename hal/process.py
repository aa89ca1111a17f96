"""The one way to run an external tool: with a deadline, captured output, and the whole
process group killed on timeout or cancel.

Each child starts in a new session (its own process group), so when the deadline passes or the
job is cancelled we signal the group: a tool's own children (arduino-cli's gcc and bossac, a
shell's pipeline) die with it and nothing is left holding a serial port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hal.deadline import Deadline
from hal.errors import Cancelled, InfraError

log = logging.getLogger(__name__)

# Time a group gets between SIGTERM and SIGKILL: enough for a tool to release a port.
KILL_GRACE_S = 2.0

# Linux: a child asks the kernel for SIGKILL when the thread that started it dies, so a tool
# never outlives a bridge killed with SIGKILL (run() waits in that thread until the tool
# ends, so this never fires early). Resolved once here: the pre-exec hook runs between fork
# and exec and must not import or look anything up.
_PR_SET_PDEATHSIG = 1
try:
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):  # pragma: no cover - no libc prctl
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class ProcessResult:
    """What a finished tool run produced."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader exited; its group may still hold stragglers, which SIGKILL reaches.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _pump(stream, sink: list[str], on_line: Callable[[str], None] | None) -> None:
    """Read a pipe to EOF; feed ``on_line`` per line, splitting on ``\\r`` and ``\\n``
    because progress bars (bossac, pip) redraw with carriage returns."""
    pending = b""
    chunks: list[bytes] = []
    for chunk in iter(lambda: stream.read1(65536), b""):
        chunks.append(chunk)
        if on_line is None:
            continue
        pending += chunk
        *lines, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            if line:
                on_line(line.decode("utf-8", "replace"))
    if on_line is not None and pending:
        on_line(pending.decode("utf-8", "replace"))
    sink.append(b"".join(chunks).decode("utf-8", "replace"))


def run(
    argv: Sequence[str | os.PathLike],
    deadline: Deadline,
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    stdin_data: bytes | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = False,
) -> ProcessResult:
    """Run ``argv`` to completion within ``deadline``.

    Raises ``InfraError("tool_missing")`` when the executable does not exist,
    ``InfraError("timeout")`` when the deadline passes and :class:`Cancelled` when the
    deadline's cancel flag is set; in both of the latter cases the whole process group has
    been killed before the exception propagates, with the partial output in ``detail``.
    With ``check=True`` a non-zero exit raises ``InfraError("tool_failed")``.
    ``on_line`` receives stdout and stderr lines as they arrive (for progress and logs).
    """
    args = tuple(os.fspath(a) for a in argv)
    deadline.check()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent if _prctl is not None else None,
        )
    except FileNotFoundError as exc:
        raise InfraError(
            "tool_missing", f"{args[0]} is not installed or not on PATH", tool=args[0]
        ) from exc
    except PermissionError as exc:
        raise InfraError("tool_missing", f"{args[0]} is not executable", tool=args[0]) from exc

    out: list[str] = []
    err: list[str] = []
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, on_line), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, on_line), daemon=True),
    ]
    for t in pumps:
        t.start()
    if stdin_data is not None:
        try:
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        except BrokenPipeError:
            pass

    stop_reason: str | None = None
    while True:
        try:
            proc.wait(timeout=deadline.poll_timeout(0.05))
            break
        except subprocess.TimeoutExpired:
            pass
        if deadline.cancelled:
            stop_reason = "cancelled"
        elif deadline.expired:
            stop_reason = "timeout"
        if stop_reason:
            log.warning("%s %s: killing process group %d", args[0], stop_reason, proc.pid)
            kill_group(proc)
            break
    for t in pumps:
        t.join(timeout=5.0)
    duration = time.monotonic() - started
    stdout, stderr = "".join(out), "".join(err)
    log.debug("%s exited %s after %.3fs", args[0], proc.returncode, duration)

    if stop_reason is not None:
        detail = {
            "argv": list(args),
            "after_s": round(duration, 3),
            "stdout_tail": _tail(stdout),
            "stderr_tail": _tail(stderr),
        }
        if stop_reason == "cancelled":
            raise Cancelled(f"{Path(args[0]).name} cancelled", **detail)
        raise deadline.timeout_error(**detail)

    result = ProcessResult(args, proc.returncode, stdout, stderr, duration)
    if check and not result.ok:
        raise InfraError(
            "tool_failed",
            f"{Path(args[0]).name} exited with status {proc.returncode}",
            argv=list(args),
            returncode=proc.returncode,
            stdout_tail=_tail(stdout),
            stderr_tail=_tail(stderr),
        )
    return result
