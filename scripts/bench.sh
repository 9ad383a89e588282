#!/usr/bin/env bash
# The benchmark: intercept path vs direct path in one run; prints a table and JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
export TP_BIN_DIR="$PWD/target/x86_64-unknown-linux-gnu/release"
exec "$TP_BIN_DIR/tp-bench" "$@"
