"""The arduino-cli adapter: every call with ``--format json`` through :func:`hal.process.run`.

Why a thin adapter and not a wrapper library: the one maintained wrapper on PyPI,
``pyduinocli`` (0.35.0, Feb 2024), runs arduino-cli with a plain ``subprocess.Popen`` and no
timeout, cannot kill the tool's process group (gcc, bossac) on cancel, and returns arduino-cli's
JSON as-is, so it neither tolerates the differences between 0.29-0.35 and 1.x (bare array vs
``detected_ports``, error JSON on stderr, text trailing the JSON, missing keys) nor classifies
link errors as fit errors. Those are exactly the things this module is for, and the command
lines themselves are a handful of flags.

Formats follow ``shared/reference/arduino-cli.md``: every key is optional; a fatal error in JSON
mode is ``{"error": ..., "output": {...}}`` on stderr; plain text may trail the JSON; the
"Sketch uses ..." / "Global variables use ..." lines are the size fallback; on the Nano 33 BLE an
oversized model fails at link time ("region `RAM' overflowed by N bytes"), which is a
``FitError("fit_link")`` carrying the numbers, never a generic compile failure.

:class:`BuildSlot` is the persistent build path per board, device and template version with a
record of the last successful build, so an identical model, board and template is not compiled
again and only the model file changes between installs (arduino-cli's cache stays warm).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hal.deadline import Deadline
from hal.errors import DeviceError, FitError, HalError, InfraError, InputError
from hal.process import ProcessResult, run

log = logging.getLogger(__name__)

# How many candidate positions we try when looking for JSON in hostile output.
_MAX_JSON_ATTEMPTS = 2000
_TAIL = 3000

PERMISSION_FIX = (
    "add your user to the 'dialout' group (sudo usermod -aG dialout $USER, then log in again) "
    "or install a udev rule giving the board's port mode 0666 "
    '(SUBSYSTEM=="tty", ATTRS{idVendor}=="2341", MODE="0666")'
)


def _tail(text: str, limit: int = _TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


# ------------------------------------------------------------------------------- JSON


def extract_json(text: str, kinds: tuple[type, ...] = (dict,)) -> Any | None:
    """The first JSON value of a type in ``kinds`` that starts at the beginning of a line of
    ``text``; text before or after it (progress bars, issue 1698's trailing output) is ignored.
    Returns None when there is none. Bounded work on hostile input."""
    if not text:
        return None
    decoder = json.JSONDecoder()
    attempts = 0
    pos = 0
    n = len(text)
    while pos < n and attempts < _MAX_JSON_ATTEMPTS:
        # candidate: first non-blank character of this line
        line_end = text.find("\n", pos)
        if line_end < 0:
            line_end = n
        start = pos
        while start < line_end and text[start] in " \t\r":
            start += 1
        if start < line_end and text[start] in "{[":
            attempts += 1
            try:
                value, _end = decoder.raw_decode(text, start)
            except (ValueError, RecursionError):
                value = None
            if isinstance(value, kinds):
                return value
        pos = line_end + 1
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    return None


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------------------- compile

_SKETCH_USES = re.compile(
    r"Sketch uses (\d+) bytes \((\d+)%\) of program storage space\. Maximum is (\d+) bytes"
)
_SKETCH_USES_NOMAX = re.compile(r"Sketch uses (\d+) bytes")
_GLOBALS_USE = re.compile(
    r"Global variables use (\d+) bytes \((\d+)%\) of dynamic memory, leaving (-?\d+) bytes "
    r"for local variables\. Maximum is (\d+) bytes"
)
_GLOBALS_USE_NOMAX = re.compile(r"Global variables use (\d+) bytes of dynamic memory")
_REGION_OVERFLOW = re.compile(
    r"region [`'\"\u2018]?(?P<region>[A-Za-z0-9_.]+)[`'\"\u2019]? overflowed"
    r"(?: by (?P<bytes>\d+) bytes?)?"
)
_LOCATION_BACKWARDS = re.compile(
    r"cannot move location counter backwards(?: \(from (?P<frm>[0-9a-fA-Fx]+) to "
    r"(?P<to>[0-9a-fA-Fx]+)\))?"
)
_SECTION_EXCEEDS = re.compile(r"(?P<section>text|data) section exceeds available space in board")
_MISSING_HEADER = re.compile(r"fatal error: ([\w./-]+\.h): No such file or directory")
_PLATFORM_MISSING = re.compile(r"[Pp]latform '([^']+)' (?:not found|is not installed)")


@dataclass(frozen=True)
class CompileResult:
    """What one compile produced. Sizes are None when arduino-cli did not report them."""

    success: bool
    text_bytes: int | None = None
    text_max: int | None = None
    data_bytes: int | None = None
    data_max: int | None = None
    sizes_from: str | None = None  # "json" (executable_sections_size) or "text" (size lines)
    build_path: str | None = None
    used_libraries: tuple[dict, ...] = ()
    platform: dict = field(default_factory=dict)
    compiler_out: str = ""
    compiler_err: str = ""
    error: str = ""  # the JSON "error" (stdout or stderr), if any
    stderr: str = ""
    returncode: int = 0
    json_found: bool = False

    def sizes(self) -> dict[str, int | None]:
        """The four size numbers, for reports and errors."""
        return {
            "text_bytes": self.text_bytes,
            "text_max": self.text_max,
            "data_bytes": self.data_bytes,
            "data_max": self.data_max,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["used_libraries"] = list(self.used_libraries)
        for key in ("compiler_out", "compiler_err", "stderr"):
            data[key] = _tail(data[key], 1000)
        return data


def parse_compile(stdout: str, stderr: str = "", returncode: int = 0) -> CompileResult:
    """Parse ``arduino-cli compile --format json`` output of any version 0.29-1.x.

    Never raises: an unparsable output becomes ``success`` from the exit code alone, with
    sizes from the "Sketch uses" lines when present."""
    obj = extract_json(stdout) or {}
    err_obj = extract_json(stderr) or {}
    builder = _as_dict(obj.get("builder_result"))
    compiler_out = _as_str(obj.get("compiler_out"))
    compiler_err = _as_str(obj.get("compiler_err"))
    error = _as_str(obj.get("error")) or _as_str(err_obj.get("error"))
    err_output = _as_dict(err_obj.get("output"))
    if not compiler_out and not compiler_err and err_output:
        compiler_out = _as_str(err_output.get("stdout"))
        compiler_err = _as_str(err_output.get("stderr"))

    success_flag = obj.get("success")
    if isinstance(success_flag, bool):
        success = success_flag and returncode == 0
    else:
        success = returncode == 0 and not error

    text_b = text_max = data_b = data_max = None
    sizes_from = None
    for section in _as_list(builder.get("executable_sections_size")):
        section = _as_dict(section)
        name = section.get("name")
        size = _as_int(section.get("size"))
        max_size = _as_int(section.get("max_size"))
        if name == "text":
            text_b, text_max = size if size is not None else 0, max_size
            sizes_from = "json"
        elif name == "data":
            data_b, data_max = size if size is not None else 0, max_size
            sizes_from = "json"
    if sizes_from is None:
        # Fallback: the sizer's text lines (in compiler_out, or the raw stdout of a text run).
        text = "\n".join((compiler_out, stdout if not obj else ""))
        m = _SKETCH_USES.search(text)
        if m:
            text_b, text_max = int(m.group(1)), int(m.group(3))
        elif (m := _SKETCH_USES_NOMAX.search(text)) is not None:
            text_b = int(m.group(1))
        g = _GLOBALS_USE.search(text)
        if g:
            data_b, data_max = int(g.group(1)), int(g.group(4))
        elif (g := _GLOBALS_USE_NOMAX.search(text)) is not None:
            data_b = int(g.group(1))
        if text_b is not None or data_b is not None:
            sizes_from = "text"

    return CompileResult(
        success=success,
        text_bytes=text_b,
        text_max=text_max,
        data_bytes=data_b,
        data_max=data_max,
        sizes_from=sizes_from,
        build_path=_as_str(builder.get("build_path")) or None,
        used_libraries=tuple(
            {k: v for k, v in _as_dict(lib).items() if k in ("name", "version", "install_dir")}
            for lib in _as_list(builder.get("used_libraries"))
        ),
        platform={
            k: v
            for k, v in _as_dict(builder.get("build_platform")).items()
            if k in ("id", "version")
        },
        compiler_out=compiler_out,
        compiler_err=compiler_err,
        error=error,
        stderr=stderr,
        returncode=returncode,
        json_found=bool(obj) or bool(err_obj),
    )


def classify_compile_failure(result: CompileResult) -> HalError:
    """The classified error of a failed compile: link-region overflows and the sizer's
    "section exceeds available space" are fit errors with every number; a missing core or
    library is infrastructure; anything else is ``compile_failed``."""
    text = "\n".join((result.compiler_err, result.compiler_out, result.error, result.stderr))
    sizes = {k: v for k, v in result.sizes().items() if v is not None}
    regions = [
        {"region": m.group("region"), "overflow_bytes": int(m.group("bytes"))}
        if m.group("bytes")
        else {"region": m.group("region"), "overflow_bytes": None}
        for m in _REGION_OVERFLOW.finditer(text)
    ]
    if regions:
        first = regions[0]
        by = f" by {first['overflow_bytes']} bytes" if first["overflow_bytes"] is not None else ""
        line = _first_line_with(text, "overflowed")
        return FitError(
            "fit_link",
            f"the linker ran out of {first['region']}{by}: the model or its arena is too big "
            "for the board",
            region=first["region"],
            overflow_bytes=first["overflow_bytes"],
            regions=regions,
            linker_line=line,
            **sizes,
        )
    m = _LOCATION_BACKWARDS.search(text)
    if m:
        frm = _hex(m.group("frm"))
        to = _hex(m.group("to"))
        overflow = frm - to if frm is not None and to is not None else None
        return FitError(
            "fit_link",
            "the linker could not place the sections (cannot move location counter backwards)"
            + (f": {overflow} bytes too many" if overflow is not None else ""),
            region="RAM",
            overflow_bytes=overflow,
            location_from=frm,
            location_to=to,
            linker_line=_first_line_with(text, "location counter"),
            **sizes,
        )
    m = _SECTION_EXCEEDS.search(text)
    if m or "Sketch too big" in text or "Not enough memory" in text:
        section = m.group("section") if m else ("data" if "Not enough memory" in text else "text")
        code = "fit_flash" if section == "text" else "fit_ram"
        return FitError(
            code,
            f"the build's {section} section exceeds the board's space"
            + _numbers_suffix(result, section),
            section=section,
            **sizes,
        )
    m = _PLATFORM_MISSING.search(text)
    if m:
        return InfraError(
            "tool_missing",
            f"the Arduino core {m.group(1)} is not installed",
            fix=f"arduino-cli core install {':'.join(m.group(1).split(':')[:2])}",
            error=_tail(result.error, 500),
        )
    m = _MISSING_HEADER.search(text)
    if m:
        return InfraError(
            "tool_missing",
            f"a library header is missing: {m.group(1)}",
            header=m.group(1),
            fix="install the library the firmware template's README names "
            "(arduino-cli lib install ...)",
            compiler_err=_tail(result.compiler_err, 1500),
        )
    if result.returncode not in (0, 1):
        return InfraError(
            "tool_failed",
            f"arduino-cli compile exited with status {result.returncode}"
            + (f": {result.error}" if result.error else ""),
            returncode=result.returncode,
            error=_tail(result.error, 500),
            stderr_tail=_tail(result.stderr, 1500),
        )
    return InputError(
        "compile_failed",
        "the sketch did not compile" + (f": {result.error}" if result.error else ""),
        error=_tail(result.error, 500),
        compiler_err=_tail(result.compiler_err, 2000),
        stderr_tail=_tail(result.stderr, 1500),
        returncode=result.returncode,
    )


def _hex(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text.lower().removeprefix("0x"), 16)
    except ValueError:
        return None


def _numbers_suffix(result: CompileResult, section: str) -> str:
    used, limit = (
        (result.text_bytes, result.text_max) if section == "text"
        else (result.data_bytes, result.data_max)
    )
    if used is not None and limit is not None:
        return f": {used} B > {limit} B"
    return ""


def _first_line_with(text: str, needle: str) -> str:
    for line in text.splitlines():
        if needle in line:
            return line.strip()[:300]
    return ""


# ----------------------------------------------------------------------------- upload


@dataclass(frozen=True)
class UploadResult:
    """What one upload produced. ``updated_port`` is None when arduino-cli did not say."""

    updated_port: str | None
    stdout: str = ""
    stderr: str = ""
    tool_output: str = ""  # the uploader's own output (the JSON "stdout" field or raw text)


def parse_upload(stdout: str, stderr: str = "", returncode: int = 0) -> UploadResult:
    """Parse ``arduino-cli upload --format json``: ``{stdout, stderr, updated_upload_port}``,
    every key optional; ``updated_upload_port`` is a port object (1.x) or an address string.
    A failed upload raises the classified error (see :func:`classify_upload_failure`)."""
    obj = extract_json(stdout) or {}
    port = obj.get("updated_upload_port")
    address: str | None = None
    if isinstance(port, dict):
        address = _as_str(port.get("address")) or None
    elif isinstance(port, str) and port:
        address = port
    if address is None:
        # text mode / 0.x without the key: "New upload port: /dev/ttyACM0 (serial)"
        m = re.search(r"New upload port: (\S+)", "\n".join((_as_str(obj.get("stdout")), stdout)))
        if m:
            address = m.group(1)
    tool_out = "\n".join(x for x in (_as_str(obj.get("stdout")), _as_str(obj.get("stderr"))) if x)
    result = UploadResult(address, stdout, stderr, tool_out or stdout)
    if returncode != 0:
        raise classify_upload_failure(result, returncode)
    return result


def classify_upload_failure(result: UploadResult, returncode: int) -> HalError:
    """A failed upload: permission denied (with the fix), no device (upload_failed with the
    hint), bad arguments (infrastructure), else upload_failed with the output's tail."""
    err_obj = extract_json(result.stderr) or {}
    error = _as_str(err_obj.get("error"))
    text = "\n".join((result.stdout, result.stderr, error))
    detail = {
        "returncode": returncode,
        "error": _tail(error, 500),
        "output_tail": _tail(text, 1500),
    }
    if "ermission denied" in text:
        return DeviceError(
            "permission_denied", "no permission to open the board's port", fix=PERMISSION_FIX,
            **detail,
        )
    if returncode not in (0, 1):
        return InfraError(
            "tool_failed", f"arduino-cli upload exited with status {returncode}", **detail
        )
    m = re.search(r"SAM-BA operation failed: ([^\n]+)", text)
    if m and "No device found" not in text:  # the bootloader answered, then refused
        return DeviceError("upload_failed", f"the board's bootloader refused the upload: "
                           f"{m.group(1).strip()[:300]}", bootloader=m.group(1).strip()[:300],
                           **detail)
    m = re.search(r"No device found on (\S+)", text)
    if m:
        return DeviceError(
            "upload_failed",
            f"the uploader found no board on {m.group(1)} (did it leave its bootloader, "
            "or was it unplugged?)",
            port=m.group(1),
            **detail,
        )
    return DeviceError(
        "upload_failed", "the upload failed" + (f": {error}" if error else ""), **detail
    )


# ------------------------------------------------------------------------- board list


@dataclass(frozen=True)
class BoardPort:
    """One port of ``arduino-cli board list``."""

    address: str
    protocol: str = ""
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    boards: tuple[tuple[str, str], ...] = ()  # (name, fqbn)


def parse_board_list(stdout: str) -> list[BoardPort]:
    """Parse ``board list --format json`` of 1.x (``{"detected_ports": [...]}``), 0.19-0.35
    (a bare array of ``{matching_boards, port}``) and before 0.19 (a flat array with
    ``address``, ``boards``, ``serial_number``). Malformed entries are skipped."""
    value = extract_json(stdout, (dict, list))
    if isinstance(value, dict):
        items = _as_list(value.get("detected_ports") or value.get("ports"))
    elif isinstance(value, list):
        items = value
    else:
        return []
    out = []
    for item in items:
        item = _as_dict(item)
        port = _as_dict(item.get("port"))
        if port:  # 0.19+
            props = _as_dict(port.get("properties"))
            address = _as_str(port.get("address"))
            protocol = _as_str(port.get("protocol"))
            serial = (
                _as_str(props.get("serialNumber"))
                or _as_str(props.get("serial"))
                or _as_str(port.get("hardware_id"))
                or None
            )
            vid, pid = _as_int(props.get("vid")), _as_int(props.get("pid"))
            boards_raw = _as_list(item.get("matching_boards"))
        else:  # pre-0.19 flat form
            address = _as_str(item.get("address"))
            protocol = _as_str(item.get("protocol"))
            serial = _as_str(item.get("serial_number")) or None
            boards_raw = _as_list(item.get("boards"))
            first = _as_dict(boards_raw[0]) if boards_raw else {}
            vid, pid = _as_int(first.get("vid")), _as_int(first.get("pid"))
        if not address:
            continue
        boards = tuple(
            (_as_str(_as_dict(b).get("name")), _as_str(_as_dict(b).get("fqbn")))
            for b in boards_raw
            if isinstance(b, dict)
        )
        out.append(BoardPort(address, protocol, vid, pid, serial, boards))
    return out


def parse_board_watch(text: str) -> list[tuple[str, BoardPort]]:
    """Parse the event stream of ``board list --watch --format json`` (one JSON object per
    event: ``{"type": "add"|"remove", ...}`` with the port in the 0.18 flat form or, later,
    under ``port``). Returns ``(type, port)`` pairs; malformed events are skipped."""
    decoder = json.JSONDecoder()
    events = []
    pos = 0
    attempts = 0
    while attempts < _MAX_JSON_ATTEMPTS:
        start = text.find("{", pos)
        if start < 0:
            break
        attempts += 1
        try:
            obj, pos = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            pos = start + 1
            continue
        if not isinstance(obj, dict) or obj.get("type") not in ("add", "remove"):
            continue
        ports = parse_board_list(json.dumps([obj]))
        if ports:
            events.append((obj["type"], ports[0]))
    return events


# ---------------------------------------------------------------------------- adapter


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
        version = _as_str(obj.get("VersionString")) or _as_str(obj.get("version"))
        if not version:
            m = re.search(r"Version:\s*(\S+)", res.stdout)
            version = m.group(1) if m else ""
        if res.returncode != 0 or not version:
            raise InfraError(
                "tool_failed",
                "arduino-cli version gave no version",
                returncode=res.returncode,
                stdout_tail=_tail(res.stdout, 500),
                stderr_tail=_tail(res.stderr, 500),
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
                             returncode=res.returncode, stderr_tail=_tail(res.stderr, 500))
        return parse_board_list(res.stdout)

    def core_list(self, deadline: Deadline) -> dict[str, str]:
        """Installed cores: ``{id: version}`` (1.x ``{"platforms": [...]}`` or 0.x array)."""
        res = self._run(["core", "list", "--format", "json"], deadline)
        value = extract_json(res.stdout, (dict, list))
        items = _as_list(value.get("platforms")) if isinstance(value, dict) else _as_list(value)
        out = {}
        for item in items:
            item = _as_dict(item)
            pid = _as_str(item.get("id"))
            version = (
                _as_str(item.get("installed_version"))
                or _as_str(item.get("installed"))
                or _as_str(item.get("version"))
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
            _as_list(value.get("installed_libraries")) if isinstance(value, dict)
            else _as_list(value)
        )
        out = {}
        for item in items:
            lib = _as_dict(_as_dict(item).get("library")) or _as_dict(item)
            name = _as_str(lib.get("name"))
            if name:
                out[name] = _as_str(lib.get("version"))
        return out


# -------------------------------------------------------------------------- build slot

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(name: str) -> threading.Lock:
    """The in-process lock paired with the build-sharing file lock ``name``."""
    with _process_locks_guard:
        return _process_locks.setdefault(name, threading.Lock())


class BuildSlot:
    """A persistent sketch + build directory for one board profile, device and template
    version, with a record of its last successful build.

    Layout: ``<root>/<board>/<device>/<template_version>/{<sketch_name>/, build/,
    last_build.json}``. Keeping the folder per device lets boards compile in parallel; keeping
    it across installs lets arduino-cli reuse every object file but the model's."""

    RECORD = "last_build.json"

    def __init__(
        self, root: Path, board: str, device_id: str, template_version: str, sketch_name: str
    ) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) or "_"
        self.dir = Path(root) / board / safe / re.sub(r"[^A-Za-z0-9_.-]", "_", template_version)
        self.sketch_dir = self.dir / sketch_name
        self.build_path = self.dir / "build"
        self.sketch_name = sketch_name
        self.sketch_dir.mkdir(parents=True, exist_ok=True)
        self.build_path.mkdir(parents=True, exist_ok=True)

    @property
    def binary(self) -> Path:
        """The image arduino-cli writes for the sketch."""
        return self.build_path / f"{self.sketch_name}.ino.bin"

    def sketch_digest(self) -> str:
        """sha256 over the sketch folder's files (names and bytes): any rendered change --
        labels, vectors, arena -- makes a different build."""
        h = hashlib.sha256()
        for path in sorted(p for p in self.sketch_dir.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(self.sketch_dir)).encode())
            h.update(b"\0")
            h.update(path.read_bytes())
            h.update(b"\0")
        return h.hexdigest()

    def _record_path(self) -> Path:
        return self.dir / self.RECORD

    def cached(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The last build's record if it was built from exactly ``key`` and its image is still
        there; else None."""
        try:
            record = json.loads(self._record_path().read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key or not self.binary.exists():
            return None
        return record

    def invalidate(self) -> None:
        """Forget the last build (called before a compile starts, so that a compile killed
        half-way can never be mistaken for a finished one)."""
        with contextlib.suppress(FileNotFoundError):
            self._record_path().unlink()

    def save(self, key: dict[str, Any], result: CompileResult) -> None:
        """Record a successful build of ``key``."""
        record = {"key": key, "result": result.to_dict()}
        tmp = self._record_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, self._record_path())


    # -- sharing between devices ------------------------------------------------------
    # Boards of one kind running one model need one build: the first device to compile a key
    # publishes its image, the others (in parallel: after waiting on the key's lock) adopt it.

    SHARED_KEEP = 20  # newest shared builds kept per board and template

    def _shared_root(self) -> Path:
        # <root>/shared/<board>/<template>: outside every device's folder
        return self.dir.parents[2] / "shared" / self.dir.parents[1].name / self.dir.name

    @staticmethod
    def key_id(key: dict[str, Any]) -> str:
        """A short, stable name for a build key."""
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def _outputs(self, directory: Path) -> list[Path]:
        return sorted(p for p in directory.glob(f"{self.sketch_name}.ino.*") if p.is_file()
                      and not p.name.endswith(".tmp"))

    def outputs(self) -> list[Path]:
        """The build's output files (the ``.bin`` arduino-cli uploads, ``.elf``, ``.hex``...)."""
        return self._outputs(self.build_path)

    @contextlib.contextmanager
    def shared_lock(self, key: dict[str, Any], deadline: Deadline) -> Iterator[None]:
        """Hold the key's lock (a file lock, so other processes are excluded too), waiting
        within ``deadline``; raises timeout / cancelled like every wait."""
        root = self._shared_root()
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{self.key_id(key)}.lock"
        # Devices of one process (the bridge) queue on a thread lock, which hands over the
        # moment the compiling device lets go; the file lock (polled: flock cannot wait with
        # a deadline) then only ever waits for other processes.
        local = _process_lock(str(path))
        while not local.acquire(timeout=max(0.001, deadline.poll_timeout(0.05))):
            if deadline.cancelled or deadline.expired:
                deadline.check()
        try:
            with open(path, "a+b") as fh:
                while True:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline.wait(0.05) or deadline.expired:
                            deadline.check()
                try:
                    yield
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        finally:
            local.release()

    def adopt_shared(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """Copy another device's finished build of ``key`` into this slot; its record, or
        None when there is none."""
        src = self._shared_root() / self.key_id(key)
        try:
            record = json.loads((src / self.RECORD).read_text())
        except (OSError, ValueError):
            return None
        files = self._outputs(src)
        if not isinstance(record, dict) or record.get("key") != key or not any(
                f.name.endswith(".bin") for f in files):
            return None
        self.invalidate()
        for f in files:
            tmp = self.build_path / f"{f.name}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, self.build_path / f.name)
        self.save(key, result_from_record(record))
        return record

    def publish(self, key: dict[str, Any]) -> None:
        """Offer this slot's build of ``key`` to other devices (never raises: sharing is an
        optimisation)."""
        try:
            root = self._shared_root()
            dest = root / self.key_id(key)
            tmp = root / f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in self._outputs(self.build_path):
                shutil.copyfile(f, tmp / f.name)
            shutil.copyfile(self._record_path(), tmp / self.RECORD)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            entries = sorted((p for p in root.iterdir() if p.is_dir()
                              and not p.name.startswith(".")),
                             key=lambda p: p.stat().st_mtime, reverse=True)
            for old in entries[self.SHARED_KEEP:]:
                shutil.rmtree(old, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    (root / f"{old.name}.lock").unlink()
        except OSError as exc:
            log.warning("could not share build %s: %s", self.key_id(key), exc)


def result_from_record(record: dict[str, Any]) -> CompileResult:
    """Rebuild the :class:`CompileResult` stored by :meth:`BuildSlot.save`."""
    data = _as_dict(record.get("result"))
    fields = CompileResult.__dataclass_fields__
    clean = {k: v for k, v in data.items() if k in fields}
    clean["used_libraries"] = tuple(_as_list(clean.get("used_libraries")))
    clean.setdefault("success", True)
    return CompileResult(**clean)


# ------------------------------------------------------------------------ verified image


class VerifiedStore:
    """The last build output that booted *verified* on one device, kept so that a new
    firmware which does not run (``alloc_failed``, ``boot_silent``) can be replaced by the
    previous working one with the same ``arduino-cli upload --input-dir``.

    Layout: ``<device_dir>/verified/{<sketch>.ino.bin, ..., verified.json}``. The record
    names the model (``model_sha256``), ``arena_bytes``, ``template_version``, ``fqbn`` and
    the ``.bin``'s own sha256 (a damaged copy is never uploaded). It is replaced as a whole
    (a new folder renamed into place) and only after a verified boot."""

    RECORD = "verified.json"

    def __init__(self, device_dir: Path) -> None:
        self.dir = Path(device_dir) / "verified"
        self._old = Path(device_dir) / "verified.old"

    def _current(self) -> Path:
        # A crash between the two renames of save() leaves only the old folder: still valid.
        return self.dir if self.dir.exists() or not self._old.exists() else self._old

    def load(self) -> tuple[Path, dict[str, Any]] | None:
        """``(input_dir, record)`` of the last verified image, or None when there is none
        (first install on this device). Raises ``ValueError`` naming the damage when it is
        there but incomplete or altered: such an image is never uploaded."""
        directory = self._current()
        try:
            record = json.loads((directory / self.RECORD).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"its record {directory / self.RECORD} is unreadable: "
                             f"{exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("model_sha256"), str):
            raise ValueError(f"its record {directory / self.RECORD} names no model")
        bins = sorted(directory.glob("*.ino.bin"))
        if len(bins) != 1:
            raise ValueError(f"{directory} holds {len(bins)} .ino.bin images, not one")
        try:
            actual = _file_sha256(bins[0])
        except OSError as exc:
            raise ValueError(f"{bins[0]} is unreadable: {exc}") from None
        if actual != record.get("image_sha256"):
            raise ValueError(f"{bins[0]} does not match its recorded sha256 "
                             f"({actual[:16]} != {str(record.get('image_sha256'))[:16]})")
        return directory, record

    def save(self, files: Iterable[Path], record: dict[str, Any]) -> None:
        """Keep ``files`` (a build's outputs, one ``.bin`` among them) as the verified image
        described by ``record``. Raises OSError / ValueError on failure."""
        files = list(files)
        bins = [f for f in files if f.name.endswith(".ino.bin")]
        if len(bins) != 1:
            raise ValueError(f"expected one .ino.bin among the build outputs, got {len(bins)}")
        parent = self.dir.parent
        tmp = parent / f".verified.{os.getpid()}.{threading.get_ident()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for f in files:
                shutil.copyfile(f, tmp / f.name)
            full = {**record, "image": bins[0].name,
                    "image_sha256": _file_sha256(tmp / bins[0].name)}
            (tmp / self.RECORD).write_text(json.dumps(full, sort_keys=True))
            shutil.rmtree(self._old, ignore_errors=True)
            if self.dir.exists():
                os.replace(self.dir, self._old)
            os.replace(tmp, self.dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self._old, ignore_errors=True)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()
