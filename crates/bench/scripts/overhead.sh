#!/usr/bin/env bash
# Client overhead of `switchyard bench`: the highest request rate and the most streams in
# flight it sustains with dispatch lag (actual send - scheduled send) p99 under 1 ms.
#
# Against the loopback TEST FIXTURE server (crates/bench/tests/common; to be replaced by
# `switchyard worker`), in release mode, server and client on the same machine:
#   A. zero-delay server, 100-token prompts, 10 streamed tokens: constant-rate sweep.
#   B. streams of 100 tokens at 10 ms each (1 s per request): rate R keeps ~R streams in
#      flight, i.e. ~100*R SSE chunks per second for the client to stamp and parse.
# Usage: crates/bench/scripts/overhead.sh [SECONDS_PER_STEP]   (from the workspace root)
set -euo pipefail
STEP=${1:-4}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build -q --release -p switchyard-bench --examples
BIN=$CARGO_TARGET_DIR/release/examples
OUT=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT

start_server() { # port ttft_ms itl_ms
  "$BIN/fixture_server" "$1" "$2" "$3" 1 2>/dev/null &
  PIDS+=($!)
  sleep 0.5
}

report() { # label dir
  python3 - "$1" "$2" <<'PY'
import json, sys
label, d = sys.argv[1], sys.argv[2]
s = json.load(open(d + "/summary.json"))
lag = s["client"]["dispatch_lag"] or {}
wake = s["client"].get("dispatcher_wake") or {}
su = s["summary"]
ok = "OK " if lag.get("p99", 1) < 0.001 else "   "
print(f"{ok}{label:<26} sent {su['requests']:>6}  failed {su['failed']:>4}  "
      f"{su['request_throughput'] or 0:>8.1f} req/s  peak in flight {su['peak_concurrency']:>5}  "
      f"lag p50 {lag.get('p50', 0)*1e3:6.3f} ms  p99 {lag.get('p99', 0)*1e3:7.3f} ms  max {lag.get('max', 0)*1e3:7.3f} ms"
      f"  (thread wake p99 {wake.get('p99', 0)*1e3:6.3f} ms)")
PY
}

echo "machine: $(nproc) CPUs, $(uptime | sed 's/.*load average/load average/')"
echo "A. zero-delay server, constant arrivals, ${STEP} s per step"
start_server 18601 0 0
for r in 250 500 1000 2000 4000; do
  "$BIN/bench" --url http://127.0.0.1:18601 --dataset random --input-len 100 --output-len 10 \
    --request-rate "$r" --arrival constant --requests $((r * STEP)) --progress off \
    --out "$OUT/a$r" > /dev/null 2>&1
  report "rate $r/s" "$OUT/a$r"
done
echo "B. 1-second streams (100 tokens x 10 ms), constant arrivals, ${STEP} s per step"
start_server 18602 0 10
for r in 50 100 200 400 800; do
  "$BIN/bench" --url http://127.0.0.1:18602 --dataset random --input-len 100 --output-len 100 \
    --request-rate "$r" --arrival constant --requests $((r * STEP)) --progress off \
    --out "$OUT/b$r" > /dev/null 2>&1
  report "rate $r/s (~$r streams)" "$OUT/b$r"
done
echo "load after: $(uptime | sed 's/.*load average/load average/')"
