//! Two-level collectives for communicators that span hosts: the ranks of each host meet at
//! their host's *leader* (its lowest rank) through shared memory, and only the leaders talk
//! across the network, so a barrier or an all-reduce crosses it once per host instead of
//! once per rank.
//!
//! The decision (`Comm::two_level`) is made the same way on every member, from what every
//! member knows alike: the host of each rank (the launcher's placement, or Slurm's nodes),
//! and `RANKS_COLL_HIER`. Two levels are used when the communicator spans more than one host
//! and some host holds more than one of its ranks; reductions only with commutative
//! operations (two levels reorder the operands); broadcasts and all-reductions only below
//! their large-message thresholds (`RANKS_BCAST_LARGE`, `RANKS_ALLREDUCE_LARGE`), above
//! which the flat scatter/ring algorithms move fewer bytes per link (measured: 8 MiB
//! all-reduce on 4 hosts x 2 ranks, 120 ms flat against 147 ms in two levels). Otherwise the
//! flat algorithms of `collectives.rs` run.
//!
//! Every step uses the collective context with tags of the call's sequence number and rounds
//! of their own (`R_*`), so the two levels of one call never meet another call's messages.

use bytemuck::Pod;

use crate::comm::Comm;
use crate::error::Result;
use crate::op::Op;

/// Rounds (the low bits of a collective tag) of the two-level steps.
const R_UP: u32 = 900;
const R_ACROSS: u32 = 901; // .. R_ACROSS + 63 for dissemination among leaders
const R_DOWN: u32 = 990;
const R_ROOT: u32 = 991;

/// How a communicator's ranks sit on hosts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Communicator ranks of each host, in rank order; hosts in the order of their lowest
    /// rank. A host's leader is its first rank.
    pub groups: Vec<Vec<usize>>,
    /// The host group of each communicator rank.
    pub group_of: Vec<usize>,
}

impl Layout {
    /// The layout of ranks whose hosts are `hosts[r]`, if two levels are worth it: more
    /// than one host, and some host with more than one rank.
    pub(crate) fn of(hosts: &[u32]) -> Option<Layout> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        let mut group_of = Vec::with_capacity(hosts.len());
        for (r, h) in hosts.iter().enumerate() {
            let g = match ids.iter().position(|x| x == h) {
                Some(g) => g,
                None => {
                    ids.push(*h);
                    groups.push(Vec::new());
                    ids.len() - 1
                }
            };
            groups[g].push(r);
            group_of.push(g);
        }
        (groups.len() > 1 && groups.iter().any(|g| g.len() > 1))
            .then_some(Layout { groups, group_of })
    }

    fn leader(&self, g: usize) -> usize {
        self.groups[g][0]
    }

    fn leaders(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g[0]).collect()
    }
}

/// Binomial-tree parent and children of position `i` in a list of `n`, rooted at
/// position `root`: `(parent, children)` as positions.
pub(crate) fn binomial(n: usize, i: usize, root: usize) -> (Option<usize>, Vec<usize>) {
    let v = (i + n - root) % n;
    let mut parent = None;
    let mut mask = 1;
    while mask < n {
        if v & mask != 0 {
            parent = Some((v - mask + root) % n);
            break;
        }
        mask <<= 1;
    }
    let mut children = Vec::new();
    mask >>= 1;
    while mask > 0 {
        if v + mask < n {
            children.push((v + mask + root) % n);
        }
        mask >>= 1;
    }
    (parent, children)
}

impl Comm {
    /// The layout to run two-level collectives with, or `None` for the flat ones.
    pub(crate) fn two_level(&self) -> Option<&Layout> {
        self.layout
            .get_or_init(|| {
                if !self.core.tuning.two_level {
                    return None;
                }
                let hosts: Vec<u32> = self
                    .members
                    .iter()
                    .map(|&w| self.core.host_ids.get(w).copied().unwrap_or(0))
                    .collect();
                Layout::of(&hosts)
            })
            .as_ref()
    }

    // ----- steps over a list of ranks -----------------------------------------------------

