#!/usr/bin/env bash
# Quick start 2/2: set up .venv (reusing it) and run the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -q "$@"
