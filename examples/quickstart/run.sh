#!/usr/bin/env bash
# Builds what the quickstart needs, starts the demo echo upstream on 127.0.0.1:8081 and the
# gateway on 127.0.0.1:8080 (admin on 127.0.0.1:9901). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --profile plugin --target wasm32-wasip2 -p jwt-auth -p rbac -p rate-limit -p request-validation -p audit-log
cargo build --release -p portcullis -p portcullis-demo

target/release/demo-upstream --listen 127.0.0.1:8081 &
upstream=$!
trap 'kill "$upstream" 2>/dev/null || true' EXIT INT TERM
target/release/portcullis run --config examples/quickstart/portcullis.toml
