#!/usr/bin/env bash
# Two-level (node-aware) collectives against the flat ones, across the netns test hosts
# (`sudo bash .ci/netns-hosts.sh up 4`): 8 ranks on 4 hosts, barrier and all-reduce, each
# round running both builds' settings back to back. Usage: bash bench/hier.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
R=target/release
rounds=${1:-3}
hosts=ranks-h1:2,ranks-h2:2,ranks-h3:2,ranks-h4:2
for i in $(seq 1 "$rounds"); do
  echo "== round $i: 8 ranks on 4 hosts"
  for mode in 1 0; do
    name=$([ $mode = 1 ] && echo two-level || echo flat)
    $R/ranks run -n 8 --host $hosts -x RANKS_COLL_HIER=$mode $R/bench barrier 2000 | sed "s/^/  $name: /"
    $R/ranks run -n 8 --host $hosts -x RANKS_COLL_HIER=$mode $R/bench allreduce 1000 | sed "s/^/  $name: /"
  done
done
