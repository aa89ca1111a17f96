"""A virtual Arduino Nano 33 BLE: a process that owns a pseudo-terminal as its USB serial port.

It behaves like the real board as the host sees it:

* **sketch mode** (USB PID 0x805a): the port is a pty published under a stable symlink and as a
  port record in the virtual-ports directory (see :mod:`hal.arduino.discovery`); the flashed
  image runs in a child process (:mod:`hal.virtual.mcu`, the real TFLM interpreter), forked
  afresh from the board at every reset (the board imports the interpreter once). Like the
  real sketch it waits up to ``--host-wait-s`` for the host to open the port and assert DTR
  before printing, then prints whether or not anyone listens. As on the real core's
  ``USBSerial``, lines written while DTR is low are dropped, and while the host holds the port
  open with DTR up but does not read, the sketch's loop stops once the port's buffer is full
  (the MCU's next write blocks) and goes on where it was when the host reads again; each such
  stall is counted in ``<state-dir>/stalls``. A pty has no modem lines: DTR is emulated as
  :mod:`hal.arduino.serial_link` describes.
* **1200-bps touch**: opening the port at 1200 baud (the board polls the pty's termios for
  ``B1200``) makes it vanish -- the pty is closed, the record and symlink removed -- and
  re-appear as the **bootloader** (PID 0x005a) under another name.
* **bootloader**: accepts an image over the pty with a small framed protocol (below), then
  resets into the sketch, under the same name or, with ``--rename-on-touch``, a new one. With no
  traffic for ``--bootloader-timeout-s`` it returns to the old sketch.
* the last flashed image persists in ``--state-dir``: a restarted board boots it.
* a **hot-swap firmware** image (compiled with ``TINYML_HOTSWAP``) also gets its two model
  slots (``slots.bin`` in the state directory) and answers the hot-swap protocol on the sketch
  port (:mod:`hal.virtual.hotswap_device`): a reset boots the newest valid slot, a model that
  fails to allocate or faults (the watchdog resets after 0.5 s) is given up for the other slot
  or the compiled-in model; ``--hotswap-fault`` injects transfer faults. An upload (bossac
  erases the application flash) empties the slots.

Bootloader protocol (host -> board lines, board -> host ``OK ...`` / ``ERR reason``)::

    HELLO                      -> OK TMLBOOT 1 <serial_number>
    ERASE <total_bytes>        -> OK
    WRITE <offset> <len> <crc32 hex>\\n<len raw bytes>  -> OK <offset+len>
    DONE <total_bytes> <sha256 hex>                     -> OK
    RESET                      -> OK   (then the board re-enumerates as the sketch)

Misbehaviour on request (``--fault``): ``never_boot`` (the sketch never prints), ``old_model``
(accepts uploads but keeps running the first image it was ever given), ``vanish_on_upload``
(disappears half-way through an upload and comes back on the old image),
``permission_denied`` (the port's node is mode 000), ``garbage`` (garbage bytes and UTF-8
sequences split across writes between valid lines), ``flood`` (inference as fast as possible).
``--silent-model SHA_PREFIX`` makes only the firmware of that model hard-fault at boot (silent),
as a new build that overflows its stack would, while every other image still boots: a failed
install and the rollback to the previous firmware on one board.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import random
import resource
import select
import signal
import sys
import termios
import threading
import time
import tty
import zlib
from pathlib import Path

from hal.arduino.serial_link import emulated_dtr
from hal.boards import get_profile
from hal.virtual import hotswap_device
from hal.virtual import image as image_mod
from hal.virtual import mcu as mcu_mod

log = logging.getLogger("hal.virtual.board")

VID = 0x2341
PID_SKETCH = 0x805A
PID_BOOTLOADER = 0x005A
FAULTS = ("never_boot", "old_model", "vanish_on_upload", "permission_denied", "garbage", "flood")
FLASH_FILE = "flash.bin"
STALLS_FILE = "stalls"
# The board profile's flash (1 MB minus the 64 KB bootloader, what arduino-cli calls the
# maximum) plus the 8 bytes bossac's .bin adds to "Sketch uses": the capacity the fit check
# and the stand-in arduino-cli check against. A bigger image is refused like bossac would.
FLASH_BYTES = (get_profile("nano33ble").flash_bytes or 0) + 8
_MAX_CMD = 256
_POLL_S = 0.02

_stop = False


def _on_signal(signum, frame) -> None:
    global _stop
    _stop = True


def _set_pdeathsig() -> None:
    """Child processes die with the board (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)
    except OSError:
        pass


