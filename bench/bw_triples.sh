#!/usr/bin/env bash
# Streaming bandwidth at one size (`bench bw`, a window of 64 nonblocking sends), as
# alternating triples: this build, another build, Open MPI, REPS times, one after the
# other, so that the machine's slow and fast minutes fall on all three alike. Prints each
# round, then the medians and this build's ratio to Open MPI per round.
# The Open MPI side is a copy of the C reference (../shared/bench/mpi_bench.c) made with sed
# to run this one size for ITERS windows (the reference runs every size with 2000).
# Usage: bash bench/bw_triples.sh OLD_TARGET_DIR [REPS] [SIZE] [ITERS]
#   OLD_TARGET_DIR: a directory holding another build's `ranks` and `bench`; `-` to skip.
#   Defaults: 10 rounds of 8 B, 20000 windows (1.28 million messages a run).
# Needs: apt-get install -y openmpi-bin libopenmpi-dev
set -u
cd "$(dirname "$0")/.."
old=${1:--}; reps=${2:-10}; size=${3:-8}; iters=${4:-20000}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release -q -p ranks-launcher -p ranks-examples
R=target/release
mkdir -p target/bench-mpi
sed -e 's|for (int size = 8; size <= (1 << 20); size \*= 8) {|for (int size = atoi(getenv("SIZE")); size <= atoi(getenv("SIZE")); size *= 8) {|' \
  -e 's|int iters = size <= 65536 ? 2000 : 100, warm = 10;|int iters = atoi(getenv("ITERS")), warm = 10;|' \
  ../shared/bench/mpi_bench.c > target/bench-mpi/mpi_bench_one.c
[ "$(grep -c 'getenv("SIZE")\|getenv("ITERS")' target/bench-mpi/mpi_bench_one.c)" = 2 ] ||
  { echo "could not patch mpi_bench.c"; exit 1; }
mpicc.openmpi -O2 -o target/bench-mpi/mpi_bench_one target/bench-mpi/mpi_bench_one.c
mbs() { awk '{print $3}'; }
for i in $(seq "$reps"); do
  new=$($R/ranks run -n 2 $R/bench bw "$size" "$size" "$iters" | mbs)
  o=-; [ "$old" != - ] && o=$("$old"/ranks run -n 2 "$old"/bench bw "$size" "$size" "$iters" | mbs)
  mpi=$(SIZE=$size ITERS=$iters mpirun.openmpi -n 2 -x SIZE -x ITERS \
    target/bench-mpi/mpi_bench_one bw 2>/dev/null | mbs)
  echo "round $i: new $new old $o ompi $mpi MB/s"
done | tee /dev/stderr | awk '
  # Sorts a[1..n] in place and returns its median.
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { n++; nw[n] = $4; od[n] = $6; om[n] = $8; r[n] = $4 / $8; if ($4 >= $8) up++ }
  END {
    hasold = od[1] != "-"
    mn = median(nw, n); mo = hasold ? median(od, n) : 0; mm = median(om, n); mr = median(r, n)
    printf "medians: new %.1f", mn
    if (hasold) printf " old %.1f", mo
    printf " ompi %.1f MB/s; new / ompi per round %.2f-%.2f, median %.2f; %d of %d rounds >= 1.0x\n",
      mm, r[1], r[n], mr, up, n
  }'
