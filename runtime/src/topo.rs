//! Cartesian topologies: ranks laid out on a grid, each knowing its neighbours, and the
//! neighbour collectives that exchange with them (a halo exchange in one call).

use bytemuck::Pod;

use crate::collectives::ctag;
use crate::comm::Comm;
use crate::error::{Error, Result};

/// Fill the zero entries of `dims` so that the product of all entries is `nnodes`, as
/// evenly as possible, in non-increasing order among the filled ones (MPI's
/// `MPI_Dims_create`). Non-zero entries are kept; their product must divide `nnodes`.
///
/// ```
/// let mut dims = [0, 0];
/// ranks::dims_create(12, &mut dims)?;
/// assert_eq!(dims, [4, 3]);
/// let mut dims = [0, 3, 0];
/// ranks::dims_create(24, &mut dims)?;
/// assert_eq!(dims, [4, 3, 2]);
/// # Ok::<(), ranks::Error>(())
/// ```
pub fn dims_create(nnodes: usize, dims: &mut [usize]) -> Result<()> {
    let fixed: usize = dims.iter().filter(|&&d| d > 0).product();
    let free = dims.iter().filter(|&&d| d == 0).count();
    if nnodes == 0 || fixed == 0 || !nnodes.is_multiple_of(fixed) {
        return Err(Error::InvalidArgument(format!(
            "dims_create: {nnodes} ranks cannot fill a grid whose fixed dimensions {dims:?} \
             multiply to {fixed}"
        )));
    }
    if free == 0 {
        if fixed != nnodes {
            return Err(Error::InvalidArgument(format!(
                "dims_create: the dimensions {dims:?} hold {fixed} ranks, not {nnodes}"
            )));
        }
        return Ok(());
    }
    let mut best = None;
    balanced(nnodes / fixed, free, usize::MAX, &mut Vec::new(), &mut best);
    let best = best.expect("1 x 1 x ... always fits");
    let mut it = best.into_iter();
    for d in dims.iter_mut().filter(|d| **d == 0) {
        *d = it.next().expect("one per free dimension");
    }
    Ok(())
}

/// The factorisation of `n` into `k` more factors, each at most `cap`, appended to `now` in
/// non-increasing order, whose largest and smallest factors are closest: into `best`.
fn balanced(n: usize, k: usize, cap: usize, now: &mut Vec<usize>, best: &mut Option<Vec<usize>>) {
    if k == 0 {
        if n == 1 {
            let spread = |v: &[usize]| v[0] - v[v.len() - 1];
            if best.as_ref().is_none_or(|b| spread(now) < spread(b)) {
                *best = Some(now.clone());
            }
        }
        return;
    }
    // The first factor is at least the k-th root of n (the others are not bigger).
    for f in (1..=n.min(cap)).rev() {
        if !n.is_multiple_of(f) {
            continue;
        }
        if f.checked_pow(k as u32).is_some_and(|p| p < n) {
            break;
        }
        now.push(f);
        balanced(n / f, k - 1, f, now, best);
        now.pop();
    }
}

/// The ranks a shift along one dimension pairs this rank with: MPI's `MPI_Cart_shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    /// The rank `disp` steps back, which sends to this one in the shift (`None` past the
    /// edge of a non-periodic dimension).
    pub source: Option<usize>,
    /// The rank `disp` steps forward, which this one sends to.
    pub dest: Option<usize>,
}

/// A communicator whose ranks sit on a grid (MPI's Cartesian communicator). Rank order is
/// row-major: the last dimension varies fastest. It derefs to its [`Comm`] for everything
/// else.
///
/// ```
/// let world = ranks::init()?;
/// let mut dims = [0, 0];
/// ranks::dims_create(world.size(), &mut dims)?;
/// let grid = world.cart_create(&dims, &[true, false])?.expect("every rank fits");
/// let row = grid.shift(1, 1)?; // neighbours along the second dimension
/// let mut halo = [0u64; 4];
/// grid.neighbor_all_gather_slice(&[grid.rank() as u64], &mut halo)?;
/// if let Some(right) = row.dest {
///     assert_eq!(halo[3], right as u64); // the +1 neighbour of dimension 1 is block 3
/// }
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(Clone)]
pub struct CartComm {
    comm: Comm,
    dims: Vec<usize>,
    periods: Vec<bool>,
}

impl std::ops::Deref for CartComm {
    type Target = Comm;
    fn deref(&self) -> &Comm {
        &self.comm
    }
}

