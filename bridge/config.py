"""The bridge configuration: one TOML file, validated at start-up.

Every error names the offending key *and* the line of the file it is on, e.g.::

    bad_config: /etc/tinyml-bridge/bridge.toml line 7: devices[1].port: Input should be ...

Each ``[[devices]]`` table has ``name`` and ``driver``; its other keys are that driver's
settings and are validated by the driver's own ``Settings`` model, so a new driver plugs in
without editing the bridge. ``config.example.toml`` next to this module documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from hal.driver import DriverContext, DriverSettings, driver_names, get_driver_class
from hal.errors import HalError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/tinyml-bridge/bridge.toml")
DEFAULT_PORT = 5000  # the old TinyMLaaS bridge's port, so its backend works unchanged
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
MIN_TOKEN_CHARS = 16
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
# Largest config file we read: a config is a few KB; anything bigger is a mistake.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TOKEN_FILE_BYTES = 4096

ENV_CONFIG = "TINYML_BRIDGE_CONFIG"
ENV_HOST = "TINYML_BRIDGE_HOST"
ENV_PORT = "TINYML_BRIDGE_PORT"
ENV_TOKEN = "TINYML_BRIDGE_TOKEN"


def valid_device_id(value: str) -> bool:
    """True when ``value`` is an acceptable device id (also used for path parameters)."""
    return isinstance(value, str) and DEVICE_ID_RE.fullmatch(value) is not None


def _default_state_dir() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; otherwise a per-user directory.
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tinyml-bridge"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    """``[server]``: where and how the HTTP API listens."""

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    token: str | None = None
    token_file: Path | None = None
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1024, le=1024 * 1024 * 1024)
    threads: int = Field(8, ge=2, le=256)
    max_streams: int = Field(32, ge=1, le=4096)
    shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    # Browser safety (see bridge/guard.py): extra names the Host header may carry, and
    # browser origins allowed to call the API.
    allowed_hosts: list[str] = Field(default_factory=list, max_length=256)
    allowed_origins: list[str] = Field(default_factory=list, max_length=256)
    # Connection limits (see bridge/connections.py).
    max_connections: int = Field(256, ge=8, le=65536)
    max_connections_per_client: int = Field(64, ge=2, le=65536)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    idle_timeout_s: float = Field(60.0, gt=0, le=3600)
    # Concurrent long-polls (?wait=, legacy POST /install/); each holds a thread while it
    # waits. A long-poll beyond the limit gets 503.
    max_waits: int = Field(16, ge=1, le=4096)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        if not value or not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", value):
            raise ValueError("must be an IP address or a host name")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            item = item.strip().lower()
            if item.startswith("[") and item.endswith("]"):
                item = item[1:-1]
            if item != "*" and not re.fullmatch(r"[a-z0-9.:_-]{1,253}", item):
                raise ValueError(f"{item[:60]!r} is not a host name or address (or \"*\")")
            out.append(item)
        return out

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            item = item.strip().rstrip("/")
            if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:_-]{1,260}", item):
                raise ValueError(f"{item[:60]!r} is not an origin like "
                                 "\"https://dashboard.example:8443\"")
            out.append(item.lower())
        return out

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_token(value)


def _check_token(value: str) -> str:
    value = value.strip()
    if len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"a token needs at least {MIN_TOKEN_CHARS} characters")
    if not re.fullmatch(r"[\x21-\x7e]+", value):
        raise ValueError("a token is printable ASCII without spaces")
    return value


class ArduinoConfig(_Strict):
    """``[arduino]``: the host's arduino-cli and where builds are cached."""

    cli: str = "arduino-cli"
    build_cache: Path | None = None


class DiscoveryConfig(_Strict):
    """``[discovery]``: boards found without configuration (USB hot-plug)."""

    drivers: list[str] = Field(default_factory=lambda: ["nano33ble"])
    interval_s: float = Field(2.0, ge=0, le=3600)  # 0 disables the periodic re-scan


class ObserveConfig(_Strict):
    """``[observe]``: per-device line buffers and stream queues."""

    buffer_lines: int = Field(2000, ge=10, le=1_000_000)
    subscriber_queue: int = Field(1000, ge=10, le=1_000_000)
    ping_s: float = Field(15.0, gt=0, le=300)


class JobsConfig(_Strict):
    """``[jobs]``: install job limits and history."""

    timeout_s: float = Field(1800.0, gt=0, le=24 * 3600)
    history: int = Field(1000, ge=10, le=1_000_000)
    max_wait_s: float = Field(3600.0, ge=0, le=24 * 3600)


class LegacyConfig(_Strict):
    """``[legacy]``: the old TinyMLaaS bridge endpoints."""

    enabled: bool = True
    max_model_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)


