#!/usr/bin/env bash
# The main job: build the example plugins to Wasm and run the order validator
# over the sample orders with `weir exec`, on the embedded default (no
# external services). Safe to run from a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
echo "==> building the example plugins (wasm32-unknown-unknown)" >&2
cargo build --quiet --profile plugin --target wasm32-unknown-unknown \
  -p order-validator -p enricher -p filter -p audit-logger
echo "==> building weir" >&2
cargo build --quiet -p weir-runtime --bin weir

weir=target/debug/weir
wasm=target/wasm32-unknown-unknown/plugin
echo "==> weir inspect $wasm/order_validator.wasm" >&2
"$weir" inspect "$wasm/order_validator.wasm"
echo >&2
echo "==> weir exec --plugin $wasm/order_validator.wasm --input samples/orders.jsonl" >&2
"$weir" exec --plugin "$wasm/order_validator.wasm" --input samples/orders.jsonl