impl Comm {
    /// Lay the ranks out on a grid of `dims` (periodic where `periods` says so): the first
    /// `dims.iter().product()` ranks get `Some`, in rank order, the others `None`. Ranks keep
    /// their order (MPI's `reorder` is not done). Collective.
    pub fn cart_create(&self, dims: &[usize], periods: &[bool]) -> Result<Option<CartComm>> {
        if dims.len() != periods.len() {
            return Err(Error::InvalidArgument(format!(
                "cart_create: {} dimensions but {} periods",
                dims.len(),
                periods.len()
            )));
        }
        let cells = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let cells = match cells {
            Some(c) if c > 0 && c <= self.size() && !dims.is_empty() => c,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "cart_create: a grid of {dims:?} does not fit {} ranks",
                    self.size()
                )))
            }
        };
        let inside = self.rank() < cells;
        let sub = self.split(inside.then_some(0), self.rank() as i32)?;
        Ok(sub.map(|comm| CartComm {
            comm,
            dims: dims.to_vec(),
            periods: periods.to_vec(),
        }))
    }
}

impl CartComm {
    /// The communicator itself.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// The grid's extent in each dimension.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Whether each dimension wraps around.
    pub fn periods(&self) -> &[bool] {
        &self.periods
    }

    /// This rank's coordinates.
    pub fn coords(&self) -> Vec<usize> {
        self.coords_of(self.rank()).expect("our own rank")
    }

    /// The coordinates of `rank`.
    pub fn coords_of(&self, rank: usize) -> Result<Vec<usize>> {
        if rank >= self.size() {
            return Err(Error::InvalidRank {
                rank: rank as i64,
                size: self.size(),
            });
        }
        let mut c = vec![0; self.dims.len()];
        let mut r = rank;
        for (i, &d) in self.dims.iter().enumerate().rev() {
            c[i] = r % d;
            r /= d;
        }
        Ok(c)
    }

