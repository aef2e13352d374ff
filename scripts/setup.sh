#!/usr/bin/env bash
# Creates .venv (if missing) and installs multisk with the CPU build of torch 2.13.0 first, so no
# dependency can pull a CUDA build. Usage: bash scripts/setup.sh [EXTRAS], e.g. "demo,dev,search".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo,dev,search}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.multisk-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  touch "$stamp"
fi
