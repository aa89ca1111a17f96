"""The arduino-cli adapter: every call with ``--format json`` through :func:`hal.process.run`.

Why a thin adapter and not a wrapper library: the one maintained wrapper on PyPI,
``pyduinocli`` (0.35.0, Feb 2024), runs arduino-cli with a plain ``subprocess.Popen`` and no
timeout, cannot kill the tool's process group (gcc, bossac) on cancel, and returns arduino-cli's
JSON as-is, so it neither tolerates the differences between 0.29-0.35 and 1.x (bare array vs
``detected_ports``, error JSON on stderr, text trailing the JSON, missing keys) nor classifies
link errors as fit errors. Those are exactly the things this module is for, and the command
lines themselves are a handful of flags.

Parsing and classifying what the tool prints lives in :mod:`hal.arduino.cli_output`; this
module only builds the command lines and runs them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from hal.arduino.cli_output import (
    BoardPort,
    CompileResult,
    UploadResult,
    classify_compile_failure,
    extract_json,
    json_dict,
    json_list,
    json_str,
    parse_board_list,
    parse_compile,
    parse_upload,
    text_tail,
)
from hal.deadline import Deadline
from hal.errors import InfraError
from hal.process import ProcessResult, run

log = logging.getLogger(__name__)



class ArduinoCli:
    """Runs arduino-cli (or the stand-in) with deadlines. ``command`` is the executable, or an
    argv prefix such as ``[sys.executable, "-m", "hal.virtual.arduino_cli"]``; ``env`` adds
    variables to the tool's environment."""

    def __init__(
        self,
        command: str | Sequence[str] = "arduino-cli",
        *,
        env: Mapping[str, str] | None = None,
        device_id: str = "-",
    ) -> None:
        self.command = [command] if isinstance(command, str) else list(command)
        self.env = dict(env or {})
        self.device_id = device_id

    def describe(self) -> str:
        """The command as text (for build records and logs)."""
        return " ".join(self.command)

    def _run(
        self,
        args: Iterable[str],
        deadline: Deadline,
        on_line: Callable[[str], None] | None = None,
    ) -> ProcessResult:
        argv = [*self.command, *args]
        env = {**os.environ, **self.env} if self.env else None
        log.debug("device=%s run %s", self.device_id, " ".join(argv))
        return run(argv, deadline, env=env, on_line=on_line)

    def version(self, deadline: Deadline) -> str:
        """The tool's version string ("1.1.1"); raises tool_missing / timeout."""
        res = self._run(["version", "--format", "json"], deadline)
        obj = extract_json(res.stdout) or {}
        version = json_str(obj.get("VersionString")) or json_str(obj.get("version"))
        if not version:
            m = re.search(r"Version:\s*(\S+)", res.stdout)
            version = m.group(1) if m else ""
        if res.returncode != 0 or not version:
            raise InfraError(
                "tool_failed",
                "arduino-cli version gave no version",
                returncode=res.returncode,
                stdout_tail=text_tail(res.stdout, 500),
                stderr_tail=text_tail(res.stderr, 500),
            )
        return version

    def compile(
        self,
        sketch_dir: Path,
        fqbn: str,
        build_path: Path,
        deadline: Deadline,
        *,
        build_cache_path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> CompileResult:
        """Compile ``sketch_dir`` into ``build_path``. Returns a successful result; a failure
        raises the classified error (:func:`classify_compile_failure`)."""
        args = ["compile", "--fqbn", fqbn, "--format", "json", "--build-path", str(build_path)]
        if build_cache_path is not None:
            args += ["--build-cache-path", str(build_cache_path)]
        args.append(str(sketch_dir))
        res = self._run(args, deadline, on_line)
        result = parse_compile(res.stdout, res.stderr, res.returncode)
        if not result.success:
            raise classify_compile_failure(result)
        return result

    def upload(
        self,
        port: str,
        fqbn: str,
        input_dir: Path,
        deadline: Deadline,
        *,
        on_line: Callable[[str], None] | None = None,
    ) -> UploadResult:
        """Upload the build in ``input_dir`` to ``port`` (verbose, so the touch and port lines
        are logged). Raises the classified error on failure."""
        args = ["upload", "-p", port, "--fqbn", fqbn, "--input-dir", str(input_dir),
                "--format", "json", "-v"]
        res = self._run(args, deadline, on_line)
        return parse_upload(res.stdout, res.stderr, res.returncode)

    def board_list(self, deadline: Deadline) -> list[BoardPort]:
        """Ports arduino-cli sees (used by doctor; discovery itself uses pyserial)."""
        res = self._run(["board", "list", "--format", "json"], deadline)
        if res.returncode != 0:
            raise InfraError("tool_failed", "arduino-cli board list failed",
                             returncode=res.returncode, stderr_tail=text_tail(res.stderr, 500))
        return parse_board_list(res.stdout)

    def core_list(self, deadline: Deadline) -> dict[str, str]:
        """Installed cores: ``{id: version}`` (1.x ``{"platforms": [...]}`` or 0.x array)."""
        res = self._run(["core", "list", "--format", "json"], deadline)
        value = extract_json(res.stdout, (dict, list))
        items = json_list(value.get("platforms")) if isinstance(value, dict) else json_list(value)
        out = {}
        for item in items:
            item = json_dict(item)
            pid = json_str(item.get("id"))
            version = (
                json_str(item.get("installed_version"))
                or json_str(item.get("installed"))
                or json_str(item.get("version"))
            )
            if pid:
                out[pid] = version
        return out

    def lib_list(self, deadline: Deadline) -> dict[str, str]:
        """Installed libraries: ``{name: version}`` (1.x ``{"installed_libraries": [...]}``
        or 0.x array of ``{"library": {...}}``)."""
        res = self._run(["lib", "list", "--format", "json"], deadline)
        value = extract_json(res.stdout, (dict, list))
        items = (
            json_list(value.get("installed_libraries")) if isinstance(value, dict)
            else json_list(value)
        )
        out = {}
        for item in items:
            lib = json_dict(json_dict(item).get("library")) or json_dict(item)
            name = json_str(lib.get("name"))
            if name:
                out[name] = json_str(lib.get("version"))
        return out
