"""Bridges: URL validation (hostile addresses), token handling, health/devices/observe relays
and deployments -- against a real ``tinyml-bridge serve`` process with a virtual Nano 33 BLE,
and against sockets that misbehave (closed port, silent server, HTML, redirects)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from backend_stub.bridges import validate_bridge_url
from backend_stub.storage import Compilation, Training
from hal.boards import fit_check, get_profile
from hal.model.analysis import analyze
from tests.backend.conftest import (
    AUTH,
    BRIDGE_TOKEN,
    VIRTUAL_DEVICE,
    png_bytes,
    upload,
)

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "samples" / "models" / "shapes_int8.tflite"

GOOD = {
    "http://bridge.local:8080": "http://bridge.local:8080",
    "HTTPS://Bridge-1.Example.COM/": "https://bridge-1.example.com",
    "http://10.0.0.7": "http://10.0.0.7",
    "http://127.0.0.1:1": "http://127.0.0.1:1",
    "http://[::1]:65535": "http://[::1]:65535",
    "http://[2001:DB8:0:0::1]:5000": "http://[2001:db8::1]:5000",
    "http://localhost:5000": "http://localhost:5000",
    "http://xn--bcher-kva.example": "http://xn--bcher-kva.example",
}

HOSTILE = {
    "file:///etc/passwd": "scheme",
    "javascript:alert(1)": "scheme",
    "ftp://bridge:21": "scheme",
    "gopher://x": "scheme",
    "bridge.local:8080": "scheme",
    "//bridge.local": "scheme",
    "http://user:pw@bridge.local": "user information",
    "http://user@bridge.local": "user information",
    "http://bridge.local@evil.com": "user information",
    "http://": "no host",
    "http:///path": "no host",
    "http://:8080": "no host",
    "http://bridge:0": "port",
    "http://bridge:70000": "port",
    "http://bridge:-1": "port",
    "http://bridge:80x": "port",
    "http://bridge:": "empty port",
    "http://bri dge": "white space",
    "http://bridge\t.local": "white space",
    " http://bridge": "white space",
    "http://bridge\n.evil": "white space",
    "http://br\u0456dge.local": "non-ASCII",  # Cyrillic i
    "http://b\u200bridge.local": "non-ASCII",  # zero-width space
    "http://bridge\uff0elocal": "non-ASCII",  # fullwidth dot
    "http://bridge.local/api": "path",
    "http://bridge.local/..": "path",
    "http://bridge.local?x=1": "query",
    "http://bridge.local#frag": "fragment",
    "http://bridge\\@evil.com": "backslash",
    "http://[::1": "IPv6",
    "http://[not-an-ip]:80": "IPv6",
    "http://[fe80::1%25eth0]:80": "zone",
    "http://[1.2.3.4]:80": "IPv4 address cannot be in brackets",
    "http://::1:80": "port",
    "http://127.1": "dotted-quad",
    "http://0x7f.0.0.1": "dotted-quad",
    "http://256.1.1.1": "dotted-quad",
    "http://1.2.3.4.5": "dotted-quad",
    "http://-bridge.local": "host name",
    "http://bridge_1.local": "host name",
    "http://bridge..local": "host name",
    "http://" + "a" * 64 + ".local": "host name",
    "http://%62ridge.local": "host name",
    "": "empty",
}


@pytest.mark.parametrize(("url", "normal"), GOOD.items())
def test_good_urls_are_normalised_without_adding_a_port(url, normal):
    assert validate_bridge_url(url) == normal


@pytest.mark.parametrize(("url", "needle"), HOSTILE.items())
def test_hostile_urls_rejected_with_a_reason(url, needle):
    from hal.errors import InputError

    with pytest.raises(InputError) as info:
        validate_bridge_url(url)
    assert info.value.code == "bad_option"
    assert needle in info.value.message, info.value.message


def test_hostile_urls_rejected_over_http(sqlite_client):
    for url in HOSTILE:
        r = sqlite_client.post("/bridges", json={"name": "b", "url": url, "token": "t"})
        assert r.status_code == 422, (url, r.get_json())
        assert r.get_json()["code"] == "bad_option"
    assert sqlite_client.get("/bridges").get_json()["bridges"] == []


def test_bridge_body_validated(sqlite_client):
    for body in ({"name": "b"}, {"url": "http://x"}, {"name": "b", "url": 5},
                 {"name": "b", "url": "http://x", "extra": 1}, {"name": "a/b", "url": "http://x"}):
        r = sqlite_client.post("/bridges", json=body)
        assert r.status_code == 422, (body, r.get_json())


def test_token_stored_but_never_returned(client):
    secret = "very-secret-token-value"
    r = client.post("/bridges", json={"name": "lab", "url": "http://10.1.2.3:8080",
                                      "token": secret})
    assert r.status_code == 201
    assert r.get_json()["has_token"] is True and "token" not in r.get_json()
    for path in ("/bridges", f"/bridges/{r.get_json()['id']}"):
        assert secret not in client.get(path).get_data(as_text=True)
    assert client.post("/bridges", json={"name": "lab", "url": "http://x"}).status_code == 409
    assert client.delete(f"/bridges/{r.get_json()['id']}").status_code == 204
    assert client.get("/bridges").get_json()["bridges"] == []


# ------------------------------------------------------------------------------ misbehaving


def _add_bridge(c, url: str, token: str | None = BRIDGE_TOKEN, name: str = "b") -> int:
    r = c.post("/bridges", json={"name": name, "url": url, "token": token})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Silent:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


class _Odd(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/redirect") or self.server.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://evil.example/")
            self.end_headers()
            return
        body = b"<html>Online</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_server():
    servers = []

    def start(mode: str):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
        srv.mode = mode
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_unreachable_silent_and_odd_bridges_are_classified(make_app, tmp_path, odd_server):
    app = make_app(f"sqlite:///{tmp_path / 'b.sqlite3'}", bridge_read_timeout_s=0.5,
                   bridge_connect_timeout_s=0.5)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    silent = _Silent()
    try:
        cases = {
            f"http://127.0.0.1:{_closed_port()}": "unavailable",
            f"http://127.0.0.1:{silent.port}": "timeout",
            f"http://127.0.0.1:{odd_server('html')}": "transport_broken",
            f"http://127.0.0.1:{odd_server('redirect')}": "transport_broken",
        }
        for i, (url, code) in enumerate(cases.items()):
            bid = _add_bridge(c, url, name=f"b{i}")
            t0 = time.monotonic()
            h = c.get(f"/bridges/{bid}/health").get_json()
            assert h["reachable"] is False and h["error"]["code"] == code, (url, h)
            assert time.monotonic() - t0 < 5  # bounded by the timeouts
            r = c.get(f"/bridges/{bid}/devices")
            assert r.status_code in (502, 503, 504) and r.get_json()["code"] == code
        assert c.get("/health").status_code == 200
    finally:
        silent.close()


# ------------------------------------------------------------------------------ real bridge


def test_health_devices_and_wrong_token(sqlite_client, real_bridge):
    bid = _add_bridge(sqlite_client, real_bridge.url)
    h = sqlite_client.get(f"/bridges/{bid}/health").get_json()
    assert h["reachable"] is True and h["health"]["status"] == "ok"
    devices = sqlite_client.get(f"/bridges/{bid}/devices").get_json()["devices"]
    assert [d["id"] for d in devices] == [VIRTUAL_DEVICE]
    assert devices[0]["board"] == "nano33ble"
    r = sqlite_client.get(f"/bridges/{bid}/devices/nope/observe")
    assert r.status_code == 404 and r.get_json()["code"] == "unknown_device"

    wrong = _add_bridge(sqlite_client, real_bridge.url, token="wrong", name="wrong")
    r = sqlite_client.get(f"/bridges/{wrong}/devices")
    assert r.status_code == 502 and r.get_json()["code"] == "unauthorized"
    assert "refused the token" in r.get_json()["message"]


def test_unknown_bridge_id_is_404_not_an_unreachable_bridge(sqlite_client):
    for path in ("/bridges/999/health", "/bridges/999/devices",
                 "/bridges/999/devices/x/observe"):
        r = sqlite_client.get(path)
        assert r.status_code == 404 and r.get_json()["code"] == "not_found", (path, r.get_json())


def _compiled_artifact(client, app, *, board="nano33ble", state="succeeded",
                       error=None) -> int:
    """A dataset of 32x32 images and a compilation holding the real shapes_int8 model (as if
    trained and compiled; the TensorFlow path is covered by the train tests)."""
    labels = ("blank", "square", "stripes")
    entries = {f"{lb}/{i}.png": png_bytes(32, 32, seed=10 * k + i, level=60 * k)
               for k, lb in enumerate(labels) for i in range(4)}
    ds = upload(client, f"shapes-{time.monotonic_ns()}", entries).get_json()
    images = client.get(f"/datasets/{ds['id']}/images").get_json()["images"]
    val = [[img["id"], labels.index(img["label"])] for img in images if img["filename"] == "0.png"]
    model = SHAPES.read_bytes()
    report = analyze(model, board="nano33ble")
    store = app.extensions["tinyml_backend"].store
    with store.session() as s:
        t = Training(dataset_id=ds["id"], state="succeeded", labels=list(labels),
                     params={"image_width": 32, "image_height": 32, "color_mode": "grayscale",
                             "epochs": 1}, split={"train": [], "validation": val})
        s.add(t)
        s.flush()
        comp = Compilation(training_id=t.id, board=board, state=state, artifact=model,
                           sha256=hashlib.sha256(model).hexdigest(), error=error,
                           report={"model": report.to_dict(),
                                   "fit": fit_check(report, get_profile("nano33ble")).to_dict()})
        s.add(comp)
        s.flush()
        return comp.id


def _deploy(c, **body):
    return c.post("/deployments", json=body)


def _wait_deployment(c, dep_id: int, timeout: float = 90.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        d = c.get(f"/deployments/{dep_id}?wait=5").get_json()
        if d["state"] in ("succeeded", "failed", "cancelled"):
            return d
    raise AssertionError(f"deployment {dep_id} did not end")


def test_deploy_verified_then_observe(client, app, real_bridge):
    comp = _compiled_artifact(client, app)
    bid = _add_bridge(client, real_bridge.url)
    r = _deploy(client, compilation_id=comp, bridge_id=bid, device_id=VIRTUAL_DEVICE,
                input_vectors=3)
    assert r.status_code == 202, r.get_json()
    dep = _wait_deployment(client, r.get_json()["id"])
    assert dep["state"] == "succeeded", dep
    job = dep["bridge_job"]
    assert job["state"] == "succeeded"
    assert job["report"]["model_sha256"] == hashlib.sha256(SHAPES.read_bytes()).hexdigest()
    assert dep["params"]["input_vectors_sent"] == 3

    end = time.monotonic() + 20
    kinds = set()
    while time.monotonic() < end and not {"boot", "inference"} <= kinds:
        obs = client.get(f"/bridges/{bid}/devices/{VIRTUAL_DEVICE}/observe?lines=50").get_json()
        kinds = {entry["line"].get("kind") for entry in obs["lines"]}
        time.sleep(0.3)
    assert {"boot", "inference"} <= kinds, obs
    inference = [e["line"] for e in obs["lines"] if e["line"].get("kind") == "inference"]
    assert inference[-1]["label"] in ("blank", "square", "stripes")


def test_deploy_failure_on_the_device_is_a_failure(sqlite_client, sqlite_app, real_bridge):
    """A 1 KB arena: the board's real interpreter cannot allocate; never reported as success."""
    comp = _compiled_artifact(sqlite_client, sqlite_app)
    bid = _add_bridge(sqlite_client, real_bridge.url)
    r = _deploy(sqlite_client, compilation_id=comp, bridge_id=bid, device_id=VIRTUAL_DEVICE,
                arena_bytes=1024)
    assert r.status_code == 202, r.get_json()
    dep = _wait_deployment(sqlite_client, r.get_json()["id"])
    assert dep["state"] == "failed"
    assert dep["error"]["code"] == "alloc_failed", dep["error"]
    assert dep["bridge_job"]["state"] == "failed"


