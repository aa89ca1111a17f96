"""Boot verification: start the runner and watch ONE channel that carries its log from the
start offset and ends when the runner's supervisor exits.

Waits for the boot line with the expected hash **and** for error lines and the process exit at
the same time, so every outcome is classified: verified; ``runtime_missing``;
``model_load_failed`` (with the interpreter's message); ``runner_crashed`` (exit status and last
lines); ``wrong_model``; ``timeout``.
"""

from __future__ import annotations

import logging
import re
import select
import time
from dataclasses import dataclass, field

import paramiko

from hal.deadline import Deadline
from hal.errors import Cancelled, DeviceError, HalError, InfraError
from hal.protocol import (
    BootLine,
    DeviceLine,
    ErrorLine,
    InferenceLine,
    LineSplitter,
    RawLine,
    StatusLine,
    sha_matches,
    to_dict,
)
from hal.rpi.ssh import SshSession

log = logging.getLogger(__name__)

_STDERR_INFO = re.compile(rb"(offset|lines|pid) (\d+)")


@dataclass
class BootResult:
    """A verified start: the proof lines and where in the log this start began."""

    boot: BootLine
    confirm: DeviceLine  # the first inference (vectors) or status line after the boot line
    log_offset: int
    log_lines: int  # lines in the log before this start: line numbers continue from here
    supervisor_pid: int | None
    lines: list[DeviceLine] = field(default_factory=list)
    seconds: float = 0.0


def _lines_tail(lines: list[DeviceLine], n: int = 8) -> list[dict]:
    return [to_dict(x) for x in lines[-n:]]


def start_runner(session: SshSession, start_script: str, deadline: Deadline
                 ) -> paramiko.Channel:
    """Activate: run ``start_script`` (it starts the runner, then follows its log) on a new
    channel, which :func:`verify_start` then watches."""
    chan = session.open_channel(deadline)
    try:
        chan.exec_command(start_script)
    except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
        chan.close()
        raise session._broken("starting the runner", exc) from exc
    return chan


def start_and_verify(
    session: SshSession,
    start_script: str,
    exit_script: str,
    err_log: str,
    expected_sha256: str,
    start_id: str,
    deadline: Deadline,
    *,
    wait_for_inference: bool,
) -> BootResult:
    """:func:`start_runner` then :func:`verify_start` (restarts and rollbacks)."""
    chan = start_runner(session, start_script, deadline)
    return verify_start(session, chan, exit_script, err_log, expected_sha256, start_id,
                        deadline, wait_for_inference=wait_for_inference)


