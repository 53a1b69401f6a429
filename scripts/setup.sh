#!/usr/bin/env bash
# Create .venv (once) and install mmgen with its pinned stack and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import mmgen, torchtitan, pytest" 2>/dev/null; then
  .venv/bin/python -m pip install --upgrade pip >/dev/null
  .venv/bin/python -m pip install -e ".[test]"
fi
