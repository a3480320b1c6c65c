#!/usr/bin/env bash
# Validate `switchyard bench` against a peer: NVIDIA AIPerf (PyPI `aiperf`) and `switchyard
# bench` replay the same Mooncake trace slice on the same fixed schedule, each against a fresh
# `switchyard serve` with simulated workers (so prefix caches start equal), streaming on
# /v1/completions with text prompts. TTFT, TPOT (AIPerf's inter_token_latency) and E2E
# (request_latency) means and p99 must agree within 5%; prints one PASS/FAIL table and exits
# non-zero on FAIL. See docs/bench-validation.md.
#
# Offline apart from PyPI: AIPerf is installed into target/aiperf-venv (once; reused), and its
# tokenizer is tiktoken's o200k_base (the simulated worker's tokenizer), converted offline from
# tiktoken-rs's bundled file into a Hugging Face tokenizer in target/aiperf-hf, so both tools'
# prompts count the same tokens on the server.
#
# Usage: bash scripts/aiperf-compare.sh   (from anywhere; ~1.5 min with a warm venv and binary)
# Environment: SWITCHYARD_BIN (default: build target/release/switchyard), REQUESTS (400),
#   TIME_DIV (schedule compression, 4), ISL_DIV / OSL_DIV (length divisors, 8 / 8), MIN_OSL (8),
#   MIN_GAP_MS (20), SERVE_SPEEDUP (simulated GPU speed, 1 = real time), WORKERS (32),
#   ROUTER (round-robin), SERVE_REALTIME (1: serve under SCHED_FIFO 1 when permitted),
#   RECIPE (the engine's deployment file), TOLERANCE (0.05), AIPERF_VENV, AIPERF_VERSION.
# Runs, logs and comparison.json stay in target/aiperf-compare/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=${REQUESTS:-400}
TIME_DIV=${TIME_DIV:-4}
ISL_DIV=${ISL_DIV:-8}
OSL_DIV=${OSL_DIV:-8}
MIN_OSL=${MIN_OSL:-8}
MIN_GAP_MS=${MIN_GAP_MS:-20}
SERVE_SPEEDUP=${SERVE_SPEEDUP:-1}
TOLERANCE=${TOLERANCE:-0.05}
RECIPE=${RECIPE:-recipes/qwen3-32b-h200/agg-round-robin.toml}
WORKERS=${WORKERS:-32}
ROUTER=${ROUTER:-round-robin}
TRACE=${TRACE:-data/mooncake_conversation.jsonl.gz}
VENV=${AIPERF_VENV:-$ROOT/target/aiperf-venv}
AIPERF_VERSION=${AIPERF_VERSION:-0.13.0}
export HF_HOME=$ROOT/target/aiperf-hf   # holds only the tokenizer built below
OUT=${OUT:-$ROOT/target/aiperf-compare}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 PYTHONWARNINGS=ignore
T0=$(date +%s)
step() { echo "== [$(($(date +%s) - T0)) s] $*"; }

# ---------------------------------------------------------------- switchyard binary
if [ -n "${SWITCHYARD_BIN:-}" ]; then
  BIN=$SWITCHYARD_BIN
else
  step "cargo build --release -p switchyard"
  cargo build -q --release -p switchyard
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
fi
[ -x "$BIN" ] || { echo "no switchyard binary at $BIN" >&2; exit 2; }

# ---------------------------------------------------------------- AIPerf venv
if ! "$VENV/bin/python" -c "import aiperf, tiktoken, tokenizers, transformers" >/dev/null 2>&1; then
  step "python venv with aiperf==$AIPERF_VERSION ($VENV; first time only)"
  python3 -m venv "$VENV"
  # uv (from PyPI) installs AIPerf's ~1 GB of dependencies in ~10 s where pip takes ~9 min.
  if "$VENV/bin/pip" install -q --disable-pip-version-check uv &&
    "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "aiperf==$AIPERF_VERSION"; then :
  else
    "$VENV/bin/pip" install -q --disable-pip-version-check "aiperf==$AIPERF_VERSION"
  fi
fi
PY=$VENV/bin/python

# ---------------------------------------------------------------- local tokenizer (offline)
TOKENIZER=switchyard/o200k_base
if [ ! -f "$HF_HOME/hub/models--switchyard--o200k_base/snapshots/0000000000000000000000000000000000000000/tokenizer.json" ]; then
  TIKTOKEN_FILE=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tiktoken-rs-*/assets/o200k_base.tiktoken 2>/dev/null | head -1 || true)
  if [ -z "$TIKTOKEN_FILE" ]; then
    cargo fetch -q >/dev/null
    TIKTOKEN_FILE=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tiktoken-rs-*/assets/o200k_base.tiktoken | head -1)
  fi
  step "tokenizer: o200k_base -> $TOKENIZER in $HF_HOME (offline Hub cache)"
  "$PY" scripts/aiperf_compare.py tokenizer "$TIKTOKEN_FILE" "$HF_HOME"
