#!/usr/bin/env bash
# Install the test dependencies, check lint (ruff) and types (mypy, configured in pyproject.toml), then
# run the whole test suite. Extra arguments go to pytest. WSI_LAB_SKIP_LINT=1 skips ruff and mypy
# (e.g. while iterating on one test file); CI never sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
if [ "${WSI_LAB_SKIP_LINT:-0}" != 1 ]; then
  echo "[test] ruff check" >&2
  .venv/bin/ruff check --no-cache .
  echo "[test] mypy" >&2
  .venv/bin/mypy
fi
exec .venv/bin/python -m pytest -ra "$@"
