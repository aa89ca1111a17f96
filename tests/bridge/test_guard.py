"""Issue 10 item 2: without a token the bridge is still safe from web pages open in a browser
on the same machine (DNS rebinding, cross-site simple requests), and the old backend and
server-side clients keep working."""

from __future__ import annotations

import json

import pytest
import requests

from bridge.config import parse_config
from bridge.guard import RequestGuard, split_host
from tests.bridge.conftest import config_text
from tests.bridge.test_legacy import MODEL, c_source


def files() -> dict:
    return {"model": ("model.tflite", MODEL, "application/octet-stream"),
            "options": (None, json.dumps({}), "application/json")}


@pytest.fixture
def open_bridge(start_bridge):
    """A bridge without a token on 127.0.0.1 (the default the old backend needs)."""
    return start_bridge(token=None)


def port_of(bridge) -> str:
    return bridge.url.rsplit(":", 1)[1]


def assert_refused(resp: requests.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code


def no_jobs(bridge) -> bool:
    return requests.get(bridge.url + "/jobs", timeout=10).json()["jobs"] == []


# -------------------------------------------------------------- the reproductions


def test_multipart_install_from_a_foreign_page_is_refused(open_bridge):
    # The reproduction: foreign Origin and Host: attacker.example (DNS rebinding).
    resp = requests.post(open_bridge.url + "/devices/fake1/install", files=files(),
                         headers={"Origin": "http://attacker.example",
                                  "Host": "attacker.example"}, timeout=10)
    assert_refused(resp, 403, "forbidden_origin")
    # Each rule on its own.
    resp = requests.post(open_bridge.url + "/devices/fake1/install", files=files(),
                         headers={"Origin": "http://attacker.example"}, timeout=10)
    assert_refused(resp, 403, "forbidden_origin")
    resp = requests.post(open_bridge.url + "/devices/fake1/install", files=files(),
                         headers={"Host": f"attacker.example:{port_of(open_bridge)}"},
                         timeout=10)
    assert_refused(resp, 403, "forbidden_origin")
    assert no_jobs(open_bridge)


def test_legacy_install_as_text_plain_is_refused(open_bridge):
    # The reproduction: a browser sends text/plain cross-site without a preflight.
    body = json.dumps({"device": {"serial": "SN0001"}, "model": c_source(MODEL)})
    resp = requests.post(open_bridge.url + "/install/", data=body,
                         headers={"Content-Type": "text/plain"}, timeout=10)
    assert_refused(resp, 415, "unsupported_media_type")
    resp = requests.post(open_bridge.url + "/install/", data={"model": "x"}, timeout=10)
    assert_refused(resp, 415, "unsupported_media_type")
    resp = requests.post(open_bridge.url + "/devices/fake1/install", data=body,
                         headers={"Content-Type": "text/plain;charset=utf-8"}, timeout=10)
    assert_refused(resp, 415, "unsupported_media_type")
    assert no_jobs(open_bridge)


def test_cross_site_navigation_without_origin_is_refused(open_bridge):
    resp = requests.get(open_bridge.url + "/devices",
                        headers={"Sec-Fetch-Site": "cross-site"}, timeout=10)
    assert_refused(resp, 403, "forbidden_origin")


# --------------------------------------------------- what must keep working


def test_server_side_clients_and_the_old_backend_still_work(open_bridge):
    url = open_bridge.url
    # The old backend: JSON, no Origin, Host = the address it connects to.
    resp = requests.post(url + "/install/", json={"device": {"installer": "Arduino IDE",
                                                             "serial": "SN0001"},
                                                  "model": c_source(MODEL)}, timeout=30)
    assert resp.status_code == 201 and resp.text == "Success"
    port = port_of(open_bridge)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "127.0.0.2",
                 f"[::1]:{port}", "LOCALHOST."):
        resp = requests.get(url + "/devices", headers={"Host": host}, timeout=10)
        assert resp.status_code == 200, (host, resp.text)
    # A page served by the bridge itself (same origin) may call it.
    resp = requests.post(url + "/devices/fake1/install?wait=10", files=files(),
                         headers={"Origin": f"http://127.0.0.1:{port}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert requests.get(url + "/devices", headers={"Sec-Fetch-Site": "same-origin"},
                        timeout=10).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example", "10.0.0.5", "192.168.1.2:5000",
                                  "", "127.0.0.1:x", "[::1", "::1", "a" * 400])
