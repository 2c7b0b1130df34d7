#!/usr/bin/env bash
# The README's test command: sets up .venv on a fresh clone, then runs ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/.glioseg-setup-done ] || bash scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/python -m pytest "$@"
