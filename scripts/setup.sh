#!/usr/bin/env bash
# Create .venv in the project root and install glioseg with its test extras.
# torch 2.13.0 (CPU build) is installed first and pinned through a constraints file so that
# no dependency chain can pull a newer CUDA build of several GB.
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
touch .venv/.glioseg-setup-done
echo "glioseg installed in .venv"
