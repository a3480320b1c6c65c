#!/usr/bin/env bash
# A multi-process Switchyard cluster on one machine (loopback), the same shape as deploy/k8s:
# etcd + NATS, simulated prefill and decode workers that register themselves in etcd, and two
# active-active frontends discovering them. Ctrl-C stops everything this script started.
#
#   scripts/install-cluster-deps.sh && cargo build --release -p switchyard
#   scripts/cluster-local.sh                    # 2 prefill + 2 decode, frontends on 8000 and 8010
#   PREFILL=0 DECODE=4 ROLE=aggregated scripts/cluster-local.sh   # 4 aggregated workers
#
# Environment: SWITCHYARD (binary, default target/release/switchyard), PREFILL, DECODE,
# ROLE (used when PREFILL=0: aggregated), ROUTER (default kv), SPEEDUP (default 1).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
sy="${SWITCHYARD:-$root/target/release/switchyard}"
prefill="${PREFILL:-2}"
decode="${DECODE:-2}"
router="${ROUTER:-kv}"
speedup="${SPEEDUP:-1}"
etcd_port=2379
nats_port=4222

for b in etcd nats-server; do
    command -v "$b" >/dev/null || { echo "cluster-local: $b missing: run scripts/install-cluster-deps.sh" >&2; exit 1; }
done
[ -x "$sy" ] || { echo "cluster-local: $sy not built: cargo build --release -p switchyard" >&2; exit 1; }
# Not `| grep -q`: grep exiting at the first match would SIGPIPE the writer (pipefail).
if ! grep -q -- '--register' <<<"$("$sy" worker --help 2>/dev/null)"; then
    echo "cluster-local: this switchyard build has no 'worker --register' (cluster wiring missing)" >&2
    exit 1
fi

work="$(mktemp -d -t switchyard-cluster.XXXXXX)"
pids=()
cleanup() {
    trap - EXIT INT TERM
    # Frontends and workers first (workers revoke their leases on SIGTERM), infra last.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    echo "cluster-local: stopped; logs were in $work"
}
trap cleanup EXIT INT TERM

start() { # name, command...
    local name="$1"
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=("$!")
}

wait_http() { # url, seconds
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "cluster-local: $1 not up after $2 s (logs: $work)" >&2
            exit 1
        fi
        sleep 0.2
    done
}

start etcd etcd --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))"
start nats nats-server -p "$nats_port" -a 127.0.0.1
wait_http "http://127.0.0.1:$etcd_port/health" 20

port=8001
zmq=5557
add_worker() { # role
    start "worker-$1-$port" "$sy" worker --host 127.0.0.1 --port "$port" --role "$1" --speedup "$speedup" \
        --kv-events "tcp://127.0.0.1:$zmq" --kv-events-replay "tcp://127.0.0.1:$((zmq + 1))" \
        --register "etcd://127.0.0.1:$etcd_port"
    port=$((port + 1))
    zmq=$((zmq + 2))
}
if [ "$prefill" -gt 0 ]; then
    for ((i = 0; i < prefill; i++)); do add_worker prefill; done
    for ((i = 0; i < decode; i++)); do add_worker decode; done
else
    for ((i = 0; i < decode; i++)); do add_worker "${ROLE:-aggregated}"; done
fi

for fp in 8000 8010; do
    start "serve-$fp" "$sy" serve --host 127.0.0.1 --port "$fp" --router "$router" \
        --discovery "etcd://127.0.0.1:$etcd_port" --nats "nats://127.0.0.1:$nats_port" \
        --replica-id "frontend-$fp" --engine-metrics-interval 1
done
for fp in 8000 8010; do wait_http "http://127.0.0.1:$fp/ready" 60; done
model="$(curl -fsS http://127.0.0.1:8000/v1/models | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4 || true)"

cat <<MSG
cluster-local: up (logs in $work)
  frontends  http://127.0.0.1:8000  http://127.0.0.1:8010   (same fleet, active-active)
  workers    curl -s localhost:8000/v1/workers
  membership etcdctl --endpoints 127.0.0.1:$etcd_port get --prefix /switchyard/workers/
  try        curl -s localhost:8000/v1/completions -H 'content-type: application/json' \\
               -d '{"model":"${model:-MODEL}","prompt":"hello","max_tokens":8}'
  kill a worker (kill <pid>) and watch it leave /v1/workers within the lease TTL.
Ctrl-C to stop.
MSG
wait