def _set_name(name: bytes) -> None:
    """The process name ps and top show (Linux prctl PR_SET_NAME)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except OSError:
        pass


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _Mcu:
    """One run of the flashed sketch: a child forked from the board process (which has the
    interpreter imported), its stdout a pipe to the board. Like a reset, every boot starts
    from a clean process; a hard fault (TFLM killing the process) ends only this run, and
    the board goes silent until the next reset."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self._status: int | None = None

    @classmethod
    def fork(cls, image_path: str, flood: bool) -> _Mcu:
        read_fd, write_fd = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the MCU: never return into the board's stack
            code = 70
            try:
                os.close(read_fd)
                code = _mcu_child(write_fd, image_path, flood, parent)
            except BaseException:  # a crashed sketch just stops printing
                code = 70
            finally:
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return cls(pid, read_fd)

    def wait(self, block: bool = True) -> int | None:
        """The child's wait status once it has exited (reaps it); None while it runs."""
        if self._status is None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, -1
            if pid == self.pid:
                self._status = status
        return self._status

    def describe_exit(self) -> str:
        """``exit N`` / ``signal N`` of the finished run (waits for it)."""
        status = self.wait()
        if status is None or status < 0:
            return "exit unknown"
        code = os.waitstatus_to_exitcode(status)
        return f"signal {-code}" if code < 0 else f"exit {code}"

    def stop(self) -> None:
        """Power off: kill the run, reap it, close the pipe."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _mcu_child(out_fd: int, image_path: str, flood: bool, parent: int) -> int:
    """Body of the forked MCU process: stdout is the pipe to the board, nothing else of the
    board's (pty, records, signal handlers) stays open."""
    _set_pdeathsig()
    if os.getppid() != parent:
        return 0  # the board is already gone
    _set_name(b"virtual-mcu")  # tell it apart from the board in ps/top
    # a TFLM hard fault ends the run without leaving a core file in the board's directory
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(null, 2)
    os.closerange(3, 65536)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    return mcu_mod.main([image_path, *(["--flood"] if flood else [])])


