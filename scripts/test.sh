#!/usr/bin/env bash
# Run the test suite against the real ComfyUI engine (PyPI fork) in the cached environment; extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh >/dev/null
OMP_NUM_THREADS=1 exec .venv/bin/python -m pytest -q tests "$@"