fi

# ---------------------------------------------------------------- workload
rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" scripts/aiperf_compare.py slice "$TRACE" "$OUT/slice.jsonl" --requests "$REQUESTS" \
  --isl-div "$ISL_DIV" --osl-div "$OSL_DIV" --min-osl "$MIN_OSL" --min-gap-ms "$MIN_GAP_MS" \
  --time-div "$TIME_DIV"
BLOCK=$((512 / ISL_DIV))
# The recipe's engine (Qwen3-32B, H200 TP2, vLLM) with WORKERS replicas behind ROUTER: a
# sparse fleet keeps batches small, so the server behaves the same in both runs (see the doc:
# with 8 busy replicas even two switchyard runs differ by 10-20% on TPOT mean / E2E p99).
CONFIG=$OUT/deployment.toml
sed "s/^count = .*/count = $WORKERS/" "$RECIPE" >"$CONFIG"

SERVE_PID=
cleanup() {
  if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# The server under test runs in real time (SCHED_FIFO 1) when the OS allows it (root or
# CAP_SYS_NICE): its simulated engine steps are wall-clock sleeps, and on a busy machine their
# wake-ups would otherwise be late by however much CPU the client (or anything else) takes,
# i.e. the server itself would be slower under the heavier client. Both clients run at normal
# priority.
SERVE_PREFIX=()
if [ "${SERVE_REALTIME:-1}" = 1 ] && chrt -f 1 true 2>/dev/null; then SERVE_PREFIX=(chrt -f 1); fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_serve() { # log file; sets PORT and SERVE_PID
  for _attempt in 1 2 3; do # the free port can be taken before serve binds it: retry
    PORT=$(free_port)
    "${SERVE_PREFIX[@]}" "$BIN" serve --config "$CONFIG" --router "$ROUTER" --host 127.0.0.1 --port "$PORT" \
      --speedup "$SERVE_SPEEDUP" >"$1" 2>&1 &
    SERVE_PID=$!
    for _ in $(seq 1 100); do
      if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then return 0; fi
      kill -0 "$SERVE_PID" 2>/dev/null || break
      sleep 0.1
    done
    stop_serve
  done
  cat "$1" >&2
  echo "serve did not start" >&2
  exit 2
}

stop_serve() {
  kill "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=
}

MODEL=Qwen3-32B

# ---------------------------------------------------------------- AIPerf run
start_serve "$OUT/serve-aiperf.log"
step "AIPerf $("$PY" -c 'import importlib.metadata as m; print(m.version("aiperf"))') against serve :$PORT"
# --isl-block-size: tokens per hash id (the slice scales the trace's 512 down with the ISL).
# Output tokens are counted by AIPerf's default (re-tokenizing the streamed text with the
# same o200k tokenizer); the table shows they equal the server's counts.
if ! "$VENV/bin/aiperf" profile --model "$MODEL" --url "http://127.0.0.1:$PORT" \
    --endpoint-type completions --streaming \
    --input-file "$OUT/slice.jsonl" --custom-dataset-type mooncake_trace --fixed-schedule \
    --isl-block-size "$BLOCK" --tokenizer "$TOKENIZER" --random-seed 0 \
    --artifact-dir "$OUT/aiperf" --export-level records --ui none \
    >"$OUT/aiperf.log" 2>&1; then
  tail -40 "$OUT/aiperf.log" >&2
  echo "RESULT: FAIL (aiperf exited with an error; log above)" >&2
  exit 1
fi
stop_serve

# ---------------------------------------------------------------- switchyard bench run
start_serve "$OUT/serve-switchyard.log"
step "switchyard bench against serve :$PORT"
# --prompt text: words that are one o200k token each, so the worker counts exactly the
# trace's lengths (AIPerf's decoded Shakespeare re-tokenizes to within a token per block).
if ! "$BIN" bench --url "http://127.0.0.1:$PORT" --model "$MODEL" --endpoint completions \
    --trace "$OUT/slice.jsonl" --block-size "$BLOCK" --prompt text \
    --progress off --out "$OUT/switchyard" >"$OUT/switchyard.log" 2>&1; then
  tail -40 "$OUT/switchyard.log" >&2
  echo "RESULT: FAIL (switchyard bench exited with an error; log above)" >&2
  exit 1
fi
stop_serve

step "compare (same $REQUESTS-request slice, fixed schedule, fresh serve each; serve priority: ${SERVE_PREFIX[*]:-normal})"
set +e
"$PY" scripts/aiperf_compare.py compare "$OUT/aiperf" "$OUT/switchyard" --tol "$TOLERANCE" \
  --json-out "$OUT/comparison.json"
rc=$?
set -e
step "done"
exit $rc
