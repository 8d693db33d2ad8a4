#!/usr/bin/env bash
# Benchmark every inversion method on the reference model (see scripts/benchmark.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh >/dev/null
if [ "${1:-}" = "--edits" ]; then  # the edit benchmark (issue 14): scripts/benchmark_edits.py --help
  shift; OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec .venv/bin/python scripts/benchmark_edits.py "$@"
fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec .venv/bin/python scripts/benchmark.py "$@"