    /// Broadcast `buf` over the ranks `list` from position `root` (binomial tree).
    fn list_bcast<T: Pod>(
        &self,
        seq: u32,
        round: u32,
        list: &[usize],
        root: usize,
        buf: &mut [T],
    ) -> Result<()> {
        let Some(i) = list.iter().position(|&r| r == self.rank()) else {
            return Ok(());
        };
        let (parent, children) = binomial(list.len(), i, root);
        let tag = crate::collectives::ctag(seq, round);
        if let Some(p) = parent {
            self.c_recv_into(list[p], tag, buf)?;
        }
        let mut sends = Vec::with_capacity(children.len());
        for c in children {
            sends.push(self.c_isend(list[c], tag, &*buf)?);
        }
        crate::comm::wait_all(sends)?;
        Ok(())
    }

    /// Reduce `acc` over the ranks `list` towards position `root` with a commutative `op`
    /// (binomial tree); the result is in `acc` at the root.
    fn list_reduce<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        round: u32,
        list: &[usize],
        root: usize,
        acc: &mut [T],
        op: &O,
    ) -> Result<()> {
        let Some(i) = list.iter().position(|&r| r == self.rank()) else {
            return Ok(());
        };
        let (parent, mut children) = binomial(list.len(), i, root);
        let tag = crate::collectives::ctag(seq, round);
        let mut tmp = vec![T::zeroed(); acc.len()];
        // Farthest subtrees last: the nearest are ready first.
        children.reverse();
        for c in children {
            self.c_recv_into(list[c], tag, &mut tmp)?;
            op.combine(&tmp, acc);
        }
        if let Some(p) = parent {
            self.c_send(list[p], tag, acc)?;
        }
        Ok(())
    }

    /// Dissemination barrier over the ranks `list`.
    fn list_barrier(&self, seq: u32, list: &[usize]) -> Result<()> {
        match list.iter().position(|&r| r == self.rank()) {
            Some(i) => self.dissemination(seq, R_ACROSS, list.len(), i, |p| list[p]),
            None => Ok(()),
        }
    }

    // ----- the two-level collectives -------------------------------------------------------

    /// Barrier: everyone checks in with its leader, the leaders meet, the leaders let
    /// everyone go.
    pub(crate) fn barrier_two_level(&self, seq: u32, l: &Layout) -> Result<()> {
        let me = self.rank();
        let g = &l.groups[l.group_of[me]];
        let (up, down) = (
            crate::collectives::ctag(seq, R_UP),
            crate::collectives::ctag(seq, R_DOWN),
        );
        // A host's ranks that share a segment check in there (`crate::host_sync`).
        if let Some(slot) = self.group_slot(g) {
            let at = crate::host_sync::mark(seq, crate::host_sync::Kind::Barrier);
            self.group_up(slot, at, g)?;
            if g[0] == me {
                self.list_barrier(seq, &l.leaders())?;
            }
            return self.group_down(slot, at, g);
        }
        let mut token = [0u8; 0];
        if g[0] != me {
            self.c_send::<u8>(g[0], up, &[])?;
            self.c_recv_into(g[0], down, &mut token)?;
            return Ok(());
        }
        for &r in &g[1..] {
            self.c_recv_into(r, up, &mut token)?;
        }
        self.list_barrier(seq, &l.leaders())?;
        for &r in &g[1..] {
            self.c_send::<u8>(r, down, &[])?;
        }
        Ok(())
    }

    /// Broadcast: the root hands the data to its leader, the leaders pass it on across
    /// hosts, each leader to its host.
    pub(crate) fn bcast_two_level<T: Pod>(
        &self,
        seq: u32,
        l: &Layout,
        root: usize,
        buf: &mut [T],
    ) -> Result<()> {
        let me = self.rank();
        let rg = l.group_of[root];
        let root_leader = l.leader(rg);
        if root != root_leader {
            let tag = crate::collectives::ctag(seq, R_ROOT);
            if me == root {
                self.c_send(root_leader, tag, buf)?;
            } else if me == root_leader {
                self.c_recv_into(root, tag, buf)?;
            }
        }
        self.list_bcast(seq, R_ACROSS, &l.leaders(), rg, buf)?;
        // Within the host, from the leader; the root already has it.
        let g = &l.groups[l.group_of[me]];
        let down = crate::collectives::ctag(seq, R_DOWN);
        if g[0] == me {
            let mut sends = Vec::with_capacity(g.len());
            for &r in g[1..].iter().filter(|&&r| r != root) {
                sends.push(self.c_isend(r, down, &*buf)?);
            }
            crate::comm::wait_all(sends)?;
        } else if me != root {
            self.c_recv_into(g[0], down, buf)?;
        }
        Ok(())
    }

    /// Reduce (commutative `op`): each host's ranks into their leader, the leaders into the
    /// root's leader, which hands the result to the root. `acc` holds this rank's
    /// contribution and, on the root, the result.
    pub(crate) fn reduce_two_level<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        l: &Layout,
        root: usize,
        acc: &mut [T],
        op: &O,
    ) -> Result<()> {
        let me = self.rank();
        self.host_reduce(seq, l, acc, op)?;
        let rg = l.group_of[root];
        self.list_reduce(seq, R_ACROSS, &l.leaders(), rg, acc, op)?;
        let root_leader = l.leader(rg);
        if root != root_leader {
            let tag = crate::collectives::ctag(seq, R_ROOT);
            if me == root_leader {
                self.c_send(root, tag, acc)?;
            } else if me == root {
                self.c_recv_into(root_leader, tag, acc)?;
            }
        }
        Ok(())
    }

    /// All-reduce (commutative `op`): reduce within each host, all-reduce among the leaders
    /// (reduce to the first, broadcast back), broadcast within each host.
    pub(crate) fn allreduce_two_level<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        l: &Layout,
        buf: &mut [T],
        op: &O,
    ) -> Result<()> {
        let me = self.rank();
        let leaders = l.leaders();
        let g = &l.groups[l.group_of[me]];
        // A host's ranks that share a segment meet there (`crate::host_sync`).
        let (bytes, align) = (std::mem::size_of_val(buf), std::mem::align_of::<T>());
        if let Some(slot) = self.group_reduce_slot(g, bytes, align) {
            return self.group_all_reduce(slot, seq, g, buf, op, |acc| {
                self.list_reduce(seq, R_ACROSS, &leaders, 0, acc, op)?;
                self.list_bcast(seq, R_ACROSS + 1, &leaders, 0, acc)
            });
        }
        // Counted and marked as on the hosts whose ranks meet in memory.
        self.next_all_reduce();
        let r = (|| {
            self.host_reduce(seq, l, buf, op)?;
            self.list_reduce(seq, R_ACROSS, &leaders, 0, buf, op)?;
            self.list_bcast(seq, R_ACROSS + 1, &leaders, 0, buf)?;
            self.list_bcast(seq, R_DOWN, g, 0, buf)
        })();
        self.pass_all_reduce(seq);
        r
    }

    /// Every rank's contribution into its host's leader (a binomial tree within the host).
    fn host_reduce<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        l: &Layout,
        acc: &mut [T],
        op: &O,
    ) -> Result<()> {
        let g = &l.groups[l.group_of[self.rank()]];
        self.list_reduce(seq, R_UP, g, 0, acc, op)
    }

    /// Gather of equal blocks of `k` items: each leader collects its host's blocks, sends
    /// them to the root's leader as one message, which puts every block in rank order and
    /// hands the whole to the root. `recv` (on the root) holds `k * size` items.
    pub(crate) fn gather_two_level<T: Pod>(
        &self,
        seq: u32,
        l: &Layout,
        root: usize,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()> {
        let me = self.rank();
        let k = send.len();
        let rg = l.group_of[root];
        let root_leader = l.leader(rg);
        let host_blocks = self.host_gather(seq, l, send)?;
        let Some(mine) = host_blocks else {
            return self.root_hop(seq, l, root, recv);
        };
        let across = crate::collectives::ctag(seq, R_ACROSS);
        let my_group = l.group_of[me];
        if me != root_leader {
            self.c_send(root_leader, across, &mine)?;
            return self.root_hop(seq, l, root, recv);
        }
        // The root's leader: every host's blocks, in rank order.
        let mut all = vec![T::zeroed(); k * self.size()];
        for (g, ranks) in l.groups.iter().enumerate() {
            let mut blocks = vec![T::zeroed(); k * ranks.len()];
            if g == my_group {
                blocks.copy_from_slice(&mine);
            } else {
                self.c_recv_into(ranks[0], across, &mut blocks)?;
            }
            for (j, &r) in ranks.iter().enumerate() {
                all[r * k..(r + 1) * k].copy_from_slice(&blocks[j * k..(j + 1) * k]);
            }
        }
        if me == root {
            recv.copy_from_slice(&all);
            return Ok(());
        }
        self.c_send(root, crate::collectives::ctag(seq, R_ROOT), &all)
    }

    /// The root of a gather, when not its host's leader, gets the whole from the leader.
    fn root_hop<T: Pod>(&self, seq: u32, l: &Layout, root: usize, recv: &mut [T]) -> Result<()> {
        let root_leader = l.leader(l.group_of[root]);
        if self.rank() == root && root != root_leader {
            self.c_recv_into(root_leader, crate::collectives::ctag(seq, R_ROOT), recv)?;
        }
        Ok(())
    }

    /// This host's blocks at its leader, in the host's rank order: `Some` on the leader.
    fn host_gather<T: Pod>(&self, seq: u32, l: &Layout, send: &[T]) -> Result<Option<Vec<T>>> {
        let me = self.rank();
        let g = &l.groups[l.group_of[me]];
        let up = crate::collectives::ctag(seq, R_UP);
        if g[0] != me {
            self.c_send(g[0], up, send)?;
            return Ok(None);
        }
        let k = send.len();
        let mut blocks = vec![T::zeroed(); k * g.len()];
        blocks[..k].copy_from_slice(send);
        let mut reqs = Vec::with_capacity(g.len());
        for (j, chunk) in blocks
            .chunks_mut(k.max(1))
            .enumerate()
            .skip(1)
            .take(g.len() - 1)
        {
            reqs.push(self.c_irecv_exact(g[j], up, &mut chunk[..k])?);
        }
        if k == 0 {
            for &r in &g[1..] {
                self.c_recv_into::<T>(r, up, &mut [])?;
            }
        }
        crate::comm::wait_all(reqs)?;
        Ok(Some(blocks))
    }

    /// All-gather of equal blocks: gather at the first leader (two levels), then broadcast
    /// the whole (two levels).
    pub(crate) fn allgather_two_level<T: Pod>(
        &self,
        seq: u32,
        l: &Layout,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()> {
        // Rank 0 is the first host's leader: no root hop.
        self.gather_two_level(seq, l, 0, send, recv)?;
        let leaders = l.leaders();
        self.list_bcast(seq, R_ACROSS + 1, &leaders, 0, recv)?;
        let g = &l.groups[l.group_of[self.rank()]];
        self.list_bcast(seq, R_DOWN + 1, g, 0, recv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_group_ranks_by_host_in_rank_order() {
        let l = Layout::of(&[7, 7, 3, 9, 3, 7]).expect("worth two levels");
        assert_eq!(l.groups, [vec![0, 1, 5], vec![2, 4], vec![3]]);
        assert_eq!(l.group_of, [0, 0, 1, 2, 1, 0]);
        assert_eq!(l.leaders(), [0, 2, 3]);
        // One host, or one rank per host: flat.
        assert_eq!(Layout::of(&[1, 1, 1]), None);
        assert_eq!(Layout::of(&[1, 2, 3]), None);
        assert_eq!(Layout::of(&[]), None);
    }

    /// Every position has one parent except the root, and the children lists cover every
    /// other position exactly once (so a broadcast reaches everyone once).
    #[test]
    fn binomial_trees_span_the_list() {
        for n in 1..20 {
            for root in 0..n {
                let mut reached = vec![0; n];
                for i in 0..n {
                    let (p, cs) = binomial(n, i, root);
                    assert_eq!(p.is_none(), i == root, "n {n} root {root} i {i}");
                    for c in cs {
                        reached[c] += 1;
                        assert_eq!(binomial(n, c, root).0, Some(i));
                    }
                }
                reached[root] += 1;
                assert!(reached.iter().all(|&x| x == 1), "n {n} root {root}");
            }
        }
    }
}
