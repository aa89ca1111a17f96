"""Rollouts: one artifact to a set of devices across several bridges, and re-attaching
deployments after a restart.

A rollout's targets are split into waves: wave 0 is the canary (``canary`` devices, default
one), then waves of ``wave_size`` devices. A wave starts only when the previous one ended with
every device verified; inside a wave at most ``max_parallel`` deployments run at once. The
first failure halts the rollout: deployments already under way finish (a device is never left
half-flashed) and every device not yet reached is ``skipped`` -- it keeps the model it runs.
Cancelling halts the same way and cancels the deployments under way.

Each device is an ordinary deployment (``backend_stub.deploy``), so a rollout's per-device
table links to deployments with their bridge jobs, and a deployment succeeds only on a boot
verified with this artifact's hash.

**Restarts.** Nothing here lives only in memory: targets, their deployments and their bridge
job ids are rows. At start (:meth:`RolloutRunner.recover`) every deployment a previous process
was following is re-attached to its bridge job and followed to its true end -- the bridge
finishes an install whatever happens to the backend -- and every unfinished rollout continues
where it stopped. A deployment whose install request was under way when the process died (no
bridge job id recorded) is matched to the bridge's job for that device and model; if the
bridge has none, it ends ``interrupted`` saying so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from backend_stub.bridges import bridge_client
from backend_stub.config import BackendConfig
from backend_stub.datasets import conflict, not_found
from backend_stub.deploy import DeploymentRunner, deployable, report_from_dict
from backend_stub.storage import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Bridge,
    Compilation,
    Deployment,
    Rollout,
    RolloutTarget,
    Store,
    utcnow,
)
from hal.boards import fit_check, get_profile
from hal.errors import Cancelled, HalError, InfraError, InputError

log = logging.getLogger(__name__)

PENDING, DEPLOYING, SKIPPED = "pending", "deploying", "skipped"
TARGET_FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, SKIPPED})
# A bridge job may be created a little before the backend recorded the request (clocks of the
# two processes, the time the request took): how far back an adopted job may start.
ADOPT_SLACK_S = 30.0


def plan_waves(count: int, canary: int, wave_size: int) -> list[int]:
    """The wave of each of ``count`` targets: ``canary`` in wave 0 (none if 0), then waves
    of ``wave_size``."""
    waves = []
    for i in range(count):
        if i < canary:
            waves.append(0)
        else:
            waves.append(1 + (i - canary) // wave_size)
    return waves


# ------------------------------------------------------------------------------ re-attach


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def adopt_bridge_job(store: Store, config: BackendConfig, dep_id: int) -> str | None:
    """A deployment whose install request was under way when the backend died has no bridge
    job id. Find the bridge's job for that device and artifact, started no earlier than the
    deployment (and not another deployment's); record and return its id, or None."""
    with store.session() as s:
        dep = s.get(Deployment, dep_id)
        comp = s.get(Compilation, dep.compilation_id) if dep.compilation_id else None
        bridge = s.get(Bridge, dep.bridge_id) if dep.bridge_id else None
        if comp is None or bridge is None:
            return None
        since = dep.started_at or dep.created_at
        sha, device, url, token = comp.sha256, dep.device_id, bridge.url, bridge.token
        claimed = set(s.scalars(select(Deployment.bridge_job_id).where(
            Deployment.bridge_id == dep.bridge_id, Deployment.bridge_job_id.is_not(None))))
    with bridge_client(url, token, config) as client:
        jobs = client.jobs(device=device, limit=20)
    for job in jobs:  # newest first
        created = _parse_time(job.get("created_at"))
        if (job.get("model_sha256") == sha and str(job.get("id")) not in claimed
                and created is not None and created >= since - timedelta(seconds=ADOPT_SLACK_S)):
            with store.session() as s:
                s.execute(update(Deployment).where(Deployment.id == dep_id)
                          .values(bridge_job_id=str(job["id"]), bridge_job=job))
            log.info("deployment %d: adopted bridge job %s (its install request was under way "
                     "at the restart)", dep_id, job["id"])
            return str(job["id"])
    return None


def prepare_reattach(store: Store, config: BackendConfig, dep_id: int) -> bool:
    """Make a deployment left unfinished by a previous process followable again. True when
    it can be followed (it has a bridge job, or its install was never sent); otherwise it is
    ended ``interrupted`` with the reason."""
    with store.session() as s:
        dep = s.get(Deployment, dep_id)
        if dep is None or dep.state in FINAL_STATES:
            return False
        if dep.bridge_job_id or dep.state == QUEUED:
            return True  # re-attach to the job / the install request was never sent
    try:
        if adopt_bridge_job(store, config, dep_id):
            return True
        reason = "the bridge has no job for this device and artifact"
    except HalError as exc:
        reason = f"the bridge could not be asked: {exc.code}: {exc.message}"
    with store.session() as s:
        s.execute(update(Deployment).where(Deployment.id == dep_id,
                                           Deployment.state.in_((QUEUED, RUNNING)))
                  .values(state=FAILED, finished_at=utcnow(), error=InfraError(
                      "interrupted", "the backend restarted while sending the install request; "
                      + reason + " (the device keeps the model it runs)").to_dict()))
    log.warning("deployment %d interrupted: %s", dep_id, reason)
    return False


# ------------------------------------------------------------------------------ rollouts


class RolloutRunner:
    """Starts, drives, cancels and recovers rollouts; recovers single deployments too."""

    def __init__(self, store: Store, config: BackendConfig,
                 deployments: DeploymentRunner) -> None:
        self.store = store
        self.config = config
        self.deployments = deployments
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    # -- creation ------------------------------------------------------------------------

    def create(self, compilation_id: int, targets: list[tuple[int, str]], *, canary: int,
               wave_size: int, max_parallel: int, deploy_params: dict[str, Any]) -> int:
        """Check everything that can be checked before any device is touched (artifact,
        bridges, every device known to its bridge, fit on each device's board), record the
        rollout with its waves, start it."""
        if len(set(targets)) != len(targets):
            dupes = sorted({f"{b}:{d}" for b, d in targets if targets.count((b, d)) > 1})
            raise InputError("bad_option", f"targets listed twice: {', '.join(dupes)}",
                             field="targets", duplicates=dupes)
        with self.store.session() as s:
            comp = s.get(Compilation, compilation_id)
            if comp is None:
                raise not_found("compilation", compilation_id)
            deployable(comp)
            report = comp.report or {}
            bridges = {}
            for bridge_id in sorted({b for b, _ in targets}):
                bridge = s.get(Bridge, bridge_id)
                if bridge is None:
                    raise not_found("bridge", bridge_id)
                bridges[bridge_id] = (bridge.url, bridge.token)
            board = comp.board
        boards: dict[tuple[int, str], str] = {}
        for bridge_id, (url, token) in bridges.items():
            with bridge_client(url, token, self.config) as client:
                known = {d.get("id"): d for d in client.devices()}
            wanted = [d for b, d in targets if b == bridge_id]
            missing = [d for d in wanted if d not in known]
            if missing:
                raise InputError("unknown_device", f"bridge {bridge_id} has no device "
                                 f"{', '.join(missing)}", bridge_id=bridge_id, missing=missing,
                                 known=sorted(k for k in known if k))
            for d in wanted:
                boards[(bridge_id, d)] = known[d].get("board") or board
        arena = deploy_params.get("arena_bytes")
        for other in sorted(set(boards.values())):
            if other != board or arena is not None:
                fit_check(report_from_dict(report["model"]), get_profile(other),
                          arena).raise_if_not_fit()
        waves = plan_waves(len(targets), canary, wave_size)
        with self.store.session() as s:
            ro = Rollout(compilation_id=compilation_id, params={
                "canary": canary, "wave_size": wave_size, "max_parallel": max_parallel,
                "waves": (max(waves) + 1) if waves else 0, **deploy_params})
            s.add(ro)
            s.flush()
            for i, ((bridge_id, device), wave) in enumerate(zip(targets, waves, strict=True)):
                s.add(RolloutTarget(rollout_id=ro.id, position=i, wave=wave,
                                    bridge_id=bridge_id, device_id=device, state=PENDING))
            ro_id = ro.id
        with self.store.session() as s:
            for t in s.scalars(select(RolloutTarget).where(RolloutTarget.rollout_id == ro_id)):
                t.note = f"board {boards[(t.bridge_id, t.device_id)]}"
        self._start(ro_id)
        log.info("rollout %d: compilation %d to %d devices on %d bridge(s), %d wave(s)", ro_id,
                 compilation_id, len(targets), len(bridges), (max(waves) + 1) if waves else 0)
        return ro_id

    def _start(self, ro_id: int) -> None:
        event = threading.Event()
        with self._lock:
            self._cancel[ro_id] = event
        threading.Thread(target=self._drive_safely, args=(ro_id, event), daemon=True,
                         name=f"rollout-{ro_id}").start()

    def cancel(self, ro_id: int) -> None:
        """Halt a rollout: nothing new starts, the deployments under way are cancelled."""
        with self.store.session() as s:
            ro = s.get(Rollout, ro_id)
            if ro is None:
                raise not_found("rollout", ro_id)
            state = ro.state
        with self._lock:
            event = self._cancel.get(ro_id)
        if event is None or state in FINAL_STATES:
            raise conflict(f"rollout {ro_id} has ended already ({state})", state=state)
        event.set()
        with self.store.session() as s:  # kept across a restart
            ro = s.get(Rollout, ro_id)
            ro.params = {**ro.params, "cancel_requested": True}
        with self.store.session() as s:
            running = list(s.scalars(select(RolloutTarget.deployment_id).where(
                RolloutTarget.rollout_id == ro_id, RolloutTarget.state == DEPLOYING)))
        for dep_id in running:
            with contextlib.suppress(HalError):  # it ended meanwhile
                self.deployments.cancel(dep_id)

    # -- the driver thread ---------------------------------------------------------------

    def _drive_safely(self, ro_id: int, cancel: threading.Event) -> None:
        try:
            self._drive(ro_id, cancel)
        except Exception as exc:
            log.exception("rollout %d: unexpected failure", ro_id)
            err = exc if isinstance(exc, HalError) else InfraError(
                "interrupted", f"the rollout driver failed: {type(exc).__name__}: {exc}")
            self._finish(ro_id, FAILED, err.to_dict())
        finally:
            with self._lock:
                self._cancel.pop(ro_id, None)

    def _finish(self, ro_id: int, state: str, error: dict | None) -> None:
        with self.store.session() as s:
            s.execute(update(Rollout).where(Rollout.id == ro_id,
                                            Rollout.state.in_((QUEUED, RUNNING)))
                      .values(state=state, error=error, finished_at=utcnow()))
            # Devices never reached keep their model; say so in the table.
            s.execute(update(RolloutTarget).where(RolloutTarget.rollout_id == ro_id,
                                                  RolloutTarget.state == PENDING)
                      .values(state=SKIPPED, note="not reached: the rollout "
                              + ("was cancelled" if state == CANCELLED else "halted")
                              + "; the device keeps the model it runs"))
        log.info("rollout %d %s%s", ro_id, state,
                 f": {error.get('code')}: {error.get('message')}" if error else "")

    def _targets(self, ro_id: int) -> list[RolloutTarget]:
        with self.store.session() as s:
            return list(s.scalars(select(RolloutTarget).where(RolloutTarget.rollout_id == ro_id)
                                  .order_by(RolloutTarget.position)))

    def _drive(self, ro_id: int, cancel: threading.Event) -> None:
        with self.store.session() as s:
            ro = s.get(Rollout, ro_id)
            params = dict(ro.params)
            comp_id = ro.compilation_id
            if ro.state == QUEUED:
                ro.state, ro.started_at = RUNNING, utcnow()
        if params.get("cancel_requested"):
            cancel.set()  # asked for before a restart
        failure: dict[str, Any] = {}
        halt = threading.Event()
        waves = sorted({t.wave for t in self._targets(ro_id)})
        for wave in waves:
            todo = [t for t in self._targets(ro_id)
                    if t.wave == wave and t.state not in TARGET_FINAL]
            failed_before = [t for t in self._targets(ro_id)
                             if t.wave <= wave and t.state in (FAILED, CANCELLED)]
            if failed_before and not failure:
                failure["target"] = failed_before[0]  # recorded before a restart
                halt.set()
            if halt.is_set() or cancel.is_set():
                # Nothing new starts; deployments already under way (a restart in the middle
                # of a halting wave) are still followed to their end.
                todo = [t for t in todo if t.deployment_id is not None]
                if not todo:
                    continue
            log.info("rollout %d: wave %d, %d device(s)", ro_id, wave, len(todo))
            with ThreadPoolExecutor(max_workers=max(1, int(params["max_parallel"])),
                                    thread_name_prefix=f"rollout-{ro_id}-w{wave}") as pool:
                for t in todo:
                    pool.submit(self._one, ro_id, t.id, comp_id, params, halt, cancel, failure)
            if self.deployments.stopping.is_set():
                return  # the backend stops: continued at the next start
        if self.deployments.stopping.is_set():
            return
        if cancel.is_set():
            self._finish(ro_id, CANCELLED, Cancelled(f"rollout {ro_id} cancelled").to_dict())
        elif halt.is_set():
            self._finish(ro_id, FAILED, self._halt_error(ro_id, failure.get("target")))
        else:
            self._finish(ro_id, SUCCEEDED, None)

    def _halt_error(self, ro_id: int, target: RolloutTarget | None) -> dict[str, Any]:
        """The first failure's own error (its code and class), naming the device."""
        with self.store.session() as s:
            dep = (s.get(Deployment, target.deployment_id)
                   if target is not None and target.deployment_id else None)
            pending = s.scalars(select(RolloutTarget.id).where(
                RolloutTarget.rollout_id == ro_id, RolloutTarget.state == PENDING)).all()
        err = dict((dep.error if dep is not None else None) or InfraError(
            "interrupted", "a device of the rollout failed").to_dict())
        where = (f"device {target.device_id} on bridge {target.bridge_id}" if target
                 else "a device")
        err["message"] = (f"rollout {ro_id} halted: {where} failed: {err.get('message')}; "
                          f"{len(pending)} device(s) not reached keep their model")
        err["detail"] = {**(err.get("detail") or {}), "rollout_id": ro_id,
                         "deployment_id": dep.id if dep is not None else None,
                         "device_id": target.device_id if target else None,
                         "bridge_id": target.bridge_id if target else None,
                         "not_reached": len(pending)}
        return err

    def _one(self, ro_id: int, target_id: int, comp_id: int | None, params: dict[str, Any],
             halt: threading.Event, cancel: threading.Event, failure: dict) -> None:
        """Deploy one target (or re-attach to its deployment) and record its outcome."""
        try:
            self._deploy_target(ro_id, target_id, comp_id, params, halt, cancel)
        except Exception:
            log.exception("rollout %d target %d: unexpected failure", ro_id, target_id)
            self._set_target(target_id, FAILED, "the rollout driver failed on this device")
        with self.store.session() as s:
            t = s.get(RolloutTarget, target_id)
            if t.state in (FAILED, CANCELLED) and not self.deployments.stopping.is_set():
                failure.setdefault("target", t)
                halt.set()

    def _set_target(self, target_id: int, state: str, note: str | None = None,
                    **values: Any) -> None:
        with self.store.session() as s:
            values = {"state": state, **values}
            if note is not None:
                values["note"] = note
            s.execute(update(RolloutTarget).where(RolloutTarget.id == target_id)
                      .values(**values))

    def _deploy_target(self, ro_id: int, target_id: int, comp_id: int | None,
                       params: dict[str, Any], halt: threading.Event,
                       cancel: threading.Event) -> None:
        with self.store.session() as s:
            t = s.get(RolloutTarget, target_id)
            dep_id, bridge_id, device, note = t.deployment_id, t.bridge_id, t.device_id, t.note
        if dep_id is None:
            if halt.is_set() or cancel.is_set() or self.deployments.stopping.is_set():
                return  # stays pending: skipped when the rollout ends, or resumed
            if comp_id is None or bridge_id is None:
                self._set_target(target_id, FAILED, "the artifact or bridge was deleted")
                return
            board = (note or "").removeprefix("board ") or None
            with self.store.session() as s:
                dep = Deployment(compilation_id=comp_id, bridge_id=bridge_id, device_id=device,
                                 params={k: params[k] for k in (
                                     "input_vectors", "arena_bytes", "boot_deadline_s",
                                     "min_agreement", "agreement_timeout_s")
                                     if k in params} | {"board": board, "rollout_id": ro_id})
                s.add(dep)
                s.flush()
                dep_id = dep.id
                s.execute(update(RolloutTarget).where(RolloutTarget.id == target_id)
                          .values(state=DEPLOYING, deployment_id=dep_id))
            log.info("rollout %d: deployment %d to %s on bridge %d", ro_id, dep_id, device,
                     bridge_id)
        elif not prepare_reattach(self.store, self.config, dep_id):
            self._record_end(target_id, dep_id)  # ended interrupted (or already ended)
            return
        event = threading.Event()
        if cancel.is_set():
            event.set()
        self.deployments.follow(dep_id, event)
        if not self.deployments.stopping.is_set():
            self._record_end(target_id, dep_id)

    def _record_end(self, target_id: int, dep_id: int) -> None:
        with self.store.session() as s:
            dep = s.get(Deployment, dep_id)
            state = dep.state if dep is not None else FAILED
            err = (dep.error or {}) if dep is not None else {}
        if state in FINAL_STATES:
            note = f"{err.get('code')}: {err.get('message')}"[:512] if err else "verified boot"
            self._set_target(target_id, state, note)

    # -- restart -------------------------------------------------------------------------

    def recover(self) -> None:
        """Re-attach what a previous process left unfinished (in background threads: a
        bridge that is down must not delay the backend's start)."""
        with self.store.session() as s:
            in_rollout = set(s.scalars(select(RolloutTarget.deployment_id).join(
                Rollout, Rollout.id == RolloutTarget.rollout_id).where(
                Rollout.state.in_((QUEUED, RUNNING)),
                RolloutTarget.deployment_id.is_not(None))))
            singles = [d for d in s.scalars(select(Deployment.id).where(
                Deployment.state.in_((QUEUED, RUNNING)))) if d not in in_rollout]
            rollouts = list(s.scalars(select(Rollout.id).where(
                Rollout.state.in_((QUEUED, RUNNING)))))
        for dep_id in singles:
            log.info("deployment %d was being followed before the restart: re-attaching", dep_id)
            self._background(f"reattach-{dep_id}", self._reattach_single, dep_id)
        for ro_id in rollouts:
            log.info("rollout %d was running before the restart: continuing", ro_id)
            self._start(ro_id)

    def _reattach_single(self, dep_id: int) -> None:
        if prepare_reattach(self.store, self.config, dep_id):
            self.deployments.follow(dep_id)

    @staticmethod
    def _background(name: str, fn: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=fn, args=args, daemon=True, name=name).start()

    def shutdown(self) -> None:
        """Stop following bridge jobs; every row stays as it is, to be re-attached."""
        self.deployments.stopping.set()


# ------------------------------------------------------------------------------ answers


def target_dict(t: RolloutTarget, dep: Deployment | None) -> dict[str, Any]:
    return {"position": t.position, "wave": t.wave, "bridge_id": t.bridge_id,
            "device_id": t.device_id, "state": t.state, "deployment_id": t.deployment_id,
            "note": t.note, "bridge_job_id": dep.bridge_job_id if dep else None,
            "started_at": dep.started_at if dep else None,
            "finished_at": dep.finished_at if dep else None,
            "error": dep.error if dep else None}


def rollout_dict(s, ro: Rollout, *, with_targets: bool = True) -> dict[str, Any]:
    targets = list(s.scalars(select(RolloutTarget).where(RolloutTarget.rollout_id == ro.id)
                             .order_by(RolloutTarget.position)))
    deps = {d.id: d for d in s.scalars(select(Deployment).where(Deployment.id.in_(
        [t.deployment_id for t in targets if t.deployment_id])))} if targets else {}
    counts: dict[str, int] = {}
    for t in targets:
        counts[t.state] = counts.get(t.state, 0) + 1
    return {"id": ro.id, "compilation_id": ro.compilation_id, "state": ro.state,
            "params": ro.params, "counts": counts, "devices": len(targets),
            "created_at": ro.created_at, "started_at": ro.started_at,
            "finished_at": ro.finished_at, "error": ro.error,
            "targets": [target_dict(t, deps.get(t.deployment_id)) for t in targets]
            if with_targets else None}
