#!/usr/bin/env bash
# The test suite, as CI runs it: brings up the one-node Slurm cluster when it can (root, apt), runs
# every test, and stops the cluster again whatever the outcome. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true MPLBACKEND=Agg
slurm_up=0
if [ "$(id -u)" = 0 ] && [ "${MUON_SKIP_SLURM:-0}" != 1 ]; then
  if bash scripts/slurm_local.sh install && bash scripts/slurm_local.sh up; then
    slurm_up=1
  else
    echo "test.sh: the local Slurm cluster did not come up; the Slurm tests will skip" >&2
  fi
fi
# The HTML report's browser test (tests/test_cli_report.py) needs Chromium, Debian's package; without it
# that one test skips.
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1 && [ "${MUON_SKIP_BROWSER:-0}" != 1 ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
    echo "test.sh: chromium could not be installed; the HTML report's browser test will skip" >&2
  fi
fi
cleanup() { if [ "$slurm_up" = 1 ]; then bash scripts/slurm_local.sh down || true; fi; }
trap cleanup EXIT
.venv/bin/python -m pytest -q -ra --durations=15 "$@"
