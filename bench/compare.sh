#!/usr/bin/env bash
# Runs ranks' benchmarks next to Open MPI and MPICH on this machine, in one session.
# Usage: bash bench/compare.sh [latency|bw|barrier|allreduce|pairs|mp|hello|all]
# Needs: apt-get install -y openmpi-bin libopenmpi-dev mpich libmpich-dev hyperfine
set -u
cd "$(dirname "$0")/.."
what=${1:-all}
out=target/bench-mpi
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release -q -p ranks-launcher -p ranks-examples
R=target/release
have_ompi=0; have_mpich=0
if command -v mpicc.openmpi >/dev/null; then
  mpicc.openmpi -O2 -o $out/mpi_bench_ompi ../shared/bench/mpi_bench.c 2>/dev/null
  mpicc.openmpi -O2 -o $out/mpi_pairs_ompi bench/mpi_pairs.c
  have_ompi=1
fi
if command -v mpicc.mpich >/dev/null; then
  mpicc.mpich -O2 -o $out/mpi_bench_mpich ../shared/bench/mpi_bench.c 2>/dev/null
  mpicc.mpich -O2 -o $out/mpi_pairs_mpich bench/mpi_pairs.c
  have_mpich=1
fi
ompi() { local n=$1; shift; local os=""; [ "$n" -gt "$(nproc)" ] && os=--oversubscribe
  timeout 300 mpirun.openmpi $os -n "$n" "$@"; }
mpich() { local n=$1; shift; local t=120; [ "$n" -gt "$(nproc)" ] && t=20
  timeout $t mpiexec.mpich -n "$n" "$@" 2>/dev/null || echo "(mpich: failed or did not finish in ${t} s)"; }
section() { echo; echo "## $*"; }
run3() { # run3 N test: ranks, ompi, mpich
  local n=$1 t=$2
  echo "# ranks:   $R/ranks run -n $n $R/bench $t"; $R/ranks run -n "$n" $R/bench "$t"
  [ $have_ompi = 1 ] && { echo "# Open MPI: mpirun.openmpi -n $n mpi_bench $t"; ompi "$n" $out/mpi_bench_ompi "$t"; }
  [ $have_mpich = 1 ] && { echo "# MPICH:   mpiexec.mpich -n $n mpi_bench $t"; mpich "$n" $out/mpi_bench_mpich "$t"; }
}
case $what in latency|all) section latency; run3 2 latency;; esac
case $what in bw|all) section bw; run3 2 bw;; esac
case $what in barrier|all) section barrier; for n in 2 4 8; do run3 $n barrier; done;; esac
case $what in allreduce|all) section allreduce; for n in 2 4 8; do run3 $n allreduce; done;; esac
case $what in pairs|all)
  section "pairs (8 ranks on $(nproc) cores)"
  echo "# ranks"; $R/ranks run -n 8 $R/bench pairs
  [ $have_ompi = 1 ] && { echo "# Open MPI --oversubscribe"; ompi 8 $out/mpi_pairs_ompi; }
  [ $have_mpich = 1 ] && { echo "# MPICH"; mpich 8 $out/mpi_pairs_mpich; }
  ;; esac
case $what in mp|all)
  section "multiprocessing tools against Python (py_anchors.py)"
  for t in queue pipe; do
    echo "# ranks: $R/ranks run -n 2 $R/bench $t"; $R/ranks run -n 2 $R/bench $t
    echo "# python3 ../shared/bench/py_anchors.py $t"; python3 ../shared/bench/py_anchors.py $t
  done
  for n in 2 8; do echo "# ranks: $R/ranks run -n $n $R/bench lock"; $R/ranks run -n $n $R/bench lock; done
  echo "# ranks: primes on 1 and 4 ranks"
  for n in 1 4; do /usr/bin/time -f "  wall %e s" $R/ranks run -n $n $R/primes | grep total; done
  echo "# python3 ../shared/bench/py_anchors.py primes 4"; python3 ../shared/bench/py_anchors.py primes 4
  echo "# ranks: pool of sum_all_values on 1 rank and 5 ranks (4 workers)"
  for n in 1 5; do $R/ranks run -n $n $R/bench pool; done
  echo "# python3 ../shared/bench/py_anchors.py pool"; python3 ../shared/bench/py_anchors.py pool
  ;; esac
case $what in hello|all)
  section "launch: wall time of a 4-rank hello"
  if command -v hyperfine >/dev/null; then
    cmds=("$R/ranks run -n 4 $R/hello")
    [ $have_ompi = 1 ] && cmds+=("mpirun.openmpi --oversubscribe -n 4 $out/mpi_bench_ompi hello")
    [ $have_mpich = 1 ] && cmds+=("mpiexec.mpich -n 4 $out/mpi_bench_mpich hello")
    hyperfine -N -w 3 -r 20 "${cmds[@]}" 2>&1 | grep -E 'Benchmark|Time'
  else
    echo "(install hyperfine for this one)"
  fi
  ;; esac