def test_foreign_or_malformed_hosts_are_refused(open_bridge, host):
    resp = requests.get(open_bridge.url + "/health", headers={"Host": host}, timeout=10)
    assert_refused(resp, 403, "forbidden_origin")


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "file://",
                                    "http://127.0.0.1:1", "https://localhost"])
def test_foreign_origins_are_refused_even_for_reads(open_bridge, origin):
    resp = requests.get(open_bridge.url + "/devices", headers={"Origin": origin}, timeout=10)
    assert_refused(resp, 403, "forbidden_origin")


def test_configured_hosts_and_origins_are_allowed(tmp_path, start_bridge):
    text = config_text(tmp_path / "state", token=None).replace(
        "port = 0\n", 'port = 0\nallowed_hosts = ["bridge.lab.example"]\n'
        'allowed_origins = ["https://dash.lab.example:8443"]\n')
    bridge = start_bridge(text, token=None)
    ok = requests.post(bridge.url + "/devices/fake1/install?wait=10", files=files(),
                       headers={"Host": "bridge.lab.example:5000",
                                "Origin": "https://dash.lab.example:8443"}, timeout=30)
    assert ok.status_code == 200, ok.text
    resp = requests.get(bridge.url + "/devices",
                        headers={"Origin": "https://dash.lab.example"}, timeout=10)
    assert_refused(resp, 403, "forbidden_origin")


def test_guard_runs_before_the_token_and_with_it(start_bridge):
    bridge = start_bridge()  # with a token
    resp = bridge.get("/devices", headers={"Host": "attacker.example"})
    assert_refused(resp, 403, "forbidden_origin")
    assert bridge.get("/devices").status_code == 200


# ----------------------------------------------------------------------- units


@pytest.mark.parametrize("value,host", [
    ("127.0.0.1:5000", "127.0.0.1"), ("LocalHost", "localhost"), ("[::1]:80", "::1"),
    ("[::1]", "::1"), ("example.org.", "example.org"), ("", None), ("::1", None),
    ("[::1]x", None), ("a:b", None), ("x" * 301, None),
])
def test_split_host(value, host):
    assert split_host(value) == host


def test_wildcard_listen_accepts_ip_literals_but_not_unknown_names(tmp_path):
    config = parse_config(config_text(tmp_path, token="t" * 20).replace(
        "port = 0\n", 'port = 0\nhost = "0.0.0.0"\n'), "t.toml")
    guard = RequestGuard(config)
    assert guard.host_allowed("192.168.1.40:5000") and guard.host_allowed("[fe80::1]")
    assert guard.host_allowed("localhost:5000")
    assert not guard.host_allowed("attacker.example:5000")
    star = parse_config(config_text(tmp_path, token=None).replace(
        "port = 0\n", 'port = 0\nallowed_hosts = ["*"]\n'), "t.toml")
    assert RequestGuard(star).host_allowed("anything.example")


@pytest.mark.parametrize("key,value", [
    ("allowed_hosts", '["bad host!"]'), ("allowed_origins", '["dash.example"]'),
    ("allowed_origins", '["ftp://x"]'),
])
def test_bad_guard_config_names_the_key(tmp_path, key, value):
    from hal.errors import HalError

    with pytest.raises(HalError) as err:
        parse_config(config_text(tmp_path, token=None).replace(
            "port = 0\n", f"port = 0\n{key} = {value}\n"), "t.toml")
    assert err.value.code == "bad_config" and key in err.value.message
