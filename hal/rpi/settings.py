"""Configuration of one Raspberry Pi (or other Linux-over-SSH) device.

In the bridge configuration a Pi is a ``[[devices]]`` entry with ``driver = "rpi"``::

    [[devices]]
    id = "pi-kitchen"
    driver = "rpi"
    host = "192.168.1.40"
    user = "pi"
    key_file = "~/.ssh/tinyml_deploy"
    known_hosts = "~/.config/tinyml-bridge/known_hosts"
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from hal.driver import DriverSettings

_HOST = re.compile(r"^[A-Za-z0-9._:\-\[\]%]{1,253}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.\-]{0,31}$")


class RpiSettings(DriverSettings):
    """Validated settings of an ``rpi`` device (unknown keys are configuration errors)."""

    host: str = Field(description="host name or address of the target")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(description="login on the target (an unprivileged account)")
    key_file: Path | None = Field(None, description="private key; None uses ssh-agent")
    known_hosts: Path = Field(description="known_hosts file the host key is checked against")
    trust_on_first_use: bool = Field(
        False, description="accept and store an unknown host key (never a changed one)")
    python: str = Field("python3", description="interpreter to run on the target")
    workdir: str = Field("~/tinyml", description="deployments live here on the target")
    input_source: str = Field(
        "vectors", description='"vectors", "stdin" or "file:<absolute path on the target>"')
    keep_deployments: int = Field(3, ge=1, le=100, description="deployments kept on the target")
    boot_deadline_s: float = Field(20.0, gt=0, le=600)
    connect_timeout_s: float = Field(10.0, gt=0, le=120)
    command_timeout_s: float = Field(60.0, gt=0, le=3600)
    install_runtime: bool = Field(
        False, description="pip-install a missing interpreter into <workdir>/venv (logged, "
        "reported as the step 'install_runtime'; never system-wide)")
    pip_args: list[str] = Field(default_factory=list,
                                description="extra pip arguments, e.g. an index mirror")
    supervisor: Literal["auto", "systemd", "process"] = "auto"
    period_s: float = Field(1.0, ge=0, le=3600, description="pause between inferences")
    status_period_s: float = Field(10.0, ge=0.5, le=3600)
    min_uptime_s: float = Field(
        10.0, ge=0.1, le=3600, description="a runner that exits sooner after its start is a "
        "boot crash: reported, never restarted")
    restart_budget: int = Field(
        3, ge=0, le=100, description="restarts the supervisor makes within restart_window_s "
        "before it gives up (the device is then crashed)")
    restart_window_s: float = Field(60.0, gt=0, le=86400,
                                    description="the window restart_budget counts restarts in")
    restart_pause_s: float = Field(2.0, ge=0, le=600, description="pause before a restart")
    health_interval_s: float = Field(
        5.0, ge=0, le=3600, description="seconds between liveness checks of the runner over "
        "SSH (0: never)")
    disk_reserve_bytes: int = Field(
        32 << 20, ge=0, description="free disk kept beyond the deployment (logs, SD wear)")
    runtime_memory_bytes: int = Field(
        96 << 20, ge=0, description="memory of Python + NumPy + interpreter besides the model")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _HOST.match(v):
            raise ValueError("host must be a host name or an IP address")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not _USER.match(v):
            raise ValueError("user must be a POSIX login name")
        return v

    @field_validator("key_file", "known_hosts")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).expanduser()

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if not v or "\x00" in v or "\n" in v or len(v) > 4096:
            raise ValueError("python must be a command name or path")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        if not v or "\x00" in v or "\n" in v or len(v) > 1024:
            raise ValueError("workdir must be a path")
        if not (v.startswith("/") or v == "~" or v.startswith("~/")):
            raise ValueError("workdir must be absolute or start with ~/")
        return v.rstrip("/") or "/"

    @field_validator("input_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v in ("vectors", "stdin"):
            return v
        if v.startswith("file:/") and "\x00" not in v and "\n" not in v and len(v) < 4096:
            return v
        raise ValueError('input_source must be "vectors", "stdin" or "file:/absolute/path"')
