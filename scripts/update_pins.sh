#!/usr/bin/env bash
# Move the pins: install the newest releases the package's ranges allow into a scratch venv, run the
# whole suite there, and only when it passes write them to constraints.txt (review the diff, commit).
# Usage: bash scripts/update_pins.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
VENV="$scratch/venv" CONSTRAINTS=none bash scripts/setup.sh
# the suite finds the venv at .venv: point a link there for the run, and put the real one back after
if [ -e .venv ] || [ -L .venv ]; then mv .venv "$scratch/venv.kept"; fi
restore() { rm -f .venv; if [ -e "$scratch/venv.kept" ]; then mv "$scratch/venv.kept" .venv; fi; rm -rf "$scratch"; }
trap restore EXIT
ln -s "$scratch/venv" .venv
bash scripts/test.sh "$@"
{ sed -n '1,2p' constraints.txt
  "$scratch/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v '^muon-ablations' | sed -E 's/^(torch==[^+]*)\+.*/\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "update_pins: the suite passed on the newest releases; constraints.txt rewritten (git diff constraints.txt)"