class _Port:
    """One enumeration of the board: a pty, its symlink and its port record."""

    def __init__(self, board: VirtualBoard, link: Path, pid: int) -> None:
        self.board = board
        self.link = link
        self.pid = pid
        self.master, slave = os.openpty()
        self.slave_path = os.ttyname(slave)
        tty.setraw(slave)
        os.close(slave)  # the host opens it; POLLHUP on the master means "no host"
        os.set_blocking(self.master, False)
        self._poll = select.poll()
        self._poll.register(self.master, select.POLLIN | select.POLLHUP)
        tmp = link.with_name(f".{link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.slave_path, tmp)
        os.replace(tmp, link)
        self.record = board.ports_dir / f"{board.serial_number}.json"
        record = {
            "device": str(link),
            "vid": VID,
            "pid": pid,
            "serial_number": board.serial_number,
            "location": board.location,
            "description": "Arduino Nano 33 BLE (virtual)"
            + (" bootloader" if pid == PID_BOOTLOADER else ""),
            "owner_pid": os.getpid(),
            "tty": self.slave_path,
        }
        _atomic_write(self.record, json.dumps(record).encode())
        log.info("sn=%s appeared on %s (%s) pid=0x%04x", board.serial_number, link,
                 self.slave_path, pid)

    def host_connected(self) -> bool:
        events = self._poll.poll(0)
        return not any(ev & select.POLLHUP for _, ev in events)

    def dtr(self) -> bool:
        """The host has the port open and asserts DTR (emulated on a pty: see
        :mod:`hal.arduino.serial_link`). Only the host clears the mark (on close): were the
        board to clear it on a hang-up, a host opening in between would lose its DTR."""
        return self.host_connected() and emulated_dtr(self.master)

    def touched(self) -> bool:
        try:
            return termios.tcgetattr(self.master)[5] == termios.B1200
        except termios.error:
            return False

    def read(self, timeout_s: float) -> bytes:
        events = self._poll.poll(int(timeout_s * 1000))
        if not any(ev & select.POLLIN for _, ev in events):
            if events:  # hung up: nobody has the port open; avoid a busy loop
                time.sleep(timeout_s)
            return b""
        try:
            return os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EAGAIN):
                return b""
            raise

    def write(self, data: bytes) -> bool:
        """Write without blocking; False when the data was dropped (no reader / full)."""
        try:
            n = os.write(self.master, data)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                return False
            raise
        # a partial write means the host is not keeping up; USB CDC would drop too
        return n == len(data)

    def send(self, data: bytes) -> int:
        """Write what the host's side can take now (0 when its buffer is full)."""
        try:
            return os.write(self.master, data)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                return 0
            raise

    def write_all(self, data: bytes, timeout_s: float = 2.0) -> None:
        end = time.monotonic() + timeout_s
        view = memoryview(data)
        while view and time.monotonic() < end:
            try:
                n = os.write(self.master, view)
                view = view[n:]
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EIO):
                    raise
                time.sleep(0.002)

    def close(self) -> None:
        if self.master < 0:
            return
        for path in (self.record, self.link):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.master)
        self.master = -1
        log.info("sn=%s vanished from %s", self.board.serial_number, self.link)


