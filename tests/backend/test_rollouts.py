"""Rollouts and re-attaching after a restart, against real ``tinyml-bridge serve`` processes
with virtual Nano 33 BLE boards over real sockets: canary then waves with bounded
parallelism, halt on the first failure (devices not reached keep their model), cancel, the
per-device table, the CLI; and a backend killed mid-rollout (and mid-deployment) that
re-attaches to the bridges' jobs and reports their true ends."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from backend_stub.cli import cli
from backend_stub.rollout import plan_waves
from backend_stub.storage import Compilation, Store, Training
from hal.boards import fit_check, get_profile
from hal.model.analysis import analyze
from tests.backend.conftest import BRIDGE_TOKEN, RealBridge
from tests.backend.test_bridges import _add_bridge, _compiled_artifact
from tests.backend.test_cli import TOKEN as CLI_TOKEN
from tests.backend.test_cli import Served

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "samples" / "models" / "shapes_int8.tflite"
SINE = REPO / "samples" / "models" / "sine_int8.tflite"
BH = {"Authorization": f"Bearer {BRIDGE_TOKEN}"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two bridges, three boards each; one board never boots."""
    a = RealBridge(tmp_path_factory.mktemp("bridge-a"),
                   {"ra-1": {}, "ra-2": {}, "ra-bad": {"fault": "never_boot"}})
    b = RealBridge(tmp_path_factory.mktemp("bridge-b"), {"rb-1": {}, "rb-2": {}, "rb-3": {}})
    yield a, b
    a.stop()
    b.stop()


def _bridge_device(bridge: RealBridge, device: str) -> dict:
    return requests.get(f"{bridge.url}/devices/{device}", headers=BH, timeout=10).json()


def _bridge_jobs(bridge: RealBridge, device: str) -> list[dict]:
    return requests.get(f"{bridge.url}/jobs", params={"device": device}, headers=BH,
                        timeout=10).json()["jobs"]


