"""A real OpenSSH server on loopback playing a Raspberry Pi, for tests and bench/bench_rpi.py.

Runs Debian's ``/usr/sbin/sshd`` in the foreground on a free 127.0.0.1 port with its own host
key, sshd_config and authorized_keys, for a dedicated unprivileged user (created with
``useradd`` when missing; needs root, which CI has). The "Pi" runs the runner with this repo's
Python environment (derived from ``sys.executable``), so the real LiteRT interpreter runs there.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
USERS = ("tinyml-pi", "tinyml-pi2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60, **kw)


def ensure_user(name: str) -> pwd.struct_passwd:
    """The unprivileged test user, created if missing, with an unlocked (key-only) account."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--create-home", "--shell", "/bin/sh", name])
        pw = pwd.getpwnam(name)
    # useradd leaves the password "!" (locked); sshd without PAM refuses locked accounts even
    # for keys. "*" means: no password login possible, account not locked.
    _run(["usermod", "-p", "*", name])
    return pw


def as_user(user: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True,
                          text=True, timeout=timeout)


def make_traversable(path: Path, user: str) -> list[str]:
    """Let ``user`` reach ``path``: add the others-execute bit (traverse, not list) to every
    ancestor directory that lacks it. Returns the directories changed (left changed: a
    parallel test run may be using them; only the x bit is added)."""
    changed = []
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
            changed.append(str(parent))
    return changed


def target_python(user: str) -> str:
    """This test run's Python (with ai_edge_litert and numpy), made executable for ``user``."""
    python = sys.executable
    probe = [python, "-c", "import ai_edge_litert.interpreter, numpy"]
    if as_user(user, probe).returncode != 0:
        real = Path(os.path.realpath(python))
        changed = make_traversable(real, user)
        changed += make_traversable(Path(sys.prefix) / "lib", user)
        if changed:
            print(f"sshd fixture: added o+x to {changed} so {user} can run {python}",
                  file=sys.stderr)
        res = as_user(user, probe)
        if res.returncode != 0:
            raise RuntimeError(f"{user} cannot run {python} with the runtime: {res.stderr}")
    return python


@dataclass
class Sshd:
    """A running sshd and everything a device config needs to reach it."""

    root: Path
    port: int
    host_key: Path
    client_key: Path
    proc: subprocess.Popen
    users: tuple[str, ...]
    python: str
    homes: dict[str, Path] = field(default_factory=dict)

    host = "127.0.0.1"

    def host_public_line(self) -> str:
        """The known_hosts line for this server."""
        pub = self.host_key.with_suffix(".pub").read_text().split()
        return f"[{self.host}]:{self.port} {pub[0]} {pub[1]}\n"

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.host_public_line())
        return path

    def device_settings(self, known_hosts: Path, workdir: str, user: str = USERS[0],
                        **extra) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "user": user,
            "key_file": str(self.client_key),
            "known_hosts": str(known_hosts),
            "python": self.python,
            "workdir": workdir,
            **extra,
        }

    def connection_pids(self) -> list[int]:
        """Per-connection sshd processes and everything they started that is still attached
        (the listener's descendants; detached runners were re-parented and are not included)."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
        found = []
        for pid in parents:
            p = parents.get(pid)
            while p and p != 1:
                if p == self.proc.pid:
                    found.append(pid)
                    break
                p = parents.get(p)
        return found

    def cut_connections(self) -> int:
        """SIGKILL every live SSH connection (as a pulled cable or a crashed sshd would)."""
        pids = self.connection_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        return len(pids)

    def user_pids(self, user: str) -> list[int]:
        uid = pwd.getpwnam(user).pw_uid
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid:
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def workdir(self, name: str, user: str = USERS[0]) -> str:
        """A fresh work directory for ``user``, removed at teardown."""
        path = self.homes[user] / "tests" / name
        if path.exists():
            shutil.rmtree(path)
        return str(path)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        # Runners the tests started run detached as the test users: stop exactly those.
        for user in self.users:
            for pid in self.user_pids(user):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 15)
        for user in self.users:
            shutil.rmtree(self.homes[user] / "tests", ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


def start_sshd(users: tuple[str, ...] = USERS) -> Sshd:
    """Start sshd for ``users`` (created if missing). Call ``.stop()`` when done."""
    if os.geteuid() != 0:
        raise RuntimeError("the sshd fixture needs root (to create the test user and run sshd)")
    homes = {}
    for user in users:
        pw = ensure_user(user)
        homes[user] = Path(pw.pw_dir)
        tests_dir = homes[user] / "tests"
        tests_dir.mkdir(parents=True, exist_ok=True)
        os.chown(tests_dir, pw.pw_uid, pw.pw_gid)
    python = target_python(users[0])
    root = Path(tempfile.mkdtemp(prefix="tinyml-sshd-"))
    os.chmod(root, 0o755)
    host_key = root / "host_ed25519"
    client_key = root / "client_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key),
          "-C", "tinyml-tests"])
    auth = root / "authorized_keys"
    auth.write_text(client_key.with_suffix(".pub").read_text())
    os.chmod(auth, 0o644)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {root}/sshd.pid\n"
        f"AuthorizedKeysFile {auth}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # the fixture's files live under /tmp (world-writable): skip the ownership checks
        "StrictModes no\n"
        f"AllowUsers {' '.join(users)}\n"
        "Subsystem sftp internal-sftp\n"
        "MaxStartups 64\n"
        "MaxSessions 64\n"
        "LogLevel VERBOSE\n"
    )
    log = open(root / "sshd.log", "wb")  # noqa: SIM115 - lives as long as sshd
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("sshd did not start listening within 10 s")
        time.sleep(0.05)
    return Sshd(root=root, port=port, host_key=host_key, client_key=client_key, proc=proc,
                users=users, python=python, homes=homes)
