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
# libtpu for experiments/plan.py (compile-only TPU devices on this CPU host): the pin of jax's
# `tpu` extra, in its own folder that plan.py puts on sys.path. Not in site-packages: there
# every plain CPU `jax.devices()` would start looking for TPU chips and log errors.
# OMNIFLATTEN_NO_LIBTPU=1 skips it (about 700 MB).
if [ -z "${OMNIFLATTEN_NO_LIBTPU:-}" ]; then
  pin=$(.venv/bin/python -c 'import importlib.metadata as m
print(next(r.split(";")[0].strip() for r in m.requires("jax") if r.startswith("libtpu")))')
  if [ "$(cat .venv/libtpu/.pin 2>/dev/null)" != "$pin" ]; then
    rm -rf .venv/libtpu
    .venv/bin/python -m pip install -q --no-deps --target .venv/libtpu "$pin"
    echo "$pin" > .venv/libtpu/.pin
  fi
fi
