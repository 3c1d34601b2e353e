#!/usr/bin/env bash
# Same-run comparison of two builds of ranks and Open MPI, interleaved so that a noisy
# neighbour hits all three alike: each test runs REPS times as ranks(new), ranks(old),
# Open MPI, one after the other, and every figure is printed.
# Usage: bash bench/interleave.sh OLD_TARGET_DIR [REPS]
#   OLD_TARGET_DIR: target/release of another checkout (e.g. built from an earlier commit
#   with `git worktree add /tmp/old COMMIT && CARGO_TARGET_DIR=/tmp/oldtarget cargo build
#   --release -p ranks-examples -p ranks-launcher`); `-` to skip it.
# Needs: apt-get install -y openmpi-bin libopenmpi-dev
set -u
cd "$(dirname "$0")/.."
old=${1:--}; reps=${2:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release -q -p ranks-launcher -p ranks-examples
R=target/release
mkdir -p target/bench-mpi
mpicc.openmpi -O2 -o target/bench-mpi/mpi_bench_ompi ../shared/bench/mpi_bench.c
one() { # one N ARGS...: new, old, Open MPI
  local n=$1; shift
  local os=""; [ "$n" -gt "$(nproc)" ] && os=--oversubscribe
  echo "  new:  $($R/ranks run -n "$n" $R/bench "$@" | tr '\n' ' ')"
  [ "$old" != - ] && echo "  old:  $("$old"/ranks run -n "$n" "$old"/bench "$@" | tr '\n' ' ')"
  echo "  ompi: $(mpirun.openmpi $os -n "$n" target/bench-mpi/mpi_bench_ompi "$1" 2>/dev/null | tr '\n' ' ')"
}
for i in $(seq "$reps"); do
  echo "== round $i"
  echo "latency (2 ranks)"; one 2 latency
  echo "bw (2 ranks)"; one 2 bw
  for n in 2 4 8; do echo "barrier ($n ranks)"; one "$n" barrier; done
  for n in 2 4 8; do echo "allreduce ($n ranks)"; one "$n" allreduce; done
done
