//! The 2-D heat equation on a Cartesian grid of ranks, with a halo exchange each step.
//!
//! `ranks run -n 4 heat [NX NY STEPS]`: the NX x NY plate (cells outside it held at 0) is
//! cut into one block per rank on a grid from `dims_create`. Each step, every rank swaps its
//! edge rows and columns with its four neighbours in one `neighbor_all_to_all_slice` and
//! updates its cells with the explicit scheme
//! `u' = u + 0.1 * (north + south + west + east - 4u)`. At the end rank 0 gathers the plate,
//! solves the same problem serially, and prints the largest difference: 0, since every cell
//! is computed with the same operations in the same order.

use ranks::{CartComm, Comm, Error};

const ALPHA: f64 = 0.1;

/// Start and length of part `i` of `len` cells cut into `n` nearly equal parts.
fn part(len: usize, n: usize, i: usize) -> (usize, usize) {
    let (base, extra) = (len / n, len % n);
    (i * base + i.min(extra), base + usize::from(i < extra))
}

/// The plate at the start: a pattern with hot and cold spots.
fn initial(x: usize, y: usize) -> f64 {
    ((x * 7 + y * 13) % 17) as f64
}

/// One step of the scheme for the cell at `c` of a row-major array `w` wide, whose
/// neighbours are at `c - w`, `c + w`, `c - 1` and `c + 1`.
fn update(u: &[f64], c: usize, w: usize) -> f64 {
    u[c] + ALPHA * (u[c - w] + u[c + w] + u[c - 1] + u[c + 1] - 4.0 * u[c])
}

/// The serial solution, for checking: the plate with a border of zeros.
fn serial(nx: usize, ny: usize, steps: usize) -> Vec<f64> {
    let w = ny + 2;
    let mut u = vec![0.0; (nx + 2) * w];
    for x in 0..nx {
        for y in 0..ny {
            u[(x + 1) * w + y + 1] = initial(x, y);
        }
    }
    let mut next = u.clone();
    for _ in 0..steps {
        for x in 1..=nx {
            for y in 1..=ny {
                next[x * w + y] = update(&u, x * w + y, w);
            }
        }
        std::mem::swap(&mut u, &mut next);
    }
    (1..=nx)
        .flat_map(|x| u[x * w + 1..x * w + 1 + ny].to_vec())
        .collect()
}

/// This rank's block with a halo of one cell: `rows` x `cols` cells inside.
struct Block {
    rows: usize,
    cols: usize,
    u: Vec<f64>,
}

impl Block {
    fn width(&self) -> usize {
        self.cols + 2
    }

    fn at(&self, r: usize, c: usize) -> usize {
        r * self.width() + c
    }

    /// Swap edges with the four neighbours. Blocks of the exchange, in the grid's neighbour
    /// order: north (back along dimension 0), south, west (back along 1), east; each padded
    /// to the longer edge, since the neighbour collective takes equal blocks.
    fn exchange(&mut self, grid: &CartComm) -> Result<(), Error> {
        let (rows, cols) = (self.rows, self.cols);
        let m = rows.max(cols);
        let mut send = vec![0.0; 4 * m];
        for c in 0..cols {
            send[c] = self.u[self.at(1, c + 1)]; // my top row goes north
            send[m + c] = self.u[self.at(rows, c + 1)]; // my bottom row goes south
        }
        for r in 0..rows {
            send[2 * m + r] = self.u[self.at(r + 1, 1)]; // left column goes west
            send[3 * m + r] = self.u[self.at(r + 1, cols)]; // right column goes east
        }
        // Where there is no neighbour (the plate's edge) the halo keeps its zeros.
        let mut recv = vec![0.0; 4 * m];
        grid.neighbor_all_to_all_slice(&send, &mut recv)?;
        for c in 0..cols {
            let (n, s) = (self.at(0, c + 1), self.at(rows + 1, c + 1));
            self.u[n] = recv[c];
            self.u[s] = recv[m + c];
        }
        for r in 0..rows {
            let (w, e) = (self.at(r + 1, 0), self.at(r + 1, cols + 1));
            self.u[w] = recv[2 * m + r];
            self.u[e] = recv[3 * m + r];
        }
        Ok(())
    }

    fn step(&mut self) {
        let w = self.width();
        let mut next = self.u.clone();
        for r in 1..=self.rows {
            for c in 1..=self.cols {
                next[r * w + c] = update(&self.u, r * w + c, w);
            }
        }
        self.u = next;
    }

    fn inside(&self) -> Vec<f64> {
        (1..=self.rows)
            .flat_map(|r| {
                let s = self.at(r, 1);
                self.u[s..s + self.cols].to_vec()
            })
            .collect()
    }
}

fn run(world: Comm) -> Result<(), Error> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (nx, ny, steps) = (arg(1, 64), arg(2, 48), arg(3, 200));
    let mut dims = [0, 0];
    ranks::dims_create(world.size(), &mut dims)?;
    if dims[0] > nx || dims[1] > ny {
        return Err(Error::InvalidArgument(format!(
            "a {nx} x {ny} plate cannot be cut for a {} x {} grid of ranks",
            dims[0], dims[1]
        )));
    }
    let grid = world
        .cart_create(&dims, &[false, false])?
        .expect("the grid holds every rank");
    let me = grid.coords();
    let (x0, rows) = part(nx, dims[0], me[0]);
    let (y0, cols) = part(ny, dims[1], me[1]);
    let mut b = Block {
        rows,
        cols,
        u: vec![0.0; (rows + 2) * (cols + 2)],
    };
    for r in 0..rows {
        for c in 0..cols {
            let i = b.at(r + 1, c + 1);
            b.u[i] = initial(x0 + r, y0 + c);
        }
    }
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        b.exchange(&grid)?;
        b.step();
    }
    let elapsed = t0.elapsed();
    // Rank 0 assembles the plate from every rank's block.
    let blocks = grid.gather(0, &b.inside())?;
    if let Some(blocks) = blocks {
        let mut plate = vec![0.0; nx * ny];
        for (rank, block) in blocks.iter().enumerate() {
            let c = grid.coords_of(rank)?;
            let (bx, br) = part(nx, dims[0], c[0]);
            let (by, bc) = part(ny, dims[1], c[1]);
            for r in 0..br {
                plate[(bx + r) * ny + by..(bx + r) * ny + by + bc]
                    .copy_from_slice(&block[r * bc..(r + 1) * bc]);
            }
        }
        let want = serial(nx, ny, steps);
        let diff = plate
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "heat: {nx} x {ny} plate, {steps} steps on {} x {} ranks in {:.3} s; total heat {:.6}",
            dims[0],
            dims[1],
            elapsed.as_secs_f64(),
            plate.iter().sum::<f64>()
        );
        println!("max difference from the serial solution: {diff}");
        if diff != 0.0 {
            return Err(Error::InvalidArgument(format!(
                "the distributed solution differs from the serial one by {diff}"
            )));
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    ranks::main(run)
}
