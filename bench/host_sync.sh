#!/usr/bin/env bash
# Barriers and small all-reductions meeting in shared memory (host_sync) against the same
# build by messages (RANKS_COLL_SHM=0) and Open MPI (--oversubscribe above 2 ranks), one
# right after the other, REPS rounds; every figure printed (microseconds).
# Usage: bash bench/host_sync.sh [REPS]
# Needs: apt-get install -y openmpi-bin libopenmpi-dev
set -u
cd "$(dirname "$0")/.."
reps=${1:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release -q -p ranks-launcher -p ranks-examples
R=target/release
mkdir -p target/bench-mpi
mpicc.openmpi -O2 -o target/bench-mpi/mpi_bench_ompi ../shared/bench/mpi_bench.c
figs() { awk '{printf "%s=%s ", $2, $3}'; }
for i in $(seq "$reps"); do
  echo "== round $i"
  for n in 2 4 8; do
    os=""; [ "$n" -gt "$(nproc)" ] && os=--oversubscribe
    for t in barrier allreduce; do
      args=$t; [ $t = allreduce ] && args="allreduce 10000 128"
      echo "$t ($n ranks)"
      echo "  shm:      $($R/ranks run -n $n $R/bench $args | figs)"
      echo "  messages: $(RANKS_COLL_SHM=0 $R/ranks run -n $n $R/bench $args | figs)"
      echo "  ompi:     $(mpirun.openmpi $os -n $n target/bench-mpi/mpi_bench_ompi $t 2>/dev/null | head -2 | figs)"
    done
  done
done
