#!/usr/bin/env bash
# Installs what is missing, then runs lint, type checks, the import contracts (import-linter,
# configured in pyproject.toml) and the whole test suite twice: with
# the native C hot path (which must have been built) and with its pure-Python twin forced.
# QUICK=1 skips the tests marked `slow`. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
lint-imports
marks=()
if [ "${QUICK:-0}" = 1 ]; then marks=(-m "not slow"); fi
echo "== tests with the native hot path (RAFS_NATIVE=c)"
RAFS_NATIVE=c pytest -q "${marks[@]}" "$@"
echo "== tests with the pure-Python twin (RAFS_NATIVE=pure)"
RAFS_NATIVE=pure pytest -q "${marks[@]}" "$@"
