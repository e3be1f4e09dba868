#!/usr/bin/env bash
# Create .venv with everything the workflow, the trainer and the tests need (CPU torch).
# torch is pinned here only: the project itself asks for torch>=2.9 (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,hf]"   # hf: transformers, so the hf: model test runs
.venv/bin/python -c "import torch, snakemake, optim, trainer, analysis, study; print('setup ok: torch', torch.__version__)"
