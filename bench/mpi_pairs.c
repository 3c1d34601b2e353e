/* Pairs ping-pong for comparing oversubscribed runs with `ranks ... bench pairs`:
 * ranks (0,1), (2,3), ... each ping-pong 8 bytes at once; rank 0 prints the mean one-way
 * latency over the pairs as "pairs 8 <us> us (<pairs> pairs on <n> ranks)".
 * Build: mpicc -O2 -o mpi_pairs mpi_pairs.c */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int me, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    int partner = me ^ 1, iters = 20000, warm = 2000;
    char buf[8] = {0};
    double t0 = 0, us = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    if (partner < n) {
        for (int i = 0; i < iters + warm; i++) {
            if (i == warm) t0 = MPI_Wtime();
            if (me % 2 == 0) {
                MPI_Send(buf, 8, MPI_CHAR, partner, 1, MPI_COMM_WORLD);
                MPI_Recv(buf, 8, MPI_CHAR, partner, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(buf, 8, MPI_CHAR, partner, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, 8, MPI_CHAR, partner, 1, MPI_COMM_WORLD);
            }
        }
        us = (MPI_Wtime() - t0) * 1e6 / (2.0 * iters);
    }
    if (me == 0) {
        double sum = us;
        int pairs = 1;
        for (int r = 2; r < n; r += 2) {
            double x;
            MPI_Recv(&x, 1, MPI_DOUBLE, r, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            sum += x;
            pairs++;
        }
        printf("pairs 8 %.3f us (%d pairs on %d ranks)\n", sum / pairs, pairs, n);
    } else if (me % 2 == 0) {
        MPI_Send(&us, 1, MPI_DOUBLE, 0, 9, MPI_COMM_WORLD);
    }
    MPI_Finalize();
    return 0;
}