def _wait_rollout(c, ro_id: int, timeout: float = 180.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = c.get(f"/rollouts/{ro_id}?wait=5").get_json()
        if r["state"] in ("succeeded", "failed", "cancelled"):
            return r
    raise AssertionError(f"rollout {ro_id} did not end: {r}")


def _dt(value: str):
    from datetime import datetime

    return datetime.fromisoformat(value)


def test_plan_waves():
    assert plan_waves(6, 1, 2) == [0, 1, 1, 2, 2, 3]
    assert plan_waves(3, 0, 2) == [1, 1, 2]
    assert plan_waves(2, 5, 2) == [0, 0]
    assert plan_waves(0, 1, 4) == []


def test_rollout_canary_then_waves_all_verified(client, app, fleet):
    a, b = fleet
    comp = _compiled_artifact(client, app)
    ba, bb = _add_bridge(client, a.url, name="a"), _add_bridge(client, b.url, name="b")
    targets = [{"bridge_id": ba, "device_id": "ra-1"}, {"bridge_id": bb, "device_id": "rb-1"},
               {"bridge_id": ba, "device_id": "ra-2"}, {"bridge_id": bb, "device_id": "rb-2"}]
    r = client.post("/rollouts", json={"compilation_id": comp, "targets": targets,
                                       "canary": 1, "wave_size": 2, "max_parallel": 2,
                                       "input_vectors": 2})
    assert r.status_code == 202, r.get_json()
    ro = _wait_rollout(client, r.get_json()["id"])
    assert ro["state"] == "succeeded", ro
    assert ro["error"] is None and ro["counts"] == {"succeeded": 4}
    table = ro["targets"]
    assert [(t["device_id"], t["wave"]) for t in table] == [
        ("ra-1", 0), ("rb-1", 1), ("ra-2", 1), ("rb-2", 2)]
    sha = hashlib.sha256(SHAPES.read_bytes()).hexdigest()
    for t in table:
        assert t["state"] == "succeeded" and t["bridge_job_id"], t
        dep = client.get(f"/deployments/{t['deployment_id']}").get_json()
        assert dep["state"] == "succeeded" and dep["params"]["rollout_id"] == ro["id"]
        assert dep["bridge_job"]["report"]["model_sha256"] == sha
    # A wave starts only after the previous one ended verified.
    for earlier, later in ((0, 1), (0, 2), (1, 3), (2, 3)):
        assert _dt(table[earlier]["finished_at"]) <= _dt(table[later]["started_at"]), table
    # Listed without the table; shown with it.
    listed = client.get("/rollouts").get_json()["rollouts"]
    assert listed[0]["id"] == ro["id"] and listed[0]["targets"] is None


def test_rollout_halts_on_first_failure_and_unreached_devices_keep_their_model(
        client, app, fleet):
    a, b = fleet
    comp = _compiled_artifact(client, app)
    ba, bb = _add_bridge(client, a.url, name="a"), _add_bridge(client, b.url, name="b")
    before = _bridge_device(b, "rb-3")
    jobs_before = len(_bridge_jobs(b, "rb-3"))
    targets = [{"bridge_id": bb, "device_id": "rb-1"},    # canary: verified
               {"bridge_id": ba, "device_id": "ra-bad"},  # wave 1: never boots
               {"bridge_id": bb, "device_id": "rb-2"},    # wave 1, in parallel: verified
               {"bridge_id": bb, "device_id": "rb-3"}]    # wave 2: never reached
    r = client.post("/rollouts", json={"compilation_id": comp, "targets": targets,
                                       "wave_size": 2, "max_parallel": 2,
                                       "boot_deadline_s": 3, "input_vectors": 0})
    assert r.status_code == 202, r.get_json()
    ro = _wait_rollout(client, r.get_json()["id"])
    assert ro["state"] == "failed", ro
    err = ro["error"]
    assert err["code"] == "boot_silent" and err["class"] == "device", err
    assert err["detail"]["device_id"] == "ra-bad" and err["detail"]["not_reached"] == 1
    assert "ra-bad" in err["message"] and "halted" in err["message"]
    states = {t["device_id"]: t["state"] for t in ro["targets"]}
    assert states == {"rb-1": "succeeded", "ra-bad": "failed", "rb-2": "succeeded",
                      "rb-3": "skipped"}, ro["targets"]
    skipped = ro["targets"][3]
    assert skipped["deployment_id"] is None and "keeps the model" in skipped["note"]
    # The skipped board was never touched: no new bridge job, same model.
    assert len(_bridge_jobs(b, "rb-3")) == jobs_before
    after = _bridge_device(b, "rb-3")
    assert after.get("model") == before.get("model")


def test_rollout_cancel_and_refusals(client, app, fleet):
    a, b = fleet
    comp = _compiled_artifact(client, app)
    ba, bb = _add_bridge(client, a.url, name="a"), _add_bridge(client, b.url, name="b")
    # Refused before anything is touched.
    base = {"compilation_id": comp}
    bad = [
        ({"targets": []}, 422),
        ({"targets": [{"bridge_id": ba, "device_id": "ra-1"}] * 2}, 422),
        ({"targets": [{"bridge_id": ba, "device_id": "nope"}]}, 404),
        ({"targets": [{"bridge_id": 999, "device_id": "ra-1"}]}, 404),
        ({"targets": [{"bridge_id": ba, "device_id": "ra-1"}], "max_parallel": 0}, 422),
        ({"targets": [{"bridge_id": ba, "device_id": "ra-1"}], "max_parallel": 17}, 422),
        ({"targets": [{"bridge_id": ba, "device_id": "ra-1"}], "wave_size": 0}, 422),
        ({"targets": [{"bridge_id": ba, "device_id": "x" * 129}]}, 422),
        ({"targets": [{"bridge_id": ba, "device_id": "ra-1"}], "arena_bytes": 300_000}, 422),
    ]
    for body, status in bad:
        r = client.post("/rollouts", json={**base, **body})
        assert r.status_code == status, (body, r.get_json())
        assert set(r.get_json()) == {"code", "message", "detail", "class"}
    assert client.get("/rollouts").get_json()["rollouts"] == []
    assert client.post("/rollouts", data="x", content_type="text/plain").status_code == 415

    # Cancel while the canary installs: nothing else starts.
    targets = [{"bridge_id": ba, "device_id": "ra-2"}, {"bridge_id": bb, "device_id": "rb-1"},
               {"bridge_id": bb, "device_id": "rb-2"}]
    jobs_before = len(_bridge_jobs(b, "rb-1"))
    ro_id = client.post("/rollouts", json={**base, "targets": targets, "input_vectors": 0}
                        ).get_json()["id"]
    end = time.monotonic() + 30
    while time.monotonic() < end:
        t0 = client.get(f"/rollouts/{ro_id}").get_json()["targets"][0]
        if t0["bridge_job_id"]:
            break
        time.sleep(0.05)
    r = client.post(f"/rollouts/{ro_id}/cancel")
    assert r.status_code == 202, r.get_json()
    ro = _wait_rollout(client, ro_id)
    assert ro["state"] == "cancelled" and ro["error"]["code"] == "cancelled"
    assert [t["state"] for t in ro["targets"]][1:] == ["skipped", "skipped"]
    assert ro["targets"][0]["state"] in ("cancelled", "succeeded")  # truthful either way
    assert len(_bridge_jobs(b, "rb-1")) == jobs_before
    assert client.post(f"/rollouts/{ro_id}/cancel").status_code == 409
    assert client.post("/rollouts/999/cancel").status_code == 404
    assert client.get("/rollouts/999").status_code == 404


def test_cli_rollout_deployments_list_and_show(sqlite_client, sqlite_app, fleet):
    """The CLI against a live server: `rollout`, `rollouts list/show`, `deployments
    list/show`."""
    from tests.backend.conftest import AUTH, LiveServer

    a, _ = fleet
    comp = _compiled_artifact(sqlite_client, sqlite_app)
    ba = _add_bridge(sqlite_client, a.url, name="a")
    server = LiveServer(sqlite_app)
    try:
        token = AUTH["Authorization"].split()[1]

        def run(*args: str):
            return CliRunner().invoke(cli, [*args, "--url", server.url, "--token", token],
                                      catch_exceptions=False)

        r = run("rollout", str(comp), "--target", f"{ba}:ra-1", "--target", f"{ba}:ra-2",
                "--canary", "1", "--wave-size", "1", "--input-vectors", "0")
        assert r.exit_code == 0, r.output
        assert "rollout 1 succeeded" in r.output
        assert "ra-1" in r.output and "ra-2" in r.output and "WAVE" in r.output
        r = run("rollouts", "list")
        assert r.exit_code == 0 and "succeeded" in r.output
        r = run("rollouts", "show", "1", "--json")
        assert [t["state"] for t in json.loads(r.output)["targets"]] == ["succeeded"] * 2
        r = run("deployments", "list")
        assert r.exit_code == 0 and "ra-1" in r.output and "ra-2" in r.output
        dep_id = json.loads(run("deployments", "list", "--json").output)["deployments"][0]["id"]
        r = run("deployments", "show", str(dep_id))
        assert r.exit_code == 0 and f"deployment {dep_id} succeeded" in r.output
        r = run("rollout", str(comp), "--target", "nocolon")
        assert r.exit_code == 2
        r = run("rollouts", "show", "77")
        assert r.exit_code == 1 and "not_found" in r.output
    finally:
        server.close()


# ------------------------------------------------------------------------------ restarts


def _insert_artifact(db_url: str, model: Path = SHAPES) -> int:
    """A succeeded compilation holding a real int8 model (no dataset: no input vectors)."""
    data = model.read_bytes()
    report = analyze(data, board="nano33ble")
    store = Store(db_url)
    try:
        with store.session() as s:
            t = Training(state="succeeded", labels=["blank", "square", "stripes"],
                         params={"image_width": 32, "image_height": 32,
                                 "color_mode": "grayscale", "epochs": 1},
                         split={"train": [], "validation": []})
            s.add(t)
            s.flush()
            c = Compilation(training_id=t.id, board="nano33ble", state="succeeded",
                            artifact=data, sha256=hashlib.sha256(data).hexdigest(),
                            report={"model": report.to_dict(), "fit": fit_check(
                                report, get_profile("nano33ble")).to_dict()})
            s.add(c)
            s.flush()
            return c.id
    finally:
        store.dispose()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_backend_killed_mid_rollout_and_mid_deployment_reattaches(tmp_path, sig):
    """Reproduction: a deployment in progress when the backend restarts was marked
    interrupted and never re-attached although the bridge finished it. Now the backend is
    killed (SIGKILL) or stopped (SIGTERM) while a rollout's wave and a single deployment are
    under way; the restarted backend follows the same bridge jobs (none is sent twice) to
    their verified ends and finishes the rollout's remaining wave."""
    # Slow flashing so that installs are surely under way at the kill.
    slow = {"upload_kbps": 150}
    bridge = RealBridge(tmp_path / "bridge", {f"s-{i}": slow for i in range(4)})
    served = Served(tmp_path)
    try:
        url, h = served.url, {"Authorization": f"Bearer {CLI_TOKEN}"}
        db = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
        comp = _insert_artifact(db)
        bid = requests.post(f"{url}/bridges", headers=h, timeout=10, json={
            "name": "slow", "url": bridge.url, "token": BRIDGE_TOKEN}).json()["id"]
        single = requests.post(f"{url}/deployments", headers=h, timeout=30, json={
            "compilation_id": comp, "bridge_id": bid, "device_id": "s-3",
            "input_vectors": 0}).json()
        ro = requests.post(f"{url}/rollouts", headers=h, timeout=30, json={
            "compilation_id": comp, "canary": 0, "wave_size": 2, "max_parallel": 2,
            "input_vectors": 0,
            "targets": [{"bridge_id": bid, "device_id": f"s-{i}"} for i in range(3)]}).json()
        # Wait until wave 1 (s-0, s-1) and the single deployment have bridge jobs running.
        end = time.monotonic() + 60
        while time.monotonic() < end:
            r = requests.get(f"{url}/rollouts/{ro['id']}", headers=h, timeout=10).json()
            d = requests.get(f"{url}/deployments/{single['id']}", headers=h, timeout=10).json()
            if all(t["bridge_job_id"] for t in r["targets"][:2]) and d["bridge_job_id"]:
                break
            time.sleep(0.05)
        assert d["state"] == "running" and r["state"] == "running", (d, r)
        if sig == signal.SIGKILL:
            os.killpg(served.proc.pid, signal.SIGKILL)
        else:
            served.proc.send_signal(signal.SIGTERM)
        # The bridge still had installs under way when the backend died.
        unfinished = [j["id"] for i in range(4) for j in _bridge_jobs(bridge, f"s-{i}")
                      if j["state"] in ("queued", "running")]
        assert unfinished, "the installs ended before the kill; slow them down"
        code = served.proc.wait(20)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), code
        served.proc.stdout.close()
        served.proc.stderr.close()
        before = {t["device_id"]: t["bridge_job_id"] for t in r["targets"][:2]}

        served = Served(tmp_path)  # the same database
        url = served.url
        end = time.monotonic() + 180
        while time.monotonic() < end:
            r = requests.get(f"{url}/rollouts/{ro['id']}?wait=5", headers=h, timeout=30).json()
            if r["state"] in ("succeeded", "failed", "cancelled"):
                break
        d = requests.get(f"{url}/deployments/{single['id']}?wait=30", headers=h,
                         timeout=60).json()
        assert d["state"] == "succeeded", d  # was: failed, interrupted
        assert d["bridge_job"]["state"] == "succeeded"
        assert r["state"] == "succeeded", r
        assert [t["state"] for t in r["targets"]] == ["succeeded"] * 3
        for t in r["targets"][:2]:  # re-attached to the same bridge jobs
            assert t["bridge_job_id"] == before[t["device_id"]]
        for i in range(4):  # each board got exactly one install: nothing sent twice
            assert len(_bridge_jobs(bridge, f"s-{i}")) == 1, _bridge_jobs(bridge, f"s-{i}")
    finally:
        assert served.stop() == 0
        bridge.stop()