class DeviceConfig(BaseModel):
    """One ``[[devices]]`` table; ``settings`` holds the driver's own keys (validated later)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=DEVICE_ID_PATTERN)
    driver: str = Field(min_length=1, max_length=64)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BridgeConfig(_Strict):
    """The whole configuration file. Build it with :func:`load_config`."""

    state_dir: Path = Field(default_factory=_default_state_dir)
    server: ServerConfig = Field(default_factory=ServerConfig)
    arduino: ArduinoConfig = Field(default_factory=ArduinoConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    observe: ObserveConfig = Field(default_factory=ObserveConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    legacy: LegacyConfig = Field(default_factory=LegacyConfig)
    devices: list[DeviceConfig] = Field(default_factory=list)

    _source: str = PrivateAttr("(built-in defaults)")

    @property
    def source(self) -> str:
        """The file this configuration came from (for messages)."""
        return self._source

    def driver_context(self) -> DriverContext:
        """Host-wide facts handed to every driver."""
        return DriverContext(
            state_dir=self.state_dir,
            arduino_cli=self.arduino.cli,
            build_cache_dir=self.arduino.build_cache,
        )

    def device_settings(self) -> list[tuple[DeviceConfig, DriverSettings]]:
        """Each configured device with its validated driver settings."""
        out = []
        for dev in self.devices:
            cls = get_driver_class(dev.driver)
            out.append((dev, cls.Settings.model_validate(dev.settings)))
        return out

    @property
    def token(self) -> str | None:
        return self.server.token

    def is_loopback(self) -> bool:
        """True when the listen address only accepts connections from this machine."""
        return is_loopback_host(self.server.host)


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------ line locator


_TABLE_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY_RE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(p.strip("\"'") for p in parts)


def key_lines(text: str) -> dict[tuple, int]:
    """Map each key path (``("server", "port")``, ``("devices", 1, "name")``) and each table
    (``("devices", 1)``) to its 1-based line in the TOML text. Good enough for error messages:
    it follows ``[table]``, ``[[array]]`` and dotted keys, not multi-line values."""
    lines: dict[tuple, int] = {}
    array_counts: dict[tuple, int] = {}
    current: tuple = ()
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        table = _TABLE_RE.match(line)
        if table and not _KEY_RE.match(line):
            path = _split_key(table.group(2))
            if table.group(1) == "[[":
                index = array_counts.get(path, -1) + 1
                array_counts[path] = index
                current = (*path, index)
            else:
                current = path
            lines.setdefault(current, number)
            continue
        key = _KEY_RE.match(line)
        if key:
            path = (*current, *_split_key(key.group(1)))
            lines.setdefault(path, number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_multiline = quote
    return lines


def line_of(lines: Mapping[tuple, int], loc: tuple) -> int | None:
    """The line of ``loc`` or of its closest enclosing table (for a missing key)."""
    for end in range(len(loc), 0, -1):
        if tuple(loc[:end]) in lines:
            return lines[tuple(loc[:end])]
    return None


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _config_error(source: str, lines: Mapping[tuple, int], loc: tuple, msg: str,
                  **extra: Any) -> InputError:
    line = line_of(lines, loc)
    where = f"{source} line {line}" if line else source
    key = _dotted(loc)
    return InputError("bad_config", f"{where}: {key}: {msg}", file=source, line=line, key=key,
                      **extra)


def _first_error(source: str, lines: Mapping[tuple, int], exc: ValidationError,
                 prefix: tuple = ()) -> InputError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    described = []
    for err in errors:
        loc = (*prefix, *err["loc"])
        line = line_of(lines, loc)
        described.append({"key": _dotted(loc), "line": line, "message": err["msg"]})
    first = errors[0]
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more: " + "; ".join(
            f"line {d['line']} {d['key']}: {d['message']}" for d in described[1:4]) + ")"
    return _config_error(source, lines, (*prefix, *first["loc"]), msg, errors=described)


# ------------------------------------------------------------------------------ loading


def parse_config(text: str, source: str = "<config>", *,
                 overrides: Mapping[str, Any] | None = None) -> BridgeConfig:
    """Parse and validate TOML ``text``. ``overrides`` (``{"host", "port", "token",
    "state_dir"}``, None values ignored) come from the environment or flags and win over the
    file. Raises ``InputError("bad_config")`` naming the key and line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise InputError("bad_config", f"{source}: not valid TOML: {exc}", file=source,
                         line=int(match.group(1)) if match else None) from None
    lines = key_lines(text)
    try:
        config = BridgeConfig.model_validate(data)
    except ValidationError as exc:
        raise _first_error(source, lines, exc) from None
    config._source = source

    server = config.server
    if server.token is not None and server.token_file is not None:
        raise _config_error(source, lines, ("server", "token_file"),
                            "give either token or token_file, not both")
    if server.token_file is not None:
        try:
            raw = read_bounded(server.token_file, MAX_TOKEN_FILE_BYTES).decode("utf-8")
        except ValueError:
            raise _config_error(source, lines, ("server", "token_file"),
                                f"the token file is larger than {MAX_TOKEN_FILE_BYTES} bytes; "
                                "it must hold only the token") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _config_error(source, lines, ("server", "token_file"),
                                f"cannot read the token file: {exc.__class__.__name__}") from None
        try:
            server.token = _check_token(raw)
        except ValueError as exc:
            raise _config_error(source, lines, ("server", "token_file"), str(exc)) from None

    _apply_overrides(config, overrides or {}, source)

    seen: dict[str, int] = {}
    known = driver_names()
    for index, dev in enumerate(config.devices):
        if dev.name in seen:
            raise _config_error(source, lines, ("devices", index, "name"),
                                f"duplicate device name {dev.name!r} "
                                f"(also devices[{seen[dev.name]}])")
        seen[dev.name] = index
        try:
            cls = get_driver_class(dev.driver)
        except HalError:
            raise _config_error(source, lines, ("devices", index, "driver"),
                                f"unknown driver {dev.driver!r}; known drivers: "
                                + ", ".join(known), known=known) from None
        except ImportError as exc:
            raise _config_error(source, lines, ("devices", index, "driver"),
                                f"driver {dev.driver!r} cannot be loaded: {exc}") from None
        try:
            cls.Settings.model_validate(dev.settings)
        except ValidationError as exc:
            raise _first_error(source, lines, exc, prefix=("devices", index)) from None
    for index, name in enumerate(config.discovery.drivers):
        if name not in known:
            raise _config_error(source, lines, ("discovery", "drivers"),
                                f"unknown driver {name!r} at position {index}; known drivers: "
                                + ", ".join(known), known=known)
    return config


