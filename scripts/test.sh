#!/usr/bin/env bash
# The test command: one build (profile `ci`, see Cargo.toml) of every binary and every test
# target, then every test of the workspace — unit tests beside the code, the Kubernetes tests
# against the API stand-in, and the end-to-end tests on the Docker engine. Tests run one at a
# time (`quit -s` is engine-wide). Tests that need something absent here (a real cluster:
# KUBECONFIG) return early; they are listed as SKIPPED at the end, never counted as passes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile ci --workspace --all-targets
export TP_BIN_DIR="$PWD/target/x86_64-unknown-linux-gnu/ci"
export TP_SKIP_LOG="$PWD/target/skipped-tests.txt"
rm -f "$TP_SKIP_LOG"
status=0
cargo test --profile ci --workspace --no-fail-fast -- --test-threads=1 "$@" || status=$?
if [ -s "$TP_SKIP_LOG" ]; then
  echo
  echo "SKIPPED (returned without checking; not passes):"
  sed 's/^/  - /' "$TP_SKIP_LOG"
fi
exit "$status"
