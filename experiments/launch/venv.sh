#!/usr/bin/env bash
# Creates (once) and refreshes the project's virtual environment in .venv, CPU wheels only.
# Reinstalls only when setup.cfg changes. Usage: bash experiments/launch/venv.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.omniflatten-installed
want=$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch==2.13.0 (CPU) comes from the pinned extra; an unpinned torch would pull CUDA wheels.
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
