#!/usr/bin/env bash
# Every GPU check, in one run of under 8 minutes, results in one JSON file:
#   engine (issue 12): writes the 1b-shape checkpoint, runs the engine bench in bf16 at
#     concurrency 1/16/64 with and without CUDA graphs for every available attention backend
#     (flash-attn when it imports), and checks greedy tokens against
#     InternVLForConditionalGeneration.generate (token agreement);
#   vision (issue 13): scripts/gpu_check_vision.sh, the ViT cost by tiles per forward (the curve
#     --max-batch-tiles is chosen from) and device normalisation's equality on CUDA; the result
#     lands under the "vision" key.
# Results: $1 if given, else $OUT/gpu_check.json (else ./gpu_check.json).
# Needs torch (CUDA), transformers, grpcio; no network, no fastapi, redis, xgrammar or gRPC server
# extras (tests/tools/test_gpu_check.py runs it in a venv without them). Extra arguments go to
# `python -m tools.bench.gpu_check` (the CPU dry run: --device cpu --dtype float32 --preset tiny ...);
# VISION_* variables to scripts/gpu_check_vision.sh (the dry run: VISION_DEVICE=cpu ...).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.json"
if [[ $# -gt 0 && "$1" != --* ]]; then out="$1"; shift; fi
# the GPU machine's torch is under python3 (it may have no `python`); this checkout's venv wins here
python="${PYTHON:-python3}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && python=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# 370 s for the engine and 90 s for the vision part leave the 8-minute budget room for start-up;
# a partial JSON survives a timeout (each section is written as soon as it is done).
timeout "${GPU_CHECK_TIMEOUT_S:-370}" "$python" -m tools.bench.gpu_check --out "$out" \
    --checkpoint-root "${CHECKPOINT_ROOT:-checkpoints}" "$@" || echo "engine check: exit $?"
vision_out="$(mktemp)"
PY="$python" timeout "${GPU_CHECK_VISION_TIMEOUT_S:-90}" scripts/gpu_check_vision.sh "$vision_out" \
    || echo '{"check": "vision", "error": "timed out or failed"}' > "$vision_out"
"$python" - "$out" "$vision_out" <<'PY'
import json, sys
from pathlib import Path
out, vision = Path(sys.argv[1]), Path(sys.argv[2])
report = json.loads(out.read_text()) if out.exists() else {}
text = vision.read_text() if vision.exists() else ""
report["vision"] = json.loads(text) if text.strip() else {"check": "vision", "error": "no output"}
out.write_text(json.dumps(report, indent=1) + "\n")
PY
echo "results: $out"
