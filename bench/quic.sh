#!/usr/bin/env bash
# QUIC figures for BENCHMARKS.md: ranks over QUIC next to raw quinn (examples/src/bin/quinn_raw.rs)
# in the same run, on loopback and between two network namespaces (needs the test hosts of
# `.ci/netns-hosts.sh up`, as root). Usage: bash bench/quic.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
R=target/release
rounds=${1:-3}
cert=$(mktemp -u /tmp/ranks-bench-cert.XXXXXX)
raw_pair() { # server-prefix client-prefix addr
  $1 $R/quinn_raw server "$3" "$cert" & local s=$!
  sleep 0.3
  $2 $R/quinn_raw client "$3" "$cert" 1024 | sed "s/^/  raw quinn, two processes: /"
  wait $s || true
  rm -f "$cert"
}
for i in $(seq 1 "$rounds"); do
  echo "== round $i: loopback"
  $R/quinn_raw 1024 | sed "s/^/  raw quinn, one process: /"
  raw_pair "" "" 127.0.0.1:47001
  $R/ranks run -n 2 --transport quic $R/bench latency | grep -E "^latency (4|16) " | sed "s/^/  ranks quic: /"
  $R/ranks run -n 2 --transport quic $R/bench stream 1024 | sed "s/^/  ranks quic: /"
  if ip netns list 2>/dev/null | grep -q ranks-h2; then
    echo "== round $i: two network namespaces (ranks-h1 -> ranks-h2)"
    raw_pair "ip netns exec ranks-h1" "ip netns exec ranks-h2" 10.77.0.11:47002
    $R/ranks run -n 2 --host ranks-h1:1,ranks-h2:1 $R/bench latency | grep -E "^latency (4|16) " | sed "s/^/  ranks auto: /"
    $R/ranks run -n 2 --host ranks-h1:1,ranks-h2:1 $R/bench stream 1024 | sed "s/^/  ranks auto: /"
  fi
done
