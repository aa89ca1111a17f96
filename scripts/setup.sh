#!/usr/bin/env bash
# Prepare this checkout on a Debian machine with Python 3.10-3.13: system packages (apt) and a
# virtual environment in .venv with the project installed in editable mode.
#
#   bash scripts/setup.sh [EXTRAS]     EXTRAS defaults to "dev" (see pyproject.toml)
#
# Idempotent: apt runs only when a package is missing, pip only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# openssh-server: the Raspberry Pi tests' real sshd; postgresql: the backend's second database;
# g++: syntax check of the rendered Arduino sketch; socat: named pty pairs for serial tests;
# gcc-arm-none-eabi, libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib: the sketch
# compiled for Cortex-M4 against the real sources (../shared/toolchains/nano33ble);
# qemu-system-arm: the 32-bit arena harness (mps2-an386).
apt_packages=(openssh-server openssh-client postgresql g++ socat gcc-arm-none-eabi
              libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm)
python3 -m venv --help >/dev/null 2>&1 || apt_packages+=(python3-venv)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing tinyml-bridge[$extras] into .venv"
.venv/bin/python -m pip install -q -e ".[$extras]"
