"""A stand-in ``arduino-cli`` for hardware-free runs (console script
``tinyml-fake-arduino-cli``, or ``python -m hal.virtual.arduino_cli``).

It accepts the command lines :mod:`hal.arduino.cli` runs and answers in arduino-cli's JSON
formats (``shared/reference/arduino-cli.md``): 1.x by default, 0.x shapes when
``TINYML_FAKE_ARDUINO_CLI_FORMAT`` is ``0.35``, ``0.29``... (``0.18`` for the pre-0.19 board
list).

* ``compile``: reads the rendered sketch with :func:`hal.virtual.sketch_reader.read_sketch` (a
  malformed sketch fails like a compiler error), writes the firmware image
  ``<build-path>/tinyml_sketch.ino.bin`` (:mod:`hal.virtual.image`), and reports the section
  sizes of the board profile's size model (:class:`hal.boards.SizeModel`, measured parts of
  real Cortex-M4 links plus the published mbed OS share) -- exactly what the fit check
  predicted. A build that does not fit fails at link time like the real Nano 33 BLE build
  ("region `RAM' overflowed by N bytes", exit 1).
* ``upload``: the real sequence -- a 1200-bps touch on the port, waiting for the bootloader to
  enumerate (same USB serial number, found through the virtual-ports directory), streaming the
  image with the bootloader protocol of :mod:`hal.virtual.board` while printing bossac-like
  progress, waiting for the sketch port and printing ``New upload port: X (serial)`` and the
  JSON with ``updated_upload_port``. It only uploads to virtual boards.
* ``board list``, ``core list``, ``lib list``, ``version``: for discovery checks and doctor
  (core 4.6.0, Arduino_TensorFlowLite 2.4.0-ALPHA, Arduino_OV767X 0.0.2: what
  ``firmware_templates/nano33ble/README.md`` names).
* a bootloader that answers but refuses (an image bigger than the flash) ends like bossac:
  ``SAM-BA operation failed: bootloader refused ...``, not "No device found".

Environment knobs (all optional): ``TINYML_VIRTUAL_PORTS`` (the virtual-ports directory),
``..._COMPILE_DELAY_S`` (simulated compile time), ``..._UPLOAD_KBPS`` (throttle the flash
write, like bossac's ~25 KB/s), ``..._EXTRA_FLASH`` / ``..._EXTRA_RAM`` (a heavier core),
``..._LIBRARIES`` (a folder of library folders ``lib list`` reports, with their
``library.properties``; default: the versions the template README names, installed as the
template's declaration headers),
``..._SIZER=1`` (fail with the sizer's "section exceeds available space" instead of the linker),
``..._TIMING=real`` (compile and upload take real-world durations: :data:`REAL_COMPILE_S` and
:data:`REAL_UPLOAD_KBPS`, unless the two knobs before set their own),
``..._NO_UPDATED_PORT=1`` (omit ``updated_upload_port``, issue 2287), ``..._COUNT_FILE`` (append
one line per compile run: lets tests count compiles), ``..._MISBEHAVE`` (``garbage_json``,
``huge_output``, ``hang``, ``trailing_text``, ``stderr_error``, ``no_sizes``); the prefix is
``TINYML_FAKE_ARDUINO_CLI``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import stat
import sys
import time
import zlib
from pathlib import Path

ENV = "TINYML_FAKE_ARDUINO_CLI"
VERSION_1X = "1.1.1"
FQBNS = ("arduino:mbed_nano:nano33ble", "arduino:mbed:nano33ble")
# Limits and sizes come from the board profile's size model (hal/boards.toml): the stand-in
# prints what the fit check predicted, so what the fit check accepts links here and fits the
# virtual board's flash, and what it refuses would fail here too.
TEXT_MAX = 983040  # = hal/boards.toml nano33ble flash_bytes / ram_bytes (checked by tests)
DATA_MAX = 262144
PAGE = 4096
VID = 0x2341
PIDS_SKETCH = (0x805A, 0x015A, 0x025A)  # as in hal/boards.toml
PIDS_BOOT = (0x005A,)
CHUNK = 4096
# What firmware_templates/nano33ble/README.md names (and shared/toolchains/nano33ble builds):
# the TFLM library's library.properties says 2.4.0-ALPHA at every commit, Arduino_OV767X's
# main branch still says 0.0.2. Their "install_dir" is the template's declaration headers
# (same signatures), so doctor's header checks run against the stand-in too;
# ..._LIBRARIES=DIR lists the library folders in DIR instead (each with library.properties).
LIBRARY = {"name": "Arduino_TensorFlowLite", "version": "2.4.0-ALPHA"}
LIBRARIES = (LIBRARY, {"name": "Arduino_OV767X", "version": "0.0.2"})
PLATFORM = {"id": "arduino:mbed_nano", "version": "4.6.0", "name": "Arduino Mbed OS Nano Boards"}
# Real-world durations for ..._TIMING=real. A warm compile of a changed model with a persistent
# build path costs "tens of seconds, mostly library discovery" (shared/reference/arduino-cli.md,
# arduino-cli issue 1996); 20 s is the low end. bossac writes the Nano 33 BLE's flash at about
# 25 KB/s (same reference: 85 KB in 3.3 s, 153 KB in 6.4 s, 524 KB in 20.6 s).
REAL_COMPILE_S = 20.0
REAL_UPLOAD_KBPS = 25.0


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"{ENV}_{name}", default)


def _format() -> tuple[int, int]:
    text = _env("FORMAT", "1.x")
    try:
        major, minor = text.split(".")[:2]
        return int(major), (int(minor) if minor.isdigit() else 99)
    except ValueError:
        return 1, 99


def _is_1x() -> bool:
    return _format()[0] >= 1


def _print_json(obj, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, indent=2) + "\n")
    stream.flush()


def _fatal(message: str, code: int = 1, out: str = "", err: str = "") -> int:
    """A fatal error in JSON mode: the object goes to stderr (arduino-cli.md)."""
    _print_json({"error": message, "output": {"stdout": out, "stderr": err}}, sys.stderr)
    return code


def _misbehave() -> str:
    return _env("MISBEHAVE")


def _hostile(command: str) -> int | None:
    """Hostile behaviours for adapter tests; None when not asked for."""
    mode = _misbehave()
    if mode == "hang":
        import subprocess  # only here: every run of the stand-in is a fresh interpreter

        # A child in the same process group proves the adapter kills the whole group.
        child = subprocess.Popen(["sleep", "300"])
        pid_file = _env("PID_FILE")
        if pid_file:
            Path(pid_file).write_text(f"{os.getpid()} {child.pid}\n")
        time.sleep(300)
        return 1
    if mode == "garbage_json":
        sys.stdout.write('{"compiler_out": "Sketch uses \x00\xff garbage, "success": tru\n')
        sys.stdout.write("}}}]][[{{ not json\n")
        return 0
    if mode == "huge_output":
        line = "warning: " + "x" * 200 + "\n"
        for _ in range(25_000):  # ~5 MB of tool chatter before the JSON
            sys.stdout.write(line)
    return None


# ------------------------------------------------------------------------------ version


def cmd_version(args) -> int:
    if _is_1x():
        _print_json({"Application": "arduino-cli", "VersionString": VERSION_1X,
                     "Commit": "stand-in", "Status": "stand-in", "Date": "2024-01-01T00:00:00Z"})
    else:
        major, minor = _format()
        _print_json({"Application": "arduino-cli", "VersionString": f"{major}.{minor}.0",
                     "Commit": "stand-in", "Status": "stand-in"})
    return 0


# ------------------------------------------------------------------------------ compile


def _sizes(config) -> tuple[int, int]:
    """text and data of the sketch: the board profile's size model (hal.boards.SizeModel),
    the same prediction the fit check makes, plus the ..._EXTRA_* knobs."""
    from hal.boards import get_profile, label_flash_bytes

    model = get_profile(config.board if config.board else "nano33ble").sizes
    if model is None:
        model = get_profile("nano33ble").sizes
    p = model.predict(model_bytes=len(config.model), ops=config.ops,
                      arena_bytes=config.arena_bytes, vector_bytes=config.vector_bytes,
                      label_bytes=label_flash_bytes(config.labels),
                      camera=config.input_source == "camera", input_dtype=config.input_dtype)
    return (p.text_bytes + int(_env("EXTRA_FLASH", "0") or 0),
            p.data_bytes + int(_env("EXTRA_RAM", "0") or 0))


def _size_lines(text: int, data: int) -> str:
    return (
        f"Sketch uses {text} bytes ({text * 100 // TEXT_MAX}%) of program storage space. "
        f"Maximum is {TEXT_MAX} bytes.\n"
        f"Global variables use {data} bytes ({data * 100 // DATA_MAX}%) of dynamic memory, "
        f"leaving {DATA_MAX - data} bytes for local variables. Maximum is {DATA_MAX} bytes.\n"
    )


def _compile_result(build_path: str, out: str, err: str, success: bool, sections=None,
                    error: str = "") -> dict:
    builder = {"build_path": build_path,
               "used_libraries": [{**LIBRARY, "install_dir": "/stand-in/libraries/"
                                   + LIBRARY["name"]}]}
    if sections:
        builder["executable_sections_size"] = sections
    major, minor = _format()
    builder["board_platform"] = {"id": PLATFORM["id"], "version": PLATFORM["version"]}
    builder["build_platform"] = {"id": PLATFORM["id"], "version": PLATFORM["version"]}
    if major >= 1:
        builder["build_properties"] = ["build.board=ARDUINO_NANO33BLE",
                                       "build.mcu=cortex-m4", "upload.maximum_size=983040",
                                       "upload.maximum_data_size=262144"]
    else:
        builder["diagnostics"] = []  # 0.x: the raw CompileResponse, extra keys possible
    result = {"compiler_out": out, "compiler_err": err, "builder_result": builder,
              "success": success}
    if major >= 1 or minor >= 34:
        result["upload_result"] = {}
    if error:
        result["error"] = error
    return result


def cmd_compile(args) -> int:
    count_file = _env("COUNT_FILE")
    if count_file:
        with open(count_file, "a") as fh:
            fh.write(f"{os.getpid()} {args.sketch}\n")
    hostile = _hostile("compile")
    if hostile is not None:
        return hostile
    if args.fqbn not in FQBNS:
        vendor_arch = ":".join(args.fqbn.split(":")[:2])
        return _fatal(f"Error during build: Platform '{vendor_arch}' not found: platform "
                      "not installed")
    if _misbehave() == "stderr_error":
        return _fatal("Error during build: exit status 1", err="internal tool error\n")
    sketch_dir = Path(args.sketch)
    if not sketch_dir.is_dir():
        return _fatal(f"Can't open sketch: no such file or directory: {sketch_dir}")
    delay = float(_env("COMPILE_DELAY_S", "0") or 0)
    if delay == 0 and _env("TIMING") == "real":
        delay = REAL_COMPILE_S
    if delay > 0:
        time.sleep(delay)
    build_path = Path(args.build_path) if args.build_path else sketch_dir / "build"
    build_path.mkdir(parents=True, exist_ok=True)

    from hal.arduino.sketch import SKETCH_NAME
    from hal.errors import InputError
    from hal.virtual.sketch_reader import read_sketch

    banner = f"Using board 'nano33ble' from platform in folder: /stand-in/{PLATFORM['id']}\n"
    try:
        config = read_sketch(sketch_dir)
    except InputError as exc:
        err = f"{sketch_dir}/{exc.message}\ncompilation terminated.\n"
        _print_json(_compile_result(str(build_path), banner, err, False,
                                    error="Error during build: exit status 1"))
        return 1
    text, data = _sizes(config)
    elf = f"{build_path}/{SKETCH_NAME}.ino.elf"
    link_err = ""
    if data > DATA_MAX and _env("SIZER") != "1":
        link_err += (f"/stand-in/arm-none-eabi/bin/ld: {elf} section `.bss' will not fit in "
                     f"region `RAM'\n/stand-in/arm-none-eabi/bin/ld: region `RAM' overflowed "
                     f"by {data - DATA_MAX} bytes\n")
    if text > TEXT_MAX and _env("SIZER") != "1":
        link_err += (f"/stand-in/arm-none-eabi/bin/ld: {elf} section `.text' will not fit in "
                     f"region `FLASH'\n/stand-in/arm-none-eabi/bin/ld: region `FLASH' "
                     f"overflowed by {text - TEXT_MAX} bytes\n")
    if link_err:
        link_err += "collect2: error: ld returned 1 exit status\n"
        _print_json(_compile_result(str(build_path), banner, link_err, False,
                                    error="Error during build: exit status 1"))
        return 1
    out = banner + _size_lines(text, data)
    sections = [{"name": "text", "size": text, "max_size": TEXT_MAX},
                {"name": "data", "size": data, "max_size": DATA_MAX}]
    if text > TEXT_MAX or data > DATA_MAX:  # only with SIZER=1: the size check's failure
        which = "text" if text > TEXT_MAX else "data"
        out += ("Sketch too big; see https://support.arduino.cc/hc/en-us/articles/360013825179"
                " for tips on reducing it.\n" if which == "text"
                else "Not enough memory; see https://support.arduino.cc/hc/en-us/articles/"
                "360013825179 for tips on reducing your footprint.\n")
        # 1.x reports no sizes for a failed build
        _print_json(_compile_result(str(build_path), out, "", False,
                                    None if _is_1x() else sections,
                                    error=f"{which} section exceeds available space in board"))
        return 1

    from dataclasses import asdict

    from hal.arduino.sketch import input_tensor_bytes
    from hal.virtual import image

    header_cfg = {k: v for k, v in asdict(config).items()
                  if k not in ("model", "input_vectors")}
    blob = image.pack(config.model, {"config": header_cfg, "text_bytes": text,
                                     "data_bytes": data, "board": config.board},
                      total_bytes=text + 8, vectors=input_tensor_bytes(config))
    target = build_path / f"{SKETCH_NAME}.ino.bin"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, target)
    if _misbehave() == "no_sizes":
        sections = None
        out = banner
    _print_json(_compile_result(str(build_path), out, "", True, sections))
    if _misbehave() == "trailing_text":
        sys.stdout.write(f"Used library {LIBRARY['name']} {LIBRARY['version']}\n")
    return 0


# ------------------------------------------------------------------------------- ports


def _ports_dir() -> Path | None:
    text = os.environ.get("TINYML_VIRTUAL_PORTS")
    return Path(text) if text else None


def _read_records(directory: Path, serial: str | None = None) -> list[dict]:
    """Live port records (the format of :mod:`hal.arduino.discovery`). Read here without
    importing the library: every upload is a fresh process, and eight of them run at once."""
    names = [f"{serial}.json"] if serial and "/" not in serial else None
    paths = [directory / n for n in names] if names else sorted(directory.glob("*.json"))
    out = []
    for path in paths:
        try:
            rec = json.loads(path.read_text())
            os.kill(int(rec["owner_pid"]), 0)
            with open(f"/proc/{int(rec['owner_pid'])}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    continue
            vid, pid = int(rec["vid"]), int(rec["pid"])
            device, sn = str(rec["device"]), rec.get("serial_number")
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        if vid != VID:
            continue
        mode = "bootloader" if pid in PIDS_BOOT else "sketch" if pid in PIDS_SKETCH else None
        if mode:
            out.append({"device": device, "vid": vid, "pid": pid, "serial_number": sn,
                        "mode": mode})
    return out


def _records() -> list[dict]:
    directory = _ports_dir()
    return [] if directory is None else _read_records(directory)


def _record_for(address: str) -> dict | None:
    real = os.path.realpath(address)
    for rec in _records():
        if rec["device"] == address or os.path.realpath(rec["device"]) == real:
            return rec
    return None


def _wait_record(serial: str, mode: str, timeout_s: float) -> dict | None:
    directory = _ports_dir()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and directory is not None:
        for rec in _read_records(directory, serial):
            if rec["serial_number"] == serial and rec["mode"] == mode:
                return rec
        time.sleep(0.02)
    return None


def _port_json(rec: dict) -> dict:
    return {
        "address": rec["device"],
        "label": rec["device"],
        "protocol": "serial",
        "protocol_label": "Serial Port (USB)",
        "properties": {"pid": f"0x{rec['pid']:04x}", "vid": f"0x{rec['vid']:04x}",
                       "serialNumber": rec["serial_number"] or ""},
        "hardware_id": rec["serial_number"] or "",
    }


def cmd_board_list(args) -> int:
    major, minor = _format()
    items = []
    for rec in _records():
        boards = [{"name": "Arduino Nano 33 BLE", "fqbn": FQBNS[0]}]
        if major == 0 and minor < 19:
            items.append({"address": rec["device"], "protocol": "serial",
                          "protocol_label": "Serial Port (USB)",
                          "boards": [{**boards[0], "vid": f"0x{rec['vid']:04x}",
                                      "pid": f"0x{rec['pid']:04x}"}],
                          "serial_number": rec["serial_number"]})
        else:
            items.append({"matching_boards": boards, "port": _port_json(rec)})
    _print_json({"detected_ports": items} if major >= 1 else items)
    return 0


def cmd_core_list(args) -> int:
    if _is_1x():
        _print_json({"platforms": [{"id": PLATFORM["id"], "installed_version":
                                    PLATFORM["version"], "latest_version": PLATFORM["version"],
                                    "name": PLATFORM["name"]}]})
    else:
        _print_json([{"id": PLATFORM["id"], "installed": PLATFORM["version"],
                      "latest": PLATFORM["version"], "name": PLATFORM["name"]}])
    return 0


def _libraries() -> list[dict]:
    """The installed libraries with their install_dir (see LIBRARIES)."""
    folder = _env("LIBRARIES")
    if not folder:
        from hal.arduino.sketch import HOST_HEADERS_DIR

        return [{**lib, "install_dir": str(HOST_HEADERS_DIR)} for lib in LIBRARIES]
    out = []
    for path in sorted(Path(folder).iterdir()):
        props = path / "library.properties"
        if not props.is_file():
            continue
        info = dict(line.split("=", 1) for line in props.read_text(errors="replace")
                    .splitlines() if "=" in line)
        out.append({"name": info.get("name", path.name).strip(),
                    "version": info.get("version", "").strip(), "install_dir": str(path)})
    return out


def cmd_lib_list(args) -> int:
    libs = [{"library": lib} for lib in _libraries()]
    _print_json({"installed_libraries": libs} if _is_1x() else libs)
    return 0


# ------------------------------------------------------------------------------- upload


class _Boot:
    """The host side of the virtual bootloader protocol (see hal.virtual.board)."""

    TIMEOUT_S = 5.0

    def __init__(self, device: str) -> None:
        import serial

        self.ser = serial.Serial(device, 921600, timeout=self.TIMEOUT_S,
                                 write_timeout=self.TIMEOUT_S)
        self.ser.reset_input_buffer()
        self._fd = self.ser.fileno()
        self._buf = b""

    def _readline(self) -> bytes:
        """One reply line, read in whole chunks (pyserial's readline reads byte by byte:
        hundreds of system calls per upload)."""
        import select

        end = time.monotonic() + self.TIMEOUT_S
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                return b""
            chunk = os.read(self._fd, 4096)
            if not chunk:
                raise OSError("the bootloader's port hung up")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def cmd(self, line: str, payload: bytes = b"", answer: bool = True) -> str:
        self.ser.write(line.encode() + b"\n" + payload)
        if not answer:
            return ""
        reply = self._readline().decode("ascii", "replace").strip()
        if not reply:
            raise OSError("no answer from the bootloader")
        if not reply.startswith("OK"):
            raise OSError(f"bootloader refused {line.split()[0]}: {reply}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ser.close()


def _touch(port: str) -> None:
    """Open and close ``port`` at 1200 bps. A pty being re-opened by its board (a reset under
    load) can answer EIO for a moment: tried again once, as the real tool's serial layer
    would see a USB port settle, rather than reported as a board that is gone."""
    import serial

    for attempt in (1, 2):
        try:
            serial.Serial(port, 1200).close()
            return
        except OSError as exc:
            # pyserial reports EIO from open() with its errno, from tcsetattr() as text
            eio = exc.errno == errno.EIO or "Input/output error" in str(exc)
            if attempt == 2 or not eio:
                raise
            time.sleep(0.2)


def cmd_upload(args) -> int:
    out: list[str] = []

    def say(text: str, end: str = "\n") -> None:
        out.append(text + end)
        if args.verbose or not text.startswith(("Performing", "Waiting", "Upload port")):
            sys.stdout.write(text + end)
            sys.stdout.flush()

    def fail(message: str) -> int:
        say(message)
        return _fatal("Failed uploading: uploading error: exit status 1", out="".join(out))

    input_dir = Path(args.input_dir) if args.input_dir else None
    bins = sorted(input_dir.glob("*.ino.bin")) if input_dir and input_dir.is_dir() else []
    if not bins:
        return _fatal(f"Error during Upload: no .bin file in {input_dir}")
    data = bins[0].read_bytes()
    port = args.port
    rec = _record_for(port)
    if rec is None:
        if os.path.exists(port):
            return fail(f"The stand-in arduino-cli uploads only to virtual boards; {port} is "
                        "not one")
        say(f"Performing 1200-bps touch reset on serial port {port}")
        say(f"Cannot perform port reset: opening port at 1200bps: Serial port not found: {port}")
        say("Waiting for upload port...")
        say(f"No upload port found, using {port} as fallback")
        return fail(f"No device found on {port}")
    serial_number = rec["serial_number"]

    say(f"Performing 1200-bps touch reset on serial port {port}")
    if rec["mode"] != "bootloader":
        try:
            st = os.stat(port)
            # same rule as hal.arduino.serial_link: a mode-000 node is denied, even to root
            if stat.S_ISCHR(st.st_mode) and not st.st_mode & 0o666:
                raise PermissionError(13, "Permission denied")
            _touch(port)
        except (OSError, ValueError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            say(f"Cannot perform port reset: opening port at 1200bps: {text}: {port}")
            return fail(f"No device found on {port}")
    say("Waiting for upload port...")
    boot = _wait_record(serial_number, "bootloader", 10.0)
    if boot is None:
        say(f"No upload port found, using {port} as fallback")
        return fail(f"No device found on {port}")
    say(f"Upload port found on {boot['device']}")

    started = time.monotonic()
    kbps = float(_env("UPLOAD_KBPS", "0") or 0)
    if kbps == 0 and _env("TIMING") == "real":
        kbps = REAL_UPLOAD_KBPS
    pages = (len(data) + PAGE - 1) // PAGE
    answered = False  # the bootloader spoke: a later failure is its refusal, not "no device"
    try:
        link = _Boot(boot["device"])
        try:
            link.cmd("HELLO")
            answered = True
            say("Erase flash")
            link.cmd(f"ERASE {len(data)}")
            say(f"\nDone in {time.monotonic() - started:.3f} seconds")
            say(f"Write {len(data)} bytes to flash ({pages} pages)")
            t0 = time.monotonic()
            for off in range(0, len(data), CHUNK):
                chunk = data[off : off + CHUNK]
                link.cmd(f"WRITE {off} {len(chunk)} {zlib.crc32(chunk):08x}", chunk)
                done = (off + len(chunk) + PAGE - 1) // PAGE
                bar = "=" * (30 * done // pages)
                say(f"\r[{bar:<30}] {100 * done // pages}% ({done}/{pages} pages)", end="")
                if kbps > 0:
                    ahead = (off + len(chunk)) / (kbps * 1024) - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            import hashlib

            link.cmd(f"DONE {len(data)} {hashlib.sha256(data).hexdigest()}")
            say(f"\nDone in {time.monotonic() - t0:.3f} seconds")
            # like bossac -R: the board resets at once; its answer may be lost
            with contextlib.suppress(OSError):
                link.cmd("RESET")
        finally:
            link.close()
    except Exception as exc:  # the board vanished or refused: bossac's failure
        if answered and "refused" in str(exc):
            # bossac reports the bootloader's refusal itself (e.g. an image too big for flash)
            say(f"\nSAM-BA operation failed: {exc}")
            return _fatal("Failed uploading: uploading error: exit status 1", out="".join(out))
        say(f"\nSAM-BA operation failed: {exc}")
        return fail(f"No device found on {boot['device']}")

    sketch = _wait_record(serial_number, "sketch", 10.0)
    result: dict = {"stdout": "", "stderr": ""}
    if sketch is not None:
        say(f"New upload port: {sketch['device']} (serial)")
        major, minor = _format()
        if (major >= 1 or minor >= 34) and _env("NO_UPDATED_PORT") != "1":
            result["updated_upload_port"] = _port_json(sketch)
    result["stdout"] = "".join(out)
    sys.stdout.write("\n")
    _print_json(result)
    return 0


# --------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tinyml-fake-arduino-cli",
        description="Stand-in arduino-cli for hardware-free runs: compile builds a virtual "
        "firmware image, upload flashes a virtual board (hal.virtual.board).",
    )
    p.add_argument("--format", default="text")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config-file")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    c = sub.add_parser("compile", help="build a virtual firmware image")
    c.add_argument("--fqbn", "-b", required=True)
    c.add_argument("--build-path")
    c.add_argument("--build-cache-path")
    c.add_argument("--warnings")
    c.add_argument("sketch")
    u = sub.add_parser("upload", help="flash a virtual board")
    u.add_argument("-p", "--port", required=True)
    u.add_argument("--fqbn", "-b", required=True)
    u.add_argument("--input-dir")
    board = sub.add_parser("board", help="board commands")
    board.add_argument("action", choices=["list"])
    core = sub.add_parser("core", help="core commands")
    core.add_argument("action", choices=["list"])
    lib = sub.add_parser("lib", help="library commands")
    lib.add_argument("action", choices=["list"])
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tinyml-fake-arduino-cli``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # arduino-cli accepts global flags anywhere: hoist them before the sub-command
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--format", "--config-file") and i + 1 < len(argv):
            hoisted += [a, argv[i + 1]]
            i += 2
            continue
        if a in ("-v", "--verbose", "--json"):
            hoisted.append(a)
        else:
            rest.append(a)
        i += 1
    parser = _parser()
    try:
        args = parser.parse_args(hoisted + rest)
    except SystemExit as exc:
        return 7 if exc.code else 0  # arduino-cli's "bad argument" exit code
    handlers = {
        "version": cmd_version,
        "compile": cmd_compile,
        "upload": cmd_upload,
        "board": cmd_board_list,
        "core": cmd_core_list,
        "lib": cmd_lib_list,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