class VirtualBoard:
    """The board's state machine; :meth:`run` until SIGTERM/SIGINT."""

    def __init__(
        self,
        serial_number: str,
        ports_dir: Path,
        state_dir: Path,
        *,
        fault: str | None = None,
        rename_on_touch: bool = False,
        host_wait_s: float = 2.0,
        bootloader_timeout_s: float = 10.0,
        reenumerate_s: float = 0.15,
        location: str | None = None,
        parent_pid: int | None = None,
        silent_models: tuple[str, ...] = (),
        hotswap_faults: tuple[str, ...] = (),
        hotswap_real_timing: bool = False,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        self.serial_number = serial_number
        self.ports_dir = Path(ports_dir)
        self.state_dir = Path(state_dir)
        self.fault = fault
        self.rename_on_touch = rename_on_touch
        self.host_wait_s = host_wait_s
        self.bootloader_timeout_s = bootloader_timeout_s
        self.reenumerate_s = reenumerate_s
        self.location = location or f"virtual-{serial_number}"
        self.parent_pid = parent_pid
        self.silent_models = tuple(p.lower() for p in silent_models if p)
        # parsed at start (a bad spec fails here, not mid-transfer); one list for the board's
        # life, so a one-shot fault fires once
        self.hotswap_faults = [hotswap_device.parse_fault(spec) for spec in hotswap_faults]
        self.hotswap_real_timing = hotswap_real_timing
        self._hs: hotswap_device.HotswapRuntime | None = None
        self.generation = 0
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._rng = random.Random(serial_number)
        self._preload: threading.Thread | None = None
        self._preload_error = ""

    # -- helpers --------------------------------------------------------------------------

    @property
    def flash_path(self) -> Path:
        return self.state_dir / FLASH_FILE

    def _sketch_link(self) -> Path:
        suffix = f"-{self.generation}" if self.rename_on_touch else ""
        return self.ports_dir / f"ttyVNANO-{self.serial_number}{suffix}"

    def _boot_link(self) -> Path:
        return self.ports_dir / f"ttyVNANO-{self.serial_number}-boot"

    def _should_stop(self) -> bool:
        if _stop:
            return True
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _vanished_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self._should_stop():
            time.sleep(0.01)

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        while not self._should_stop():
            if self._sketch_mode() == "power_cut":
                self._vanished_for(1.0)  # the power comes back a moment later
                continue
            if self._should_stop():
                break
            self._vanished_for(self.reenumerate_s)
            self._bootloader_mode()
            if self.rename_on_touch:
                self.generation += 1
            self._vanished_for(self.reenumerate_s)
        return 0

    # -- sketch ---------------------------------------------------------------------------

    def _start_preload(self) -> None:
        """Import the interpreter in the background, once per board process: every boot is
        then a fork of this process (milliseconds, like real silicon) instead of a fresh
        Python paying the numpy / tflite_micro imports on each reset."""
        if self.fault == "never_boot" or self._preload is not None:
            return
        self._preload = threading.Thread(target=self._do_preload, name="mcu-preload",
                                         daemon=True)
        self._preload.start()

    def _do_preload(self) -> None:
        try:
            mcu_mod.preload()
        except BaseException as exc:  # reported when a boot needs it
            self._preload_error = f"{type(exc).__name__}: {exc}"

    def _preloaded(self) -> bool:
        """True once the interpreter import has finished (and its thread has exited: a fork
        must not copy a thread holding the import lock)."""
        return self._preload is not None and not self._preload.is_alive()

    def _boot_mcu(self, reset: bool = True) -> _Mcu | None:
        """Reset into the flashed sketch: a fresh MCU process forked from the board. A
        hot-swap firmware boots the model of its newest valid slot instead (``reset`` False:
        the slot it was told to start, without a reset)."""
        if self._preload_error:
            log.warning("sn=%s cannot boot: the interpreter did not import (%s): silent",
                        self.serial_number, self._preload_error)
            return None
        path = self.flash_path
        if self._hs is not None:
            path, lines = self._hs.boot_image(reset)
            self._hs_out.extend(lines)
        if self.silent_models:
            try:
                sha = image_mod.read(path).sha256
            except (OSError, image_mod.ImageError):
                sha = ""
            if any(sha.startswith(prefix) for prefix in self.silent_models):
                log.info("sn=%s fault silent_models: model %s hard-faults at boot: silent",
                         self.serial_number, sha[:16])
                if self._hs is not None:
                    self._hs.on_silent_fault()
                return None
        return _Mcu.fork(str(path), self.fault == "flood")

    def _garbage(self) -> list[bytes]:
        """Garbage bytes, then a UTF-8 sequence split across two writes, each ending its own
        line so that the valid lines around it stay intact."""
        junk = bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(4, 40)))
        junk = junk.replace(b"\n", b"")
        snow = "temp \u2603 caf\u00e9 \U0001f600".encode()
        cut = snow.index(b"\xe2") + 1  # inside the snowman's 3-byte sequence
        return [junk + b"\x00\xff\xfe\n", snow[:cut], snow[cut:] + b"\n"]

    def _start_hotswap(self) -> None:
        """A hot-swap firmware on the flash: its slots and protocol (else None)."""
        self._hs = None
        self._hs_out: list[str] = []
        try:
            firmware = image_mod.read(self.flash_path)
        except (OSError, image_mod.ImageError):
            return
        if hotswap_device.is_hotswap_image(firmware):
            self._hs = hotswap_device.HotswapRuntime(
                self.state_dir, firmware, self.hotswap_faults, self.hotswap_real_timing)

    def _sketch_mode(self) -> str:
        self._start_hotswap()
        port = _Port(self, self._sketch_link(), PID_SKETCH)
        if self.fault == "permission_denied":
            os.chmod(port.slave_path, 0)
        self._start_preload()
        # The reset boots the flashed image as soon as the interpreter is imported (at once,
        # except right after the board process started).
        boot_pending = self.fault != "never_boot" and self.flash_path.exists()
        mcu: _Mcu | None = None
        out_fd: int | None = None
        booted = time.monotonic()
        pending = b""
        held: list[bytes] = []  # lines printed before the host asserted DTR
        # Bytes the sketch wrote that the host has not taken yet. While there are any the
        # MCU's pipe is not read, so its next write blocks: like USBSerial::write on the
        # real board, a host that keeps the port open without reading stalls loop().
        backlog = b""
        stalled = False
        # The sketch waits for the host only in setup(): once DTR has been up, or the wait
        # timed out, lines written while DTR is low are dropped.
        seen_dtr = False
        watchdog_at: float | None = None  # hot-swap: a silent model is reset at this time
        try:
            while not self._should_stop():
                if port.touched():
                    log.info("sn=%s 1200-bps touch", self.serial_number)
                    return "touch"
                if watchdog_at is not None and time.monotonic() >= watchdog_at:
                    watchdog_at = None
                    boot_pending = True
                hs = self._hs
                if hs is not None and hs.fallback_needed:  # the slot's model did not start
                    hs.fallback_needed = False
                    watchdog_at = None
                    if mcu is not None:
                        mcu.stop()
                    mcu, out_fd, pending = None, None, b""
                    mcu = self._boot_mcu(reset=False)
                    out_fd = mcu.fd if mcu else None
                    booted = time.monotonic()
                if (hs is not None and out_fd is None and not boot_pending
                        and watchdog_at is None and hs.running != hotswap_device.BUILTIN):
                    watchdog_at = time.monotonic() + hotswap_device.WATCHDOG_S
                if boot_pending and self._preloaded():
                    boot_pending = False
                    if mcu is not None:  # a watchdog reset: the run before it ends here
                        mcu.stop()
                    mcu = self._boot_mcu()
                    out_fd = mcu.fd if mcu else None
                    booted = time.monotonic()
                    seen_dtr = False
                if hs is not None and self._hs_out:  # before anything the new boot prints
                    if port.dtr():  # else lost, like any line while DTR is low
                        backlog += b"".join(text.encode() + b"\n" for text in self._hs_out)
                    self._hs_out.clear()
                dtr = port.dtr()
                seen_dtr = seen_dtr or (dtr and mcu is not None)
                if not dtr and backlog:
                    backlog = b""  # DTR dropped: USBSerial discards what it could not send
                if held and dtr:
                    # The sketch was waiting for the host: it prints the moment DTR comes
                    # up, not with its next line (up to an inference period later).
                    backlog += b"".join(held)
                    held.clear()
                if backlog:
                    backlog = backlog[port.send(backlog):]
                    if backlog and not stalled:
                        stalled = True
                        self._count_stall()
                    elif not backlog:
                        stalled = False
                # A hung-up master (no host) always polls readable: watch it only while a
                # host has the port open.
                fds = [port.master] if port.host_connected() else []
                if out_fd is not None and not backlog:
                    fds.append(out_fd)
                if not fds:
                    time.sleep(_POLL_S)
                    continue
                try:
                    ready, _, _ = select.select(fds, [port.master] if backlog else [], [],
                                                _POLL_S)
                except InterruptedError:
                    continue
                if port.master in ready:
                    data = port.read(0)  # the sketch ignores input, but for hot-swap frames
                    if hs is not None and data:
                        try:
                            replies, activate = hs.feed(data)
                        except hotswap_device.PowerCut:
                            log.info("sn=%s fault power_cut: power lost mid-write",
                                     self.serial_number)
                            return "power_cut"
                        if port.dtr():  # after what the sketch already printed, whole
                            backlog += b"".join(text.encode() + b"\n" for text in replies)
                        if activate is not None:  # stop the model, start the chosen one
                            watchdog_at = None
                            if mcu is not None:
                                mcu.stop()
                            mcu, pending = self._boot_mcu(reset=False), b""
                            out_fd = mcu.fd if mcu else None
                            booted = time.monotonic()
                if out_fd is None or out_fd not in ready:
                    continue
                try:
                    chunk = os.read(out_fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:  # the MCU died (hard fault): the board goes silent
                    log.info("sn=%s sketch stopped (%s): silent", self.serial_number,
                             mcu.describe_exit() if mcu else "?")
                    out_fd = None
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                dtr = port.dtr()
                waiting = not seen_dtr and time.monotonic() - booted < self.host_wait_s
                for line in lines:
                    if hs is not None:
                        keep, extra = hs.on_line(line)
                        self._hs_out.extend(extra)
                        if not keep:
                            break  # the fall-back boot happens at the top of the loop
                    data = line + b"\n"
                    if not dtr:
                        if waiting and len(held) < 64:
                            held.append(data)  # the sketch waits for the host for a while
                        continue  # else dropped: no DTR, no data (USBSerial)
                    if backlog:
                        backlog = backlog[port.send(backlog):]
                    if self.fault == "garbage" and not backlog and self._rng.random() < 0.5:
                        for piece in self._garbage():
                            port.write(piece)
                            time.sleep(0.002)  # let the split sequence arrive in two reads
                    backlog += data
        finally:
            if mcu is not None:
                mcu.stop()
            port.close()

    # -- bootloader -----------------------------------------------------------------------

    def _bootloader_mode(self) -> None:
        port = _Port(self, self._boot_link(), PID_BOOTLOADER)
        buf = b""
        image = bytearray()
        total = 0
        last = time.monotonic()
        try:
            while not self._should_stop():
                chunk = port.read(_POLL_S)
                if chunk:
                    buf += chunk
                    last = time.monotonic()
                elif time.monotonic() - last > self.bootloader_timeout_s:
                    log.info("sn=%s bootloader timed out; back to the old sketch",
                             self.serial_number)
                    return
                while b"\n" in buf:
                    cmd, rest = buf.split(b"\n", 1)
                    parts = cmd.decode("ascii", "replace").split()
                    if not parts:
                        buf = rest
                        continue
                    op = parts[0]
                    if op == "WRITE":
                        try:
                            offset, length, crc = int(parts[1]), int(parts[2]), int(parts[3], 16)
                        except (IndexError, ValueError):
                            port.write_all(b"ERR bad write\n")
                            buf = rest
                            continue
                        if len(rest) < length:
                            break  # wait for the payload
                        payload, buf = rest[:length], rest[length:]
                        if zlib.crc32(payload) != crc or offset != len(image):
                            port.write_all(b"ERR crc\n")
                            continue
                        if offset + length > FLASH_BYTES:
                            port.write_all(b"ERR image too big for flash\n")
                            continue
                        image += payload
                        if (self.fault == "vanish_on_upload" and total
                                and len(image) >= total // 2):
                            log.info("sn=%s vanishing in the middle of the upload",
                                     self.serial_number)
                            port.close()
                            self._vanished_for(1.0)  # replugged a moment later
                            return  # the old image stays
                        port.write_all(f"OK {len(image)}\n".encode())
                        continue
                    buf = rest
                    if op == "HELLO":
                        port.write_all(f"OK TMLBOOT 1 {self.serial_number}\n".encode())
                    elif op == "ERASE":
                        image.clear()
                        total = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                        if total > FLASH_BYTES:
                            port.write_all(b"ERR image too big for flash\n")
                        else:
                            port.write_all(b"OK\n")
                    elif op == "DONE":
                        digest = hashlib.sha256(image).hexdigest()
                        if len(parts) < 3 or parts[2] != digest or int(parts[1]) != len(image):
                            port.write_all(b"ERR verify\n")
                        else:
                            self._flash(bytes(image))
                            port.write_all(b"OK\n")
                    elif op == "RESET":
                        port.write_all(b"OK\n")
                        # let the host read the answer and close (at most 0.5 s), then reset
                        end = time.monotonic() + 0.5
                        while port.host_connected() and time.monotonic() < end:
                            time.sleep(0.005)
                        return
                    else:
                        port.write_all(b"ERR unknown command\n")
                if len(buf) > FLASH_BYTES + _MAX_CMD:
                    buf = b""
        finally:
            port.close()

    def _count_stall(self) -> None:
        """A stall began: the host holds the port open (DTR up) and does not read. Counted
        in ``<state-dir>/stalls`` so tests can tell a host that never reads."""
        path = self.state_dir / STALLS_FILE
        try:
            count = int(path.read_text() or 0) + 1
        except (OSError, ValueError):
            count = 1
        _atomic_write(path, str(count).encode())
        log.info("sn=%s loop stalled: the host has the port open but does not read (%d)",
                 self.serial_number, count)

    def _flash(self, data: bytes) -> None:
        if self.fault == "old_model" and self.flash_path.exists():
            log.info("sn=%s fault old_model: keeping the old image", self.serial_number)
            return
        _atomic_write(self.flash_path, data)
        # bossac -e erases the whole application flash: the model slots go with it
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / hotswap_device.FLASH_FILE).unlink()
        log.info("sn=%s flashed %d bytes", self.serial_number, len(data))


def main(argv: list[str] | None = None) -> int:
    """``tinyml-virtual-board``: run one virtual Nano 33 BLE until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="tinyml-virtual-board",
        description="A virtual Arduino Nano 33 BLE on a pseudo-terminal: 1200-bps touch, "
        "bootloader re-enumeration, and the flashed model run by the real TFLM interpreter.",
    )
    parser.add_argument("--serial-number", required=True, help="USB serial number to publish")
    parser.add_argument("--ports-dir", required=True,
                        help="virtual-ports directory (records and tty symlinks are made here; "
                        "point TINYML_VIRTUAL_PORTS at it)")
    parser.add_argument("--state-dir", required=True, help="where the flashed image persists")
    parser.add_argument("--fault", choices=FAULTS, help="misbehave on purpose")
    parser.add_argument("--silent-model", action="append", default=[], metavar="SHA_PREFIX",
                        help="a firmware whose model sha256 starts with this hard-faults at "
                        "boot and never prints (other images boot normally); repeatable")
    parser.add_argument("--hotswap-fault", action="append", default=[], metavar="FAULT",
                        help="hot-swap firmware fault: drop_chunk:N, drop_chunks:N, "
                        "crc_error:N, crc_errors:N, power_cut:N, alloc_fail:SHA_PREFIX "
                        "(see hal.virtual.hotswap_device); repeatable")
    parser.add_argument("--hotswap-real-timing", action="store_true",
                        help="hot-swap flash writes take the nRF52840's page erase and word "
                        "write times")
    parser.add_argument("--rename-on-touch", action="store_true",
                        help="re-appear under a new port name after each upload")
    parser.add_argument("--host-wait-s", type=float, default=2.0,
                        help="how long the sketch waits for the host before printing")
    parser.add_argument("--bootloader-timeout-s", type=float, default=10.0)
    parser.add_argument("--location", help="USB location to publish")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the process that started the board exits")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    board = VirtualBoard(
        args.serial_number,
        Path(args.ports_dir),
        Path(args.state_dir),
        fault=args.fault,
        rename_on_touch=args.rename_on_touch,
        host_wait_s=args.host_wait_s,
        bootloader_timeout_s=args.bootloader_timeout_s,
        location=args.location,
        parent_pid=os.getppid() if args.exit_with_parent else None,
        silent_models=tuple(args.silent_model),
        hotswap_faults=tuple(args.hotswap_fault),
        hotswap_real_timing=args.hotswap_real_timing,
    )
    return board.run()


if __name__ == "__main__":
    sys.exit(main())
