"""The main job: a bridge daemon with a virtual Nano 33 BLE, an install through the HTTP API
with a verified boot, live inference lines, one honest failure, and a clean stop.

    .venv/bin/python scripts/demo.py [--keep]

Everything runs on this machine without hardware: the daemon is ``tinyml-bridge serve`` on a
free loopback port with a throw-away config and state directory; the board is the virtual
Nano 33 BLE from ``hal/virtual`` (a pseudo-terminal, the stand-in arduino-cli, and the real
TFLM interpreter running the model). The technician's commands are the real CLI, run as
subprocesses against the daemon's HTTP API. Exit status 0 only if every step turned out as
shown: the install verified, live lines arrived, the too-small arena was reported as
``alloc_failed`` (not as success), a second board with the hot-swap firmware took a second
model over its serial port without a compile or an upload (both install times printed), and
the daemon stopped with status 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.client import BridgeClient, LocalBridge  # noqa: E402
from hal.errors import HalError  # noqa: E402

DEVICE = "vnano-1"
HOTSWAP_DEVICE = "vnano-hs"  # a second virtual board, with the hot-swap firmware
# Far below what any model needs: the board's real TFLM interpreter must refuse it.
TINY_ARENA = 1024


def pick_model() -> tuple[Path, Path | None]:
    """The sample model to install and its description (labels, reference inputs)."""
    samples = REPO / "samples" / "models"
    for name in ("shapes_int8", "sine_int8"):
        model = samples / f"{name}.tflite"
        if model.is_file():
            desc = samples / f"{name}.json"
            return model, desc if desc.is_file() else None
    return REPO / "tests" / "data" / "tflm-examples" / "hello_world_int8.tflite", None


def write_config(work: Path, token: str) -> Path:
    config = work / "bridge.toml"
    config.write_text(
        f"""# Throw-away configuration of the demo bridge.
state_dir = "{work / 'state'}"

[server]
host = "127.0.0.1"
port = 0            # any free port; the daemon logs the one it took
token = "{token}"

[discovery]
drivers = []        # no USB scanning: the demo's only board is virtual

[[devices]]
name = "{DEVICE}"
driver = "virtual-nano33ble"

