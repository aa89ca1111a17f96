"""The Raspberry Pi driver (``driver = "rpi"``): any Linux host reachable over SSH that can
run a TFLite interpreter.

An install is a story of logged, timed steps:

``validate``    host-side model analysis (``hal.model.analyze``), vectors against the input.
``preflight``   one remote probe: architecture, Python, interpreter, disk, memory, what is
                already deployed (``install_runtime`` may follow, only when configured).
``upload``      the deployment directory, content-addressed by the model's sha256 (skipped
                when it is already complete on the target; changed runner files are replaced).
``start``       the previous runner is stopped (its files stay).
``verify_boot`` the new runner is started and must print the boot line with the model's hash
                and a first inference (or status) line; then ``current`` is switched and old
                deployments are pruned. On any failure the previous runner is started again
                and verified, and the failure is raised.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, ClassVar

from hal.boards import get_profile
from hal.deadline import Deadline
from hal.driver import (
    PHASE_ACTIVATE,
    STEP_PREFLIGHT,
    STEP_ROLLBACK,
    STEP_START,
    STEP_UPLOAD,
    STEP_VALIDATE,
    STEP_VERIFY,
    DeviceInfo,
    Driver,
    DriverContext,
    ErrorSink,
    Health,
    InstallContext,
    RollbackOutcome,
    StepRecorder,
    register_driver,
)
from hal.errors import DeviceError, HalError, InputError
from hal.protocol import to_dict
from hal.rpi import deploy, preflight
from hal.rpi.boot import BootResult, start_runner, verify_start
from hal.rpi.observe import LogFollower, NumberedSink, RunnerLogSource
from hal.rpi.runtime import STEP_INSTALL_RUNTIME, install_runtime
from hal.rpi.settings import RpiSettings
from hal.rpi.ssh import SshEndpoint, SshSession, quote_args
from hal.rpi.supervise import (
    Layout,
    ProcessSupervisor,
    RestartBudget,
    Supervisor,
    SystemdSupervisor,
    parse_health,
)
from hal.vectors import check_input_vectors

log = logging.getLogger(__name__)

ROLLBACK_DEADLINE_S = 30.0


@register_driver("rpi")
class RpiDriver(Driver):
    """A Linux target over SSH. Thread-safe; one SSH connection per device, reused."""

    board: ClassVar[str] = "rpi64"
    Settings: ClassVar[type[RpiSettings]] = RpiSettings
    # The upload lands beside the running runner: the device changes only when it starts.
    commit_phase: ClassVar[str] = PHASE_ACTIVATE

    def __init__(self, device_id: str, settings: RpiSettings, context: DriverContext) -> None:
        super().__init__(device_id, settings, context)
        self.settings: RpiSettings = settings
        self.session = SshSession(
            SshEndpoint(
                host=settings.host, port=settings.port, user=settings.user,
                key_file=settings.key_file, known_hosts=settings.known_hosts,
                trust_on_first_use=settings.trust_on_first_use,
                connect_timeout_s=settings.connect_timeout_s,
            ),
            device_id,
        )
        self._facts: preflight.TargetFacts | None = None
        self._python = settings.python  # may become <workdir>/venv/bin/python
        # (log path, first line) the observation switches to after a verified start.
        self._switch_line: tuple[str, int] | None = None
        self.last_line_number = 0  # sequence number of the last observed line
        # Optional hook: (bytes sent, total) during a model upload (CLI progress bars, tests).
        self.on_upload_progress: Callable[[int, int], None] | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _cmd_deadline(self, deadline: Deadline, what: str) -> Deadline:
        return deadline.sub(self.settings.command_timeout_s, what)

    def _layout(self) -> Layout:
        if self._facts is None:
            raise DeviceError("device_error", "preflight has not run")
        return Layout(self._facts.workdir)

    def _supervisor(self, facts: preflight.TargetFacts) -> Supervisor:
        layout = Layout(facts.workdir)
        mode = self.settings.supervisor
        s = self.settings
        budget = RestartBudget(min_uptime_s=s.min_uptime_s, restarts=s.restart_budget,
                               window_s=s.restart_window_s, pause_s=s.restart_pause_s)
        if mode == "systemd" or (mode == "auto" and facts.systemd_usable):
            return SystemdSupervisor(layout, self._python, budget)
        return ProcessSupervisor(layout, self._python, budget)

    # -- install: the phases of hal.driver.Driver.install ----------------------------------

    def _validate(self, ctx: InstallContext) -> None:
        from hal.model.analysis import analyze

        request = ctx.request
        with ctx.steps.step(STEP_VALIDATE) as info:
            profile = get_profile(self.board)
            report = analyze(request.model, max_bytes=profile.max_model_bytes)
            source = request.input_source if request.input_source != "vectors" \
                else self.settings.input_source
            try:
                RpiSettings._source(source)
            except ValueError as exc:
                raise InputError("bad_option", str(exc), input_source=source) from None
            if len(report.inputs) != 1:
                raise InputError("bad_request", f"the runner feeds one input tensor; the "
                                 f"model has {len(report.inputs)}", inputs=len(report.inputs))
            check_input_vectors(request.input_vectors, report.inputs[0].elements,
                                report.inputs[0].shape, report.inputs[0].dtype)
            ctx.sha256 = report.sha256
            ctx.data.update(report=report, source=source)
            info.update(sha256=report.sha256, size_bytes=report.size_bytes,
                        input_source=source)

    def _fit(self, ctx: InstallContext) -> None:
        report, sha = ctx.data["report"], ctx.sha256
        with ctx.steps.step(STEP_PREFLIGHT) as info:
            facts = self._preflight(sha, ctx.deadline, ctx.steps)
            runtime = preflight.choose_runtime(facts)
            dep = facts.deployment
            complete = bool(dep.get("exists") and dep.get("model_ok"))
            fit = preflight.check_fit(
                facts, model_bytes=report.size_bytes,
                memory_estimate_bytes=report.arena_estimate_bytes,
                disk_reserve_bytes=self.settings.disk_reserve_bytes,
                runtime_memory_bytes=self.settings.runtime_memory_bytes,
                upload_needed=not complete)
            info.update(arch=facts.arch, python=".".join(map(str, facts.python)),
                        runtime=runtime, runtime_version=facts.runtimes.get(runtime),
                        numpy=facts.numpy, board=facts.board, previous=facts.current, **fit)
        ctx.data.update(facts=facts, runtime=runtime, complete=complete,
                        supervisor=self._supervisor(facts))

    def _prepare(self, ctx: InstallContext) -> None:
        report, facts, request = ctx.data["report"], ctx.data["facts"], ctx.request
        settings_doc = {
            "sha256": ctx.sha256,
            "labels": list(request.labels),
            "vectors": [list(v) for v in request.input_vectors],
            "input_source": ctx.data["source"],
            "period_s": self.settings.period_s,
            "status_period_s": self.settings.status_period_s,
            "board": facts.board,
            "model": "model.tflite",
            "inputs": [{"shape": list(t.shape), "dtype": t.dtype} for t in report.inputs],
            "outputs": [{"shape": list(t.shape), "dtype": t.dtype} for t in report.outputs],
        }
        ctx.data["files"] = deploy.runner_files(settings_doc)

    def _transfer(self, ctx: InstallContext) -> None:
        """Upload beside the running runner: it keeps serving until ``activate``."""
        facts, files, sha = ctx.data["facts"], ctx.data["files"], ctx.sha256
        layout, deadline = Layout(facts.workdir), ctx.deadline
        replaced: tuple[str, ...] = ()
        if ctx.data["complete"]:
            have = facts.deployment.get("files", {})
            changed = {n: b for n, b in files.items() if have.get(n) != _sha(b)}
            if changed:
                with ctx.steps.step(STEP_UPLOAD, skipped_model=True) as info:
                    res = deploy.update_small_files(self.session, layout, sha, changed,
                                                    self._cmd_deadline(deadline, "upload"))
                    replaced = tuple(changed)
                    info.update(files=list(changed), bytes=res.uploaded_bytes)
            else:
                ctx.steps.skip(STEP_UPLOAD, "deployment already complete on the target",
                               sha256=sha)
        else:
            with ctx.steps.step(STEP_UPLOAD) as info:
                res = deploy.upload_deployment(self.session, layout, sha, ctx.request.model,
                                               files, deadline.sub(None, "upload"),
                                               self.on_upload_progress)
                info.update(bytes=res.uploaded_bytes, files=list(res.files))
        ctx.data["replaced"] = replaced
        ctx.transferred = ctx.compiled = not ctx.data["complete"] or bool(replaced)

    def _activate(self, ctx: InstallContext) -> None:
        """Stop the old runner and start the new one (the device changes here)."""
        supervisor: Supervisor = ctx.data["supervisor"]
        what = "start runner"
        with ctx.steps.step(STEP_START, supervisor=supervisor.kind):
            budget = ctx.shielded(self.settings.command_timeout_s, what)
            self.session.run(supervisor.stop_script(), budget, what="stop runner")
            ctx.data["boot_deadline"] = ctx.shielded(
                min(ctx.request.boot_deadline_s, self.settings.boot_deadline_s),
                "boot verification")
            ctx.data["start"] = self._start_runner(supervisor, ctx.sha256, ctx.data["source"],
                                                   ctx.data["boot_deadline"])

    def _verify(self, ctx: InstallContext) -> None:
        supervisor: Supervisor = ctx.data["supervisor"]
        facts, sha = ctx.data["facts"], ctx.sha256
        layout = Layout(facts.workdir)
        with ctx.steps.step(STEP_VERIFY) as info:
            boot = self._verify_runner(supervisor, sha, ctx.data["start"],
                                       ctx.data["boot_deadline"])
            info.update(boot=to_dict(boot.boot), seconds_to_boot=round(boot.seconds, 3))
            pruned = deploy.activate(self.session, layout, sha, self.settings.keep_deployments,
                                     ctx.shielded(self.settings.command_timeout_s, "activate"))
            info.update(pruned=pruned)
        if ctx.data["replaced"]:
            deploy.finish_small_files(self.session, layout, sha, ctx.data["replaced"],
                                      restore=False, deadline=Deadline(10.0))
        self._switch_line = (layout.log(sha), boot.log_lines + 1)
        ctx.boot, ctx.arena_bytes = to_dict(boot.boot), boot.boot.arena_bytes
        ctx.detail = {
            "host": self.settings.host, "port": self.settings.port,
            "user": self.settings.user, "workdir": facts.workdir, "arch": facts.arch,
            "board": facts.board, "runtime": ctx.data["runtime"], "python": self._python,
            "supervisor": supervisor.kind, "upload_skipped": ctx.data["complete"],
            "previous": facts.current, "pruned": pruned,
            "used_bytes": boot.boot.used_bytes, "confirm": to_dict(boot.confirm),
            "log_line": boot.log_lines + 1,
        }

    def _rollback(self, ctx: InstallContext, error: HalError) -> RollbackOutcome:
        """Stop the failed runner and start the previous deployment again (its own deadline:
        a cancelled or timed-out job must still leave the device running something known)."""
        supervisor: Supervisor = ctx.data["supervisor"]
        facts, sha = ctx.data["facts"], ctx.sha256
        layout = Layout(facts.workdir)
        deadline = Deadline(ROLLBACK_DEADLINE_S, what="rollback")
        prev = facts.current
        try:
            with ctx.steps.step(STEP_ROLLBACK, previous=prev) as info:
                self.session.run(supervisor.stop_script(), deadline.sub(10.0),
                                 what="stop runner")
                if ctx.data.get("replaced"):
                    deploy.finish_small_files(self.session, layout, sha, ctx.data["replaced"],
                                              restore=True, deadline=deadline.sub(10.0))
                if not prev:
                    info["restarted"] = False
                    return RollbackOutcome(
                        needed=True, attempted=False, verified=False, running_sha256=None,
                        reason="no previously verified model: the failed runner was stopped "
                        "and nothing runs")
                source = self._source_of(layout, prev, deadline)
                boot = self._start(supervisor, prev, source, deadline.sub(
                    self.settings.boot_deadline_s, "rollback boot verification"))
                info.update(restarted=True, boot=to_dict(boot.boot))
        except HalError as err:
            log.error("device=%s rollback to %s failed: %s", self.device_id, prev, err)
            return RollbackOutcome(needed=True, attempted=True, verified=False,
                                   running_sha256=None, reason=f"the rollback to "
                                   f"{str(prev)[:16]} failed: {err.message}",
                                   error=err.to_dict())
        self._switch_line = (layout.log(prev), boot.log_lines + 1)
        log.warning("device=%s rolled back to %s (verified)", self.device_id, prev[:16])
        return RollbackOutcome(needed=True, attempted=True, verified=True, running_sha256=prev,
                               reason=f"the previous model {prev[:16]} was started again and "
                               "verified", boot=to_dict(boot.boot))

    def _run(self, script: str, deadline: Deadline, what: str):
        return self.session.run(script, self._cmd_deadline(deadline, what), what=what)

    def _probe(self, sha: str, deadline: Deadline) -> preflight.TargetFacts:
        try:
            return preflight.probe(self.session, self._python, self.settings.workdir, sha,
                                   deadline)
        except DeviceError as exc:
            if exc.code != "runtime_missing" or self._python == self.settings.python:
                raise
            # The venv this driver used is gone (workdir wiped): start over from the
            # configured interpreter.
            log.warning("device=%s %s disappeared; back to %s", self.device_id, self._python,
                        self.settings.python)
            self._python = self.settings.python
            return preflight.probe(self.session, self._python, self.settings.workdir, sha,
                                   deadline)

    def _preflight(self, sha: str, deadline: Deadline,
                   steps: StepRecorder) -> preflight.TargetFacts:
        sub = self._cmd_deadline(deadline, "preflight")
        facts = self._probe(sha, sub)
        self._facts = facts
        try:
            preflight.choose_runtime(facts)
        except DeviceError as exc:
            if exc.code != "runtime_missing" or not self.settings.install_runtime:
                raise
            if facts.venv_python and self._python != facts.venv_python:
                # An earlier install (maybe by another bridge process) left a venv: try it
                # before installing anything.
                self._python = facts.venv_python
                facts = preflight.probe(self.session, self._python, self.settings.workdir,
                                        sha, sub)
                try:
                    preflight.choose_runtime(facts)
                except DeviceError:
                    facts = self._install_runtime(facts, sha, deadline, steps)
                else:
                    self._venv_reused(facts, steps)
            else:
                facts = self._install_runtime(facts, sha, deadline, steps)
        else:
            if self.settings.install_runtime and self._python == facts.venv_python:
                self._venv_reused(facts, steps)
        self._facts = facts
        return facts

    def _venv_reused(self, facts: preflight.TargetFacts, steps: StepRecorder) -> None:
        steps.skip(STEP_INSTALL_RUNTIME, f"the runtime is already installed in "
                   f"{facts.workdir}/venv", venv=f"{facts.workdir}/venv",
                   python=self._python, runtimes=facts.runtimes, numpy=facts.numpy)

    def _install_runtime(self, facts: preflight.TargetFacts, sha: str, deadline: Deadline,
                         steps: StepRecorder) -> preflight.TargetFacts:
        facts, self._python = install_runtime(
            self.session, facts, self.settings.python, self.settings.pip_args,
            self.settings.workdir, sha, deadline, steps, self.device_id,
            self.settings.command_timeout_s)
        return facts

    def _start_runner(self, supervisor: Supervisor, sha: str, source: str,
                      deadline: Deadline) -> tuple[Any, str, str]:
        start_id = secrets.token_hex(6)
        mode = "fifo" if source == "stdin" else "null"
        chan = start_runner(self.session, supervisor.start_script(sha, start_id, mode),
                            deadline)
        return chan, start_id, source

    def _verify_runner(self, supervisor: Supervisor, sha: str, started: tuple[Any, str, str],
                       deadline: Deadline) -> BootResult:
        chan, start_id, source = started
        return verify_start(
            self.session, chan, supervisor.exit_script(),
            f"{supervisor.layout.deployment(sha)}/runner.err", sha, start_id, deadline,
            wait_for_inference=source == "vectors")

    def _start(self, supervisor: Supervisor, sha: str, source: str,
               deadline: Deadline) -> BootResult:
        return self._verify_runner(supervisor, sha,
                                   self._start_runner(supervisor, sha, source, deadline),
                                   deadline)

    def _source_of(self, layout: Layout, sha: str, deadline: Deadline) -> str:
        import json

        res = self.session.run(f"cat {quote_args([layout.deployment(sha) + '/settings.json'])}",
                               deadline.sub(10.0), what="read settings")
        try:
            return str(json.loads(res.text()).get("input_source", "vectors"))
        except ValueError:
            return "vectors"

    # -- runner control ----------------------------------------------------------------------

    def _ensure_facts(self, deadline: Deadline) -> preflight.TargetFacts:
        if self._facts is None:
            self._facts = self._probe_any(deadline)
        return self._facts

    def _probe_any(self, deadline: Deadline) -> preflight.TargetFacts:
        """Probe outside an install. With ``install_runtime``, a venv an earlier install left
        on the target is adopted when the configured python lacks the runtime (a restarted
        bridge must restart the runner with the python it was installed with)."""
        sub = self._cmd_deadline(deadline, "preflight")
        facts = self._probe("0" * 64, sub)
        if self.settings.install_runtime and facts.venv_python and \
                self._python != facts.venv_python:
            try:
                preflight.choose_runtime(facts)
            except DeviceError as exc:
                if exc.code != "runtime_missing":
                    raise
                self._python = facts.venv_python
                facts = preflight.probe(self.session, self._python, self.settings.workdir,
                                        "0" * 64, sub)
        return facts

    def runner_status(self, deadline: Deadline) -> dict[str, Any]:
        """``{"state": "running"|"stopped", "pids": [...], "current": sha|None}``."""
        facts = self._ensure_facts(deadline)
        sup = self._supervisor(facts)
        res = self._run(sup.status_script() + f"readlink {quote_args([sup.layout.current])}"
                        " || true", deadline, "runner status")
        rows = res.text().split("\n")
        words = rows[0].split()
        current = rows[1].rsplit("/", 1)[-1] if len(rows) > 1 and rows[1] else None
        return {"state": words[0] if words else "unknown",
                "pids": [int(w) for w in words[1:] if w.isdigit()], "current": current,
                "supervisor": sup.kind}

    def stop_runner(self, deadline: Deadline) -> None:
        """Stop the runner (files and ``current`` stay)."""
        with self.exclusive("stop"):
            facts = self._ensure_facts(deadline)
            self._run(self._supervisor(facts).stop_script(), deadline, "stop runner")

    def restart(self, deadline: Deadline) -> BootResult:
        """Restart the ``current`` deployment and verify its boot against the hash it was
        deployed with (``wrong_model`` when the file on the target no longer matches)."""
        with self.exclusive("restart"):
            facts = self._probe_any(deadline)
            self._facts = facts
            if not facts.current:
                raise DeviceError("device_error", "nothing is deployed on the target",
                                  workdir=facts.workdir)
            sup = self._supervisor(facts)
            self._run(sup.stop_script(), deadline, "stop runner")
            source = self._source_of(sup.layout, facts.current, deadline)
            boot = self._start(sup, facts.current, source, deadline.sub(
                self.settings.boot_deadline_s, "boot verification"))
            self._switch_line = (sup.layout.log(facts.current), boot.log_lines + 1)
            self._switch_observation(facts.current)
            return boot

    def runner_health(self, deadline: Deadline) -> Health | None:
        """The runner's liveness from the supervisor's records (one SSH call): ``ok`` while
        it runs (``restarts`` made within the budget), ``crashed`` with the exit status and
        stderr tail once the supervisor gave up, ``none`` when nothing is deployed. None
        when the target cannot be asked (that is the link's error, not the runner's)."""
        try:
            facts = self._ensure_facts(deadline)
            res = self._run(self._supervisor(facts).health_script(), deadline, "liveness")
        except HalError:
            return None
        return parse_health(res.text(), switching=self._guard.locked())

    # -- observation (hal.observation owns the loop) -----------------------------------------

    def current_log(self, deadline: Deadline) -> tuple[str, int] | None:
        """The current deployment's log path and its line count, or None when nothing is
        deployed (not an error). Raises a classified error when the target is unreachable."""
        facts = self._ensure_facts(deadline)
        layout = Layout(facts.workdir)
        res = self._run(f"C=$(readlink {quote_args([layout.current])}) || exit 0\n"
                        f"echo $C && wc -l < {quote_args([layout.workdir])}/$C/runner.log",
                        deadline, "observation start")
        rows = res.text().split()
        if not rows:
            return None
        sha = rows[0].rsplit("/", 1)[-1]
        count = int(rows[1]) if len(rows) > 1 and rows[1].isdigit() else 0
        return layout.log(sha), count

    def follow(self, sink: NumberedSink, start_line: int | None = None,
               on_error: ErrorSink | None = None, deadline: Deadline | None = None
               ) -> LogFollower:
        """Follow the current deployment's log from ``start_line`` (default: the next new
        line) with line numbers as sequence numbers, on a thread of its own (tools, tests;
        the bridge's observation is :meth:`start_observing`). The caller stops it."""
        found = self.current_log(deadline or Deadline(30.0, what="observation start"))
        if found is None:
            raise DeviceError("device_error", "nothing is deployed on the target",
                              workdir=self._facts.workdir if self._facts else None)
        path, count = found
        first = start_line if start_line is not None else count + 1
        return LogFollower(self.session, path, first, sink, on_error, self.device_id).start()

    def _observation_source(self) -> RunnerLogSource:
        return RunnerLogSource(self)

    def _observation_target(self, sha256: str | None) -> tuple[str, int] | None:
        return self._switch_line if sha256 else None

    def close(self) -> None:
        self.stop_observing()
        self.session.close()

    # -- description ---------------------------------------------------------------------------

    def info(self) -> DeviceInfo:
        facts = self._facts
        return DeviceInfo(
            id=self.device_id, driver="rpi",
            board=facts.board if facts else self.board,
            address=f"{self.settings.user}@{self.settings.host}:{self.settings.port}",
            connected=self.session.connected,
            detail={"workdir": facts.workdir if facts else self.settings.workdir,
                    "arch": facts.arch if facts else None,
                    "current": facts.current if facts else None,
                    "python": self._python},
        )

    @classmethod
    def check_tools(cls, context: DriverContext) -> dict[str, Any]:
        try:
            import paramiko
        except ImportError:
            return {"available": False, "checks": [{
                "check": "paramiko", "ok": False, "message": "paramiko is not installed",
                "fix": "pip install paramiko"}]}
        return {"available": True, "checks": [{
            "check": "paramiko", "ok": True, "message": f"paramiko {paramiko.__version__}",
            "fix": ""}]}

    def diagnose(self, deadline: Deadline) -> list[dict[str, Any]]:
        checks: list[dict[str, Any]] = []

        def add(name: str, ok: bool, message: str, fix: str = "") -> None:
            checks.append({"check": name, "ok": ok, "message": message, "fix": fix})

        try:
            self.session.ensure(deadline.sub(self.settings.connect_timeout_s))
            add("ssh", True, f"connected to {self.settings.user}@{self.settings.host}")
        except HalError as err:
            add("ssh", False, err.message, str(err.detail.get("fix", "")))
            return checks
        try:
            facts = self._probe_any(deadline)
            self._facts = facts
            runtime = preflight.choose_runtime(facts)
            add("runtime", True, f"{runtime} {facts.runtimes.get(runtime)} on Python "
                f"{'.'.join(map(str, facts.python))} ({facts.arch})")
            add("workdir", facts.writable, facts.write_error or f"{facts.workdir} writable",
                "" if facts.writable else f"make {facts.workdir} writable")
        except HalError as err:
            add("runtime", False, err.message, str(err.detail.get("fix", "")))
        return checks


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
