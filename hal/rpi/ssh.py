"""The SSH transport to a Linux target: one paramiko connection per device, host keys checked
against a known_hosts file, key authentication, and a deadline on connect, on every command and
on every transfer.

Errors: an unknown or changed host key is ``DeviceError("host_key_unknown" / "host_key_changed")``
carrying the fingerprint; refused authentication is ``DeviceError("auth_failed")``; a network
failure (refused, reset, dropped mid-command) is ``InfraError("transport_broken")``; a deadline
is ``InfraError("timeout")`` and a cancel is :class:`~hal.errors.Cancelled`.

Commands are strings for the remote POSIX shell. They are built only inside ``hal.rpi`` and
every variable part goes through :func:`shlex.quote` (see :func:`quote_args`). Each command
runs under the target's ``timeout`` so that a command we gave up on is killed there too.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from hal.deadline import Deadline
from hal.errors import Cancelled, DeviceError, InfraError, InputError

log = logging.getLogger(__name__)

# SFTP write size: several of paramiko's 32 KB requests in flight per deadline check.
TRANSFER_CHUNK = 256 << 10
# Larger windows than paramiko's default keep a loopback or LAN link busy during uploads.
WINDOW_SIZE = 16 << 20
MAX_PACKET = 1 << 15
# Grace the remote `timeout` gives a command after our deadline before it sends SIGKILL.
REMOTE_KILL_AFTER_S = 2


def quote_args(args: Sequence[str | int]) -> str:
    """A shell command line in which every argument is one word, whatever it contains."""
    return " ".join(shlex.quote(str(a)) for a in args)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:<base64>`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class CommandResult:
    """A finished remote command."""

    command: str
    status: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == 0

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def err_text(self, limit: int = 2000) -> str:
        text = self.stderr.decode("utf-8", "replace").strip()
        return text if len(text) <= limit else "..." + text[-limit:]


@dataclass(frozen=True)
class SshEndpoint:
    """Where and as whom to connect."""

    host: str
    port: int
    user: str
    key_file: Path | None
    known_hosts: Path
    trust_on_first_use: bool = False
    connect_timeout_s: float = 10.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name as OpenSSH writes it in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class SshSession:
    """One reusable connection to a target. Thread-safe: commands, transfers and an
    observation stream can share it; it is re-established when it has dropped."""

    def __init__(self, endpoint: SshEndpoint, device_id: str = "") -> None:
        self.endpoint = endpoint
        self.device_id = device_id or endpoint.address
        self._lock = threading.RLock()
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.connects = 0  # how many times a connection was (re-)established

    # -- connection ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        t = self._transport
        return t is not None and t.is_active()

    def ensure(self, deadline: Deadline) -> paramiko.Transport:
        """The live transport, connecting (again) if there is none or it dropped."""
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            if self._transport is not None:
                log.info("device=%s ssh connection to %s dropped; reconnecting",
                         self.device_id, self.endpoint.address)
            self._drop()
            self._transport = self._connect(deadline)
            self.connects += 1
            return self._transport

    def _connect(self, deadline: Deadline) -> paramiko.Transport:
        ep = self.endpoint
        deadline.check()
        limit = deadline.poll_timeout(ep.connect_timeout_s)
        started = time.monotonic()
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=max(limit, 0.01))
        except TimeoutError as exc:
            raise InfraError("timeout", f"connecting to {ep.address} timed out after "
                             f"{limit:.1f}s", host=ep.host, port=ep.port) from exc
        except OSError as exc:
            raise InfraError("transport_broken", f"cannot connect to {ep.address}: "
                             f"{exc.strerror or exc}", host=ep.host, port=ep.port,
                             errno=exc.errno) from exc
        # Without TCP_NODELAY each small request waits out delayed ACKs (~40 ms per command).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                                       default_max_packet_size=MAX_PACKET)
        try:
            known = self._known_keys()
            if known:
                # Ask only for key types we know, so a different type is a changed key and
                # never silently a "new" one.
                opts = transport.get_security_options()
                wanted = [k for k in opts.key_types if k in known] or list(known)
                opts.key_types = wanted
            left = max(0.01, deadline.poll_timeout(ep.connect_timeout_s) -
                       (time.monotonic() - started))
            transport.start_client(timeout=left)
            self._check_host_key(transport.get_remote_server_key(), known)
            self._authenticate(transport, deadline)
        except paramiko.SSHException as exc:
            transport.close()
            if deadline.cancelled:
                raise Cancelled(f"connecting to {ep.address} cancelled") from exc
            raise InfraError("transport_broken", f"SSH handshake with {ep.address} failed: "
                             f"{exc}", host=ep.host, port=ep.port) from exc
        except (OSError, EOFError) as exc:
            transport.close()
            raise InfraError("transport_broken", f"connection to {ep.address} broke during "
                             f"the handshake: {exc}", host=ep.host, port=ep.port) from exc
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(15)
        log.info("device=%s ssh connected to %s@%s in %.3fs", self.device_id, ep.user,
                 ep.address, time.monotonic() - started)
        return transport

    def _known_keys(self) -> dict[str, paramiko.PKey]:
        path = self.endpoint.known_hosts
        if not path.exists():
            return {}
        try:
            keys = paramiko.HostKeys(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise InputError("bad_config", f"cannot read known_hosts {path}: {exc}",
                             known_hosts=str(path)) from exc
        entry = keys.lookup(self.endpoint.known_hosts_name)
        return dict(entry) if entry else {}

    def _check_host_key(self, key: paramiko.PKey, known: dict[str, paramiko.PKey]) -> None:
        ep = self.endpoint
        fp = fingerprint(key)
        detail = {"host": ep.host, "port": ep.port, "key_type": key.get_name(),
                  "fingerprint": fp, "known_hosts": str(ep.known_hosts)}
        if known:
            if known.get(key.get_name()) == key:
                return
            expected = {t: fingerprint(k) for t, k in known.items()}
            raise DeviceError(
                "host_key_changed",
                f"host key of {ep.known_hosts_name} is {fp}, but known_hosts has "
                f"{', '.join(expected.values())}: refusing to connect",
                expected=expected,
                fix="if the target was reinstalled, verify the new key out of band and "
                    f"replace its line in {ep.known_hosts} (ssh-keygen -R "
                    f"'{ep.known_hosts_name}' -f {ep.known_hosts})",
                **detail,
            )
        if not ep.trust_on_first_use:
            raise DeviceError(
                "host_key_unknown",
                f"host key of {ep.known_hosts_name} ({key.get_name()} {fp}) is not in "
                f"{ep.known_hosts}: refusing to connect",
                fix=f"verify the fingerprint on the target (ssh-keygen -lf "
                    f"/etc/ssh/ssh_host_{key.get_name().split('-')[-1]}_key.pub) and add it "
                    f"(ssh-keyscan -p {ep.port} {ep.host} >> {ep.known_hosts}), or set "
                    "trust_on_first_use = true for this device",
                **detail,
            )
        self._learn(key)
        log.warning("device=%s trusting %s host key %s of %s on first use; stored in %s",
                    self.device_id, key.get_name(), fp, ep.known_hosts_name, ep.known_hosts)

    def _learn(self, key: paramiko.PKey) -> None:
        path = self.endpoint.known_hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{self.endpoint.known_hosts_name} {key.get_name()} {key.get_base64()}\n"
        # Append with O_APPEND and 0600: concurrent bridges may learn keys of other hosts.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _authenticate(self, transport: paramiko.Transport, deadline: Deadline) -> None:
        ep = self.endpoint
        keys: list[paramiko.PKey] = []
        if ep.key_file is not None:
            try:
                keys.append(paramiko.PKey.from_path(str(ep.key_file)))
            except FileNotFoundError as exc:
                raise InputError("bad_config", f"key_file {ep.key_file} does not exist",
                                 key_file=str(ep.key_file)) from exc
            except paramiko.PasswordRequiredException as exc:
                raise DeviceError("auth_failed", f"key_file {ep.key_file} is encrypted; use "
                                  "an ssh-agent or an unencrypted deploy key",
                                  key_file=str(ep.key_file), user=ep.user, host=ep.host) from exc
            except (paramiko.SSHException, ValueError, OSError) as exc:
                raise InputError("bad_config", f"key_file {ep.key_file} is not a usable "
                                 f"private key: {exc}", key_file=str(ep.key_file)) from exc
        else:
            with contextlib.suppress(paramiko.SSHException):
                keys.extend(paramiko.Agent().get_keys())
        if not keys:
            raise DeviceError("auth_failed", f"no SSH key to offer to {ep.user}@{ep.address}: "
                              "set key_file or load a key into ssh-agent",
                              user=ep.user, host=ep.host, port=ep.port)
        tried = []
        for key in keys:
            deadline.check()
            tried.append(fingerprint(key))
            try:
                transport.auth_publickey(ep.user, key)
            except paramiko.AuthenticationException:
                continue
            if transport.is_authenticated():
                return
        raise DeviceError(
            "auth_failed",
            f"{ep.user}@{ep.address} refused the key(s) {', '.join(tried)}",
            user=ep.user, host=ep.host, port=ep.port, offered=tried,
            fix=f"add the public key to ~{ep.user}/.ssh/authorized_keys on the target",
        )

    def _drop(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        with self._lock:
            self._drop()

    def _broken(self, what: str, exc: BaseException | None = None, **detail) -> InfraError:
        ep = self.endpoint
        reason = f": {exc}" if exc is not None and str(exc) else ""
        return InfraError("transport_broken", f"connection to {ep.address} broke during "
                          f"{what}{reason}", host=ep.host, port=ep.port, **detail)

    # -- commands ----------------------------------------------------------------------------

    def open_channel(self, deadline: Deadline) -> paramiko.Channel:
        """A fresh session channel on the (re-established) connection."""
        transport = self.ensure(deadline)
        try:
            return transport.open_session(timeout=max(0.01, deadline.poll_timeout(10.0)))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            with self._lock:
                self._drop()
            raise self._broken("opening a channel", exc) from exc

    def run(
        self,
        command: str,
        deadline: Deadline,
        *,
        stdin: bytes | None = None,
        check: bool = False,
        what: str = "command",
        on_progress: Callable[[int, int], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` through the target's shell, bounded by ``deadline`` here and by
        ``timeout`` there. ``stdin`` is streamed in chunks that check the deadline, with
        ``on_progress(sent, total)`` after each. ``check=True`` turns a non-zero status into
        ``InfraError("tool_failed")``."""
        deadline.check()
        remaining = deadline.remaining()
        wrapped = command
        if math.isfinite(remaining):
            secs = max(1, math.ceil(remaining))
            wrapped = (f"timeout -k {REMOTE_KILL_AFTER_S} {secs} sh -c "
                       f"{shlex.quote(command)}")
        started = time.monotonic()
        chan = self._start_command(wrapped, deadline, what)
        out, err = bytearray(), bytearray()
        try:
            if stdin is not None:
                self._send_all(chan, stdin, deadline, what, on_progress)
                chan.shutdown_write()
            status = self._collect(chan, out, err, deadline, what)
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
            with self._lock:
                self._drop()
            raise self._broken(what, exc, command=command[:300]) from exc
        finally:
            chan.close()
        result = CommandResult(command, status, bytes(out), bytes(err),
                               time.monotonic() - started)
        log.debug("device=%s %s exited %d in %.3fs", self.device_id, what, status,
                  result.seconds)
        if check and not result.ok:
            raise InfraError("tool_failed", f"{what} on {self.endpoint.address} exited with "
                             f"status {status}: {result.err_text(500)}", command=command[:300],
                             status=status, stderr_tail=result.err_text())
        return result

    def _start_command(self, command: str, deadline: Deadline, what: str) -> paramiko.Channel:
        """Open a channel and exec ``command``. A connection that died while idle (the
        target rebooted, a NAT forgot us) fails here, before the command ran: then it is
        re-established once and the command started on the new one."""
        for attempt in (1, 2):
            chan = self.open_channel(deadline)
            try:
                chan.exec_command(command)
                return chan
            except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
                chan.close()
                with self._lock:
                    self._drop()
                if attempt == 2:
                    raise self._broken(what, exc) from exc
                log.info("device=%s %s: connection unusable (%s); reconnecting",
                         self.device_id, what, exc)
        raise AssertionError("unreachable")

    def _collect(self, chan: paramiko.Channel, out: bytearray, err: bytearray,
                 deadline: Deadline, what: str) -> int:
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
                continue
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                continue
            if chan.exit_status_ready() and chan.eof_received:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                return chan.recv_exit_status()
            if chan.closed or not chan.get_transport().is_active():
                raise self._broken(what)
            if deadline.cancelled:
                raise Cancelled(f"{what} on {self.endpoint.address} cancelled")
            if deadline.expired:
                raise deadline.timeout_error(command=what, stdout_tail=out[-500:].decode(
                    "utf-8", "replace"), stderr_tail=err[-500:].decode("utf-8", "replace"))
            # The channel's pipe wakes us on stdout data and on close; stderr is polled.
            select.select([chan], [], [], deadline.poll_timeout(0.02))

    def _send_all(self, chan: paramiko.Channel, data: bytes, deadline: Deadline,
                  what: str, on_progress: Callable[[int, int], None] | None = None) -> None:
        view = memoryview(data)
        total = len(data)
        while view:
            deadline.check()
            chan.settimeout(deadline.poll_timeout(5.0))
            try:
                sent = chan.send(view[:TRANSFER_CHUNK])
            except TimeoutError:
                continue
            if sent <= 0:
                raise self._broken(what)
            view = view[sent:]
            if on_progress is not None:
                on_progress(total - len(view), total)

    # -- transfers ---------------------------------------------------------------------------

    def sftp(self, deadline: Deadline) -> paramiko.SFTPClient:
        """The connection's SFTP client (opened once per connection)."""
        with self._lock:
            transport = self.ensure(deadline)
            if self._sftp is None or self._sftp.get_channel().closed:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(
                        transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    self._drop()
                    raise self._broken("opening SFTP", exc) from exc
            return self._sftp

    def put_bytes(
        self,
        data: bytes,
        remote_path: str,
        deadline: Deadline,
        *,
        mode: int = 0o644,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Write ``data`` to ``remote_path`` over SFTP in chunks, checking ``deadline``
        between chunks; the channel timeout bounds a single blocked write. Raises
        ``OSError`` subclasses from the server (e.g. permission, no space) unchanged for the
        caller to classify; transport trouble is ``transport_broken``."""
        sftp = self.sftp(deadline)
        chan = sftp.get_channel()
        done = 0
        try:
            chan.settimeout(deadline.poll_timeout(30.0))
            with sftp.open(remote_path, "wb") as fh:
                fh.set_pipelined(True)
                view = memoryview(data)
                while done < len(data):
                    deadline.check()
                    chan.settimeout(max(0.05, deadline.poll_timeout(30.0)))
                    chunk = view[done:done + TRANSFER_CHUNK]
                    fh.write(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, len(data))
                deadline.check()
                fh.chmod(mode)
            # close() above waited for every pipelined write to be acknowledged.
        except TimeoutError as exc:
            with self._lock:
                self._drop()
            if deadline.cancelled:
                raise Cancelled(f"upload of {remote_path} cancelled") from exc
            if deadline.expired:
                raise deadline.timeout_error(path=remote_path, sent_bytes=done) from exc
            raise self._broken(f"upload of {remote_path}", exc, sent_bytes=done) from exc
        except (Cancelled, InfraError):
            # The file handle may have requests in flight: drop the SFTP session so the next
            # user starts clean.
            with self._lock:
                self._sftp = None
            raise
        except (paramiko.SSHException, EOFError) as exc:
            with self._lock:
                self._drop()
            raise self._broken(f"upload of {remote_path}", exc, sent_bytes=done) from exc
        except OSError as exc:
            if not self.connected:
                with self._lock:
                    self._drop()
                raise self._broken(f"upload of {remote_path}", exc, sent_bytes=done) from exc
            raise
