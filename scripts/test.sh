#!/usr/bin/env bash
# The test command: one release build of every binary (shared by all tests), then every test
# of the workspace — unit tests beside the code and the end-to-end tests on the Docker engine.
# End-to-end tests run one at a time (`quit -s` is engine-wide).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
export TP_BIN_DIR="$PWD/target/x86_64-unknown-linux-gnu/release"
cargo test --release --workspace -- --test-threads=1 "$@"
