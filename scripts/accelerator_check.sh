#!/usr/bin/env bash
# The accelerator check (one GPU or TPU chip, <= 8 minutes): decode, MC, train-step MFU, one
# VinePPO iteration on GSM8K problems, and the memory plan vs the measured peak.
#   scripts/accelerator_check.sh            # RhoMath-1.1B's shape on the accelerator
#   scripts/accelerator_check.sh --tiny     # the CPU smoke mode (what the test runs)
# Extra arguments go to benchmarks/accelerator_check.py (e.g. --budget 300 --out figures.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PY" benchmarks/accelerator_check.py "$@"
