#!/usr/bin/env bash
# The GPU path in one run (<= 8 minutes on one H100/H200): a GRPO step of a Qwen2-0.5B-shaped
# policy with vLLM rollouts, a weight sync, vLLM-vs-learner log-prob distance and one served
# request; one JSON of figures (benchmarks/gpu_check.py says what each figure is).
# Usage: bash benchmarks/gpu_check.sh [--out outputs/gpu_check.json]; needs the `gpu` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec timeout 480 "$PY" -m benchmarks.gpu_check "$@"
