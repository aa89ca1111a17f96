"""The bridge client on its own: settings precedence, error mapping, and the SSE reader's
resume-after-drop, against a scripted HTTP server on a real socket (the daemon's own
behaviour is tested end to end in test_cli_e2e.py)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bridge.client import BridgeClient, resolve_settings
from hal.errors import HalError

TOKEN = "t0ken-t0ken-t0ken-1234"


# ------------------------------------------------------------------------ settings


def test_settings_precedence(tmp_path):
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('[server]\nhost = "0.0.0.0"\nport = 6001\ntoken = "from-config-xxxxxxxx"\n')
    s = resolve_settings(config=cfg, env={})
    assert (s.url, s.token, s.sources) == ("http://127.0.0.1:6001", "from-config-xxxxxxxx",
                                           {"url": "config", "token": "config"})
    env = {"TINYML_BRIDGE_URL": "http://10.1.1.1:7000/", "TINYML_BRIDGE_TOKEN": "envtok"}
    s = resolve_settings(config=cfg, env=env)
    assert (s.url, s.token) == ("http://10.1.1.1:7000", "envtok")
    s = resolve_settings(url="127.0.0.1:9", token="flagtok", config=cfg, env=env)
    assert (s.url, s.token, s.sources["url"]) == ("http://127.0.0.1:9", "flagtok", "flag")
    tok = tmp_path / "tok"
    tok.write_text("filetok\n")
    s = resolve_settings(env={"TINYML_BRIDGE_TOKEN_FILE": str(tok)})
    assert s.token == "filetok"
    s = resolve_settings(token_file=tok, env=env)
    assert s.token == "filetok"


def test_settings_config_token_file_and_ipv6(tmp_path):
    tok = tmp_path / "tok"
    tok.write_text("secret-from-file-123\n")
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[server]\nhost = "::"\nport = 6002\ntoken_file = "{tok}"\n')
    s = resolve_settings(config=cfg, env={})
    assert (s.url, s.token) == ("http://[::1]:6002", "secret-from-file-123")


@pytest.mark.parametrize("content,code", [
    ("[server\nport=1", "bad_config"),
    ('[server]\nport = 0\n', "bad_config"),
    ('[server]\nport = "x"\n', "bad_config"),
    ("server = 3\n", "bad_config"),
])
def test_settings_bad_config(tmp_path, content, code):
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(content)
    with pytest.raises(HalError) as exc:
        resolve_settings(config=cfg, env={})
    assert exc.value.code == code and str(cfg) in exc.value.message


def test_settings_bad_inputs(tmp_path):
    with pytest.raises(HalError, match="bad_option"):
        resolve_settings(url="ftp://x", env={})
    with pytest.raises(HalError, match="cannot read the token file"):
        resolve_settings(token_file=tmp_path / "missing", env={})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(HalError, match="empty"):
        resolve_settings(token_file=empty, env={})
    with pytest.raises(HalError, match="bad_config"):
        resolve_settings(config=tmp_path / "nope.toml", env={})


# ------------------------------------------------------------------ scripted server


class Script:
    """What the scripted server answers; records the requests it saw."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.stream_connections = 0


