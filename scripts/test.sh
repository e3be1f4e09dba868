#!/usr/bin/env bash
# The test suite, as CI runs it: brings up the one-node Slurm cluster (scripts/slurm_local.sh) and the
# two-node one (scripts/slurm_nodes.sh) when it can (root, apt), runs every test, and stops both clusters
# again whatever the outcome. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true MPLBACKEND=Agg
slurm_up=0
nodes_up=0
# Stops what this script brought up, whatever the outcome (set before starting anything).
cleanup() {
  if [ "$nodes_up" = 1 ]; then bash scripts/slurm_nodes.sh down || true; fi
  if [ "$slurm_up" = 1 ]; then bash scripts/slurm_local.sh down || true; fi
}
trap cleanup EXIT
if [ "$(id -u)" = 0 ] && [ "${MUON_SKIP_SLURM:-0}" != 1 ]; then
  if bash scripts/slurm_local.sh install && bash scripts/slurm_local.sh up; then
    slurm_up=1
  else
    echo "test.sh: the local Slurm cluster did not come up; the Slurm tests will skip" >&2
  fi
  # The two-node cluster (tests/test_slurm_nodes.py): network namespaces, its own slurmctld, slurmd x2, munged.
  if [ "$slurm_up" = 1 ] && [ "${MUON_SKIP_SLURM_NODES:-0}" != 1 ]; then
    nodes_up=1  # from here `down` runs at exit, also after a half-finished `up`
    if ! bash scripts/slurm_nodes.sh up; then
      echo "test.sh: the two-node Slurm cluster did not come up; the two-node tests will skip" >&2
    fi
  fi
fi
# The HTML report's browser test (tests/test_cli_report.py) needs Chromium, Debian's package; without it
# that one test skips.
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1 && [ "${MUON_SKIP_BROWSER:-0}" != 1 ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
    echo "test.sh: chromium could not be installed; the HTML report's browser test will skip" >&2
  fi
fi
.venv/bin/python -m pytest -q -ra --durations=15 "$@"
