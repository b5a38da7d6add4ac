#!/usr/bin/env bash
# GPU check, vision part: the curve `--max-batch-tiles` is chosen from, the device
# normalisation's and the device resize's equality with the CPU path on CUDA (through page-locked
# memory), and what resizing on the device saves the CPU.
#
# 1. Without a CUDA device: writes {"check": "vision", "skipped": ...} and exits 0.
# 2. The equality tests on CUDA: device normalisation (tests/vision_service/test_normalize.py),
#    Pillow-exact resize and device tiling (test_resample.py, test_device_tiling.py).
# 3. `dvd bench vit` on cuda, bf16, the 1b-shape preset (InternViT-300M's shape): one image of
#    --tiles tiles through the ViT in forwards of each width; the result JSON has ms per tile by
#    width and the narrowest width within 5% of the cheapest (recommended_max_batch_tiles).
# 4. `python -m tools.bench.device_tiling --device cuda`: CPU ms per tile with Pillow resizing vs
#    resizing on the device (the thread's CPU time: decode, hand-off, launches), device ms per
#    tile, and the tiles' equality; under the "device_tiling" key of the result.
# Called by scripts/gpu_check.sh where that exists; runs on its own as well.
#
# Usage: scripts/gpu_check_vision.sh OUT.json [TILES] [WIDTHS]
# Environment (defaults: the GPU run): VISION_DEVICE (cuda), VISION_PRESET (1b-shape; a preset or
# a checkpoint dir), VISION_DTYPE (bfloat16), VISION_TILES / VISION_WIDTHS (the arguments'
# defaults), VISION_ROUNDS (5). The CPU dry run (tests/tools/test_gpu_check.py) sets
# VISION_DEVICE=cpu and a tiny checkpoint: every step runs, the CUDA tests skip.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_check_vision.sh OUT.json [TILES] [WIDTHS]}
TILES=${2:-${VISION_TILES:-64}}
WIDTHS=${3:-${VISION_WIDTHS:-1,2,4,8,16,32,64}}
DEVICE=${VISION_DEVICE:-cuda}
PRESET=${VISION_PRESET:-1b-shape}
DTYPE=${VISION_DTYPE:-bfloat16}
ROUNDS=${VISION_ROUNDS:-5}
# PY if set; else this checkout's venv; else python3 (a bare GPU machine's torch is there)
if [[ -z "${PY:-}" ]]; then PY=python3; [[ -x .venv/bin/python ]] && PY=.venv/bin/python; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [[ $DEVICE == cuda* ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo '{"check": "vision", "skipped": "no CUDA device"}' > "$OUT"
    echo "gpu_check_vision: no CUDA device, skipped (wrote $OUT)"
    exit 0
fi

# pytest may not be on a bare GPU machine: the equality tests run where it is.
# A failure is recorded in the JSON ("cuda_equality_tests"), not fatal: the curve still gets measured.
tests_status="not run: no pytest"
if "$PY" -c 'import pytest' 2>/dev/null; then
    if "$PY" -m pytest -q -p no:cacheprovider tests/vision_service/test_normalize.py \
        tests/vision_service/test_resample.py tests/vision_service/test_device_tiling.py -k cuda; then
        tests_status=passed
    else
        tests_status="failed (pytest output above)"
    fi
fi
"$PY" -m tools.bench.vit vit --preset "$PRESET" --checkpoint-root "${CHECKPOINT_ROOT:-checkpoints}" \
    --device "$DEVICE" --dtype "$DTYPE" --tiles "$TILES" --widths "$WIDTHS" --repeats "$ROUNDS" --json "$OUT"
tiling_out="$(mktemp)"
"$PY" -m tools.bench.device_tiling --device "$DEVICE" --rounds "$ROUNDS" --json "$tiling_out" \
    || echo '{"error": "device tiling bench failed"}' > "$tiling_out"
"$PY" - "$OUT" "$tiling_out" "$tests_status" <<'PY'
import json, sys
from pathlib import Path
out, tiling = Path(sys.argv[1]), Path(sys.argv[2])
report = json.loads(out.read_text())
report["device_tiling"] = json.loads(tiling.read_text() or "{}")
report["cuda_equality_tests"] = sys.argv[3]
out.write_text(json.dumps(report, indent=1) + "\n")
PY
echo "gpu_check_vision: wrote $OUT"
