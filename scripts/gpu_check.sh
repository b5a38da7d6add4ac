#!/usr/bin/env bash
# The GPU check of the language engine (issue 12), in one run of under 8 minutes:
#   writes the 1b-shape checkpoint, runs the engine bench in bf16 at concurrency 1/16/64 with
#   and without CUDA graphs for every available attention backend (flash-attn when it imports),
#   and checks greedy tokens against InternVLForConditionalGeneration.generate (token agreement).
# Results: one JSON file, $1 if given, else $OUT/gpu_check.json (else ./gpu_check.json).
# Needs torch (CUDA), transformers, grpcio; no network, no fastapi. Extra arguments go to
# `python -m tools.bench.gpu_check` (the CPU dry run: --device cpu --dtype float32 --preset tiny ...).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.json"
if [[ $# -gt 0 && "$1" != --* ]]; then out="$1"; shift; fi
python="${PYTHON:-python}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && python=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# 470 s leaves the 8-minute budget room for interpreter start-up; a partial JSON survives a timeout.
timeout "${GPU_CHECK_TIMEOUT_S:-470}" "$python" -m tools.bench.gpu_check --out "$out" \
    --checkpoint-root "${CHECKPOINT_ROOT:-checkpoints}" "$@"
echo "results: $out"
