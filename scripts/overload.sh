#!/usr/bin/env bash
# What `serve` does at 10x its fleet's capacity, with and without a per-worker admission
# bound: goodput of admitted requests, how fast the excess is refused, serve's memory.
# 2 simulated workers (--speedup 2), random 1,000/100-token requests.
#   bash scripts/overload.sh     (~3 min after the release build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
if [ -n "${SWITCHYARD_BIN:-}" ]; then BIN=$SWITCHYARD_BIN; else
  cargo build -q --release -p switchyard; BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
fi
pids=(); cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }; trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; exit 1; }
OUT=${OUT:-$ROOT/target/overload}; rm -rf "$OUT"; mkdir -p "$OUT"
w=(); for _ in 1 2; do p=$(port); "$BIN" worker --host 127.0.0.1 --port "$p" --speedup 2 >/dev/null 2>&1 & pids+=($!); w+=(--worker "http://127.0.0.1:$p"); wait_http "http://127.0.0.1:$p/health"; done
WL=(--dataset random --input-len 1000 --output-len 100 --range-ratio 0 --progress off --goodput ttft:2000,tpot:50)
run_serve() { local p; p=$(port); "$BIN" serve --host 127.0.0.1 --port "$p" --router least-load "$@" "${w[@]}" >/dev/null 2>&1 & pids+=($!); SERVE_PID=$!; wait_http "http://127.0.0.1:$p/ready"; SERVE="http://127.0.0.1:$p"; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
run_serve
echo "== capacity: closed loop, 64 clients, 20 s"
"$BIN" bench --url "$SERVE" "${WL[@]}" --concurrency 64 --duration 20 --out "$OUT/capacity" | grep -E "Request throughput|Successful|Goodput" || true
cap=$(python3 -c "import json;print(json.load(open('$OUT/capacity/summary.json'))['summary']['request_throughput'])")
rate=$(python3 -c "print(round(10*$cap,2))")
for bound in 1000000 40; do
  run_serve --max-inflight-per-worker "$bound"
  r0=$(rss "$SERVE_PID")
  echo "== 10x capacity ($rate req/s, Poisson, 20 s), --max-inflight-per-worker $bound, serve RSS before ${r0} kB"
  "$BIN" bench --url "$SERVE" "${WL[@]}" --request-rate "$rate" --duration 20 --out "$OUT/bound-$bound" >/dev/null 2>&1 || true
  r1=$(rss "$SERVE_PID")
  python3 - "$OUT/bound-$bound/summary.json" "$r0" "$r1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))['summary']
g = s.get("goodput") or {}
t = s.get("ttft") or {}
print(f"   sent {s['requests']}, completed {s['completed']}, refused/failed {s['failed']} {dict(s.get('errors', {}))}")
print(f"   admitted: goodput {g.get('rate', 0):.2f} req/s ({100*(g.get('fraction') or 0):.0f}% of all sent), TTFT p50 {1e3*t.get('p50', 0):.0f} ms p99 {1e3*t.get('p99', 0):.0f} ms")
print(f"   serve RSS {sys.argv[2]} -> {sys.argv[3]} kB")
PY
done
