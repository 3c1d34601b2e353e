#!/usr/bin/env bash
# QUIC streaming between two network namespaces, alternating raw quinn
# (examples/src/bin/quinn_raw.rs), an older build and this one, so that all three see the
# same minutes of a noisy machine. Needs the test hosts of `.ci/netns-hosts.sh up`, as root.
# Usage: bash bench/quic-ab.sh OLD_DIR [rounds] [MiB]
#   OLD_DIR holds an older build's `ranks` and `bench` (e.g. another target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bench/quic-ab.sh OLD_DIR [rounds] [MiB]}
rounds=${2:-3}
mib=${3:-1024}
cargo build --release --bins -q
R=target/release
cert=$(mktemp -u /tmp/ranks-bench-cert.XXXXXX)
stream() { "$1/ranks" run -n 2 --host ranks-h1:1,ranks-h2:1 "$1/bench" stream "$mib" | awk '{print $3}'; }
echo "round raw-quinn old new (MB/s)"
for i in $(seq 1 "$rounds"); do
  ip netns exec ranks-h1 $R/quinn_raw server 10.77.0.11:47002 "$cert" &
  sleep 0.3
  raw=$(ip netns exec ranks-h2 $R/quinn_raw client 10.77.0.11:47002 "$cert" "$mib" | awk '/^stream/ {print $3}')
  wait
  rm -f "$cert"
  echo "$i $raw $(stream "$old") $(stream $R)"
done
