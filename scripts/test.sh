#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo,dev,search
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
