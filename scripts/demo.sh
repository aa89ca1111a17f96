#!/usr/bin/env bash
# The main job: a bridge daemon with a virtual Nano 33 BLE, an install through the HTTP API with
# verified boot, and live observation. Needs no hardware.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "analysis,litert"
exec .venv/bin/python scripts/demo.py "$@"
