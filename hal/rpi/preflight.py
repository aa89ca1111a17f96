"""Preflight: everything about a target that decides whether a model can run there, learned
in ONE remote Python invocation (one round trip) before anything is copied.

The probe imports nothing heavy: interpreters are located with ``importlib.util.find_spec``
and versioned with ``importlib.metadata``, so it costs a Python start-up (~20 ms on a PC,
~100 ms on a Pi 4), not a NumPy import. The runner reports an import that then fails anyway.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from hal.deadline import Deadline
from hal.errors import DeviceError, FitError, InfraError
from hal.rpi.ssh import SshSession, quote_args

log = logging.getLogger(__name__)

ARCHES = ("aarch64", "armv7l", "x86_64")
ARCH_BOARD = {"aarch64": "rpi64", "armv7l": "rpi32", "x86_64": "linux-x86_64"}
RUNNER_FILES = ("runner.py", "protocol.py", "supervise.sh", "settings.json")

# Runs on the target with any Python >= 3.6 (no f-string = tricks, no walrus) so that an old
# interpreter is reported as unsupported instead of failing with a SyntaxError.
PROBE = r'''
import hashlib, importlib, json, os, platform, shutil, sys, tempfile
args = json.loads(sys.argv[1])
out = {"arch": platform.machine(), "python": list(sys.version_info[:3]),
       "executable": sys.executable, "uid": os.getuid()}
def version(dist):
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:
        return "unknown"
def find(mod, dist):
    try:
        import importlib.util
        if importlib.util.find_spec(mod) is None:
            return None
    except Exception:
        return None
    return version(dist)
out["runtimes"] = {"ai_edge_litert": find("ai_edge_litert", "ai-edge-litert"),
                   "tflite_runtime": find("tflite_runtime", "tflite-runtime")}
out["numpy"] = find("numpy", "numpy")
workdir = os.path.abspath(os.path.expanduser(args["workdir"]))
out["workdir"] = workdir
probe = workdir
while not os.path.exists(probe):
    probe = os.path.dirname(probe)
st = os.statvfs(probe)
out["free_disk"] = st.f_bavail * st.f_frsize
out["writable"] = True
out["write_error"] = ""
try:
    os.makedirs(os.path.join(workdir, "models"), exist_ok=True)
    os.makedirs(os.path.join(workdir, "run"), exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".preflight-", dir=os.path.join(workdir, "models"))
    os.close(fd)
    os.unlink(name)
except OSError as exc:
    out["writable"] = False
    out["write_error"] = "%s: %s" % (exc.filename or workdir, exc.strerror)
mem = {}
try:
    with open("/proc/meminfo") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            mem[k] = int(v.split()[0]) * 1024
except (OSError, ValueError):
    pass
out["mem_available"] = mem.get("MemAvailable", mem.get("MemFree"))
out["mem_total"] = mem.get("MemTotal")
def sha(path, limit=None):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
deploy = os.path.join(workdir, "models", args["sha256"])
d = {"exists": os.path.isdir(deploy), "model_ok": False, "files": {}}
if d["exists"]:
    try:
        d["model_ok"] = sha(os.path.join(deploy, "model.tflite")) == args["sha256"]
    except OSError:
        pass
    for name in args["files"]:
        try:
            d["files"][name] = sha(os.path.join(deploy, name))
        except OSError:
            pass
out["deployment"] = d
cur = os.path.join(workdir, "current")
out["current"] = os.path.basename(os.readlink(cur)) if os.path.islink(cur) else None
venv = os.path.join(workdir, "venv", "bin", "python")
out["venv_python"] = venv if os.access(venv, os.X_OK) else None
out["tools"] = dict((t, shutil.which(t)) for t in
                    ("timeout", "tar", "sha256sum", "setsid", "tail", "systemctl"))
uid = os.getuid()
user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
out["systemd"] = {
    "booted": os.path.isdir("/run/systemd/system"),
    "user_bus": os.path.exists("/run/user/%d/bus" % uid),
    "linger": bool(user) and os.path.exists("/var/lib/systemd/linger/" + user),
}
print(json.dumps(out))
'''


@dataclass(frozen=True)
class TargetFacts:
    """What preflight learned about the target (the probe's JSON, typed)."""

    arch: str
    python: tuple[int, int, int]
    executable: str
    runtimes: dict[str, str | None]
    numpy: str | None
    workdir: str
    writable: bool
    write_error: str
    free_disk: int
    mem_available: int | None
    mem_total: int | None
    deployment: dict[str, Any]
    current: str | None
    venv_python: str | None
    tools: dict[str, str | None]
    systemd: dict[str, bool]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def board(self) -> str:
        return ARCH_BOARD.get(self.arch, "linux-" + self.arch)

    @property
    def systemd_usable(self) -> bool:
        s = self.systemd
        return bool(s.get("booted") and s.get("user_bus") and s.get("linger")
                    and self.tools.get("systemctl"))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def probe(session: SshSession, python: str, workdir: str, sha256: str,
          deadline: Deadline) -> TargetFacts:
    """Run the probe with ``python`` on the target and parse what it printed."""
    args = json.dumps({"workdir": workdir, "sha256": sha256, "files": list(RUNNER_FILES)})
    res = session.run(quote_args([python, "-c", PROBE, args]), deadline, what="preflight")
    if res.status == 127 or (res.status != 0 and not res.stdout.strip()
                             and b"not found" in res.stderr):
        raise DeviceError("runtime_missing", f"the interpreter {python!r} does not exist on "
                          f"the target: {res.err_text(300)}", python=python,
                          fix="install Python 3 on the target or set `python` to its path")
    if res.status != 0:
        raise DeviceError("target_unsupported", f"the preflight probe failed with "
                          f"{python!r} (status {res.status}): {res.err_text(500)}",
                          python=python, status=res.status)
    try:
        raw = json.loads(res.stdout.decode("utf-8").strip().splitlines()[-1])
        return TargetFacts(
            arch=str(raw["arch"]), python=tuple(raw["python"]), executable=raw["executable"],
            runtimes=dict(raw["runtimes"]), numpy=raw["numpy"], workdir=raw["workdir"],
            writable=bool(raw["writable"]), write_error=raw["write_error"],
            free_disk=int(raw["free_disk"]), mem_available=raw["mem_available"],
            mem_total=raw["mem_total"], deployment=raw["deployment"], current=raw["current"],
            venv_python=raw["venv_python"], tools=raw["tools"], systemd=raw["systemd"],
            raw=raw,
        )
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise InfraError("tool_failed", f"the preflight probe printed something unexpected: "
                         f"{res.text()[:300]!r}", stderr_tail=res.err_text(500)) from exc


def choose_runtime(facts: TargetFacts) -> str:
    """The interpreter the runner will import, or a classified error saying why none can.

    ``ai_edge_litert`` is preferred; ``tflite_runtime`` (last release 2.14) is the fallback and
    needs NumPy below 2 and Python 3.11 or older."""
    py = facts.python[:2]
    numbers = {"arch": facts.arch, "python": ".".join(map(str, facts.python)),
               "numpy": facts.numpy, "runtimes": facts.runtimes}
    if facts.arch not in ARCHES:
        raise DeviceError("target_unsupported", f"architecture {facts.arch} is not supported "
                          f"(supported: {', '.join(ARCHES)})", **numbers)
    if py < (3, 8):
        raise DeviceError("target_unsupported", f"Python {numbers['python']} is too old for "
                          "the runner (3.8 or newer)", **numbers)
    if not any(facts.runtimes.values()):
        # Before the NumPy check: installing NumPy would not help, nothing can be installed.
        _check_installable(facts, numbers)
    if facts.numpy is None:
        raise DeviceError("runtime_missing", "NumPy is not importable on the target",
                          fix=install_hint(facts), **numbers)
    if facts.runtimes.get("ai_edge_litert"):
        return "ai_edge_litert"
    if facts.runtimes.get("tflite_runtime"):
        major = _major(facts.numpy)
        if major is not None and major >= 2:
            raise DeviceError("runtime_missing", f"tflite_runtime is installed but NumPy "
                              f"{facts.numpy} is too new for it (it crashes at interpreter "
                              "creation with NumPy 2); install numpy<2",
                              fix=install_hint(facts), **numbers)
        return "tflite_runtime"
    raise DeviceError("runtime_missing", f"neither ai_edge_litert nor tflite_runtime is "
                      f"importable by {facts.executable}", fix=install_hint(facts), **numbers)


def _check_installable(facts: TargetFacts, numbers: dict[str, Any]) -> None:
    if facts.arch == "armv7l" and facts.python[:2] >= (3, 12):
        raise DeviceError("target_unsupported", f"no TFLite interpreter exists for armv7l "
                          f"with Python {numbers['python']}: LiteRT has no armv7l wheels and "
                          "tflite-runtime stops at Python 3.11", **numbers)


def pip_packages(facts: TargetFacts) -> list[str]:
    """What to pip-install for this target's architecture and Python (wheels only; see
    PIP_OPTIONS).

    ``ai-edge-litert`` has wheels for CPython 3.10-3.14 on aarch64 and x86_64 and works with
    NumPy 1 and 2, so pip picks the newest release built for the target's Python itself (no
    pin needed for Bookworm's 3.11). Older Pythons and armv7l (no LiteRT wheels) get the last
    ``tflite-runtime`` (CPython 3.8-3.11), which crashes with NumPy 2: ``numpy<2``."""
    _check_installable(facts, {"arch": facts.arch,
                               "python": ".".join(map(str, facts.python))})
    if facts.arch == "armv7l" or facts.python[:2] < (3, 10):
        return ["tflite-runtime==2.14.0", "numpy<2"]
    return ["ai-edge-litert", "numpy"]


# Wheels only: without this, a missing wheel makes pip build NumPy from source, which takes
# hours on a Pi and needs a compiler; a clear "no matching distribution" is better.
PIP_OPTIONS = ("--only-binary=:all:", "--no-input", "--disable-pip-version-check",
               "--progress-bar=off", "--quiet")


def install_hint(facts: TargetFacts) -> str:
    """The command a technician would run on the target to install the missing runtime."""
    if facts.runtimes.get("ai_edge_litert"):
        packages = ["numpy"]  # only NumPy is missing
    elif facts.runtimes.get("tflite_runtime"):
        packages = ["numpy<2"]
    else:
        packages = pip_packages(facts)
    return (f"on the target: {facts.executable} -m pip install "
            + " ".join(repr(p) if "<" in p else p for p in packages)
            + " (or set install_runtime = true to install into <workdir>/venv)")


def _major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def check_fit(facts: TargetFacts, *, model_bytes: int, memory_estimate_bytes: int,
              disk_reserve_bytes: int, runtime_memory_bytes: int, upload_needed: bool) -> dict:
    """Raise ``target_not_writable``, ``fit_disk`` or ``fit_memory`` with every number, or
    return the numbers for the step record."""
    if not facts.writable:
        raise DeviceError("target_not_writable", f"cannot write in {facts.workdir}: "
                          f"{facts.write_error}", workdir=facts.workdir,
                          error=facts.write_error,
                          fix=f"make {facts.workdir} writable by the SSH user or set workdir")
    # A model is held twice during the upload (temporary dir + nothing else; the rename is
    # free) but the previous deployment stays until the new one is verified.
    disk_needed = (model_bytes + 256 * 1024 if upload_needed else 0) + disk_reserve_bytes
    numbers = {
        "model_bytes": model_bytes,
        "free_disk_bytes": facts.free_disk,
        "disk_needed_bytes": disk_needed,
        "disk_reserve_bytes": disk_reserve_bytes,
        "mem_available_bytes": facts.mem_available,
        "memory_needed_bytes": model_bytes + memory_estimate_bytes + runtime_memory_bytes,
        "memory_estimate_bytes": memory_estimate_bytes,
        "runtime_memory_bytes": runtime_memory_bytes,
        "workdir": facts.workdir,
    }
    if facts.free_disk < disk_needed:
        raise FitError("fit_disk", f"{facts.workdir} has {facts.free_disk} B free, the "
                       f"deployment needs {disk_needed} B (model {model_bytes} B + reserve "
                       f"{disk_reserve_bytes} B)", **numbers)
    if facts.mem_available is not None and facts.mem_available < numbers["memory_needed_bytes"]:
        raise FitError("fit_memory", f"the target has {facts.mem_available} B available, the "
                       f"runner needs about {numbers['memory_needed_bytes']} B (model "
                       f"{model_bytes} B + tensors {memory_estimate_bytes} B + runtime "
                       f"{runtime_memory_bytes} B)", **numbers)
    return numbers
