#!/usr/bin/env bash
# Install the distributed-infrastructure servers Switchyard's cluster layer tests against:
# etcd (membership; spoken to over its HTTP/JSON gateway, /v3/ paths need etcd >= 3.4) and
# nats-server (router fan-out). Servers only: building needs no protoc or protobuf headers.
#
# Idempotent and non-interactive: only what is missing is installed, from Debian's packages.
# Safe to run on every CI start; a no-op when everything is present.
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)

if [ ${#need[@]} -eq 0 ]; then
    echo "install-cluster-deps: etcd and nats-server already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install-cluster-deps: need root (or sudo) to install: ${need[*]}" >&2
        exit 1
    fi
fi

echo "install-cluster-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: we only need the binaries, not etcd's client docs etc.
# The etcd-server package's postinst may try to start a system service; in containers
# without an init system that fails harmlessly (policy-rc.d / no systemd) -- we only use
# the binary, started by our tests with their own data dirs and ports.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"

for b in etcd nats-server; do
    if ! command -v "$b" >/dev/null 2>&1; then
        echo "install-cluster-deps: $b still missing after install" >&2
        exit 1
    fi
done
echo "install-cluster-deps: $(etcd --version 2>/dev/null | head -1); nats-server $(nats-server --version 2>/dev/null)"