def _apply_overrides(config: BridgeConfig, overrides: Mapping[str, Any], source: str) -> None:
    values = {k: v for k, v in overrides.items() if v is not None and v != ""}
    if not values:
        return
    data = config.server.model_dump()
    for key in ("host", "port", "token"):
        if key in values:
            data[key] = values[key]
    if "token" in values:
        data["token_file"] = None
    try:
        config.server = ServerConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        raise InputError("bad_config", f"{key} (from the command line or environment): "
                                       f"{err['msg']}", key=key, file=source) from None
    if "state_dir" in values:
        config.state_dir = Path(values["state_dir"])


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Overrides from ``TINYML_BRIDGE_HOST``, ``_PORT`` and ``_TOKEN``."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    if env.get(ENV_HOST):
        out["host"] = env[ENV_HOST]
    if env.get(ENV_PORT):
        port = env[ENV_PORT].strip()
        if not port.isdigit():
            raise InputError("bad_config", f"{ENV_PORT}={port!r} is not a port number",
                             key=ENV_PORT)
        out["port"] = int(port)
    if env.get(ENV_TOKEN):
        out["token"] = env[ENV_TOKEN]
    return out


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, reading at most ``limit`` + 1 whatever the file is (a device,
    a FIFO, a huge file); ``ValueError`` when there is more than ``limit``. Opened
    non-blocking, so a FIFO nobody writes to reads as empty instead of hanging."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1) or b""
    if len(data) > limit:
        raise ValueError(f"{path}: more than {limit} bytes")
    return data


def load_config(path: str | Path | None = None, *,
                overrides: Mapping[str, Any] | None = None) -> BridgeConfig:
    """Read the configuration. ``path`` None means ``$TINYML_BRIDGE_CONFIG`` or the default
    ``/etc/tinyml-bridge/bridge.toml``; a missing *default* file means built-in defaults, a
    missing *named* file is an error."""
    explicit = path is not None or bool(os.environ.get(ENV_CONFIG))
    chosen = Path(path) if path is not None else Path(
        os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH)
    source = str(chosen)
    try:
        # Read at most the limit (+1): stat() says 0 for /dev/zero and pipes.
        text = read_bounded(chosen, MAX_CONFIG_BYTES).decode("utf-8")
    except ValueError:
        raise InputError("bad_config", f"{source}: larger than {MAX_CONFIG_BYTES} bytes "
                         "(a configuration file is a few KB)", file=source) from None
    except FileNotFoundError:
        if explicit:
            raise InputError("bad_config", f"{source}: no such configuration file",
                             file=source) from None
        return parse_config("", "(built-in defaults)", overrides=overrides)
    except UnicodeDecodeError:
        raise InputError("bad_config", f"{source}: not UTF-8 text", file=source) from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise InputError("bad_config", f"{source}: cannot read: {exc.strerror or exc}",
                         file=source) from None
    return parse_config(text, source, overrides=overrides)
