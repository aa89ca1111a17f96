"""The SSH transport against a real OpenSSH server: host keys, authentication, deadlines,
reconnects, quoting."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from hal.deadline import Deadline
from hal.errors import Cancelled, DeviceError, InfraError, InputError
from hal.rpi.ssh import SshEndpoint, SshSession, fingerprint, quote_args
from tests.rpi.sshd import USERS, Sshd, free_port


def endpoint(sshd: Sshd, known_hosts: Path, **kw) -> SshEndpoint:
    args = {"host": sshd.host, "port": sshd.port, "user": USERS[0],
            "key_file": sshd.client_key, "known_hosts": known_hosts, **kw}
    return SshEndpoint(**args)


def test_runs_a_command_and_reuses_the_connection(sshd, known_hosts):
    session = SshSession(endpoint(sshd, known_hosts))
    try:
        first = session.run("id -un; echo err >&2; exit 3", Deadline(10))
        assert first.status == 3
        assert first.text().strip() == USERS[0]
        assert first.err_text() == "err"
        for _ in range(3):
            assert session.run("true", Deadline(10)).ok
        assert session.connects == 1
    finally:
        session.close()


def test_changed_host_key_is_refused_with_fingerprints(sshd, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.client_key))  # not the host key
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{sshd.host}]:{sshd.port} {other.get_name()} {other.get_base64()}\n")
    session = SshSession(endpoint(sshd, kh))
    with pytest.raises(DeviceError) as info:
        session.run("true", Deadline(10))
    err = info.value
    assert err.code == "host_key_changed"
    host_key = paramiko.Ed25519Key.from_private_key_file(str(sshd.host_key))
    assert err.detail["fingerprint"] == fingerprint(host_key)
    assert err.detail["expected"] == {"ssh-ed25519": fingerprint(other)}
    assert "ssh-keygen -R" in err.detail["fix"]
    assert kh.read_text().count("\n") == 1  # never rewritten


def test_changed_key_is_refused_even_with_trust_on_first_use(sshd, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.client_key))
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{sshd.host}]:{sshd.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(DeviceError, match="host_key_changed"):
        SshSession(endpoint(sshd, kh, trust_on_first_use=True)).run("true", Deadline(10))


def test_unknown_host_key_is_refused_by_default(sshd, tmp_path):
    kh = tmp_path / "known_hosts"  # does not exist
    with pytest.raises(DeviceError) as info:
        SshSession(endpoint(sshd, kh)).run("true", Deadline(10))
    assert info.value.code == "host_key_unknown"
    assert info.value.detail["fingerprint"].startswith("SHA256:")
    assert not kh.exists()


def test_trust_on_first_use_stores_the_key(sshd, tmp_path):
    kh = tmp_path / "sub" / "known_hosts"
    session = SshSession(endpoint(sshd, kh, trust_on_first_use=True))
    assert session.run("true", Deadline(10)).ok
    session.close()
    assert kh.read_text() == sshd.host_public_line()
    assert (kh.stat().st_mode & 0o777) == 0o600
    # Now known: a strict session accepts it.
    strict = SshSession(endpoint(sshd, kh))
    assert strict.run("true", Deadline(10)).ok
    strict.close()


def test_refused_key_is_auth_failed(sshd, known_hosts, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    with pytest.raises(DeviceError) as info:
        SshSession(endpoint(sshd, known_hosts, key_file=stranger)).run("true", Deadline(10))
    assert info.value.code == "auth_failed"
    assert info.value.detail["user"] == USERS[0]
    assert info.value.detail["offered"][0].startswith("SHA256:")


def test_unknown_user_is_auth_failed(sshd, known_hosts):
    with pytest.raises(DeviceError, match="auth_failed"):
        SshSession(endpoint(sshd, known_hosts, user="nobody")).run("true", Deadline(10))


def test_bad_key_files_are_config_errors(sshd, known_hosts, tmp_path):
    with pytest.raises(InputError, match="bad_config"):
        SshSession(endpoint(sshd, known_hosts, key_file=tmp_path / "missing")).run(
            "true", Deadline(10))
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(InputError, match="bad_config"):
        SshSession(endpoint(sshd, known_hosts, key_file=garbage)).run("true", Deadline(10))


def test_closed_port_is_transport_broken(sshd, known_hosts):
    with pytest.raises(InfraError) as info:
        SshSession(endpoint(sshd, known_hosts, port=free_port())).run("true", Deadline(10))
    assert info.value.code == "transport_broken"
    assert info.value.retryable


def test_silent_server_times_out_on_connect(known_hosts):
    import socket

    with socket.socket() as server:  # accepts TCP but never speaks SSH
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        ep = SshEndpoint("127.0.0.1", server.getsockname()[1], USERS[0], None, known_hosts,
                         connect_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(InfraError) as info:
            SshSession(ep).run("true", Deadline(10))
        assert info.value.code in ("timeout", "transport_broken")
        assert time.monotonic() - started < 5


def test_command_deadline_kills_the_remote_command(sshd, known_hosts):
    session = SshSession(endpoint(sshd, known_hosts))
    marker = f"30.{time.monotonic_ns() % 10**9}"  # a unique argument to find the process by
    started = time.monotonic()
    with pytest.raises(InfraError) as info:
        session.run(f"sleep {marker}", Deadline(1.0))
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 3
    # The target's `timeout` ends the command too (within its kill grace).
    end = time.monotonic() + 6
    while time.monotonic() < end and _has_process(sshd, marker):
        time.sleep(0.1)
    assert not _has_process(sshd, marker)
    assert session.run("true", Deadline(10)).ok  # the connection survived
    session.close()


def _has_process(sshd: Sshd, marker: str) -> bool:
    for pid in sshd.user_pids(USERS[0]):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return True
        except OSError:
            pass
    return False


def test_cancel_stops_a_running_command(sshd, known_hosts):
    session = SshSession(endpoint(sshd, known_hosts))
    deadline = Deadline(30)
    threading.Timer(0.3, deadline.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        session.run("sleep 20", deadline)
    assert time.monotonic() - started < 3
    session.close()


def test_reconnects_after_the_connection_drops(sshd, known_hosts):
    session = SshSession(endpoint(sshd, known_hosts))
    assert session.run("true", Deadline(10)).ok
    assert sshd.cut_connections() > 0
    end = time.monotonic() + 5
    while session.connected and time.monotonic() < end:
        time.sleep(0.05)
    assert session.run("echo back", Deadline(10)).text() == "back\n"
    assert session.connects == 2
    session.close()


def test_stdin_streams_and_hostile_arguments_stay_one_word(sshd, known_hosts):
    session = SshSession(endpoint(sshd, known_hosts))
    hostile = ["a b", "$(touch /tmp/pwned)", "`id`", "'; rm -rf ~; '", "\"", "\\", "*", "-n",
               "ünï", "x\ty"]
    res = session.run("printf '%s\\n' " + quote_args(hostile), Deadline(10))
    assert res.text().split("\n")[:-1] == hostile
    data = os.urandom(3 << 20)
    seen = []
    res = session.run("sha256sum | cut -c1-64", Deadline(20), stdin=data,
                      on_progress=lambda sent, total: seen.append((sent, total)))
    import hashlib

    assert res.text().strip() == hashlib.sha256(data).hexdigest()
    assert seen[-1] == (len(data), len(data)) and len(seen) > 1
    session.close()


def test_sftp_put_with_deadline_and_cancel(sshd, known_hosts):
    session = SshSession(endpoint(sshd, known_hosts))
    home = sshd.homes[USERS[0]] / "tests"
    data = os.urandom(2 << 20)
    session.put_bytes(data, f"{home}/sftp.bin", Deadline(20), mode=0o600)
    assert (home / "sftp.bin").read_bytes() == data
    assert (home / "sftp.bin").stat().st_mode & 0o777 == 0o600
    deadline = Deadline(20)

    def cancel_midway(sent: int, total: int) -> None:
        if sent >= (1 << 20):
            deadline.cancel()

    with pytest.raises(Cancelled):
        session.put_bytes(os.urandom(4 << 20), f"{home}/cancelled.bin", deadline,
                          on_progress=cancel_midway)
    with pytest.raises(PermissionError):
        session.put_bytes(b"x", "/etc/not-allowed", Deadline(10))
    assert session.run("true", Deadline(10)).ok
    session.close()
