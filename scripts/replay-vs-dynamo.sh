#!/usr/bin/env bash
# Time Switchyard's simulator against NVIDIA Dynamo's offline replay on the same trace.
#
# Dynamo (PyPI `ai-dynamo` + `ai-dynamo-runtime` 1.6.1, Rust core) replays the bundled Mooncake
# conversation trace with `dynamo.replay.api.run_trace_replay` — mocker engine defaults, 8
# aggregated workers, round-robin routing, trace_block_size=512 — and `switchyard lab ab` runs
# its default recipe (both configurations: 8 aggregated round-robin workers, and 6 prefill + 2
# decode KV-aware, each on the whole trace). Runs alternate (3 of each by default) so machine
# load hits both alike; prints each run's wall, CPU (user+sys) and peak RSS, the medians, and
# the ratios. Not in CI (it downloads ~100 MB from PyPI and takes a minute or two).
#
# Usage: bash scripts/replay-vs-dynamo.sh
# Environment: RUNS (3), SWITCHYARD_BIN (default: build target/release/switchyard),
#   DYNAMO_VENV (target/dynamo-venv), DYNAMO_VERSION (1.6.1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
VENV=${DYNAMO_VENV:-$ROOT/target/dynamo-venv}
VERSION=${DYNAMO_VERSION:-1.6.1}
WORK=$ROOT/target/replay-vs-dynamo
mkdir -p "$WORK"

if [ -n "${SWITCHYARD_BIN:-}" ]; then
  BIN=$SWITCHYARD_BIN
else
  echo "== cargo build --release -p switchyard"
  cargo build -q --release -p switchyard
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
fi
[ -x "$BIN" ] || { echo "no switchyard binary at $BIN" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian package 'time')" >&2; exit 2; }

# Dynamo's Python packages without their (GPU, HTTP, tokenizer) dependency tree: the offline
# replay only needs the Rust core plus pydantic, uvloop and typing_extensions.
if ! "$VENV/bin/python" -c "from dynamo.replay.api import run_trace_replay" >/dev/null 2>&1; then
  echo "== python venv with ai-dynamo==$VERSION ($VENV; first time only)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
    "ai-dynamo-runtime==$VERSION" "ai-dynamo==$VERSION"
  "$VENV/bin/pip" install -q --disable-pip-version-check pydantic uvloop typing_extensions
  if ! err=$("$VENV/bin/python" -c "from dynamo.replay.api import run_trace_replay" 2>&1); then
    echo "Dynamo's offline replay does not import here, so there is nothing to compare:" >&2
    echo "$err" | tail -5 >&2
    exit 3
  fi
fi

# Dynamo reads plain JSONL.
TRACE=$WORK/mooncake_conversation.jsonl
[ -s "$TRACE" ] || gunzip -c data/mooncake_conversation.jsonl.gz >"$TRACE"
cat >"$WORK/dynamo_replay.py" <<'EOF'
import sys
from dynamo.replay.api import run_trace_replay

r = run_trace_replay(sys.argv[1], num_workers=8, router_mode="round_robin", trace_block_size=512)
s = r.summary
assert s["completed_requests"] == s["num_requests"], s
print(f"dynamo: {s['completed_requests']} requests, mean TTFT {s['mean_ttft_ms']:.1f} ms")
EOF

measure() { # label, command...: appends "label wall cpu rss_mb" to $WORK/times
  local label=$1
  shift
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/t" "$@" >"$WORK/$label.log" 2>&1
  read -r wall user sys rss <"$WORK/t"
  awk -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" \
    'BEGIN { printf "%-10s wall %6.2f s  cpu %6.2f s  peak RSS %5.0f MB\n", l, w, u + s, r / 1024 }' |
    tee -a "$WORK/times"
}

: >"$WORK/times"
echo "== $RUNS runs each, alternating (load: $(cut -d' ' -f1-3 /proc/loadavg))"
for _ in $(seq "$RUNS"); do
  measure switchyard "$BIN" lab ab -o "$WORK/ab"
  measure dynamo "$VENV/bin/python" "$WORK/dynamo_replay.py" "$TRACE"
done
awk '
  { wall[$1] = wall[$1] " " $3; cpu[$1] = cpu[$1] " " $6 }
  function median(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    sw = median(wall["switchyard"]); sc = median(cpu["switchyard"])
    dw = median(wall["dynamo"]); dc = median(cpu["dynamo"])
    printf "median: switchyard lab ab (2 configurations) wall %.2f s, cpu %.2f s; dynamo replay (1 configuration) wall %.2f s, cpu %.2f s\n", sw, sc, dw, dc
    printf "ratio dynamo / switchyard, whole runs: wall %.1fx, cpu %.1fx\n", dw / sw, dc / sc
    printf "ratio per configuration (switchyard simulates two): cpu %.1fx\n", 2 * dc / sc
  }' "$WORK/times"
