#!/usr/bin/env bash
# The plugin layer against its peers (issue 18): builds Weir's filter and
# order validator, the same logic as an Extism plug-in and as two Fluvio
# SmartModules (all wasm32-unknown-unknown, the plugin profile), then runs
# the benchmark in release. Everything goes to benches/peers/target, never
# to the workspace's target. Arguments go to the benchmark: --quick for a
# smoke run, --rounds N (default 5).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=$here/target
wasm=(--profile plugin --target wasm32-unknown-unknown)

# Weir's own plugins, from the root workspace, as tests/build.rs builds them.
(cd "$root" && cargo build -q "${wasm[@]}" --target-dir "$target/weir-plugins" -p filter -p order-validator)
(cd "$here" && cargo build -q "${wasm[@]}" --target-dir "$target/guests" \
    -p peers-extism-guest -p peers-fluvio-filter -p peers-fluvio-validator)
mkdir -p "$target/wasm"
cp "$target"/weir-plugins/wasm32-unknown-unknown/plugin/{filter,order_validator}.wasm "$target/wasm/"
cp "$target"/guests/wasm32-unknown-unknown/plugin/peers_{extism_guest,fluvio_filter,fluvio_validator}.wasm "$target/wasm/"

echo "load before: $(uptime)" >&2
cd "$here" && PEERS_WASM_DIR="$target/wasm" cargo run -q --release -p weir-peers -- "$@"
echo "load after: $(uptime)" >&2
