"""End to end (marker ``train``): a generated image dataset uploaded as a zip to a real
``tinyml-backend serve`` process, trained and compiled to int8 in its worker processes,
deployed through a real ``tinyml-bridge serve`` process to a virtual Nano 33 BLE, and the
verified boot and inference lines observed back through the backend. The backend process
never maps TensorFlow."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from backend_stub.synthetic import shapes_entries
from tests.backend.conftest import BRIDGE_TOKEN, VIRTUAL_DEVICE, make_zip
from tests.backend.test_cli import TOKEN, Served

pytestmark = pytest.mark.train
H = {"Authorization": f"Bearer {TOKEN}"}


def _cli(served: Served, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend_stub", *args, "--url", served.url,
                           "--token", TOKEN], capture_output=True, text=True, timeout=timeout)


def _tensorflow_mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if "tensorflow" in line or "_pywrap_tf" in line})


def test_dataset_to_verified_inference_on_a_virtual_nano(tmp_path, real_bridge):
    served = Served(tmp_path)
    try:
        zip_path = tmp_path / "shapes.zip"
        zip_path.write_bytes(make_zip(shapes_entries(per_label=16, size=32)))
        up = _cli(served, "datasets", "upload", str(zip_path), "--json")
        assert up.returncode == 0, up.stderr
        ds = json.loads(up.stdout)["id"]

        train = _cli(served, "train", str(ds), "--epochs", "10", "--image-width", "32",
                     "--image-height", "32", "--batch-size", "8", "--learning-rate", "0.005",
                     "--follow")
        assert train.returncode == 0, train.stdout + train.stderr
        assert "epoch 10/10" in train.stdout  # progress was shown while it ran
        tid = requests.get(f"{served.url}/trainings", headers=H, timeout=10).json()[
            "trainings"][0]["id"]
        curves = tmp_path / "curves.png"
        assert _cli(served, "trainings", "curves", str(tid), "--out", str(curves)).returncode == 0
        assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        comp = _cli(served, "compile", str(tid), "--json")
        assert comp.returncode == 0, comp.stdout + comp.stderr
        comp = json.loads(comp.stdout)
        acc = comp["report"]["accuracy"]
        print(f"\nint8 vs float accuracy: {acc}")
        assert acc["float"] >= 0.8 and acc["int8"] >= 0.7

        # The web process did all of that without loading TensorFlow.
        assert _tensorflow_mapped(served.proc.pid) == []

        add = _cli(served, "bridges", "add", "lab", real_bridge.url, "--bridge-token",
                   BRIDGE_TOKEN, "--json")
        assert add.returncode == 0, add.stderr
        bid = json.loads(add.stdout)["id"]
        dep = _cli(served, "deploy", str(comp["id"]), "--bridge", str(bid), "--device",
                   VIRTUAL_DEVICE, "--input-vectors", "4")
        assert dep.returncode == 0, dep.stdout + dep.stderr
        assert "verified boot" in dep.stdout

        sha = comp["sha256"]
        end = time.monotonic() + 30
        boot, inferences = None, []
        while time.monotonic() < end:
            obs = requests.get(f"{served.url}/bridges/{bid}/devices/{VIRTUAL_DEVICE}/observe",
                               params={"lines": 200}, headers=H, timeout=10).json()
            lines = [e["line"] for e in obs["lines"]]
            boots = [ln for ln in lines if ln.get("kind") == "boot"]
            boot = boots[-1] if boots else None
            if boot and sha.startswith(boot.get("sha", "?")):
                after = lines[lines.index(boot):]
                inferences = [ln for ln in after if ln.get("kind") == "inference"]
                if len(inferences) >= 4:
                    break
            time.sleep(0.3)
        assert boot is not None and sha.startswith(boot["sha"]), (boot, sha)
        assert len(inferences) >= 4, obs
        assert {ln["label"] for ln in inferences} <= {"blank", "square", "stripes"}
        artifact = requests.get(f"{served.url}/compilations/{comp['id']}/model.tflite",
                                headers=H, timeout=10).content
        assert hashlib.sha256(artifact).hexdigest() == sha
        assert _tensorflow_mapped(served.proc.pid) == []
    finally:
        assert served.stop() == 0
