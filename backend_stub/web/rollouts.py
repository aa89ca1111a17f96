"""Rollout views: one artifact to many devices across bridges (canary, waves, halt on the
first failure, per-device table, cancel). The request and answer models live here with the
views: they are used nowhere else."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from backend_stub.agreement import DEFAULT_MIN_AGREEMENT
from backend_stub.datasets import get_or_404
from backend_stub.names import DEVICE_ID_PATTERN
from backend_stub.rollout import rollout_dict
from backend_stub.schemas import Id
from backend_stub.storage import FINAL_STATES, Rollout
from backend_stub.web import Query, answer, api, backend, parse_body, query_float

TAG = "rollouts"
MAX_TARGETS = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")


class TargetIn(_Strict):
    bridge_id: Id
    device_id: str = Field(min_length=1, max_length=64, pattern=DEVICE_ID_PATTERN)


class RolloutIn(_Strict):
    compilation_id: Id
    targets: list[TargetIn] = Field(min_length=1, max_length=MAX_TARGETS,
                                    json_schema_extra={"uniqueItems": True},
                                    description="devices in rollout order (each once); the "
                                                "first `canary` of them are the canary wave")
    canary: int = Field(1, ge=0, le=MAX_TARGETS, description="devices in the canary wave "
                                                             "(0: no canary)")
    wave_size: int = Field(4, ge=1, le=MAX_TARGETS, description="devices per later wave")
    max_parallel: int = Field(4, ge=1, le=16, description="deployments at once in a wave")
    input_vectors: int = Field(4, ge=0, le=64, description="validation samples sent along")
    arena_bytes: int | None = Field(None, ge=1024, le=1 << 30)
    boot_deadline_s: float = Field(20.0, gt=0.0, le=600.0)
    min_agreement: float = Field(
        DEFAULT_MIN_AGREEMENT, ge=0.0, le=1.0,
        description="each device's label match rate with the host int8 model below which its "
                    "deployment fails (agreement_low) and the rollout halts")
    agreement_timeout_s: float = Field(120.0, gt=0.0, le=3600.0,
                                       description="seconds for each board to answer")


class TargetOut(_Strict):
    position: int
    wave: int = Field(description="0 is the canary wave")
    bridge_id: int | None
    device_id: str
    state: Literal["pending", "deploying", "succeeded", "failed", "cancelled", "skipped"]
    deployment_id: int | None
    note: str | None
    bridge_job_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None


class RolloutOut(_Strict):
    id: int
    compilation_id: int | None
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    counts: dict[str, int] = Field(description="devices per target state")
    devices: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None = Field(None, description="why it halted: the first failed "
                                                           "device's error, naming it")
    targets: list[TargetOut] | None = Field(None, description="the per-device table (not in "
                                                              "the list)")


class RolloutList(_Strict):
    rollouts: list[RolloutOut]


@api.route("POST", "/rollouts", summary="Deploy an artifact to many devices across bridges: "
           "canary, then waves; halts on the first failure", tag=TAG, body=RolloutIn,
           response=RolloutOut, status=202)
def create_rollout():
    b = backend()
    body = parse_body(RolloutIn)
    ro_id = b.rollouts.create(
        body.compilation_id, [(t.bridge_id, t.device_id) for t in body.targets],
        canary=body.canary, wave_size=body.wave_size, max_parallel=body.max_parallel,
        deploy_params={"input_vectors": body.input_vectors, "arena_bytes": body.arena_bytes,
                       "boot_deadline_s": body.boot_deadline_s,
                       "min_agreement": body.min_agreement,
                       "agreement_timeout_s": body.agreement_timeout_s})
    with b.store.session() as s:
        return answer(RolloutOut, rollout_dict(s, s.get(Rollout, ro_id)), 202)


@api.route("GET", "/rollouts", summary="List rollouts (newest first, without their tables)",
           tag=TAG, response=RolloutList)
def list_rollouts():
    with backend().store.session() as s:
        rows = s.scalars(select(Rollout).order_by(Rollout.id.desc())).all()
        return answer(RolloutList, {"rollouts": [rollout_dict(s, r, with_targets=False)
                                                 for r in rows]})


@api.route("GET", "/rollouts/{rollout_id:int}", summary="A rollout and its per-device table",
           tag=TAG, response=RolloutOut,
           query=[Query("wait", "number", description="seconds to wait for the end (<= 60)")])
def get_rollout(rollout_id: int):
    b = backend()
    end = time.monotonic() + query_float("wait", 0.0, lo=0.0, hi=60.0)
    while True:
        with b.store.session() as s:
            ro = get_or_404(s, Rollout, "rollout", rollout_id)
            if ro.state in FINAL_STATES or time.monotonic() >= end:
                return answer(RolloutOut, rollout_dict(s, ro))
        time.sleep(0.2)


@api.route("POST", "/rollouts/{rollout_id:int}/cancel",
           summary="Cancel a rollout: nothing new starts, deployments under way are cancelled",
           tag=TAG, response=RolloutOut, status=202)
def cancel_rollout(rollout_id: int):
    b = backend()
    b.rollouts.cancel(rollout_id)
    with b.store.session() as s:
        return answer(RolloutOut, rollout_dict(s, s.get(Rollout, rollout_id)), 202)
