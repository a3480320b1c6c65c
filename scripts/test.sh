#!/usr/bin/env bash
# The README's test command. Installs what the tests need (scripts/install-test-deps.sh:
# idempotent, a no-op once done), runs the whole workspace's tests, then lists every test
# that was skipped for a missing prerequisite and how to install it. With CI set, a skip is
# a failure (the test itself panics) and so is a failed install.
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh --no-fail-fast`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

export SWITCHYARD_SKIP_LOG="$PWD/target/test-skips.log"
rm -f "$SWITCHYARD_SKIP_LOG"
status=0
cargo test --workspace "$@" || status=$?

if [ -s "$SWITCHYARD_SKIP_LOG" ]; then
    echo
    echo "== SKIPPED tests (they did not test anything):"
    sed 's/^/   /' "$SWITCHYARD_SKIP_LOG"
    [ -n "${CI:-}" ] && status=1
fi
exit "$status"
