"""What arduino-cli prints, parsed and classified: its JSON (0.29-0.35 and 1.x), the plain
size lines, link and upload failures as classified :class:`~hal.errors.HalError`.

Pure functions of the tool's output, no process: :mod:`hal.arduino.cli` runs the tool and
hands its output here. Formats follow ``shared/reference/arduino-cli.md``: every key is
optional; a fatal error in JSON mode is ``{"error": ..., "output": {...}}`` on stderr; plain
text may trail the JSON; the "Sketch uses ..." / "Global variables use ..." lines are the size
fallback; on the Nano 33 BLE an oversized model fails at link time ("region `RAM' overflowed by
N bytes"), which is a ``FitError("fit_link")`` carrying the numbers.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from hal.errors import DeviceError, FitError, HalError, InfraError, InputError

# How many candidate positions we try when looking for JSON in hostile output.
_MAX_JSON_ATTEMPTS = 2000
_TAIL = 3000

PERMISSION_FIX = (
    "add your user to the 'dialout' group (sudo usermod -aG dialout $USER, then log in again) "
    "or install a udev rule giving the board's port mode 0666 "
    '(SUBSYSTEM=="tty", ATTRS{idVendor}=="2341", MODE="0666")'
)


def text_tail(text: str, limit: int = _TAIL) -> str:
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


def json_int(value: Any) -> int | None:
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


def json_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def json_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def json_list(value: Any) -> list:
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
            data[key] = text_tail(data[key], 1000)
        return data


def parse_compile(stdout: str, stderr: str = "", returncode: int = 0) -> CompileResult:
    """Parse ``arduino-cli compile --format json`` output of any version 0.29-1.x.

    Never raises: an unparsable output becomes ``success`` from the exit code alone, with
    sizes from the "Sketch uses" lines when present."""
    obj = extract_json(stdout) or {}
    err_obj = extract_json(stderr) or {}
    builder = json_dict(obj.get("builder_result"))
    compiler_out = json_str(obj.get("compiler_out"))
    compiler_err = json_str(obj.get("compiler_err"))
    error = json_str(obj.get("error")) or json_str(err_obj.get("error"))
    err_output = json_dict(err_obj.get("output"))
    if not compiler_out and not compiler_err and err_output:
        compiler_out = json_str(err_output.get("stdout"))
        compiler_err = json_str(err_output.get("stderr"))

    success_flag = obj.get("success")
    if isinstance(success_flag, bool):
        success = success_flag and returncode == 0
    else:
        success = returncode == 0 and not error

    text_b = text_max = data_b = data_max = None
    sizes_from = None
    for section in json_list(builder.get("executable_sections_size")):
        section = json_dict(section)
        name = section.get("name")
        size = json_int(section.get("size"))
        max_size = json_int(section.get("max_size"))
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
        build_path=json_str(builder.get("build_path")) or None,
        used_libraries=tuple(
            {k: v for k, v in json_dict(lib).items() if k in ("name", "version", "install_dir")}
            for lib in json_list(builder.get("used_libraries"))
        ),
        platform={
            k: v
            for k, v in json_dict(builder.get("build_platform")).items()
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
            error=text_tail(result.error, 500),
        )
    m = _MISSING_HEADER.search(text)
    if m:
        return InfraError(
            "tool_missing",
            f"a library header is missing: {m.group(1)}",
            header=m.group(1),
            fix="install the library the firmware template's README names "
            "(arduino-cli lib install ...)",
            compiler_err=text_tail(result.compiler_err, 1500),
        )
    if result.returncode not in (0, 1):
        return InfraError(
            "tool_failed",
            f"arduino-cli compile exited with status {result.returncode}"
            + (f": {result.error}" if result.error else ""),
            returncode=result.returncode,
            error=text_tail(result.error, 500),
            stderr_tail=text_tail(result.stderr, 1500),
        )
    return InputError(
        "compile_failed",
        "the sketch did not compile" + (f": {result.error}" if result.error else ""),
        error=text_tail(result.error, 500),
        compiler_err=text_tail(result.compiler_err, 2000),
        stderr_tail=text_tail(result.stderr, 1500),
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
        address = json_str(port.get("address")) or None
    elif isinstance(port, str) and port:
        address = port
    if address is None:
        # text mode / 0.x without the key: "New upload port: /dev/ttyACM0 (serial)"
        m = re.search(r"New upload port: (\S+)", "\n".join((json_str(obj.get("stdout")), stdout)))
        if m:
            address = m.group(1)
    tool_out = "\n".join(x for x in (json_str(obj.get("stdout")), json_str(obj.get("stderr"))) if x)
    result = UploadResult(address, stdout, stderr, tool_out or stdout)
    if returncode != 0:
        raise classify_upload_failure(result, returncode)
    return result


def classify_upload_failure(result: UploadResult, returncode: int) -> HalError:
    """A failed upload: permission denied (with the fix), no device (upload_failed with the
    hint), bad arguments (infrastructure), else upload_failed with the output's tail."""
    err_obj = extract_json(result.stderr) or {}
    error = json_str(err_obj.get("error"))
    text = "\n".join((result.stdout, result.stderr, error))
    detail = {
        "returncode": returncode,
        "error": text_tail(error, 500),
        "output_tail": text_tail(text, 1500),
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
        items = json_list(value.get("detected_ports") or value.get("ports"))
    elif isinstance(value, list):
        items = value
    else:
        return []
    out = []
    for item in items:
        item = json_dict(item)
        port = json_dict(item.get("port"))
        if port:  # 0.19+
            props = json_dict(port.get("properties"))
            address = json_str(port.get("address"))
            protocol = json_str(port.get("protocol"))
            serial = (
                json_str(props.get("serialNumber"))
                or json_str(props.get("serial"))
                or json_str(port.get("hardware_id"))
                or None
            )
            vid, pid = json_int(props.get("vid")), json_int(props.get("pid"))
            boards_raw = json_list(item.get("matching_boards"))
        else:  # pre-0.19 flat form
            address = json_str(item.get("address"))
            protocol = json_str(item.get("protocol"))
            serial = json_str(item.get("serial_number")) or None
            boards_raw = json_list(item.get("boards"))
            first = json_dict(boards_raw[0]) if boards_raw else {}
            vid, pid = json_int(first.get("vid")), json_int(first.get("pid"))
        if not address:
            continue
        boards = tuple(
            (json_str(json_dict(b).get("name")), json_str(json_dict(b).get("fqbn")))
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
