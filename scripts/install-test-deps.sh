#!/usr/bin/env bash
# Install what the test suite needs beyond a Rust toolchain, idempotently and without
# prompts; a no-op when everything is present:
#   - etcd + nats-server (cluster tests against real servers; Debian packages),
#   - headless Chromium (renders lab's and bench's HTML reports; Debian package),
#   - a Python venv under target/venv with openai, pyzmq, msgpack and sglang-router (interop
#     tests: the official client, ZMQ peers, SGLang's router in front of our workers).
# Without root (or passwordless sudo) the Debian packages cannot be installed: outside CI
# that is reported and the affected tests are skipped loudly (scripts/test.sh lists them);
# with CI set it is an error.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    if [ -n "${CI:-}" ]; then
        echo "install-test-deps: $*" >&2
        exit 1
    fi
    echo "install-test-deps: WARNING: $*" >&2
}

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
fi
can_apt() { [ "$(id -u)" -eq 0 ] || sudo -n true >/dev/null 2>&1; }

bash scripts/install-cluster-deps.sh || fail "etcd/nats-server not installed (cluster tests will fail)"

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if can_apt; then
        echo "install-test-deps: installing chromium (report rendering tests)"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        fail "chromium missing and no root/sudo to install it (report browser checks will be skipped)"
    fi
fi

if ! target/venv/bin/python -c "import openai, zmq, msgpack, sglang_router" >/dev/null 2>&1; then
    echo "install-test-deps: python venv for interop tests (target/venv)"
    mkdir -p target
    if ! python3 -m venv target/venv 2>/dev/null; then
        if can_apt; then
            export DEBIAN_FRONTEND=noninteractive
            $SUDO apt-get update -qq
            $SUDO apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv target/venv
        else
            fail "python3 -m venv failed and no root/sudo to install python3-venv (interop tests will be skipped)"
        fi
    fi
    if [ -x target/venv/bin/pip ]; then
        target/venv/bin/pip install -q openai pyzmq msgpack sglang-router || fail "pip install openai pyzmq msgpack sglang-router failed"
    fi
fi
