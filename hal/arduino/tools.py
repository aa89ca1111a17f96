"""Host tool checks of the Nano 33 BLE driver (``/health``, ``doctor``): arduino-cli found,
the ``arduino:mbed_nano`` core and the TFLM library installed, the user allowed to open serial
ports. Cached for 30 s; never raises."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from hal.arduino.cli import ArduinoCli
from hal.arduino.cli_output import PERMISSION_FIX
from hal.arduino.libraries import library_checks
from hal.deadline import Deadline
from hal.errors import HalError

_TOOLS_CACHE_S = 30.0
_tools_cache: dict[tuple, tuple[float, dict]] = {}
_tools_lock = threading.Lock()


def tool_checks(driver: str, command: str | list[str], env: dict[str, str]) -> dict[str, Any]:
    """``{"available", "version", "checks"}`` for ``driver``'s arduino-cli ``command``."""
    key = (driver, tuple(command) if isinstance(command, list) else command,
           tuple(sorted(env.items())))
    with _tools_lock:
        hit = _tools_cache.get(key)
        if hit and time.monotonic() - hit[0] < _TOOLS_CACHE_S:
            return hit[1]
    result = run_tool_checks(command, env)
    with _tools_lock:
        _tools_cache[key] = (time.monotonic(), result)
    return result


def run_tool_checks(command: str | list[str], env: dict[str, str]) -> dict[str, Any]:
    cli = ArduinoCli(command, env=env)
    checks: list[dict[str, Any]] = []
    version = None
    try:
        version = cli.version(Deadline(10.0, what="arduino-cli version"))
        checks.append({"check": "arduino-cli", "ok": True, "message": f"version {version}",
                       "fix": ""})
    except HalError as exc:
        checks.append({"check": "arduino-cli", "ok": False, "message": exc.message,
                       "fix": "install arduino-cli (https://arduino.github.io/arduino-cli/) "
                       "or set arduino_cli in the configuration"})
    if version is not None:
        core = "arduino:mbed_nano"
        try:
            cores = cli.core_list(Deadline(20.0, what="arduino-cli core list"))
            ok = core in cores
            checks.append({"check": "core", "ok": ok,
                           "message": f"{core} {cores.get(core, 'not installed')}",
                           "fix": "" if ok else f"arduino-cli core install {core}"})
        except HalError as exc:
            checks.append({"check": "core", "ok": False, "message": exc.message,
                           "fix": f"arduino-cli core install {core}"})
        # the libraries' APIs, read from their headers (version strings lie: issue 11)
        checks += library_checks(cli, Deadline(20.0, what="arduino-cli lib list"))
    if os.geteuid() != 0:
        import grp

        try:
            groups = {grp.getgrgid(g).gr_name for g in os.getgroups()}
        except KeyError:
            groups = set()
        ok = "dialout" in groups or "uucp" in groups
        checks.append({"check": "serial_permission", "ok": ok,
                       "message": "member of dialout" if ok else "not in the dialout group",
                       "fix": "" if ok else PERMISSION_FIX})
    return {"available": all(c["ok"] for c in checks), "version": version,
            "checks": checks}
