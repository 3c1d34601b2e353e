#!/usr/bin/env bash
# Start-up across the netns test hosts (`sudo bash .ci/netns-hosts.sh up 4`): the wall time
# of `ranks run` for jobs of growing size on 4 hosts, and what each rank costs once it has
# talked in a pattern: its peak resident memory and the QUIC connections opened (counted
# from the ranks' debug log, both ends of each). Usage:
#   bash bench/startup.sh [runs] [ranks-binary-dir]
# The second argument runs another build's binaries (e.g. an older commit's) the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
R=${2:-target/release}
[ -n "${2:-}" ] || cargo build --release --bins -q
hosts() { # N ranks spread evenly over the 4 hosts
  local per=$(($1 / 4))
  echo "ranks-h1:$per,ranks-h2:$per,ranks-h3:$per,ranks-h4:$per"
}
echo "== wall time of ranks run -n N --host (4 hosts) hello, $runs runs each (s)"
for n in 4 8 16 32; do
  times=()
  for _ in $(seq 1 "$runs"); do
    s=$(date +%s.%N)
    $R/ranks run -n "$n" --host "$(hosts "$n")" $R/hello > /dev/null
    times+=("$(echo "$(date +%s.%N) - $s" | bc)")
  done
  echo "  N=$n: ${times[*]}"
done
echo "== per rank after a pattern: mean peak RSS (KiB), QUIC connection ends, wall (s)"
for n in 4 8 16 32; do
  for p in none ring barrier alltoall; do
    s=$(date +%s.%N)
    out=$($R/ranks run -n "$n" --host "$(hosts "$n")" -x RANKS_LOG=ranks=debug \
      $R/bench startup $p 2>&1)
    t=$(echo "$(date +%s.%N) - $s" | bc)
    echo "$out" | awk -v n="$n" -v p="$p" -v t="$t" \
      '/^(\[[0-9]+\] )?rss /{s+=$NF;k++} /QUIC connection up/{c++}
       END{printf "  N=%-3d %-9s ranks %3d  RSS %6.0f KiB  connection ends %4d  wall %.2f\n", n, p, k, s/k, c, t}'
  done
done
