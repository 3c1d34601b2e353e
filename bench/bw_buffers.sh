#!/usr/bin/env bash
# Streaming bandwidth (`bench bw`, a window of 64 nonblocking sends) of ranks and Open MPI,
# interleaved, with the send buffers in two states:
#   untouched: never written before the run. The C reference (../shared/bench/mpi_bench.c)
#              sends from a static array it never writes, so every page it sends is the
#              kernel's one shared zero page, always in cache; `BENCH_UNTOUCHED=1` gives
#              ranks' bench the same.
#   written:   every buffer filled with data first (ranks' default; for Open MPI, a copy of
#              the reference built with a memset of its buffers, made here with sed).
# Usage: bash bench/bw_buffers.sh [REPS] [FROM] [TO]   (sizes in bytes, default 32768 262144)
# Needs: apt-get install -y openmpi-bin libopenmpi-dev
set -u
cd "$(dirname "$0")/.."
reps=${1:-3}; from=${2:-32768}; to=${3:-262144}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release -q -p ranks-launcher -p ranks-examples
R=target/release
mkdir -p target/bench-mpi
sed 's|    MPI_Request req\[WINDOW\];|    MPI_Request req[WINDOW];\n    if (getenv("TOUCH")) memset(buf, 1, sizeof buf);|' \
  ../shared/bench/mpi_bench.c > target/bench-mpi/mpi_bench_touch.c
grep -q 'getenv("TOUCH")' target/bench-mpi/mpi_bench_touch.c || { echo "could not patch mpi_bench.c"; exit 1; }
mpicc.openmpi -O2 -o target/bench-mpi/mpi_bench_touch target/bench-mpi/mpi_bench_touch.c
ompi() { # ompi TOUCH?: the sizes FROM..TO of the reference's bw
  local x=(); [ "$1" = 1 ] && x=(-x TOUCH=1)
  mpirun.openmpi -n 2 "${x[@]}" target/bench-mpi/mpi_bench_touch bw 2>/dev/null |
    awk -v f="$from" -v t="$to" '$2 >= f && $2 <= t' | tr '\n' ' '
}
for i in $(seq "$reps"); do
  echo "== round $i"
  echo "  untouched ranks: $($R/ranks run -n 2 -x BENCH_UNTOUCHED=1 $R/bench bw "$from" "$to" | tr '\n' ' ')"
  echo "  untouched ompi:  $(ompi 0)"
  echo "  written ranks:   $($R/ranks run -n 2 $R/bench bw "$from" "$to" | tr '\n' ' ')"
  echo "  written ompi:    $(ompi 1)"
done
