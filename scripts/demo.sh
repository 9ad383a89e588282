#!/usr/bin/env bash
# The main job: builds everything, then on this Docker engine starts a compose project of our
# test app, connects, intercepts its `web` service with a handler container, shows a request
# reaching the handler, ends the intercept, shows the original answering again, cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
export TP_BIN_DIR="$PWD/target/x86_64-unknown-linux-gnu/release"
exec "$TP_BIN_DIR/tp-demo" "$@"