[[devices]]
name = "{HOTSWAP_DEVICE}"
driver = "virtual-nano33ble"
hotswap = true      # compile+upload flashes the hot-swap firmware; the next model streams in
""",
        encoding="utf-8",
    )
    return config


class Demo:
    def __init__(self, work: Path, keep: bool) -> None:
        self.work = work
        self.keep = keep
        self.token = secrets.token_urlsafe(24)
        self.tty = sys.stdout.isatty()
        self.failures: list[str] = []
        self.bridge: LocalBridge | None = None
        self.env: dict[str, str] = {}

    # -- output ------------------------------------------------------------------------

    def title(self, text: str) -> None:
        bold = "\x1b[1m" if self.tty else ""
        reset = "\x1b[0m" if self.tty else ""
        print(f"\n{bold}== {text}{reset}", flush=True)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def expect(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            self.say(f"!! not as expected: {what}")
        return ok

    def cli(self, *args: str, capture: bool = False,
            tail: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run the technician's CLI against the demo bridge, showing the command (and, with
        ``tail``, only the last lines of its output)."""
        shown = " ".join(a if " " not in a else repr(a) for a in args)
        self.say(f"$ tinyml-bridge {shown}")
        argv = [sys.executable, "-m", "bridge.cli", *args]
        env = {**os.environ, **self.env}
        if capture:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            out = (proc.stdout + proc.stderr).rstrip()
            if tail is not None:
                out = "\n".join(out.splitlines()[-tail:])
            if out:
                self.say(out)
            return proc
        # Inherit the terminal, so the live progress display works as it does for a person.
        return subprocess.run(argv, env=env, text=True, timeout=120)

    # -- the story ---------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        model, desc = pick_model()
        config = write_config(self.work, self.token)

        self.title("1. start the bridge daemon")
        self.say(f"$ tinyml-bridge serve --config {config} --port 0")
        self.bridge = LocalBridge(config, log_path=self.work / "bridge.log")
        try:
            url = self.bridge.start()
        except HalError as exc:
            self.say(f"the daemon did not start: {exc}\n{exc.detail.get('output', '')}")
            return 1
        self.say(f"bridge ready at {url} after {self.bridge.ready_s:.2f} s "
                 f"(pid {self.bridge.pid}, log {self.work / 'bridge.log'})")
        self.env = {"TINYML_BRIDGE_URL": url, "TINYML_BRIDGE_TOKEN": self.token}
        client = BridgeClient(url, self.token, timeout=10)
        try:
            self.story(client, model, desc)
        finally:
            client.close()
            self.title("6. stop the daemon (SIGTERM)")
            code = self.bridge.stop(timeout=20)
            self.say(f"bridge exited with status {code}")
            self.expect(code == 0, f"the daemon exits 0 on SIGTERM (got {code})")
        took = time.monotonic() - started
        if self.failures:
            self.title(f"demo FAILED in {took:.1f} s")
            for what in self.failures:
                self.say(f"  - {what}")
            self.say(f"daemon log: {self.work / 'bridge.log'}")
            self.keep = True
            return 1
        self.title(f"demo done in {took:.1f} s: verified install, live lines, honest failure, "
                   "hot-swap, clean stop")
        return 0

    def story(self, client: BridgeClient, model: Path, desc: Path | None) -> None:
        self.title("2. the bridge's devices")
        # Wait until the virtual board has enumerated (it starts with the daemon).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            dev = client.device(DEVICE)
            if dev.get("connected"):
                break
            time.sleep(0.1)
        proc = self.cli("devices")
        self.expect(proc.returncode == 0, "tinyml-bridge devices exits 0")

        self.title(f"3. install {model.name} through the HTTP API, verified by its boot line")
        args = ["install", DEVICE, str(model.relative_to(REPO))]
        if desc is not None:
            args += ["--vectors", str(desc.relative_to(REPO))]
        proc = self.cli(*args)
        if not self.expect(proc.returncode == 0, "the install succeeds with a verified boot"):
            return
        job = client.jobs(device=DEVICE, limit=1)[0]
        report = job.get("report") or {}
        self.expect(job["state"] == "succeeded" and bool(report.get("boot")),
                    "the job is succeeded and carries the boot line that proved it")

        self.say("\nlive lines from the board (Server-Sent Events):")
        proc = self.cli("observe", DEVICE, "--follow", "--lines", "0", "--count", "5",
                        "--for", "15")
        self.expect(proc.returncode == 0, "observe --follow exits 0")
        recent = client.observe(DEVICE, lines=50)["lines"]
        sha = (job.get("model_sha256") or "")[:16]
        inferences = [r for r in recent if r["line"].get("kind") == "inference"]
        self.expect(len(inferences) >= 1, "the board prints inference lines")
        boots = [r for r in recent if r["line"].get("kind") in ("boot", "status")
                 and sha.startswith(r["line"].get("sha", "-")[:16])]
        self.expect(bool(boots), "the board announces the installed model's hash")

        self.title(f"4. an honest failure: the same model with a {TINY_ARENA}-byte arena")
        proc = self.cli("install", DEVICE, str(model.relative_to(REPO)), "--arena",
                        str(TINY_ARENA), capture=True)
        self.expect(proc.returncode == 1, f"the install fails with exit status 1 (got "
                    f"{proc.returncode})")
        failed = client.jobs(device=DEVICE, limit=1)[0]
        code = (failed.get("error") or {}).get("code")
        self.expect(failed["state"] == "failed" and code == "alloc_failed",
                    f"the job is reported failed as alloc_failed (got {failed['state']}, "
                    f"{code})")
        self.say("")
        self.cli("devices")
        dev = client.device(DEVICE)
        rollback = ((failed.get("error") or {}).get("detail") or {}).get("rollback") or {}
        running = str(rollback.get("running_sha256") or "")
        self.expect(rollback.get("verified") is True and len(running) >= 16 and
                    running[:16] == sha[:16], "the driver flashed the previously verified "
            "model back and saw it boot")
        self.expect(dev.get("state") == "running" and (dev.get("last_error") or {}).get(
            "code") == "alloc_failed", "the device runs its verified model; the failure is "
            "its last error")
        self.expect((dev.get("model") or {}).get("sha256") == job.get("model_sha256"),
                    "the record of the last verified model is not replaced by an unverified "
                    "one")

        self.say("\nthe same model again, with the arena the bridge computes")
        proc = self.cli("install", DEVICE, str(model.relative_to(REPO)), capture=True, tail=1)
        self.expect(proc.returncode == 0 and "verified boot" in proc.stdout,
                    "the re-install is verified")
        self.expect(client.device(DEVICE).get("state") == "running",
                    "the device is running a verified model again")
        self.hotswap(client)

    def timed_install(self, client: BridgeClient, model: Path) -> tuple[dict, float]:
        """Install through the CLI; the job and its duration on the bridge (start to end)."""
        from datetime import datetime

        proc = self.cli("install", HOTSWAP_DEVICE, str(model.relative_to(REPO)),
                        capture=True, tail=2)
        job = client.jobs(device=HOTSWAP_DEVICE, limit=1)[0]
        self.expect(proc.returncode == 0 and job["state"] == "succeeded",
                    f"the install of {model.name} on {HOTSWAP_DEVICE} is verified")
        times = [datetime.fromisoformat(str(job.get(k) or "").replace("Z", "+00:00"))
                 for k in ("started_at", "finished_at")]
        return job, (times[1] - times[0]).total_seconds()

    def hotswap(self, client: BridgeClient) -> None:
        samples = REPO / "samples" / "models"
        first, second = samples / "shapes_int8.tflite", samples / "sine_int8.tflite"
        if not (first.is_file() and second.is_file()):
            self.say("(samples/models missing: hot-swap step skipped)")
            return
        self.title(f"5. hot-swap: a second model on {HOTSWAP_DEVICE} without compile or upload")
        self.say("first install: compile + upload, which flashes the hot-swap firmware")
        job1, t1 = self.timed_install(client, first)
        steps1 = [s["name"] for s in job1.get("steps", []) if s.get("status") == "done"]
        self.say("\nsecond install: a model whose ops the firmware has, streamed into a slot")
        job2, t2 = self.timed_install(client, second)
        steps2 = [s["name"] for s in job2.get("steps", []) if s.get("status") == "done"]
        fit = next((s.get("detail") or {} for s in job2.get("steps", [])
                    if s["name"] == "fit_check"), {}).get("hotswap") or {}
        self.say(f"\n  full install ({first.name}): {t1:.2f} s  steps: {', '.join(steps1)}")
        self.say(f"  hot-swap     ({second.name}): {t2:.2f} s  steps: {', '.join(steps2)}")
        self.say(f"  why hot-swap: {fit.get('reason', '?')}")
        self.expect("compile" in steps1 and "upload" in steps1,
                    "the first install compiles and uploads")
        self.expect("hotswap_transfer" in steps2 and "compile" not in steps2
                    and "upload" not in steps2,
                    "the second install is a hot-swap (no compile, no upload)")
        boot = (job2.get("report") or {}).get("boot") or {}
        self.expect(str(job2.get("model_sha256", ""))[:16] == boot.get("sha"),
                    "the hot-swapped model's boot line proves it runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary config, state and log")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tinyml-demo-"))
    demo = Demo(work, args.keep)
    try:
        return demo.run()
    except KeyboardInterrupt:
        return 130
    finally:
        if demo.bridge is not None and demo.bridge.returncode is None:
            demo.bridge.stop(timeout=10)
        if demo.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