def test_deploy_refused_up_front(sqlite_client, sqlite_app, real_bridge):
    c = sqlite_client
    bid = _add_bridge(c, real_bridge.url)
    fit_error = {"code": "fit_ram", "message": "RAM: arena ... > 262144 B available",
                 "detail": {"ram_margin_bytes": -5000}, "class": "fit"}
    too_big = _compiled_artifact(c, sqlite_app, state="failed", error=fit_error)
    r = _deploy(c, compilation_id=too_big, bridge_id=bid, device_id=VIRTUAL_DEVICE)
    assert r.status_code == 422 and r.get_json()["code"] == "fit_ram"
    assert c.get(f"/compilations/{too_big}/model.tflite").status_code == 422

    queued = _compiled_artifact(c, sqlite_app, state="queued")
    assert _deploy(c, compilation_id=queued, bridge_id=bid,
                   device_id=VIRTUAL_DEVICE).status_code == 409

    # Compiled for a Linux board; this device is a Nano: re-checked, and a 300 KB arena
    # cannot fit its 256 KB of RAM.
    other = _compiled_artifact(c, sqlite_app, board="linux-x86_64")
    r = _deploy(c, compilation_id=other, bridge_id=bid, device_id=VIRTUAL_DEVICE,
                arena_bytes=300_000)
    assert r.status_code == 422 and r.get_json()["code"] == "fit_ram"

    ok = _compiled_artifact(c, sqlite_app)
    r = _deploy(c, compilation_id=ok, bridge_id=bid, device_id="no-such-device")
    assert r.status_code == 404 and r.get_json()["code"] == "unknown_device"
    assert _deploy(c, compilation_id=ok, bridge_id=999, device_id="x").status_code == 404
    assert _deploy(c, compilation_id=999, bridge_id=bid, device_id="x").status_code == 404
    assert _deploy(c, compilation_id=ok, bridge_id=bid, device_id="x",
                   input_vectors=-1).status_code == 422
    assert c.get("/deployments").get_json()["deployments"] == []


def test_oversized_json_body_is_413_not_read(sqlite_client):
    body = '{"name": "b", "url": "http://x", "token": "' + "x" * (2 << 20) + '"}'
    r = sqlite_client.post("/bridges", data=body, content_type="application/json")
    assert r.status_code == 413 and r.get_json()["code"] == "payload_too_large"
