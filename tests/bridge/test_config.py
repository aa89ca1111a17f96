"""Configuration: validation errors name the key and the line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.config import (
    BridgeConfig,
    env_overrides,
    is_loopback_host,
    key_lines,
    load_config,
    parse_config,
)
from hal.errors import HalError

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "config.example.toml"
TOKEN = "a-token-of-sufficient-length"


def config_error(text: str, **kw) -> HalError:
    with pytest.raises(HalError) as err:
        parse_config(text, "bridge.toml", **kw)
    assert err.value.code == "bad_config"
    return err.value


def test_defaults_without_a_file():
    config = parse_config("")
    assert config.server.host == "127.0.0.1" and config.server.port == 5000
    assert config.server.max_request_bytes == 8 * 1024 * 1024
    assert config.server.token is None and config.devices == []
    assert config.is_loopback()


def test_example_config_parses_and_documents_every_key():
    config = parse_config(EXAMPLE.read_text(), str(EXAMPLE))
    assert isinstance(config, BridgeConfig)
    text = EXAMPLE.read_text()
    for section, model in BridgeConfig.model_fields.items():
        assert section in text, section
        sub = getattr(model.annotation, "model_fields", {})
        for key in sub:
            assert f"{key} =" in text, f"{section}.{key} is not documented in the example"


@pytest.mark.parametrize("text,line,key,words", [
    ("[server]\nport = 99999\n", 2, "server.port", "less than or equal"),
    ("[server]\n\n# c\nport = \"http\"\n", 4, "server.port", "integer"),
    ("[server]\nhost = \"bad host!\"\n", 2, "server.host", "IP address"),
    ("[server]\ntoken = \"short\"\n", 2, "server.token", "16 characters"),
    ("[server]\nmax_request_bytes = 1\n", 2, "server.max_request_bytes", "greater"),
    ("[server]\nbogus = 1\n", 2, "server.bogus", "unknown key"),
    ("wat = 1\n", 1, "wat", "unknown key"),
    ("[jobs]\ntimeout_s = -1\n", 2, "jobs.timeout_s", "greater"),
    ("[discovery]\ndrivers = [\"nope\"]\n", 2, "discovery.drivers", "unknown driver"),
    ("[observe]\nbuffer_lines = \"many\"\n", 2, "observe.buffer_lines", "integer"),
    ("[[devices]]\nname = \"ok\"\ndriver = \"nope\"\n", 3, "devices[0].driver",
     "known drivers"),
    ("[[devices]]\nname = \"a\"\ndriver = \"test-fake\"\n\n[[devices]]\nname = \"../etc\"\n"
     "driver = \"test-fake\"\n", 6, "devices[1].name", "pattern"),
    ("[[devices]]\nname = \"" + "x" * 65 + "\"\ndriver = \"test-fake\"\n", 2,
     "devices[0].name", "pattern"),
    ("[[devices]]\nname = \"caf\u00e9\"\ndriver = \"test-fake\"\n", 2, "devices[0].name",
     "pattern"),
    ("[[devices]]\ndriver = \"test-fake\"\n", 1, "devices[0].name", "required"),
    ("[[devices]]\nname = \"a\"\ndriver = \"test-fake\"\n[[devices]]\nname = \"b\"\n"
     "driver = \"test-fake\"\nperiod_ms = \"fast\"\n", 7, "devices[1].period_ms", "integer"),
    ("[[devices]]\nname = \"a\"\ndriver = \"test-fake\"\nwhatever = 1\n", 4,
     "devices[0].whatever", "unknown key"),
    ("[[devices]]\nname = \"a\"\ndriver = \"test-fake\"\n[[devices]]\nname = \"a\"\n"
     "driver = \"test-fake\"\n", 5, "devices[1].name", "duplicate"),
    ("[server]\ntoken = \"" + "t" * 20 + "\"\ntoken_file = \"/x\"\n", 3, "server.token_file",
     "either"),
    ("[server]\ntoken_file = \"/nonexistent/token\"\n", 2, "server.token_file", "cannot read"),
    ("[server\nport = 1\n", 1, None, "not valid TOML"),
    ("[server]\nport = 1\nport = 2\n", 3, None, "not valid TOML"),
])
def test_errors_name_key_and_line(text, line, key, words):
    err = config_error(text)
    assert err.detail["line"] == line, err
    assert f"bridge.toml line {line}" in err.message or "TOML" in err.message
    if key is not None:
        assert err.detail["key"] == key and key in err.message
    assert words in err.message, err.message


def test_dotted_keys_and_inline_comments_are_located():
    text = 'state_dir = "/tmp/x"  # here\nserver.port = 70000\n'
    err = config_error(text)
    assert err.detail["line"] == 2 and err.detail["key"] == "server.port"
    lines = key_lines('a = """\n[not]\nx = 1\n"""\n[t]\nk = 1\n')
    assert lines[("t", "k")] == 6 and ("not",) not in lines


def test_token_file_and_overrides(tmp_path):
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    config = parse_config(f'[server]\ntoken_file = "{tf}"\n')
    assert config.server.token == TOKEN
    tf.write_text("short")
    assert "16" in config_error(f'[server]\ntoken_file = "{tf}"\n').message
    over = parse_config("[server]\nport = 1\n", overrides={"host": "0.0.0.0", "port": 0,
                                                          "token": TOKEN})
    assert (over.server.host, over.server.port, over.server.token) == ("0.0.0.0", 0, TOKEN)
    assert not over.is_loopback()
    with pytest.raises(HalError) as err:
        parse_config("", overrides={"port": 70000})
    assert err.value.code == "bad_config" and "port" in err.value.message


def test_env_overrides():
    env = {"TINYML_BRIDGE_HOST": "::1", "TINYML_BRIDGE_PORT": "8080",
           "TINYML_BRIDGE_TOKEN": TOKEN}
    assert env_overrides(env) == {"host": "::1", "port": 8080, "token": TOKEN}
    with pytest.raises(HalError):
        env_overrides({"TINYML_BRIDGE_PORT": "http"})


def test_load_config_files(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYML_BRIDGE_CONFIG", raising=False)
    with pytest.raises(HalError) as err:
        load_config(tmp_path / "missing.toml")
    assert "no such configuration file" in err.value.message
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert load_config_error(binary).code == "bad_config"
    assert load_config_error(tmp_path).code == "bad_config"  # a directory
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1024 * 1024 + 10))
    assert "larger" in load_config_error(big).message
    good = tmp_path / "good.toml"
    good.write_text("[server]\nport = 1234\n")
    monkeypatch.setenv("TINYML_BRIDGE_CONFIG", str(good))
    assert load_config().server.port == 1234


def load_config_error(path) -> HalError:
    with pytest.raises(HalError) as err:
        load_config(path)
    return err.value


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.5.0.1", True),
                                       ("::1", True), ("localhost", True),
                                       ("0.0.0.0", False), ("::", False),
                                       ("192.168.1.2", False), ("example.com", False)])
def test_loopback(host, loop):
    assert is_loopback_host(host) is loop


def test_example_device_tables_are_valid_when_uncommented():
    """The commented [[devices]] examples must stay valid for their drivers."""
    out, inside = [], False
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("# example:"):
            inside = True
        elif inside and line.startswith("# "):
            line = line[2:]
        elif not line.startswith("#"):
            inside = False
        out.append(line)
    config = parse_config("\n".join(out), "example")
    assert [(d.name, d.driver) for d in config.devices] == [
        ("bench-nano", "nano33ble"), ("pi-kitchen", "rpi"), ("virtual-1", "virtual-nano33ble")]
    assert all(settings for _, settings in config.device_settings())


# ------------------------------------------------------------- issue 10, item 6


def test_config_from_an_endless_device_is_refused_without_reading_it_all(tmp_path):
    from bridge.config import load_config

    with pytest.raises(HalError) as err:
        load_config("/dev/zero")
    assert err.value.code == "bad_config" and "larger than" in err.value.message
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    config = load_config(fifo)  # nobody writes: empty, i.e. the defaults; never hangs
    assert config.server.port == 5000


def test_token_file_from_an_endless_device_is_refused(tmp_path):
    text = '[server]\ntoken_file = "/dev/zero"\n'
    with pytest.raises(HalError) as err:
        parse_config(text, "t.toml")
    assert err.value.code == "bad_config" and "token_file" in err.value.message
    assert "larger than" in err.value.message
