#!/usr/bin/env bash
# The one-command GPU check (issue 11): correctness of every attention backend vs HF transformers on the GPU,
# then 8B-shape speed (dummy weights) with HF side by side; all figures in $OUT/gpu_check.json (or --out FILE).
#   scripts/gpu_check.sh              # on the GPU machine: python3 there holds torch/triton/transformers
#   scripts/gpu_check.sh --dry-run    # on CPU, tiny shape, in seconds: run it before spending GPU minutes
# Needs no install: sglkit is imported from this checkout (PYTHONPATH), no server, fastapi or zmq.
# Options: see `python -m sglkit.bench.gpu_check --help` (--out, --config, --input-len, --big-batch, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ "${PYTHON}" == python3 && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m sglkit.bench.gpu_check "$@"