    /// The rank at `coords`, which may lie off the grid: wrapped on periodic dimensions,
    /// `None` past the edge of the others.
    pub fn rank_at(&self, coords: &[isize]) -> Result<Option<usize>> {
        if coords.len() != self.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "rank_at: {} coordinates for {} dimensions",
                coords.len(),
                self.dims.len()
            )));
        }
        let mut r = 0usize;
        for ((&c, &d), &p) in coords.iter().zip(&self.dims).zip(&self.periods) {
            let d = d as isize;
            let c = if p {
                c.rem_euclid(d)
            } else if (0..d).contains(&c) {
                c
            } else {
                return Ok(None);
            };
            r = r * d as usize + c as usize;
        }
        Ok(Some(r))
    }

    /// The ranks `disp` steps back and forward along dimension `dim` (MPI's `cart_shift`).
    pub fn shift(&self, dim: usize, disp: isize) -> Result<Shift> {
        if dim >= self.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "shift: dimension {dim} of a {}-dimensional grid",
                self.dims.len()
            )));
        }
        let me: Vec<isize> = self.coords().iter().map(|&c| c as isize).collect();
        let at = |delta: isize| {
            let mut c = me.clone();
            c[dim] += delta;
            self.rank_at(&c)
        };
        Ok(Shift {
            source: at(-disp)?,
            dest: at(disp)?,
        })
    }

    /// The neighbours, in the order of the neighbour collectives' blocks: for each
    /// dimension, the one a step back, then the one a step forward (`None` past an edge).
    pub fn neighbors(&self) -> Vec<Option<usize>> {
        (0..self.dims.len())
            .flat_map(|d| {
                let s = self.shift(d, 1).expect("a dimension of ours");
                [s.source, s.dest]
            })
            .collect()
    }

    /// The sub-grids keeping the dimensions where `remain` is true: each rank gets the one
    /// through it, of the ranks that differ from it only there (MPI's `cart_sub`). Keeping
    /// one dimension of a 2-D grid gives its rows or its columns. Collective.
    pub fn sub(&self, remain: &[bool]) -> Result<CartComm> {
        if remain.len() != self.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "sub: {} flags for {} dimensions",
                remain.len(),
                self.dims.len()
            )));
        }
        let me = self.coords();
        // The same colour for ranks that agree on every dropped coordinate.
        let color = me
            .iter()
            .zip(&self.dims)
            .zip(remain)
            .filter(|(_, &keep)| !keep)
            .fold(0u64, |acc, ((&c, &d), _)| acc * d as u64 + c as u64);
        let color = u32::try_from(color)
            .map_err(|_| Error::InvalidArgument("sub: the grid is too large".into()))?;
        let comm = self
            .comm
            .split(Some(color), self.rank() as i32)?
            .expect("every rank passes a colour");
        let keep = |v: &[usize]| -> Vec<usize> {
            v.iter()
                .zip(remain)
                .filter(|(_, &k)| k)
                .map(|(&x, _)| x)
                .collect()
        };
        let (dims, periods) = if remain.iter().any(|&k| k) {
            (
                keep(&self.dims),
                self.periods
                    .iter()
                    .zip(remain)
                    .filter(|(_, &k)| k)
                    .map(|(&p, _)| p)
                    .collect(),
            )
        } else {
            (vec![1], vec![false]) // nothing kept: each rank alone, a grid of one
        };
        Ok(CartComm {
            comm,
            dims,
            periods,
        })
    }

    /// Tag of a neighbour message travelling along dimension `d`, forward or back.
    fn ntag(seq: u32, d: usize, forward: bool) -> i32 {
        ctag(seq, (2 * d + usize::from(forward)) as u32)
    }

    /// Send `send` to every neighbour and receive each neighbour's block: block `i` of
    /// `recv` (`send.len()` items each, `2 * ndims` blocks, in [`CartComm::neighbors`]
    /// order) comes from neighbour `i`; a block with no neighbour is left as it is (MPI's
    /// `MPI_Neighbor_allgather`). Collective over the grid.
    pub fn neighbor_all_gather_slice<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let k = send.len();
        self.neighbor_exchange("neighbor_all_gather", recv, k, |_| send)
    }

    /// Send block `i` of `send` to neighbour `i` and receive block `i` of `recv` from it
    /// (equal blocks, `2 * ndims` of them, in [`CartComm::neighbors`] order; a block with no
    /// neighbour is not sent, and left as it is in `recv`): MPI's `MPI_Neighbor_alltoall`,
    /// a halo exchange in one call. Collective over the grid.
    pub fn neighbor_all_to_all_slice<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let n = 2 * self.dims.len();
        if !send.len().is_multiple_of(n) {
            return Err(Error::InvalidArgument(format!(
                "neighbor_all_to_all: {} items do not make {n} equal blocks",
                send.len()
            )));
        }
        let k = send.len() / n;
        self.neighbor_exchange("neighbor_all_to_all", recv, k, |i| {
            &send[i * k..(i + 1) * k]
        })
    }

    fn neighbor_exchange<'a, T: Pod>(
        &self,
        op: &'static str,
        recv: &mut [T],
        k: usize,
        block: impl Fn(usize) -> &'a [T],
    ) -> Result<()> {
        let nb = self.neighbors();
        if recv.len() != k * nb.len() {
            return Err(Error::InvalidArgument(format!(
                "{op}: receive buffer has {} items, expected {} ({} neighbours x {k})",
                recv.len(),
                k * nb.len(),
                nb.len()
            )));
        }
        if k == 0 {
            return Ok(()); // every member passes empty blocks: nothing to exchange
        }
        let seq = self.comm.next_seq();
        // Block 2d goes back along d, block 2d + 1 forward; the one from the neighbour back
        // along d travelled forward. (Both neighbours can be one rank, or this one, on a
        // short periodic dimension: the tags keep the directions apart.)
        let sends = nb
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| (i, p)))
            .map(|(i, p)| {
                self.comm
                    .c_isend(p, Self::ntag(seq, i / 2, i % 2 == 1), block(i))
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, (p, buf)) in nb.iter().zip(recv.chunks_mut(k)).enumerate() {
            if let Some(p) = *p {
                self.comm
                    .c_recv_into(p, Self::ntag(seq, i / 2, i % 2 == 0), buf)?;
            }
        }
        for s in sends {
            s.wait()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(n: usize, dims: &[usize]) -> Vec<usize> {
        let mut d = dims.to_vec();
        dims_create(n, &mut d).unwrap();
        d
    }

    #[test]
    fn dims_are_as_even_as_can_be() {
        assert_eq!(dc(12, &[0, 0]), [4, 3]);
        assert_eq!(dc(72, &[0, 0]), [9, 8]);
        assert_eq!(dc(7, &[0, 0]), [7, 1]);
        assert_eq!(dc(8, &[0, 0, 0]), [2, 2, 2]);
        assert_eq!(dc(10, &[0, 0, 0]), [5, 2, 1]);
        assert_eq!(dc(1, &[0, 0]), [1, 1]);
        assert_eq!(dc(24, &[0, 3, 0]), [4, 3, 2]);
        assert_eq!(dc(6, &[2, 3]), [2, 3]);
        assert_eq!(dc(5, &[0]), [5]);
        let mut bad = [0, 5];
        assert!(dims_create(12, &mut bad).is_err(), "5 does not divide 12");
        assert!(dims_create(12, &mut [2, 3]).is_err(), "2 x 3 is not 12");
    }

    #[test]
    fn dims_multiply_to_the_count_and_never_increase() {
        for n in 1..=200 {
            for k in 1..=3 {
                let d = dc(n, &vec![0; k]);
                assert_eq!(d.iter().product::<usize>(), n, "{n} in {k}: {d:?}");
                assert!(d.windows(2).all(|w| w[0] >= w[1]), "{n} in {k}: {d:?}");
            }
            // Two dimensions: the largest factor is the smallest divisor at or above √n.
            let d = dc(n, &[0, 0]);
            let want = (1..=n).find(|&f| n % f == 0 && f * f >= n).unwrap();
            assert_eq!(d[0], want, "{n}: {d:?}");
        }
    }
}
