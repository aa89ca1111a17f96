"""Fixtures for the Raspberry Pi driver: a real OpenSSH server on loopback (see sshd.py), device
settings pointing at it, and drivers that are closed (runner stopped) after each test."""

from __future__ import annotations

import json
import os
import pwd
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hal.deadline import Deadline
from hal.driver import DriverContext, build_driver
from hal.rpi.driver import RpiDriver
from tests.rpi.sshd import USERS, Sshd, start_sshd

DATA = Path(__file__).resolve().parents[1] / "data" / "tflm-examples"
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "models"

# A runtime whose invoke() segfaults for one model (as a broken delegate would): loaded through
# PYTHONPATH by a wrapper used as the device's `python`. Everything else is the real LiteRT.
CRASHING_SITECUSTOMIZE = '''
import os, signal, sys
_bad = os.environ.get("CRASH_SHA", "")
if _bad and len(sys.argv) > 1 and sys.argv[1].rstrip("/").endswith(_bad):
    import ai_edge_litert.interpreter as _m
    def _crash(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)
    _m.Interpreter.invoke = _crash
'''


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    server = start_sshd()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def known_hosts(sshd: Sshd, tmp_path: Path) -> Path:
    return sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def make_driver(sshd: Sshd, known_hosts: Path, tmp_path: Path
                ) -> Iterator[Callable[..., RpiDriver]]:
    """``make_driver(workdir=None, user=..., **settings)`` -> a driver for the test sshd with
    its own work directory; runners are stopped and connections closed afterwards."""
    drivers: list[RpiDriver] = []

    def factory(workdir: str | None = None, user: str = USERS[0], device_id: str | None = None,
                **extra) -> RpiDriver:
        wd = workdir or sshd.workdir(f"w-{uuid.uuid4().hex[:8]}", user)
        settings = sshd.device_settings(known_hosts, wd, user, **{"period_s": 0.05, **extra})
        drv = build_driver("rpi", device_id or f"pi-{len(drivers)}", settings,
                           DriverContext(state_dir=tmp_path / "state"))
        drivers.append(drv)
        return drv

    yield factory
    for drv in drivers:
        try:
            if drv._facts is not None:
                drv.session.run(drv._supervisor(drv._facts).stop_script(), Deadline(10))
        except Exception:
            pass
        drv.close()


@pytest.fixture(scope="session")
def crashing_python(sshd: Sshd) -> Callable[[str], str]:
    """``crashing_python(sha)`` -> a `python` for the device whose runtime segfaults in
    invoke() when the runner runs the deployment of ``sha``."""
    site = sshd.root / "crashpy"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(CRASHING_SITECUSTOMIZE)

    def make(sha: str) -> str:
        wrapper = sshd.root / f"python-crash-{sha[:8]}"
        wrapper.write_text(f"#!/bin/sh\nCRASH_SHA={sha} PYTHONPATH={site} "
                           f"exec {sshd.python} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        return str(wrapper)

    return make


def model(name: str) -> bytes:
    """A model by file name from samples/models or tests/data/tflm-examples."""
    for base in (SAMPLES, DATA):
        if (base / name).exists():
            return (base / name).read_bytes()
    raise FileNotFoundError(name)


def reference(name: str) -> dict:
    return json.loads((SAMPLES / name).with_suffix(".json").read_text())


def read_as_root(path: str) -> str:
    return Path(path).read_text()


def user_uid(user: str = USERS[0]) -> int:
    return pwd.getpwnam(user).pw_uid
