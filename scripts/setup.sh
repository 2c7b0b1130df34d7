#!/usr/bin/env bash
# Create .venv in the project root and install glioseg with its test extras.
# torch 2.13.0 (CPU build) is installed first. Every install goes through
# scripts/constraints.txt, which pins every package installed here (torch, MONAI, ONNX
# Runtime, OpenVINO, nilearn, numpy, ... and their dependencies), so two setups get the same
# versions and no dependency chain can pull a newer CUDA build of several GB. Refresh the
# pins with: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[test]"
# nnU-Net's network classes, used only to test the import of nnU-Net checkpoints. Installed
# without dependencies: its timm -> torchvision chain does not import beside this torch build.
.venv/bin/python -m pip install -q -c scripts/constraints.txt --no-deps "dynamic-network-architectures>=0.3"
# Chromium renders the HTML report headless in its test (skipped when no chromium is found).
# Debian/Ubuntu as root only; never a reason for setup to fail. GLIOSEG_NO_APT=1 skips it.
install_chromium() {
    if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 \
        || command -v chromium-browser >/dev/null 2>&1 \
        || command -v google-chrome >/dev/null 2>&1; then
        return 0
    fi
    if [ "${GLIOSEG_NO_APT:-0}" = 1 ] || ! command -v apt-get >/dev/null 2>&1 \
        || [ "$(id -u)" -ne 0 ]; then
        echo "chromium not found; the report rendering test will be skipped" \
             "(install it with: apt-get install -y chromium)" >&2
        return 0
    fi
    echo "installing chromium (apt-get) for the report rendering test" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1
    then
        echo "could not install chromium; the report rendering test will be skipped" >&2
    fi
    return 0
}
install_chromium || true
touch .venv/.glioseg-setup-done
echo "glioseg installed in .venv"
