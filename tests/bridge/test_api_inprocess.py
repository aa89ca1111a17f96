"""Fast in-process checks of the HTTP layer (validation details, error bodies, auth).
End-to-end behaviour runs against a real server process in test_server.py."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest

from tests.bridge.conftest import TOKEN

MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4


def _b64(data: bytes = MODEL) -> str:
    return base64.b64encode(data).decode()


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"code", "message", "detail", "class"}, body
    assert body["code"] == code, body
    assert body["message"]
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def wait_job(client, job_id: str, timeout: float = 10) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/jobs/{job_id}").get_json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {job}")


# ------------------------------------------------------------------------------ auth


def test_health_needs_no_token_but_everything_else_does(make_app):
    app = make_app()
    c = app.test_client()
    assert c.get("/health").status_code == 200
    assert c.get("/health/").get_data(as_text=True) == "Online"
    for path in ("/devices", "/devices/fake1", "/jobs", "/openapi.json", "/devices/",
                 "/devices/fake1/observe", "/devices/fake1/stream", "/nowhere"):
        resp = c.get(path)
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(c.post("/devices/fake1/install", json={"model_b64": _b64()}), 401,
                 "unauthorized")


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN,
    f"bearer{TOKEN}", "Bearer \u00e9\u00e9\u00e9", f"Bearer {TOKEN} {TOKEN}",
])
def test_wrong_tokens_are_refused(make_app, header):
    c = make_app().test_client()
    assert_error(c.get("/devices", headers={"Authorization": header}), 401, "unauthorized")


def test_right_token_any_case_scheme(make_app):
    c = make_app().test_client()
    assert c.get("/devices", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_no_token_configured_allows_loopback_clients(make_app):
    c = make_app(token=None).test_client()
    assert c.get("/devices").status_code == 200


# -------------------------------------------------------------------------- devices


def test_devices_listing(client):
    body = client.get("/devices").get_json()
    ids = [d["id"] for d in body["devices"]]
    assert ids == ["broken", "fake1", "fake2"]
    dev = client.get("/devices/fake1").get_json()
    assert dev["state"] == "idle" and dev["model"] is None and dev["connected"] is True
    assert dev["serial_number"] == "SN0001" and dev["driver"] == "test-fake"


@pytest.mark.parametrize("device_id", [
    "..", ".hidden", "-rf", "a" * 65, "caf\u00e9", "a b", "a%00b", "%2e%2e", "x;rm",
])
def test_hostile_device_ids_are_rejected(client, device_id):
    for path in (f"/devices/{device_id}", f"/devices/{device_id}/observe"):
        resp = client.get(path)
        assert resp.status_code in (400, 404), resp.get_data()
        assert_error(resp, resp.status_code, "bad_request" if resp.status_code == 400
                     else "not_found")


def test_traversal_in_path_never_routes(client):
    assert_error(client.get("/devices/../etc/passwd"), 404, "not_found")
    assert_error(client.get("/devices/%2e%2e%2fetc/observe"), 404, "not_found")


def test_unknown_device_is_404(client):
    assert_error(client.get("/devices/nope"), 404, "unknown_device")
    assert_error(client.post("/devices/nope/install", json={"model_b64": _b64()}), 404,
                 "unknown_device")


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.put("/devices"), 405, "bad_request")
    assert_error(client.get("/jobs/"), 404, "not_found")


# -------------------------------------------------------------------------- install


def test_install_json_happy_path_and_history(client):
    resp = client.post("/devices/fake1/install", json={"model_b64": _b64(), "labels": ["no",
                                                                                      "yes"]})
    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()
    assert resp.headers["Location"] == f"/jobs/{job['id']}"
    assert job["state"] in ("queued", "running")
    done = wait_job(client, job["id"])
    assert done["state"] == "succeeded", done
    assert done["report"]["model_sha256"] == done["model_sha256"]
    names = [s["name"] for s in done["steps"]]
    assert names == ["validate", "fit_check", "render", "compile", "upload", "verify_boot"]
    assert all(s["status"] == "done" and s["started_at"] and s["finished_at"]
               for s in done["steps"])
    dev = client.get("/devices/fake1").get_json()
    assert dev["state"] == "running" and dev["model"]["sha256"] == done["model_sha256"]
    listed = client.get("/jobs?device=fake1").get_json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_install_multipart_with_options(client):
    data = {"model": (io.BytesIO(MODEL), "m.tflite"),
            "options": json.dumps({"labels": ["a", "b"], "boot_deadline_s": 5})}
    resp = client.post("/devices/fake1/install?wait=10", data=data,
                       content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["state"] == "succeeded"


def test_failure_is_failed_never_succeeded(client):
    resp = client.post("/devices/broken/install?wait=10", json={"model_b64": _b64()})
    assert resp.status_code == 200
    job = resp.get_json()
    assert job["state"] == "failed" and job["report"] is None
    assert job["error"]["code"] == "alloc_failed" and job["error"]["class"] == "fit"
    assert job["steps"][-1]["name"] == "verify_boot" and job["steps"][-1]["status"] == "failed"
    dev = client.get("/devices/broken").get_json()
    assert dev["state"] == "failed" and dev["model"] is None
    assert dev["last_error"]["code"] == "alloc_failed"


@pytest.mark.parametrize("body,code", [
    (b"{not json", "bad_request"),
    (b"", "bad_request"),
    (b"[1,2]", "bad_request"),
    (b'"model"', "bad_request"),
    (b'{"labels": []}', "bad_request"),
    (b'{"model_b64": 5}', "bad_option"),
    (b'{"model_b64": "!!!notbase64"}', "bad_request"),
    (b'{"model_b64": "QUJD"}', "model_not_tflite"),
    (b'{"model_b64": ""}', "bad_option"),
    (b'{"model_b64": "AAAA", "labels": "yes"}', "bad_option"),
    (b'{"model_b64": "AAAA", "labels": ["a\\u0000b"]}', "bad_option"),
    (b'{"model_b64": "AAAA", "arena_bytes": -1}', "bad_option"),
    (b'{"model_b64": "AAAA", "boot_deadline_s": NaN}', "bad_option"),
    (b'{"model_b64": "AAAA", "input_vectors": [[Infinity]]}', "bad_option"),
    (b'{"model_b64": "AAAA", "input_source": "--flag"}', "bad_option"),
    (b'{"model_b64": "AAAA", "fqbn": "x"}', "bad_option"),
    (b'{"model_b64": "AAAA", "input_source": "/dev/video0"}', "bad_option"),
    (b"[" * 100000 + b"]" * 100000, "bad_request"),
])
def test_install_json_garbage(client, body, code):
    resp = client.post("/devices/fake1/install", data=body, content_type="application/json")
    assert_error(resp, 400, code)
    # Previous working state untouched: no job was created.
    assert client.get("/jobs").get_json()["jobs"] == []


def test_install_bad_content_types_and_multipart(client):
    assert_error(client.post("/devices/fake1/install", data=MODEL,
                             content_type="application/octet-stream"), 400, "bad_request")
    assert_error(client.post("/devices/fake1/install", data={"options": "{}"},
                             content_type="multipart/form-data"), 400, "bad_request")
    assert_error(client.post("/devices/fake1/install",
                             data={"model": (io.BytesIO(MODEL), "m"), "options": "{bad"},
                             content_type="multipart/form-data"), 400, "bad_request")
    assert_error(client.post("/devices/fake1/install",
                             data={"model": (io.BytesIO(MODEL), "m"), "options": "[]"},
                             content_type="multipart/form-data"), 400, "bad_request")
    assert_error(client.post("/devices/fake1/install",
                             data={"model": (io.BytesIO(b""), "m")},
                             content_type="multipart/form-data"), 400, "model_empty")
    assert_error(client.post("/devices/fake1/install",
                             data={"model": (io.BytesIO(MODEL), "m"),
                                   "options": '{"arena_bytes": "lots"}'},
                             content_type="multipart/form-data"), 400, "bad_option")
    # A multipart body whose boundary never closes.
    raw = b"--XX\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nabc"
    resp = client.post("/devices/fake1/install", data=raw,
                       content_type="multipart/form-data; boundary=XX")
    assert resp.status_code == 400 and resp.get_json()["code"] == "bad_request"


def test_oversized_body_is_413(make_app):
    app = make_app(extra="")
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    big = b"x" * (8 * 1024 * 1024 + 1)
    assert_error(c.post("/devices/fake1/install", data=big, content_type="application/json"),
                 413, "payload_too_large")
    assert_error(c.post("/devices/fake1/install",
                        data={"model": (io.BytesIO(big), "m")},
                        content_type="multipart/form-data"), 413, "payload_too_large")


def test_wait_parameter_validation(client):
    for wait in ("-1", "abc", "nan", "inf", "1e9"):
        assert_error(client.post(f"/devices/fake1/install?wait={wait}",
                                 json={"model_b64": _b64()}), 400, "bad_option")
    for path in ("/jobs?limit=0", "/jobs?limit=x", "/devices/fake1/observe?lines=0",
                 "/devices/fake1/observe?lines=99999999", "/jobs?device=../x"):
        resp = client.get(path)
        assert resp.status_code == 400, path


def test_busy_device_is_409_naming_the_job(client):
    first = client.post("/devices/fake2/install", json={"model_b64": _b64()}).get_json()
    resp = client.post("/devices/fake2/install", json={"model_b64": _b64()})
    body = assert_error(resp, 409, "device_busy")
    assert body["detail"]["running_job"] == first["id"]
    # Another device installs in parallel.
    other = client.post("/devices/fake1/install?wait=10", json={"model_b64": _b64()})
    assert other.get_json()["state"] == "succeeded"
    cancelled = client.delete(f"/jobs/{first['id']}")
    assert cancelled.status_code == 202
    done = wait_job(client, first["id"])
    assert done["state"] == "cancelled" and done["error"]["code"] == "cancelled"
    assert_error(client.delete(f"/jobs/{first['id']}"), 409, "job_finished")


def test_job_ids_validated(client):
    assert_error(client.get("/jobs/0123456789abcdef"), 404, "unknown_job")
    assert_error(client.get("/jobs/xyz"), 404, "unknown_job")
    assert_error(client.get("/jobs/None"), 404, "unknown_job")
    assert_error(client.delete("/jobs/0123456789abcdef"), 404, "unknown_job")


# ------------------------------------------------------------------------- observing


def test_observe_returns_recent_parsed_lines(client):
    time.sleep(0.3)
    body = client.get("/devices/fake1/observe?lines=3").get_json()
    assert body["device_id"] == "fake1" and len(body["lines"]) == 3
    seqs = [e["seq"] for e in body["lines"]]
    assert seqs == sorted(seqs) and seqs[-1] <= body["last_seq"]
    assert body["lines"][0]["line"]["kind"] == "inference"
    assert body["lines"][0]["line"]["outputs"] == [0.25, 0.75]


def test_stream_resume_rejects_garbage(client):
    assert_error(client.get("/devices/fake1/stream", headers={"Last-Event-ID": "abc"}), 400,
                 "bad_option")
    assert_error(client.get("/devices/fake1/stream?since=-4"), 400, "bad_option")


# ---------------------------------------------------------------------------- legacy


def test_legacy_bad_inputs(client):
    assert_error(client.post("/install/", data=b"", content_type="application/json"), 400,
                 "bad_request")
    assert_error(client.post("/install/", json={"model": "x"}), 400, "bad_request")
    assert_error(client.post("/install/", json={"device": {"serial": "nope"}, "model": "x"}),
                 404, "unknown_device")
    for source in ("garbage", "const unsigned char m[] = {0x1C, 0xZZ};",
                   "const unsigned char m[] = {0x1C, 256};",
                   "const unsigned char m[] = {0x1C, -1};",
                   "const unsigned char m[] = {0x1C, 0x00}; const int m_len = 3;",
                   "const unsigned char m[] = {0x1C, system(\"rm\")};"):
        resp = client.post("/install/", json={"device": {"serial": "SN0001"},
                                              "model": source})
        assert_error(resp, 400, resp.get_json()["code"])
        assert resp.get_json()["code"] in ("bad_request", "model_not_tflite")
    assert_error(client.get("/prediction/", data=b"{}", content_type="application/json"), 400,
                 "bad_request")


def test_internal_errors_are_classified_500(make_app, monkeypatch):
    app = make_app()
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    rt = app.extensions["tinyml_bridge"]

    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(rt.jobs, "list", boom)
    body = assert_error(c.get("/jobs"), 500, "internal")
    assert "secret internals" not in json.dumps(body)


# ------------------------------------------------------------- issue 10, item 6


def test_options_are_strict_types(client):
    for bad in ({"arena_bytes": "4096"}, {"arena_bytes": True}, {"boot_deadline_s": "5"},
                {"input_vectors": [["1.5"]]}, {"arena_bytes": 4096.5}):
        resp = client.post("/devices/fake1/install", json={"model_b64": _b64(), **bad})
        assert_error(resp, 400, "bad_option")
    resp = client.post("/devices/fake1/install", data={
        "model": (io.BytesIO(MODEL), "m.tflite"), "options": json.dumps({"arena_bytes": "4096"})})
    assert_error(resp, 400, "bad_option")
    ok = client.post("/devices/fake1/install", json={"model_b64": _b64(), "arena_bytes": 4096.0,
                                                     "boot_deadline_s": 5})
    assert ok.status_code == 202, ok.get_data(as_text=True)


def test_duplicate_multipart_parts_are_refused(client):
    resp = client.post("/devices/fake1/install", data={
        "model": [(io.BytesIO(MODEL), "a.tflite"), (io.BytesIO(b"other"), "b.tflite")]})
    body = assert_error(resp, 400, "bad_request")
    assert body["detail"] == {"field": "model", "count": 2}
    resp = client.post("/devices/fake1/install", data={
        "model": (io.BytesIO(MODEL), "a.tflite"), "options": ["{}", "{}"]})
    assert assert_error(resp, 400, "bad_request")["detail"]["field"] == "options"
    assert client.get("/jobs").get_json()["jobs"] == []


def test_public_health_hides_tool_details(make_app):
    app = make_app()
    public = app.test_client().get("/health").get_json()
    assert all(set(info) == {"available"} for info in public["drivers"].values())
    authed = app.test_client().get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authed.get_json()["drivers"]["test-fake"]["available"] is True
    assert public["waits"] == {"active": 0, "limit": 16}


def test_wait_and_lines_beyond_the_configured_limits_are_capped(client):
    job = client.post("/devices/fake1/install", json={"model_b64": _b64()}).get_json()
    assert client.get(f"/jobs/{job['id']}?wait=86400").status_code == 200  # capped, not 400
    assert_error(client.get(f"/jobs/{job['id']}?wait=86401"), 400, "bad_option")
    resp = client.get("/devices/fake1/observe?lines=1000000")
    assert resp.status_code == 200 and len(resp.get_json()["lines"]) <= 2000
