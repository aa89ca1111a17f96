"""Deployments: an int8 artifact to a device, through its bridge's install API.

``prepare`` runs in the request (so a deployment that cannot work is refused at once): the
artifact exists and fits the device's board, the bridge knows the device. The install itself
runs in a thread that follows the bridge job to its end; a deployment succeeds only when the
bridge job succeeded with a report naming our artifact's sha256 -- the device booted exactly
this model and said so.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import select, update

from backend_stub import agreement
from backend_stub.bridges import bridge_client
from backend_stub.config import BackendConfig
from backend_stub.datasets import conflict, load_images, not_found
from backend_stub.storage import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Bridge,
    Compilation,
    Deployment,
    Store,
    Training,
    utcnow,
)
from hal.boards import fit_check, get_profile
from hal.errors import (
    BugError,
    Cancelled,
    DeviceError,
    HalError,
    InfraError,
    as_hal_error,
    from_dict,
)
from hal.model.report import ModelReport, TensorInfo

log = logging.getLogger(__name__)

BRIDGE_FINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
_TRANSIENT = frozenset({"unavailable", "timeout", "transport_broken"})
_POLL_WAIT_S = 2.0  # each GET /jobs/{id}?wait= holds this long: cancel reacts within it


def report_from_dict(data: dict[str, Any]) -> ModelReport:
    """Rebuild the stored :class:`ModelReport` (for a fit check against another board)."""
    def tensors(items: list[dict]) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(**{**t, "shape": tuple(t["shape"])}) for t in items)

    return ModelReport(**{**data, "inputs": tensors(data["inputs"]),
                          "outputs": tensors(data["outputs"]), "ops": tuple(data["ops"]),
                          "warnings": tuple(data.get("warnings", ()))})


def deployable(compilation: Compilation) -> None:
    """Refuse an artifact nobody should deploy: not compiled (409), or one that failed its
    fit check or compilation (the stored error: 422 ``fit_*``)."""
    if compilation.state == FAILED and compilation.error:
        err = from_dict(compilation.error)
        err.detail.setdefault("compilation_id", compilation.id)
        raise err
    if compilation.state != SUCCEEDED or compilation.artifact is None:
        raise conflict(f"compilation {compilation.id} is {compilation.state}; only a succeeded "
                       "compilation can be deployed", state=compilation.state)


class Detached(Exception):
    """The backend stops while a deployment is followed: leave it running (not an end)."""


class DeploymentRunner:
    """Starts and follows deployments; one thread each (they only wait on HTTP)."""

    def __init__(self, store: Store, config: BackendConfig) -> None:
        self.store = store
        self.config = config
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        # Set when the backend stops: followers let go of their bridge jobs without ending
        # the deployments; the next start re-attaches them (backend_stub.rollout.recover).
        self.stopping = threading.Event()

    def create(self, compilation_id: int, bridge_id: int, device_id: str,
               params: dict[str, Any]) -> int:
        """Check everything that can be checked up front, record the deployment, start it."""
        with self.store.session() as s:
            comp = s.get(Compilation, compilation_id)
            if comp is None:
                raise not_found("compilation", compilation_id)
            deployable(comp)
            bridge = s.get(Bridge, bridge_id)
            if bridge is None:
                raise not_found("bridge", bridge_id)
            url, token = bridge.url, bridge.token
            report = comp.report or {}
        with bridge_client(url, token, self.config) as client:
            device = client.device(device_id)  # unknown_device (404) from the bridge
        board = device.get("board") or comp.board
        if board != comp.board or params.get("arena_bytes") is not None:
            # Checked for another board, or with another arena: check again before anyone
            # flashes anything.
            fit = fit_check(report_from_dict(report["model"]), get_profile(board),
                            params.get("arena_bytes"))
            fit.raise_if_not_fit()
        with self.store.session() as s:
            dep = Deployment(compilation_id=compilation_id, bridge_id=bridge_id,
                             device_id=device_id, params={**params, "board": board})
            s.add(dep)
            s.flush()
            dep_id = dep.id
        self.start(dep_id)
        log.info("deployment %d: compilation %d -> bridge %d device %s", dep_id, compilation_id,
                 bridge_id, device_id)
        return dep_id

    def start(self, dep_id: int) -> threading.Thread:
        """Follow a recorded deployment in a new thread (installing it first unless it has
        a bridge job already, i.e. it is re-attached after a restart)."""
        thread = threading.Thread(target=self.follow, args=(dep_id,), daemon=True,
                                  name=f"deployment-{dep_id}")
        thread.start()
        return thread

    def follow(self, dep_id: int, cancel: threading.Event | None = None) -> None:
        """Install (or re-attach) and follow a recorded deployment to its end, in this
        thread; ``cancel`` (default: a new event) is what :meth:`cancel` sets."""
        event = cancel or threading.Event()
        with self._lock:
            self._cancel[dep_id] = event
        self._follow(dep_id, event)

    def cancel(self, dep_id: int) -> None:
        with self.store.session() as s:
            dep = s.get(Deployment, dep_id)
            if dep is None:
                raise not_found("deployment", dep_id)
            state = dep.state
        with self._lock:
            event = self._cancel.get(dep_id)
        if event is None or state not in (QUEUED, RUNNING):
            raise conflict(f"deployment {dep_id} has ended already ({state})", state=state)
        event.set()

    # -- the follower thread ---------------------------------------------------------------

    def _set(self, dep_id: int, **values: Any) -> None:
        with self.store.session() as s:
            s.execute(update(Deployment).where(Deployment.id == dep_id).values(**values))

    def _finish(self, dep_id: int, state: str, error: dict | None) -> None:
        with self.store.session() as s:
            s.execute(update(Deployment).where(Deployment.id == dep_id,
                                               Deployment.state.in_((QUEUED, RUNNING)))
                      .values(state=state, error=error, finished_at=utcnow()))
        log.info("deployment %d %s%s", dep_id, state,
                 f": {error.get('code')}: {error.get('message')}" if error else "")

    def _follow(self, dep_id: int, cancel: threading.Event) -> None:
        try:
            self._run(dep_id, cancel)
        except Detached:
            log.info("deployment %d: no longer followed (the backend stops); re-attached "
                     "at the next start", dep_id)
        except Cancelled as exc:
            self._finish(dep_id, CANCELLED, exc.to_dict())
        except HalError as exc:
            self._finish(dep_id, FAILED, exc.to_dict())
        except Exception as exc:
            log.exception("deployment %d: unexpected failure", dep_id)
            self._finish(dep_id, FAILED, as_hal_error(exc).to_dict())
        finally:
            with self._lock:
                self._cancel.pop(dep_id, None)

    def _payload(self, dep: Deployment, comp: Compilation, training: Training,
                 s) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The install options (keyword arguments of ``BridgeClient.install``): labels and
        held-out inputs drawn evenly across labels, preprocessed exactly as in training; and
        the record of what was sent (expected labels, host int8 outputs) when the compilation
        has one (compilations made before it had none: no agreement check then)."""
        p = training.params
        wanted = int(dep.params.get("input_vectors", 0))
        record = comp.vectors
        if record:
            blobs = load_images(s, record["image_ids"])
            sent = agreement.for_deployment(record, wanted, set(blobs))
            ids = sent["image_ids"]
        else:
            sent = None
            picks = agreement.stratified((training.split or {}).get("validation", []), wanted)
            blobs = load_images(s, [i for i, _ in picks])
            ids = [i for i, _ in picks if i in blobs]
        vectors = [agreement.vector_values(blobs[i], p) for i in ids]
        options: dict[str, Any] = {"labels": list(training.labels or []),
                                   "input_vectors": vectors,
                                   "boot_deadline_s": dep.params.get("boot_deadline_s", 20.0)}
        if dep.params.get("arena_bytes"):
            options["arena_bytes"] = dep.params["arena_bytes"]
        return options, sent

    def _run(self, dep_id: int, cancel: threading.Event) -> None:
        with self.store.session() as s:
            dep = s.get(Deployment, dep_id)
            comp = s.get(Compilation, dep.compilation_id) if dep.compilation_id else None
            bridge = s.get(Bridge, dep.bridge_id) if dep.bridge_id else None
            if comp is None or bridge is None:
                raise InfraError("interrupted", "the artifact or bridge was deleted before the "
                                 "deployment started")
            training = s.get(Training, comp.training_id)
            job_id = dep.bridge_job_id  # set: re-attached after a restart, never re-sent
            if job_id:
                options, sent = None, dep.vectors
            else:
                options, sent = self._payload(dep, comp, training, s)
            artifact, sha = comp.artifact, comp.sha256
            url, token, device_id = bridge.url, bridge.token, dep.device_id
            labels, dep_params = list(training.labels or []), dict(dep.params)
        if options is not None:
            vectors_sent = len(options["input_vectors"])
            self._set(dep_id, state=RUNNING, started_at=utcnow(), vectors=sent,
                      params={**dep.params, "input_vectors_sent": vectors_sent})
        else:
            vectors_sent = int(dep_params.get("input_vectors_sent") or 0)
        with bridge_client(url, token, self.config) as client:
            if options is not None:
                # Lines after this one are the new install's (agreement reads only those).
                anchor = agreement.observe_anchor(client, device_id) if sent else 0
                if sent:  # kept, so a restarted backend resumes reading the same lines
                    self._set(dep_id, vectors={**sent, "after_seq": anchor})
                job = client.install(device_id, artifact, **options)
                self._set(dep_id, bridge_job_id=str(job["id"]), bridge_job=job)
                log.info("deployment %d: bridge job %s started", dep_id, job["id"])
            else:  # its state is asked for below, like any poll
                anchor = int((sent or {}).get("after_seq") or 0)
                job = {"id": job_id, "state": "(re-attaching)"}
                log.info("deployment %d: re-attaching to bridge job %s", dep_id, job_id)
            started = time.monotonic()
            while job.get("state") not in BRIDGE_FINAL:
                if self.stopping.is_set():
                    raise Detached()
                if cancel.is_set():
                    client.cancel(str(job["id"]))
                    raise Cancelled(f"deployment {dep_id} cancelled; bridge job {job['id']} "
                                    "cancel requested")
                remaining = self.config.deploy_timeout_s - (time.monotonic() - started)
                if remaining <= 0:
                    client.cancel(str(job["id"]))
                    raise InfraError("timeout", f"bridge job {job['id']} did not end within "
                                     f"{self.config.deploy_timeout_s:g} s", bridge_job=job)
                try:
                    job = client.job(str(job["id"]), wait=min(_POLL_WAIT_S, remaining))
                except InfraError as exc:
                    if exc.code not in _TRANSIENT:
                        raise
                    # The bridge finishes the job whether we can ask it or not: keep asking.
                    log.warning("deployment %d: bridge job %s: %s; retrying", dep_id,
                                job["id"], exc.message)
                    cancel.wait(1.0)
                    continue
                self._set(dep_id, bridge_job=job)
        state = job.get("state")
        if state != "succeeded":
            err = job.get("error")
            if isinstance(err, dict) and "code" in err:
                raise from_dict(err)
            raise InfraError("interrupted" if state == "interrupted" else "tool_failed",
                             f"bridge job {job['id']} ended {state} without an error",
                             bridge_job_state=state)
        report = job.get("report") or {}
        if report.get("model_sha256") != sha:
            # The bridge says "succeeded" but not about our model: never report that as ours.
            raise BugError("internal", "the bridge job succeeded but its report names another "
                           "model", expected_sha256=sha, reported_sha256=report.get("model_sha256"))
        if vectors_sent:
            self._check_agreement(dep_id, url, token, device_id, sha, sent, labels, dep_params,
                                  anchor, cancel)
        self._finish(dep_id, SUCCEEDED, None)

    def _check_agreement(self, dep_id: int, url: str, token: str | None, device_id: str,
                         sha: str, sent: dict[str, Any] | None, labels: list[str],
                         params: dict[str, Any], anchor: int, cancel: threading.Event) -> None:
        """After the verified boot: the board's answers for the vectors against the host int8
        model (backend_stub.agreement). Below ``min_agreement``: ``agreement_low``."""
        if not sent:
            self._set(dep_id, agreement={"state": "unavailable", "reason": (
                "the compilation has no host int8 outputs (compiled before they were "
                "recorded); compile again to check on-device agreement")})
            return
        count = len(sent["image_ids"])
        deadline = float(params.get("agreement_timeout_s", 120.0))
        minimum = float(params.get("min_agreement", agreement.DEFAULT_MIN_AGREEMENT))
        started = time.monotonic()
        self._set(dep_id, agreement={"state": "collecting", "vectors": count, "answered": 0})
        answered = 0

        def progress(k: int) -> None:
            nonlocal answered
            answered = k
            self._set(dep_id, agreement={"state": "collecting", "vectors": count,
                                         "answered": k})

        try:
            with bridge_client(url, token, self.config) as client:
                answers, complete = agreement.collect(client, device_id, sha, count, anchor,
                                                      deadline, cancel, progress=progress)
        except HalError as exc:  # cancelled, or the bridge failed while we read
            self._set(dep_id, agreement={"state": "cancelled" if isinstance(exc, Cancelled)
                                         else "failed", "vectors": count, "answered": answered})
            raise
        result = agreement.evaluate(sent, answers, labels, minimum)
        result["seconds"] = round(time.monotonic() - started, 3)
        state = "passed" if result["passed"] else ("timeout" if not complete
                                                   else "below_threshold")
        self._set(dep_id, agreement={"state": state, **result})
        log.info("deployment %d: agreement %s: exact %s, labels %s, device accuracy %s",
                 dep_id, state, result["exact_output_match_rate"], result["label_match_rate"],
                 result["device_accuracy"])
        if not complete:
            raise agreement.timeout_error(count, result["answered"], deadline)
        if not result["passed"]:
            raise DeviceError("agreement_low", (
                f"the board's top label matched the host int8 model for "
                f"{result['label_match_rate']:.2%} of {count} vectors, below the minimum of "
                f"{minimum:.2%} (exact outputs {result['exact_output_match_rate']:.2%}); the "
                "board runs the new model"), **{k: v for k, v in result.items()
                                                if k != "per_vector"})


def deployment_dict(dep: Deployment) -> dict[str, Any]:
    return {"id": dep.id, "compilation_id": dep.compilation_id, "bridge_id": dep.bridge_id,
            "device_id": dep.device_id, "state": dep.state, "params": dep.params,
            "bridge_job_id": dep.bridge_job_id, "bridge_job": dep.bridge_job,
            "created_at": dep.created_at, "started_at": dep.started_at,
            "finished_at": dep.finished_at, "error": dep.error,
            "agreement": dep.agreement, "vectors": dep.vectors}


def list_deployments(store: Store) -> list[dict[str, Any]]:
    with store.session() as s:
        return [deployment_dict(d) for d in s.scalars(select(Deployment)
                                                      .order_by(Deployment.id.desc()))]
