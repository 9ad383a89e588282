#!/usr/bin/env bash
# The benchmark: our paths vs the direct path in one run; prints tables and one JSON document.
# Flags: see `tp-bench --help` (e.g. --only-paths, --rounds N, --chart FILE.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
export TP_BIN_DIR="$PWD/target/x86_64-unknown-linux-gnu/release"
exec "$TP_BIN_DIR/tp-bench" "$@"