def test_restart_during_the_install_request_adopts_the_bridge_job(make_app, tmp_path, fleet):
    """The backend died after its install request reached the bridge but before it recorded
    the bridge job id: the restarted backend finds that job (same device, same artifact, not
    older than the deployment) and follows it. Where the bridge has no such job, the
    deployment ends `interrupted` saying so -- never a guess."""
    from backend_stub.storage import Bridge, Deployment, utcnow
    from bridge.client import BridgeClient

    a, _ = fleet
    db = f"sqlite:///{tmp_path / 'adopt.sqlite3'}"
    comp = _insert_artifact(db, SINE)
    store = Store(db)
    with store.session() as s:
        br = Bridge(name="a", url=a.url, token=BRIDGE_TOKEN)
        s.add(br)
        s.flush()
        now = utcnow()
        sent = Deployment(compilation_id=comp, bridge_id=br.id, device_id="ra-1",
                          state="running", started_at=now, params={"input_vectors": 0})
        lost = Deployment(compilation_id=comp, bridge_id=br.id, device_id="ra-2",
                          state="running", started_at=now, params={"input_vectors": 0})
        s.add_all([sent, lost])
        s.flush()
        sent_id, lost_id = sent.id, lost.id
    store.dispose()
    with BridgeClient(a.url, BRIDGE_TOKEN) as bc:  # the request that reached the bridge
        job = bc.install("ra-1", SINE.read_bytes(), labels=["y"])

    app = make_app(db)  # the restart
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-token-0123456789"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        d1 = c.get(f"/deployments/{sent_id}?wait=2").get_json()
        d2 = c.get(f"/deployments/{lost_id}").get_json()
        if d1["state"] != "running" and d2["state"] != "running":
            break
    assert d1["state"] == "succeeded" and d1["bridge_job_id"] == job["id"], d1
    assert d2["state"] == "failed" and d2["error"]["code"] == "interrupted", d2
    assert "no job for this device and artifact" in d2["error"]["message"]
    assert [j["id"] for j in _bridge_jobs(a, "ra-1")].count(job["id"]) == 1


