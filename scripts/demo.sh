#!/usr/bin/env bash
# The main job: set up the cached environment (first run ~3 min), then run the demo workflows on the bundled
# reference model headless through ComfyUI's executor. Outputs go to out/demo/ (see scripts/demo.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh >/dev/null
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec .venv/bin/python scripts/demo.py "$@"