def _server(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            script.requests.append(("GET", self.path, dict(self.headers)))
            if self.path == "/html":
                self._send(404, b"<html>nope</html>", "text/html")
            elif self.path == "/devices":
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, json.dumps({"code": "unauthorized", "message": "no",
                                                "detail": {}, "class": "input"}).encode())
                else:
                    self._send(200, b'{"devices": []}')
            elif self.path == "/notjson":
                self._send(200, b"hello")
            elif self.path == "/array":
                self._send(200, b"[1, 2]")
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/devices")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/slow":
                threading.Event().wait(2)
                self._send(200, b"{}")
            elif self.path.startswith("/devices/d1/stream"):
                script.stream_connections += 1
                last = int(self.headers.get("Last-Event-ID") or 0)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                # Three events per connection, then the connection drops mid-event.
                for seq in range(last + 1, last + 4):
                    body = json.dumps({"seq": seq, "at": "x", "line": {"kind": "raw",
                                                                        "text": str(seq)}})
                    self.wfile.write(f": ping\n\nid: {seq}\nevent: line\ndata: {body}\n\n"
                                     .encode())
                if script.stream_connections == 1:
                    self.wfile.write(b'event: dropped\ndata: {"count": 2}\n\n')
                self.wfile.write(b"id: 999\nevent: line\ndata: {\"seq\"")  # cut off
                self.wfile.flush()
                self.close_connection = True
            else:
                self._send(404, json.dumps({"code": "not_found", "message": "no such path",
                                            "detail": {}, "class": "input"}).encode())

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # a client that left: expected here
            pass

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def scripted():
    script = Script()
    server = _server(script)
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def test_error_mapping(scripted):
    url, _ = scripted
    client = BridgeClient(url, token="wrong", timeout=1)
    with pytest.raises(HalError) as exc:
        client.devices()
    assert exc.value.code == "unauthorized" and exc.value.detail["http_status"] == 401
    assert BridgeClient(url, token=TOKEN).devices() == []
    with pytest.raises(HalError) as exc:
        client._get("/html")
    assert exc.value.code == "transport_broken" and "tinyml bridge" in exc.value.message
    with pytest.raises(HalError) as exc:
        client._get("/notjson")
    assert exc.value.code == "transport_broken"
    with pytest.raises(HalError) as exc:
        BridgeClient(url, timeout=0.3)._get("/slow")
    assert exc.value.code == "timeout"
    with pytest.raises(HalError) as exc:
        client.device("../../etc/passwd")  # the id is one path segment, percent-encoded
    assert exc.value.code == "not_found"


def test_unreachable_bridge():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HalError) as exc:
        BridgeClient(f"http://127.0.0.1:{port}", timeout=1).health()
    assert exc.value.code == "unavailable" and "connection refused" in exc.value.message


def test_stream_resumes_with_last_event_id_without_loss_or_repeat(scripted):
    url, script = scripted
    client = BridgeClient(url, timeout=2)
    seqs, others = [], []
    for event in client.stream("d1", since=0, max_reconnect_s=0.05):
        if event.event == "line":
            seqs.append(event.data["seq"])
        else:
            others.append(event.event)
        if len(seqs) >= 9:
            break
    assert seqs == list(range(1, 10))  # resumed after 3 and 6, the cut-off event ignored
    assert others == ["dropped", "reconnected", "reconnected"]
    ids = [r[2].get("Last-Event-ID") for r in script.requests if "stream" in r[1]]
    assert ids == ["0", "3", "6"]


def test_stream_without_reconnect_raises(scripted):
    url, _ = scripted
    events = []
    with pytest.raises(HalError) as exc:
        for event in BridgeClient(url, timeout=2).stream("d1", reconnect=False):
            events.append(event)
    assert exc.value.code == "transport_broken" and exc.value.detail["last_seq"] == 3
    assert len([e for e in events if e.event == "line"]) == 3


def test_not_a_json_object_or_missing_list_is_transport_broken(scripted):
    url, _ = scripted
    client = BridgeClient(url, token=TOKEN, timeout=1)
    with pytest.raises(HalError) as exc:
        client._get("/array")
    assert exc.value.code == "transport_broken" and "JSON object" in exc.value.message
    with pytest.raises(HalError) as exc:
        client._list({"devices": "x"}, "devices")
    assert exc.value.code == "transport_broken" and "'devices'" in exc.value.message


def test_redirects_followed_unless_refused(scripted):
    url, script = scripted
    assert BridgeClient(url, token=TOKEN, timeout=1)._get("/redirect") == {"devices": []}
    script.requests.clear()
    with pytest.raises(HalError) as exc:
        BridgeClient(url, token=TOKEN, timeout=1, follow_redirects=False)._get("/redirect")
    assert exc.value.code == "transport_broken" and exc.value.detail["http_status"] == 302
    assert [r[1] for r in script.requests] == ["/redirect"]  # the target was never asked


def test_trust_env_false_ignores_a_proxy_from_the_environment(scripted, monkeypatch):
    url, _ = scripted
    with socket.socket() as sock:  # a proxy address nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, dead)
    with pytest.raises(HalError) as exc:
        BridgeClient(url, token=TOKEN, timeout=1).devices()
    assert exc.value.code == "unavailable"
    assert BridgeClient(url, token=TOKEN, timeout=1, trust_env=False).devices() == []


def test_separate_connect_and_read_timeouts(scripted):
    url, _ = scripted
    client = BridgeClient(url, timeout=0.3, connect_timeout=2)
    with pytest.raises(HalError) as exc:
        client._get("/slow")
    assert exc.value.code == "timeout" and exc.value.detail["timeout_s"] == [2, 0.3]