def test_reattached_deployment_still_checks_on_device_agreement(make_app, tmp_path):
    """A deployment with vectors, left by a stopping backend during the install, is followed
    by the next one to its verified boot AND its on-device agreement check: the vectors sent
    and the observe anchor are read back from the row, nothing is sent twice."""
    from tests.backend.test_agreement import _compiled_with_vectors

    bridge = RealBridge(tmp_path / "bridge", {"slow-1": {"upload_kbps": 150}})
    try:
        db = f"sqlite:///{tmp_path / 'agree.sqlite3'}"
        first = make_app(db)
        c = first.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-token-0123456789"
        comp = _compiled_with_vectors(c, first)
        bid = _add_bridge(c, bridge.url)
        dep = c.post("/deployments", json={"compilation_id": comp, "bridge_id": bid,
                                           "device_id": "slow-1", "input_vectors": 6}).get_json()
        end = time.monotonic() + 30
        while time.monotonic() < end and not c.get(
                f"/deployments/{dep['id']}").get_json()["bridge_job_id"]:
            time.sleep(0.05)
        first.extensions["tinyml_backend"].close()  # the backend stops mid-install
        jobs = _bridge_jobs(bridge, "slow-1")
        assert [j["state"] for j in jobs] in (["queued"], ["running"]), jobs

        second = make_app(db)  # the restart: re-attaches
        c2 = second.test_client()
        c2.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-token-0123456789"
        end = time.monotonic() + 120
        while time.monotonic() < end:
            d = c2.get(f"/deployments/{dep['id']}?wait=5").get_json()
            if d["state"] != "running":
                break
        assert d["state"] == "succeeded", d
        assert d["agreement"]["state"] == "passed" and d["agreement"]["answered"] == 6, d
        assert d["agreement"]["exact_output_match_rate"] == 1.0
        assert len(_bridge_jobs(bridge, "slow-1")) == 1
    finally:
        bridge.stop()
