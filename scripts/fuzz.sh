#!/usr/bin/env bash
# Coverage-guided fuzzing of the host's decoding boundaries with libFuzzer,
# on the pinned stable toolchain: the sanitizer-coverage pass is turned on
# through RUSTFLAGS (what cargo-fuzz does, without its nightly-only
# sanitizers). Targets (fuzz/fuzz_targets/, entry points in
# runtime/src/fuzzing.rs):
#   guest_output  the host's decoding of Outcome, InitOutcome, PluginDescription
#   ingest        JSON envelopes, CloudEvents structured, batch and binary mode
#   store_record  every store table's record decoding (format 2 and format 1)
#
# Usage: scripts/fuzz.sh [--runs N | --seconds S] [target...]
#   default: every target, 10,000,000 inputs each (the number in
#   docs/security.md). CI runs `scripts/fuzz.sh --seconds 20`.
# A crash leaves its input in fuzz/artifacts/<target>/ and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=(-runs=10000000)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) budget=("-runs=$2"); shift 2 ;;
    --seconds) budget=("-max_total_time=$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -eq 0 ] && targets=(guest_output ingest store_record)

host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation off build scripts and proc macros.
echo "==> building the fuzz targets (release, instrumented; the first build compiles wasmtime)" >&2
(cd fuzz && cargo build --release --target "$host" --bins)

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  # Seeds: the committed ones, plus the sample orders for ingest.
  if [ "$target" = ingest ] && [ -f samples/orders.jsonl ]; then
    i=0
    while IFS= read -r line; do
      i=$((i + 1)); printf '\000%s' "$line" > "$corpus/seed-order-$i"
    done < samples/orders.jsonl
  fi
  echo "==> fuzzing $target (${budget[*]})" >&2
  # -rss_limit_mb: a decoder that allocates without bound is a crash.
  "fuzz/target/$host/release/$target" "$corpus" "${budget[@]}" -rss_limit_mb=1024 -max_len=65536 \
    -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 2>&1 | tail -n 25
done
