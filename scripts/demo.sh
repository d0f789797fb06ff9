#!/usr/bin/env bash
# Quick start 1/2: set up .venv and run the whole demo pipeline (`dvc repro` on params.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 PATH="$PWD/.venv/bin:$PATH"
dvc repro "$@"
echo "[demo] done: see reports/tables.md and reports/metrics.json"
