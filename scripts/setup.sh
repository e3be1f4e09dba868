#!/usr/bin/env bash
# Create .venv with everything the workflow, the trainer and the tests need (CPU torch), at the versions
# CI tests: constraints.txt pins every package (torch too); the project itself keeps ranges
# (pyproject.toml, torch>=2.9). CONSTRAINTS=none installs the newest releases the ranges allow
# (what scripts/update_pins.sh does to move the pins).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ "${CONSTRAINTS:-constraints.txt}" = none ]; then
  pin=()
else
  export PIP_CONSTRAINT="$PWD/${CONSTRAINTS:-constraints.txt}"   # also holds in pip's build environments
  pin=(-c "$PIP_CONSTRAINT")
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip "${pin[@]}"
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "${pin[@]}"
"$VENV/bin/python" -m pip install -q -e ".[test,hf]" "${pin[@]}"   # hf: transformers, so the hf: model test runs
"$VENV/bin/python" -c "import torch, snakemake, optim, trainer, analysis, study; print('setup ok: torch', torch.__version__)"
