#!/usr/bin/env bash
# Fetch nats-server 2.10 (Debian trixie's package) into target/nats-server-2.10
# without installing it, and print the binary's path. The benchmark suite
# runs JetStream's fsync-per-write mode (`sync_interval: always`) only on
# 2.10+, and Debian bookworm ships 2.9:
#
#   WEIR_NATS_SERVER=$(scripts/nats-server-2.10.sh) cargo bench -p weir-tests --bench suite -- --scenarios s6,latency
#
# The package is a statically linked Go binary; the checksum is Debian's.
set -euo pipefail
cd "$(dirname "$0")/.."
deb="nats-server_2.10.27-1+b2_amd64.deb"
sha256="6d913ac987b78734c08537c2adeb1526cf735f216173a9170d94b185fcfe6f8a"
dir="target/nats-server-2.10"
bin="$dir/usr/sbin/nats-server"
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  curl -fsSL -o "$dir/$deb" "http://deb.debian.org/debian/pool/main/n/nats-server/$deb" >&2
  echo "$sha256  $dir/$deb" | sha256sum -c --quiet - >&2
  dpkg-deb -x "$dir/$deb" "$dir"
fi
echo "$PWD/$bin"
