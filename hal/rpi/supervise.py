"""Keeping the runner alive on the target: ``systemd --user`` when the target has a user
manager with lingering, otherwise ``supervise.sh`` started with ``setsid`` (its own session and
process group, a pid file), which survives the SSH session and a bridge restart.

Both supervisors are driven by shell snippets built here (every variable part quoted):
``stop`` ends whatever runs for the work directory; ``start_and_follow`` starts the runner of
one deployment and then *becomes* ``tail --pid=<supervisor>`` on its log, so one SSH channel
delivers the boot lines and ends when the runner (supervisor) exits -- a crash is seen as a
crash, not waited out as a timeout. The systemd path is written carefully but untested in CI
(the test sshd target has no user manager).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hal.outcomes import Health
from hal.rpi.ssh import quote_args

# How long a stop waits for the runner to exit after SIGTERM before SIGKILL (tenths of s).
STOP_GRACE_TENTHS = 50

# `alive PID`: the process exists and is not a zombie. `kill -0` is not enough: an exited
# child stays a zombie until reaped, and some containers' init never reaps orphans.
ALIVE_FN = (
    "alive() { [ -n \"$1\" ] && read -r st < /proc/$1/stat 2>/dev/null || return 1; "
    'case "${st##*) }" in Z*|X*) return 1 ;; esac; return 0; }\n'
)
# Follow the log from $OFF while the supervisor $SUP lives; the channel ends when it exits
# (a crash) or when the host closes the channel (tail dies of SIGPIPE).
FOLLOW_UNTIL_EXIT = (
    ALIVE_FN
    + 'tail -c +$((OFF+1)) -s 0.05 -F "$D/runner.log" 2>/dev/null &\n'
    "T=$!\n"
    'while alive "$SUP" && alive "$T"; do sleep 0.03; done\n'
    "sleep 0.15\n"  # tail's last lines
    'kill "$T" 2>/dev/null\n'
)


@dataclass(frozen=True)
class RestartBudget:
    """How the supervisor treats a runner that exits (see supervise.sh)."""

    min_uptime_s: float = 10.0
    restarts: int = 3
    window_s: float = 60.0
    pause_s: float = 2.0

    def env(self) -> str:
        """The environment assignments supervise.sh reads (numbers only, no quoting needed)."""
        return (f"TINYML_MIN_UPTIME_CS={int(self.min_uptime_s * 100)} "
                f"TINYML_MAX_RESTARTS={int(self.restarts)} "
                f"TINYML_RESTART_WINDOW_CS={int(self.window_s * 100)} "
                f"TINYML_RESTART_PAUSE={self.pause_s:.2f}")


@dataclass(frozen=True)
class Layout:
    """Paths on the target, all absolute (``~`` resolved by preflight)."""

    workdir: str

    @property
    def models(self) -> str:
        return f"{self.workdir}/models"

    @property
    def run(self) -> str:
        return f"{self.workdir}/run"

    @property
    def current(self) -> str:
        return f"{self.workdir}/current"

    def deployment(self, sha256: str) -> str:
        return f"{self.models}/{sha256}"

    def log(self, sha256: str) -> str:
        return f"{self.deployment(sha256)}/runner.log"

    @property
    def unit(self) -> str:
        """systemd user unit name, one per work directory."""
        return "tinyml-runner-" + hashlib.sha256(self.workdir.encode()).hexdigest()[:10]


class ProcessSupervisor:
    """``setsid sh supervise.sh`` with pid files under ``<workdir>/run``."""

    kind = "process"

    def __init__(self, layout: Layout, python: str,
                 budget: RestartBudget | None = None) -> None:
        self.layout = layout
        self.python = python
        self.budget = budget or RestartBudget()

    def stop_script(self) -> str:
        """Stop the supervisor group if one runs (validated: the pid must belong to a
        supervise.sh of this work directory, so a recycled pid is never signalled)."""
        run = quote_args([self.layout.run])
        return (
            ALIVE_FN
            + f"RUN={run}\n"
            'if [ -f "$RUN/supervisor.pid" ]; then\n'
            '  P=$(cat "$RUN/supervisor.pid")\n'
            '  R=$(cat "$RUN/runner.pid" 2>/dev/null)\n'
            '  case "$P" in *[!0-9]*|"") P= ;; esac\n'
            '  case "$R" in *[!0-9]*|"") R=$P ;; esac\n'
            '  if [ -n "$P" ] && tr "\\0" " " < /proc/$P/cmdline 2>/dev/null'
            ' | grep -qF "supervise.sh $RUN "; then\n'
            '    kill -TERM "-$P" 2>/dev/null\n'
            "    i=0\n"
            f'    while {{ alive "$P" || alive "$R"; }} && [ $i -lt {STOP_GRACE_TENTHS} ]; do\n'
            "      sleep 0.02; i=$((i+1)); done\n"
            '    kill -KILL "-$P" 2>/dev/null\n'
            '    echo "stopped $P" >&2\n'
            "  fi\n"
            '  rm -f "$RUN/supervisor.pid" "$RUN/runner.pid"\n'
            "fi\n"
        )

    def start_script(self, sha256: str, start_id: str, input_mode: str) -> str:
        """Start the runner of deployment ``sha256``; print ``offset``/``lines``/``pid`` on
        stderr; then follow its log from the offset until the supervisor exits."""
        d = self.layout.deployment(sha256)
        q = quote_args
        return (
            f"D={q([d])}\nRUN={q([self.layout.run])}\n"
            'OFF=$(stat -c %s "$D/runner.log" 2>/dev/null || echo 0)\n'
            'LINES=$(wc -l < "$D/runner.log" 2>/dev/null || echo 0)\n'
            'echo "offset $OFF lines $LINES" >&2\n'
            'rm -f "$RUN/exit"\n'
            f'{self.budget.env()} '
            f'setsid sh "$D/supervise.sh" "$RUN" "$D" {q([self.python, start_id, input_mode])}'
            " </dev/null >/dev/null 2>&1 &\n"
            "SUP=$!\n"
            'echo "pid $SUP" >&2\n'
            + FOLLOW_UNTIL_EXIT
        )

    def exit_script(self) -> str:
        """Print ``exit <start_id> <status>`` when the supervisor has recorded one."""
        run = quote_args([self.layout.run])
        return f'cat {run}/exit 2>/dev/null | sed "s/^/exit /"\n'

    def status_script(self) -> str:
        """Print ``running <supervisor pid> <runner pid>`` or ``stopped``."""
        run = quote_args([self.layout.run])
        return (
            f"RUN={run}\n"
            'P=$(cat "$RUN/supervisor.pid" 2>/dev/null)\n'
            'case "$P" in *[!0-9]*|"") P= ;; esac\n'
            'if [ -n "$P" ] && tr "\\0" " " < /proc/$P/cmdline 2>/dev/null'
            ' | grep -qF "supervise.sh $RUN "; then\n'
            '  echo "running $P $(cat "$RUN/runner.pid" 2>/dev/null)"\n'
            'else echo stopped; fi\n'
        )

    def health_script(self) -> str:
        """Status, then ``exit ID STATUS`` / ``restarts ID N`` when recorded, the current
        deployment and the tail of its stderr (the liveness check, one SSH call)."""
        return _health_script(self)


def _health_script(sup: Supervisor) -> str:
    q = quote_args
    return (
        sup.status_script()
        + sup.exit_script()
        + f"sed 's/^/restarts /' {q([sup.layout.run])}/restarts 2>/dev/null\n"
        + f"C=$(readlink {q([sup.layout.current])} 2>/dev/null)\n"
        'echo "current ${C##*/}"\n'
        f'[ -n "$C" ] && tail -n 12 {q([sup.layout.models])}/"${{C##*/}}/runner.err" '
        "2>/dev/null | sed 's/^/err /'\n"
        "echo health-end\n"
    )


class SystemdSupervisor:
    """A ``systemd --user`` service per work directory (needs lingering so it runs without a
    login session). The deployment is passed through an environment file, so switching
    models never edits the unit. UNTESTED in CI: the test target has no user manager."""

    kind = "systemd"

    def __init__(self, layout: Layout, python: str,
                 budget: RestartBudget | None = None) -> None:
        self.layout = layout
        self.python = python
        self.budget = budget or RestartBudget()

    def health_script(self) -> str:
        return _health_script(self)

    def unit_text(self) -> str:
        run = self.layout.run
        # %% escapes a literal % in unit files; the sh -c body reads the env file's values.
        body = ('cd "$DEPLOY" && if [ "$INPUT_MODE" = fifo ]; then '
                '[ -p "$RUN/input" ] || mkfifo "$RUN/input"; '
                'exec "$PYTHON" -u runner.py "$DEPLOY" >>runner.log 2>>runner.err '
                '0<>"$RUN/input"; else exec "$PYTHON" -u runner.py "$DEPLOY" >>runner.log '
                "2>>runner.err </dev/null; fi")
        return (
            "[Unit]\nDescription=TinyML runner ({workdir})\n"
            # the restart budget: beyond it systemd gives up and the unit stays failed
            f"StartLimitIntervalSec={max(1, round(self.budget.window_s))}\n"
            f"StartLimitBurst={self.budget.restarts + 1}\n\n"
            "[Service]\nType=simple\n"
            f"Environment=RUN={run}\n"
            f"EnvironmentFile={run}/systemd.env\n"
            f"ExecStart=/bin/sh -c {quote_args([body])}\n"
            f"Restart=on-failure\nRestartSec={max(0.1, self.budget.pause_s):g}\n"
            "KillSignal=SIGTERM\nTimeoutStopSec=5\n\n"
            "[Install]\nWantedBy=default.target\n"
        ).replace("{workdir}", self.layout.workdir)

    def _ctl(self, *args: str) -> str:
        return quote_args(["systemctl", "--user", *args])

    def stop_script(self) -> str:
        return self._ctl("stop", self.layout.unit + ".service") + " 2>/dev/null || true\n"

    def start_script(self, sha256: str, start_id: str, input_mode: str) -> str:
        d = self.layout.deployment(sha256)
        unit = self.layout.unit + ".service"
        unit_dir = "$HOME/.config/systemd/user"
        env = (f"DEPLOY={d}\nPYTHON={self.python}\nSTART_ID={start_id}\n"
               f"INPUT_MODE={input_mode}\n")
        q = quote_args
        return (
            f"D={q([d])}\nRUN={q([self.layout.run])}\n"
            'OFF=$(stat -c %s "$D/runner.log" 2>/dev/null || echo 0)\n'
            'LINES=$(wc -l < "$D/runner.log" 2>/dev/null || echo 0)\n'
            'echo "offset $OFF lines $LINES" >&2\n'
            f'mkdir -p "{unit_dir}"\n'
            f"NEW={q([self.unit_text()])}\n"
            f'if [ "$(cat "{unit_dir}/{unit}" 2>/dev/null)" != "$NEW" ]; then\n'
            f'  printf "%s\\n" "$NEW" > "{unit_dir}/{unit}" && '
            f"{self._ctl('daemon-reload')}\nfi\n"
            f'printf %s {q([env])} > "$RUN/systemd.env"\n'
            f"{self._ctl('reset-failed', unit)} 2>/dev/null\n"
            f"{self._ctl('start', unit)} || exit 3\n"
            f"SUP=$({self._ctl('show', '-p', 'MainPID', '--value', unit)})\n"
            'echo "pid $SUP" >&2\n'
            '[ "$SUP" != 0 ] || exit 0\n'
            + FOLLOW_UNTIL_EXIT
        )

    def exit_script(self) -> str:
        unit = self.layout.unit + ".service"
        # ExecMainCode 1 = exited (status is the exit code), 2/3 = killed/dumped (a signal).
        return (
            f"C=$({self._ctl('show', '-p', 'ExecMainCode', '--value', unit)})\n"
            f"S=$({self._ctl('show', '-p', 'ExecMainStatus', '--value', unit)})\n"
            f"ID=$(sed -n 's/^START_ID=//p' {quote_args([self.layout.run])}/systemd.env)\n"
            'if [ "$C" = 1 ]; then echo "exit $ID $S"; '
            'elif [ "$C" = 2 ] || [ "$C" = 3 ]; then echo "exit $ID $((128+S))"; fi\n'
        )

    def status_script(self) -> str:
        unit = self.layout.unit + ".service"
        return (
            f"if {self._ctl('is-active', '--quiet', unit)}; then echo running "
            f"$({self._ctl('show', '-p', 'MainPID', '--value', unit)}); else echo stopped; fi\n"
        )


Supervisor = ProcessSupervisor | SystemdSupervisor


def parse_health(text: str, *, switching: bool = False) -> Health | None:
    """The runner's liveness from :func:`_health_script`'s output: ``ok`` while its supervisor
    runs (with the restarts made), ``crashed`` with the exit status and stderr tail once it
    gave up, ``none`` when nothing is deployed. None while an install or restart is
    ``switching`` runners (a stopped runner then means nothing)."""
    rows = text.splitlines()
    if "health-end" not in rows or not any(r.startswith("current") for r in rows):
        return None  # cut short (a dropped connection): it tells nothing
    state = rows[0].split()[0] if rows and rows[0].split() else "unknown"
    current = next((r.split()[1] for r in rows if r.startswith("current ")
                    and len(r.split()) > 1), None)
    exit_code = restarts = None
    for r in rows:
        parts = r.split()
        if len(parts) == 3 and parts[0] == "exit" and parts[2].lstrip("-").isdigit():
            exit_code = int(parts[2])
        if len(parts) == 3 and parts[0] == "restarts" and parts[2].isdigit():
            restarts = int(parts[2])
    tail = "\n".join(r[4:] for r in rows if r.startswith("err "))[-1500:]
    if current is None:
        return Health("none", "nothing is deployed on the target")
    if state == "running":
        return Health("ok", f"the runner of {current[:16]} runs"
                      + (f" ({restarts} restarts)" if restarts else ""),
                      restarts=restarts or 0)
    if switching:
        return None
    return Health("crashed", f"the runner of {current[:16]} is not running"
                  + (f": it exited with status {exit_code} and its supervisor gave up"
                     if exit_code is not None else ""),
                  exit_code=exit_code, stderr_tail=tail, restarts=restarts or 0)
