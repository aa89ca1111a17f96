"""Bridge and deployment views: register bridges, relay health, devices and observation,
deploy artifacts and follow the bridge job."""

from __future__ import annotations

import time

from flask import Response
from sqlalchemy import select

from backend_stub import schemas
from backend_stub.bridges import bridge_client, validate_bridge_url
from backend_stub.datasets import conflict, get_or_404, not_found
from backend_stub.deploy import deployment_dict, list_deployments
from backend_stub.storage import FINAL_STATES, Bridge, Deployment
from backend_stub.web import (
    Query,
    answer,
    api,
    backend,
    parse_body,
    query_float,
    query_int,
)
from hal.errors import HalError

TAG_B, TAG_D = "bridges", "deployments"


def bridge_dict(b: Bridge) -> dict:
    return {"id": b.id, "name": b.name, "url": b.url, "has_token": bool(b.token),
            "created_at": b.created_at}


def _bridge(s, bridge_id: int) -> Bridge:
    return get_or_404(s, Bridge, "bridge", bridge_id)


@api.route("POST", "/bridges", summary="Register a bridge by URL and token", tag=TAG_B,
           body=schemas.BridgeIn, response=schemas.BridgeOut, status=201)
def create_bridge():
    body = parse_body(schemas.BridgeIn)
    url = validate_bridge_url(body.url)
    from backend_stub.archive import check_name

    name = check_name(body.name, "bridge name")
    with backend().store.session() as s:
        if s.scalar(select(Bridge.id).where(Bridge.name == name)):
            raise conflict(f"a bridge named {name!r} exists already", name=name)
        b = Bridge(name=name, url=url, token=body.token or None)
        s.add(b)
        s.flush()
        return answer(schemas.BridgeOut, bridge_dict(b), 201)


@api.route("GET", "/bridges", summary="List bridges (tokens are never returned)", tag=TAG_B,
           response=schemas.BridgeList)
def list_bridges():
    with backend().store.session() as s:
        return answer(schemas.BridgeList, {"bridges": [
            bridge_dict(b) for b in s.scalars(select(Bridge).order_by(Bridge.id))]})


@api.route("GET", "/bridges/{bridge_id:int}", summary="One bridge", tag=TAG_B,
           response=schemas.BridgeOut)
def get_bridge(bridge_id: int):
    with backend().store.session() as s:
        return answer(schemas.BridgeOut, bridge_dict(_bridge(s, bridge_id)))


@api.route("DELETE", "/bridges/{bridge_id:int}", summary="Forget a bridge", tag=TAG_B,
           status=204)
def delete_bridge(bridge_id: int):
    with backend().store.session() as s:
        s.delete(_bridge(s, bridge_id))
    return Response(status=204)


def _client(bridge_id: int):
    """A client of a registered bridge (a context manager that closes it)."""
    b = backend()
    with b.store.session() as s:
        bridge = _bridge(s, bridge_id)
        url, token = bridge.url, bridge.token
    return bridge_client(url, token, b.config)


@api.route("GET", "/bridges/{bridge_id:int}/health",
           summary="Health check through the bridge's /health", tag=TAG_B,
           response=schemas.BridgeHealthOut)
def bridge_health(bridge_id: int):
    bridge = _client(bridge_id)  # an unknown bridge id is this request's 404, raised here
    try:
        with bridge as client:
            t0 = time.monotonic()
            health = client.health()
            latency = round((time.monotonic() - t0) * 1000, 1)  # the round trip, in ms
        out = {"bridge_id": bridge_id, "reachable": True, "latency_ms": latency,
               "health": health, "error": None}
    except HalError as exc:
        # An unreachable bridge is an answer here, not a failure of this request.
        out = {"bridge_id": bridge_id, "reachable": False, "latency_ms": None, "health": None,
               "error": exc.to_dict()}
    return answer(schemas.BridgeHealthOut, out)


@api.route("GET", "/bridges/{bridge_id:int}/devices", summary="The bridge's devices",
           tag=TAG_B, response=schemas.DeviceListOut)
def bridge_devices(bridge_id: int):
    with _client(bridge_id) as client:
        devices = client.devices()
    return answer(schemas.DeviceListOut, {"bridge_id": bridge_id, "devices": devices})


@api.route("GET", "/bridges/{bridge_id:int}/devices/{device_id}/observe",
           summary="Recent lines of a device (relayed from the bridge)", tag=TAG_B,
           response=schemas.ObservationOut,
           query=[Query("lines", "integer", description="how many recent lines (1..1000)")])
def observe(bridge_id: int, device_id: str):
    lines = query_int("lines", 20, lo=1, hi=1000)
    with _client(bridge_id) as client:
        obs = client.observe(device_id, lines)
    return answer(schemas.ObservationOut, {"bridge_id": bridge_id, "device_id": device_id,
                                           "lines": list(obs.get("lines", [])),
                                           "last_seq": obs.get("last_seq")})


# ------------------------------------------------------------------------------ deployments


@api.route("POST", "/deployments",
           summary="Deploy an artifact to a device through its bridge", tag=TAG_D,
           body=schemas.DeploymentIn, response=schemas.DeploymentOut, status=202)
def create_deployment():
    b = backend()
    body = parse_body(schemas.DeploymentIn)
    params = body.model_dump(exclude={"compilation_id", "bridge_id", "device_id"})
    dep_id = b.deployments.create(body.compilation_id, body.bridge_id, body.device_id, params)
    with b.store.session() as s:
        return answer(schemas.DeploymentOut, deployment_dict(s.get(Deployment, dep_id)), 202)


@api.route("GET", "/deployments", summary="List deployments", tag=TAG_D,
           response=schemas.DeploymentList)
def list_all_deployments():
    return answer(schemas.DeploymentList, {"deployments": list_deployments(backend().store)})


@api.route("GET", "/deployments/{deployment_id:int}", summary="A deployment and its bridge job",
           tag=TAG_D, response=schemas.DeploymentOut,
           query=[Query("wait", "number", description="seconds to wait for the end (<= 60)")])
def get_deployment(deployment_id: int):
    b = backend()
    end = time.monotonic() + query_float("wait", 0.0, lo=0.0, hi=60.0)
    while True:
        with b.store.session() as s:
            dep = s.get(Deployment, deployment_id)
            if dep is None:
                raise not_found("deployment", deployment_id)
            if dep.state in FINAL_STATES or time.monotonic() >= end:
                return answer(schemas.DeploymentOut, deployment_dict(dep))
        time.sleep(0.2)


@api.route("POST", "/deployments/{deployment_id:int}/cancel",
           summary="Cancel a deployment (cancels the bridge job)", tag=TAG_D,
           response=schemas.DeploymentOut, status=202)
def cancel_deployment(deployment_id: int):
    b = backend()
    b.deployments.cancel(deployment_id)
    with b.store.session() as s:
        return answer(schemas.DeploymentOut, deployment_dict(s.get(Deployment, deployment_id)),
                      202)
