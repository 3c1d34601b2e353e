#!/usr/bin/env bash
# Run one `bench` test REPS times, alternating this build and another, and print each
# build's figures on one line (for tests whose figures move a lot from run to run).
# Usage: bash bench/alternate.sh OLD_TARGET_DIR REPS TEST [RANKS]
#   OLD_TARGET_DIR: a directory holding another build's `ranks` and `bench`.
set -u
cd "$(dirname "$0")/.."
old=$1; reps=$2; test=$3; n=${4:-2}
cargo build --release -q -p ranks-launcher -p ranks-examples
for i in $(seq "$reps"); do
  for b in target/release "$old"; do
    echo "$b $("$b"/ranks run -n "$n" "$b"/bench "$test" | awk '{print $(NF-1)}')"
  done
done | awk '{v[$1]=v[$1]" "$2} END {for (k in v) print k ":" v[k]}'
