#!/usr/bin/env bash
# The main job on the embedded default data: set up, prepare the "clipart" benchmark (installs its
# Debian media packages when run as root), train the contrastive baseline and the SSPC model,
# evaluate both and print the comparison table. Extra arguments go to `multisk demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo,dev,search
export HF_HUB_OFFLINE=1
exec .venv/bin/multisk demo "$@"
