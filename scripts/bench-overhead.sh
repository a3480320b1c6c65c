#!/usr/bin/env bash
# Client overhead of `switchyard bench` and of AIPerf on this machine: the highest request rate
# (and the most streams in flight) each sustains with dispatch lag p99 under 1 ms, against a
# `switchyard worker` on loopback. Dispatch lag = actual send - scheduled send:
#   switchyard: summary.json client.dispatch_lag (stamped right before the request enters the
#               connection pool; the schedule is the run's own).
#   AIPerf:     profile_export.jsonl request_start_ns (stamped right before the HTTP request)
#               minus the ideal constant-rate schedule anchored at the first credit
#               (credit_issued_ns of request 0 + i/R); "credit" = credit_issued_ns - schedule,
#               the timing manager's own lateness. AIPerf drops a backlog older than its
#               catch-up limit instead of sending it late, so the achieved rate is shown too.
#   A. zero-delay worker (--speedup 1e9): 100-token prompts, 10 output tokens, constant rate.
#   B. long streams: 100 output tokens at real speed (Qwen3-32B H200 TP2, ~15-30 ms per
#      token): rate R keeps ~2R streams in flight (peak shown).
# Each at normal priority and in real time: `switchyard bench --realtime` (its dispatcher and
# runtime threads under SCHED_FIFO 1) and, for a like-for-like figure, AIPerf's processes
# under `chrt -f 1`. Real time needs root or CAP_SYS_NICE.
# Usage: bash scripts/bench-overhead.sh [SECONDS_PER_STEP] [switchyard|aiperf|both]
# Environment: SY_RATES_A, AI_RATES_A, SY_RATES_B, AI_RATES_B (space-separated req/s),
#   empty to skip; MODES ("normal realtime"), SWITCHYARD_BIN, AIPERF_VENV. AIPerf and its offline
#   tokenizer come from scripts/aiperf-compare.sh (run it once first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STEP=${1:-5}
TOOLS=${2:-both}
SY_RATES_A=${SY_RATES_A-500 1000 2000 4000}
AI_RATES_A=${AI_RATES_A-50 100 200 400}
SY_RATES_B=${SY_RATES_B-50 100 200}
AI_RATES_B=${AI_RATES_B-25 50 100}
MODES=${MODES:-normal realtime}
VENV=${AIPERF_VENV:-$ROOT/target/aiperf-venv}
PY=$VENV/bin/python
export HF_HOME=$ROOT/target/aiperf-hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 PYTHONWARNINGS=ignore
if [ -n "${SWITCHYARD_BIN:-}" ]; then
  BIN=$SWITCHYARD_BIN
else
  cargo build -q --release -p switchyard
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
fi
if [ "$TOOLS" != switchyard ] && [ ! -x "$VENV/bin/aiperf" ]; then
  echo "no AIPerf in $VENV: run scripts/aiperf-compare.sh once (it installs it)" >&2
  exit 2
fi
OUT=$ROOT/target/bench-overhead
rm -rf "$OUT"
mkdir -p "$OUT"
WPID=
cleanup() { if [ -n "$WPID" ]; then kill "$WPID" 2>/dev/null || true; wait "$WPID" 2>/dev/null || true; fi; }
trap cleanup EXIT

start_worker() { # speedup
  cleanup
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN" worker --host 127.0.0.1 --port "$PORT" --gpu H200 --model Qwen3-32B --tp 2 \
    --speedup "$1" --default-max-tokens 10 >"$OUT/worker.log" 2>&1 &
  WPID=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "worker did not start" >&2
  exit 2
}

sy_run() { # label rate output_len mode
  local d=$OUT/sy-$1-$4-$2 rt=()
  [ "$4" = realtime ] && rt=(--realtime)
  "$BIN" bench --url "http://127.0.0.1:$PORT" --dataset random --input-len 100 --output-len "$3" \
    --prompt text --request-rate "$2" --arrival constant --requests $(($2 * STEP)) "${rt[@]}" \
    --progress off --out "$d" >"$d.log" 2>&1 || { echo "switchyard bench failed: $d.log" >&2; return 0; }
  python3 scripts/aiperf_compare.py overhead switchyard "$d" "$2" "$4"
}

ai_run() { # label rate output_len mode
  local d=$OUT/ai-$1-$4-$2 rt=()
  [ "$4" = realtime ] && rt=(chrt -f 1)
  "${rt[@]}" "$VENV/bin/aiperf" profile --model Qwen3-32B --url "http://127.0.0.1:$PORT" \
    --endpoint-type completions --streaming --tokenizer switchyard/o200k_base \
    --synthetic-input-tokens-mean 100 --output-tokens-mean "$3" \
    --request-rate "$2" --request-rate-mode constant --request-count $(($2 * STEP)) \
    --random-seed 0 --artifact-dir "$d" --export-level records --ui none \
    >"$d.log" 2>&1 || { echo "aiperf failed: $d.log" >&2; return 0; }
  "$PY" scripts/aiperf_compare.py overhead aiperf "$d" "$2" "$4"
}

echo "machine: $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg); ${STEP} s per step"
echo "A. zero-delay worker, 100-token prompts, 10 tokens out, constant rate"
start_worker 1e9
for m in $MODES; do
  if [ "$TOOLS" != aiperf ]; then for r in $SY_RATES_A; do sy_run a "$r" 10 "$m"; done; fi
  if [ "$TOOLS" != switchyard ]; then for r in $AI_RATES_A; do ai_run a "$r" 10 "$m"; done; fi
done
echo "B. 100-token streams at real speed (one simulated H200 TP2 replica), constant rate"
start_worker 1
for m in $MODES; do
  if [ "$TOOLS" != aiperf ]; then for r in $SY_RATES_B; do sy_run b "$r" 100 "$m"; done; fi
  if [ "$TOOLS" != switchyard ]; then for r in $AI_RATES_B; do ai_run b "$r" 100 "$m"; done; fi
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
