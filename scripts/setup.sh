#!/usr/bin/env bash
# Create .venv (once) and install mmgen with its pinned stack (a no-op when already satisfied).
# Usage: scripts/setup.sh [EXTRA]   e.g. `scripts/setup.sh test` adds the test tools (pyproject's extras);
# the demo installs none: it needs no test tool, and their install costs it about half a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet -e ".${1:+[$1]}"
