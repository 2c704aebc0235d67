#!/usr/bin/env bash
# The main job: build the example plugins to Wasm and the `weir` binary, then
# run `weir demo`: a fan-out pipeline on the embedded store (no external
# services) over sample orders, a poison one among them, and a report of what
# each subscription did and what sits in the dead-letter queue, and why.
# `scripts/demo.sh accounts` runs the event-sourcing demo instead (`weir demo
# accounts`): bank accounts, their commands, two views, a replay, time travel.
# `scripts/demo.sh sagas` runs the orchestrated-saga demo (`weir demo sagas`):
# orders through payment, inventory and shipping, compensated in reverse order.
# `scripts/demo.sh schemas` runs the versioned-events demo (`weir demo
# schemas`): orders v1 and v2 side by side, a v2-only handler, a broken
# upcaster's dead letters redriven after a live fix.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
echo "==> building the example plugins (wasm32-unknown-unknown)" >&2
cargo build --quiet --profile plugin --target wasm32-unknown-unknown \
  -p order-validator -p enricher -p filter -p audit-logger -p bank-account -p balances -p statements -p saga-service \
  -p orders-v2 -p orders-upcaster -p orders-upcaster-broken
echo "==> building weir" >&2
cargo build --quiet -p weir-runtime --bin weir

exec target/debug/weir demo --plugins target/wasm32-unknown-unknown/plugin "$@"
