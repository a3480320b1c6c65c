#!/usr/bin/env bash
# Added latency of `switchyard serve` vs SGLang's router (`sglang-router`, PyPI) in front of
# the same zero-delay simulated workers, for a short and a long text prompt, with round-robin
# and with cache-aware routing. One run, interleaved, so the ratios are comparable.
#
#   bash scripts/router-compare.sh            # ~3 min after the release build
# Environment: SWITCHYARD_BIN (default: build target/release/switchyard), WORKERS (4), N (300
# requests per path and round). sglang-router is installed once into target/sglr-venv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORKERS=${WORKERS:-4}
N=${N:-300}
VENV=${SGLR_VENV:-$ROOT/target/sglr-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sglang_router" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q sglang-router
fi
if [ -n "${SWITCHYARD_BIN:-}" ]; then BIN=$SWITCHYARD_BIN; else
  cargo build -q --release -p switchyard
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
urls=(); wargs=()
for _ in $(seq 1 "$WORKERS"); do
  p=$(port)
  "$BIN" worker --host 127.0.0.1 --port "$p" --speedup 1000000 >/dev/null 2>&1 & pids+=($!)
  urls+=("http://127.0.0.1:$p"); wargs+=(--worker "http://127.0.0.1:$p")
done
for u in "${urls[@]}"; do wait_http "$u/health"; done
s_rr=$(port); s_kv=$(port); g_rr=$(port); g_ca=$(port)
"$BIN" serve --host 127.0.0.1 --port "$s_rr" --router round-robin "${wargs[@]}" >/dev/null 2>&1 & pids+=($!)
"$BIN" serve --host 127.0.0.1 --port "$s_kv" --router kv --kv-feed approximate "${wargs[@]}" >/dev/null 2>&1 & pids+=($!)
LOGS=$ROOT/target/router-compare-logs; mkdir -p "$LOGS"
"$VENV/bin/python" -m sglang_router.launch_router --host 127.0.0.1 --port "$g_rr" --policy round_robin --prometheus-port "$(port)" --worker-urls "${urls[@]}" >"$LOGS/sgl-rr.log" 2>&1 & pids+=($!)
"$VENV/bin/python" -m sglang_router.launch_router --host 127.0.0.1 --port "$g_ca" --policy cache_aware --prometheus-port "$(port)" --worker-urls "${urls[@]}" >"$LOGS/sgl-ca.log" 2>&1 & pids+=($!)
for p in $s_rr $s_kv; do wait_http "http://127.0.0.1:$p/ready"; done
for p in $g_rr $g_ca; do
  up=0
  for _ in $(seq 1 300); do
    if curl -sf -o /dev/null -H 'content-type: application/json' -d '{"model":"Qwen3-32B","prompt":"x","max_tokens":1}' "http://127.0.0.1:$p/v1/completions"; then up=1; break; fi
    sleep 0.2
  done
  [ "$up" = 1 ] || { echo "sglang-router on port $p never answered (logs in $LOGS)" >&2; exit 1; }
done
echo "== $WORKERS zero-delay workers; $N sequential requests x 3 rounds per path; sglang-router $("$VENV/bin/pip" show sglang-router | awk '/^Version/{print $2}')"
python3 scripts/router_latency.py "${urls[0]}" "$N" \
  "serve round-robin=http://127.0.0.1:$s_rr" "serve kv (approximate)=http://127.0.0.1:$s_kv" \
  "sgl-router round_robin=http://127.0.0.1:$g_rr" "sgl-router cache_aware=http://127.0.0.1:$g_ca"