def verify_start(
    session: SshSession,
    chan: paramiko.Channel,
    exit_script: str,
    err_log: str,
    expected_sha256: str,
    start_id: str,
    deadline: Deadline,
    *,
    wait_for_inference: bool,
) -> BootResult:
    """Classify what the start channel shows. Raises a classified :class:`HalError` for
    every failed outcome; closes the channel."""
    started = time.monotonic()
    splitter = LineSplitter()
    lines: list[DeviceLine] = []
    info: dict[str, int] = {}
    boot: BootLine | None = None
    failure: HalError | None = None
    ended = False
    try:
        while True:
            if chan.recv_stderr_ready():
                for key, value in _STDERR_INFO.findall(chan.recv_stderr(4096)):
                    info[key.decode()] = int(value)
                continue
            if chan.recv_ready():
                data = chan.recv(65536)
                if not data:
                    ended = True
                    break
                for line in splitter.feed(data):
                    lines.append(line)
                    outcome = _judge(line, boot, expected_sha256, wait_for_inference)
                    if isinstance(outcome, HalError):
                        failure = outcome
                        break
                    if isinstance(outcome, BootLine):
                        boot = outcome
                    elif outcome is not None:
                        return BootResult(boot=boot, confirm=outcome,
                                          log_offset=info.get("offset", 0),
                                          log_lines=info.get("lines", 0),
                                          supervisor_pid=info.get("pid"), lines=lines,
                                          seconds=time.monotonic() - started)
                if failure is not None:
                    break
                continue
            if chan.eof_received or chan.closed:
                ended = True
                break
            if not chan.get_transport().is_active():
                raise session._broken("boot verification")
            if deadline.cancelled:
                raise Cancelled("boot verification cancelled")
            if deadline.expired:
                raise deadline.timeout_error(
                    stage="booted, waiting for the first inference" if boot else
                    "waiting for the boot line",
                    expected_sha=expected_sha256[:16], lines=_lines_tail(lines),
                    stderr_tail=_stderr_tail(session, err_log),
                )
            select.select([chan], [], [], deadline.poll_timeout(0.02))
    except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
        raise session._broken("boot verification", exc) from exc
    finally:
        chan.close()

    if ended:
        lines.extend(splitter.flush())
        for line in lines:
            outcome = _judge(line, None, expected_sha256, wait_for_inference)
            if isinstance(outcome, HalError):
                failure = outcome
                break
    if failure is not None:
        failure.detail.setdefault("lines", _lines_tail(lines))
        if failure.code in ("model_load_failed", "runtime_missing"):
            failure.detail.setdefault("stderr_tail", _stderr_tail(session, err_log))
        raise failure
    # The follow ended: the supervisor exited. Report how.
    status = _exit_status(session, exit_script, start_id, deadline)
    raise DeviceError(
        "runner_crashed",
        f"the runner exited with status {status} "
        + ("after its boot line" if boot else "before printing a boot line"),
        exit_status=status, booted=boot is not None, lines=_lines_tail(lines),
        stderr_tail=_stderr_tail(session, err_log),
    )


def _judge(line: DeviceLine, boot: BootLine | None, expected: str,
           wait_for_inference: bool) -> HalError | DeviceLine | None:
    """One line's meaning during verification: an error, the boot line, the confirming line
    (verified), or None (keep waiting)."""
    if isinstance(line, ErrorLine):
        if line.code == "runtime_missing":
            return DeviceError("runtime_missing", f"the runner could not import an "
                               f"interpreter: {line.message}", runner_message=line.message)
        if line.code in ("load_failed", "model_invalid", "alloc_failed"):
            return DeviceError("model_load_failed", f"the interpreter rejected the model: "
                               f"{line.message}", interpreter_message=line.message,
                               runner_code=line.code, **line.numbers)
        if line.code in ("schema_mismatch", "bad_input"):
            return DeviceError("device_error", f"the runner refused its settings: "
                               f"{line.message}", runner_code=line.code, **line.numbers)
        if line.code == "invoke_failed" and boot is not None:
            return DeviceError("device_error", f"the first inference failed: {line.message}",
                               runner_code=line.code, **line.numbers)
        return None
    if isinstance(line, BootLine):
        if not sha_matches(line.sha, expected):
            return DeviceError("wrong_model", f"the runner announced model {line.sha}, "
                               f"expected {expected[:16]}", announced=line.sha,
                               expected=expected[:16])
        return line
    if boot is None or isinstance(line, RawLine):
        return None
    if isinstance(line, InferenceLine) or (isinstance(line, StatusLine)
                                           and not wait_for_inference):
        return line
    return None


def _exit_status(session: SshSession, exit_script: str, start_id: str,
                 deadline: Deadline) -> int | None:
    """The recorded exit status of this start (the supervisor writes it as it exits)."""
    for _ in range(20):
        try:
            res = session.run(exit_script, deadline.sub(5.0), what="exit status")
        except (InfraError, Cancelled):
            return None
        for row in res.text().splitlines():
            parts = row.split()
            if len(parts) == 3 and parts[0] == "exit" and parts[1] == start_id:
                try:
                    return int(parts[2])
                except ValueError:
                    return None
        time.sleep(0.05)
    return None


def _stderr_tail(session: SshSession, err_log: str, n: int = 15) -> str:
    from hal.rpi.ssh import quote_args

    try:
        res = session.run(f"tail -n {n} {quote_args([err_log])}", Deadline(5.0),
                          what="stderr tail")
        return res.text()[-2000:]
    except HalError:
        return ""
