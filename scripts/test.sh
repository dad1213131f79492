#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (slow cases included unless
# QUICK=1). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check .
.venv/bin/mypy
if [ "${QUICK:-0}" = 1 ]; then
  exec .venv/bin/pytest -m "not slow" "$@"
fi
exec .venv/bin/pytest "$@"
