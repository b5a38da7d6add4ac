#!/usr/bin/env bash
# External check: NVIDIA's AIPerf (from PyPI) runs its OpenAI chat profile with images against
# the gateway, and must report no errors.
#
# 1. AIPerf goes into its own venv (.venv-aiperf): it pins huggingface_hub < 2, pillow < 13 and
#    brings ~100 packages the server does not need, so it stays out of the project's .venv.
# 2. `dvd serve` starts with the tiny checkpoint on free loopback ports (logs under $WORK).
# 3. `aiperf profile`: endpoint chat, streaming, synthetic 448x448 and 896x896-class JPEG images,
#    a small bounded request count, the checkpoint's own tokenizer (no hub access needed) and the
#    server's token counts (a random-init model's text does not re-tokenize to the same tokens).
# 4. Its profile_export_aiperf.json must show every request completed and no error records.
# The stack is stopped on any exit.
#
# Usage: scripts/aiperf_check.sh [REQUESTS] [CONCURRENCY]
set -euo pipefail

cd "$(dirname "$0")/.."
REQUESTS=${1:-12}
CONCURRENCY=${2:-3}
PY=${PY:-python3}
DVD=.venv/bin/dvd
AIPERF_VENV=.venv-aiperf
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aiperf-check.XXXXXX")
CKPT=checkpoints/tiny

if [ ! -x "$AIPERF_VENV/bin/aiperf" ]; then
    echo "installing aiperf into $AIPERF_VENV ..."
    test -x "$AIPERF_VENV/bin/python" || "$PY" -m venv "$AIPERF_VENV"
    "$AIPERF_VENV/bin/python" -m pip install -q --upgrade pip
    "$AIPERF_VENV/bin/python" -m pip install -q "aiperf>=0.13"
fi
test -f "$CKPT/config.json" || "$DVD" make-checkpoint --preset tiny --out "$CKPT"

PORT=$(.venv/bin/python -c 'from stack.launcher import free_port; print(free_port())')
GRPC_PORT=$(.venv/bin/python -c 'from stack.launcher import free_port; print(free_port())')
"$DVD" serve --model "$CKPT" --host 127.0.0.1 --port "$PORT" --grpc-port "$GRPC_PORT" \
    --log-dir "$WORK/logs" > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
stop_stack() {
    kill -INT "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
}
trap stop_stack EXIT

for _ in $(seq 1 300); do
    grep -q "^ready" "$WORK/serve.log" && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log"; echo "dvd serve exited" >&2; exit 1; }
    sleep 1
done
grep -q "^ready" "$WORK/serve.log" || { echo "dvd serve not ready after 300 s" >&2; exit 1; }

echo "aiperf: $REQUESTS chat requests with images at concurrency $CONCURRENCY against http://127.0.0.1:$PORT"
"$AIPERF_VENV/bin/aiperf" profile \
    --model internvl --url "http://127.0.0.1:$PORT" --endpoint-type chat --streaming \
    --tokenizer "$CKPT" \
    --image-width-mean 672 --image-width-stddev 224 --image-height-mean 672 --image-height-stddev 224 \
    --image-format jpeg --image-batch-size 1 \
    --synthetic-input-tokens-mean 32 --synthetic-input-tokens-stddev 0 \
    --output-tokens-mean 16 --extra-inputs ignore_eos:true --use-server-token-count \
    --request-count "$REQUESTS" --concurrency "$CONCURRENCY" --random-seed 0 \
    --request-timeout-seconds 120 --ui-type none --no-server-metrics --no-gpu-telemetry \
    --artifact-dir "$WORK/artifacts" 2>&1 | tee "$WORK/aiperf.log" | grep -v -E "^\s*$" | tail -40

.venv/bin/python - "$WORK/artifacts" "$REQUESTS" <<'PY'
"""Pass only when AIPerf's own export says every request completed without an error."""
import json
import pathlib
import sys

root, expected = pathlib.Path(sys.argv[1]), int(sys.argv[2])
exports = sorted(root.rglob("profile_export_aiperf.json"))
if not exports:
    sys.exit(f"aiperf wrote no profile_export_aiperf.json under {root}")
data = json.loads(exports[0].read_text())
errors = data.get("error_summary") or []
count = (data.get("request_count") or {}).get("avg")
error_count = (data.get("error_request_count") or {}).get("avg", 0)
print(f"aiperf export {exports[0]}: request_count={count}, error_request_count={error_count}, errors={errors}")
ttft = (data.get("time_to_first_token") or {}).get("avg")
print(f"aiperf time_to_first_token avg: {ttft} ms")
if errors or error_count or count != expected:
    sys.exit("aiperf reported errors or missing requests")
print("aiperf check: OK")
PY
