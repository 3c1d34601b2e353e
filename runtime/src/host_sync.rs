//! Barriers and small all-reductions in a host's shared memory: the ranks of a
//! communicator that all share one job segment meet in it without sending a message.
//!
//! Each rank has two words per communicator slot in the segment that it alone writes
//! (`Segment::sync_word`): its arrival and, for all-reductions, what it has read. Arriving at a barrier, a rank stores its *stamp* there (the
//! communicator's epoch and the collective's number); it has passed when every member's word
//! shows the stamp or a later one. The arrival that finds every other member already there
//! wakes those that sleep. Stores and loads are sequentially consistent, so of two ranks
//! arriving at once at least one sees the other: some arrival always sees all of them and
//! wakes the sleepers (a sleeper's own last look, after it counts itself asleep, is the
//! other half, as for messages: `Shm::wait`).
//!
//! Which communicator uses which slot: the one whose context id is `2 * slot`, for the
//! first `SYNC_SLOTS` ids. A process never has two communicators with one id, but ids are
//! reused after a communicator is freed, so a word's stamp says whose it is by the
//! communicator's *epoch*: agreed by its members when they make it (`Comm::split`), above
//! every epoch any of them had before, so each rank's epochs only grow. A member whose word
//! shows a later epoch has left this communicator, after its last barrier on it; one whose
//! word shows an earlier epoch has not reached this communicator's first barrier yet. The
//! world has epoch 0 and every word starts at 0, which is no stamp (collective numbers
//! count from 1 here).
//!
//! An all-reduction of up to `SYNC_DATA` bytes (in the first `DATA_SLOTS` slots) puts each
//! member's operand in one of two data buffers of its slot, meets as a barrier does, and
//! each member combines all operands itself, in rank order. The buffers alternate, so a
//! member writes one again only after everyone has passed the all-reduction between, by
//! which time everyone has read it. Across communicators that is not enough: a freed
//! communicator's member may still be reading the last operands when the next communicator
//! in the slot, made by other ranks, writes its first. So each member says what it has
//! read (its second word), a freed communicator leaves its members and its last
//! all-reduction's number behind (`Left`), and the slot's next communicator waits, before
//! its first write, until each of them has read it or is gone.
//!
//! A stamp also says which kind of collective it is for ([`Kind`]), so that a barrier and
//! an all-reduction called as the same collective by different ranks (an erroneous
//! program) do not meet: they hang, and the launcher's diagnosis names the mismatch, as it
//! does with messages. An operand carries its element type and length in its buffer's
//! header; a member that finds another's different fails with `CollectiveMismatch`, on every
//! rank alike.
//!
//! Communicators that span hosts run two levels (`crate::hier`): within each host whose
//! ranks share a segment, the members check in with their leader through their words
//! ([`Comm::group_up`]) and the leader lets them go with its own, stored after the
//! leaders met ([`Comm::group_down`]); an all-reduction's leader combines its members'
//! operands and puts the result in its buffer.
//!
//! While it waits a rank drives its progress engine (MPI's progress rule), and a member's
//! loss ends the wait with an error, as it does for a barrier by messages. Ids above the
//! slots, larger all-reductions and `RANKS_COLL_SHM=0` use messages
//! (`Comm::dissemination`, `collectives.rs`).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::comm::Comm;
use crate::error::Result;
use crate::progress::Watch;
use crate::transport::shm::{DATA_SLOTS, SYNC_SLOTS};

/// What a freed communicator's all-reductions left in its slot's data buffers at this rank:
/// its members may still be reading the last operand. The next communicator in the slot
/// waits until each has said it read it before it writes over it.
pub(crate) struct Left {
    members: std::sync::Arc<[usize]>,
    epoch: u32,
    at: u32,
}

/// Which collective a stamp is for: a rank in a barrier and one in an all-reduction of the
/// same number do not meet (a program that calls them in a different order hangs, and the
/// launcher's diagnosis names the mismatch, as with messages).
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Barrier = 1,
    Reduce = 2,
}

/// Collective `seq` of kind `kind` as the low half of a stamp: `seq` in the top 30 bits,
/// the kind (never 0) below, so that a zero word is no arrival.
pub(crate) fn mark(seq: u32, kind: Kind) -> u32 {
    seq.wrapping_mul(4) | kind as u32
}

/// The word a rank stores on arriving at collective `at` of a communicator of `epoch`.
pub(crate) fn stamp(epoch: u32, at: u32) -> u64 {
    u64::from(epoch) << 32 | u64::from(at)
}

/// Whether a member whose word reads `word` has arrived at collective `at` of the
/// communicator of `epoch` (or at a later one, or left the communicator after its last).
/// Collective numbers compare across their wrap (within 2^29 of each other).
pub(crate) fn reached(word: u64, epoch: u32, at: u32) -> bool {
    let (e, c) = ((word >> 32) as u32, word as u32);
    if e != epoch {
        return e > epoch;
    }
    let later = (c >> 2).wrapping_sub(at >> 2) & (u32::MAX >> 2);
    c == at || (later != 0 && later < 1 << 29)
}

/// The index of a slot's arrival word among a rank's sync words.
fn arrival(slot: usize) -> usize {
    slot
}

/// The index of a slot's word saying which all-reduction's operands this rank has read:
/// on a line apart from the arrival words, which the others poll.
fn read_mark(slot: usize) -> usize {
    SYNC_SLOTS + slot
}

/// The header of an operand: its element type and length in bytes.
fn header<T>(len: usize) -> u64 {
    u64::from(crate::comm::typecode::<T>()) << 32 | len as u64
}

/// A communicator's meeting point: the words of its members in one slot.
pub(crate) trait Words {
    /// Member `i`'s word (`i` in communicator order).
    fn word(&self, i: usize) -> &AtomicU64;
    fn members(&self) -> usize;
    /// Wake member `i` if it sleeps.
    fn wake(&self, i: usize);
}

/// Arrive as member `me` at collective `at` of the communicator of `epoch`. True when
/// every member has arrived, after waking the others.
pub(crate) fn arrive(w: &dyn Words, me: usize, epoch: u32, at: u32) -> bool {
    w.word(me).store(stamp(epoch, at), SeqCst);
    let all = (0..w.members()).all(|i| reached(w.word(i).load(SeqCst), epoch, at));
    if all {
        for i in (0..w.members()).filter(|&i| i != me) {
            w.wake(i);
        }
    }
    all
}

/// The first member not yet arrived at collective `at` (from member `from` on).
pub(crate) fn first_missing(w: &dyn Words, from: usize, epoch: u32, at: u32) -> Option<usize> {
    (from..w.members()).find(|&i| !reached(w.word(i).load(SeqCst), epoch, at))
}

/// The members of a communicator in its slot of the job segment.
struct InSegment<'a> {
    comm: &'a Comm,
    slot: usize,
}

impl Words for InSegment<'_> {
    fn word(&self, i: usize) -> &AtomicU64 {
        self.comm
            .core
            .sync_word(self.comm.members[i], arrival(self.slot))
            .expect("every member's word exists (Comm::host_slot)")
    }
    fn members(&self) -> usize {
        self.comm.members.len()
    }
    fn wake(&self, i: usize) {
        self.comm.core.wake(self.comm.members[i]);
    }
}

impl Comm {
    /// The sync slot of this communicator when its barriers meet in shared memory: more
    /// than one member, all in this process's job segment, a context id with a slot, and
    /// `RANKS_COLL_SHM` not 0. Every member decides alike.
    pub(crate) fn host_slot(&self) -> Option<usize> {
        *self
            .host_slot
            .get_or_init(|| self.slot_shared_by(self.members.iter().copied()))
    }

    /// This communicator's sync slot if the world ranks `ranks` (two or more) all have
    /// words in this process's segment.
    fn slot_shared_by(&self, mut ranks: impl ExactSizeIterator<Item = usize>) -> Option<usize> {
        let slot = (self.ctx / 2) as usize;
        let ok = self.core.tuning.host_sync
            && ranks.len() > 1
            && self.ctx.is_multiple_of(2)
            && slot < SYNC_SLOTS
            && ranks.all(|m| self.core.sync_word(m, read_mark(slot)).is_some());
        ok.then_some(slot)
    }

    /// The sync slot for the host part of a two-level collective, whose host group is
    /// `g` (communicator ranks, the leader first): every rank of the group decides alike.
    pub(crate) fn group_slot(&self, g: &[usize]) -> Option<usize> {
        self.slot_shared_by(g.iter().map(|&r| self.members[r]))
    }

    /// Collective `seq`'s check-in of host group `g` in sync slot `slot`: a member stores
    /// its stamp (and wakes the leader if it is the last); the leader waits for every
    /// member's. The leader stores its own only in [`Comm::group_down`].
    pub(crate) fn group_up(&self, slot: usize, at: u32, g: &[usize]) -> Result<()> {
        if g[0] != self.rank() {
            self.stamp_mine(slot, at);
            if g[1..].iter().all(|&r| self.arrived(slot, r, at)) {
                self.core.wake(self.members[g[0]]);
            }
            return Ok(());
        }
        for &r in &g[1..] {
            self.await_stamp(r, &|| self.arrived(slot, r, at))?;
        }
        Ok(())
    }

    /// Collective `seq`'s release of host group `g` (after the leaders met): the leader
    /// stores its stamp and wakes the members; a member waits for it.
    pub(crate) fn group_down(&self, slot: usize, at: u32, g: &[usize]) -> Result<()> {
        let leader = g[0];
        if leader == self.rank() {
            self.stamp_mine(slot, at);
            for &r in &g[1..] {
                self.core.wake(self.members[r]);
            }
            return Ok(());
        }
        self.await_stamp(leader, &|| self.arrived(slot, leader, at))
    }

    /// Store this rank's arrival at collective `at` in slot `slot`.
    fn stamp_mine(&self, slot: usize, at: u32) {
        if let Some(mine) = self.core.sync_word(self.core.rank, arrival(slot)) {
            mine.store(stamp(self.epoch, at), SeqCst);
        }
    }

    /// Whether member `r` has arrived at collective `at` in slot `slot` (or has no word).
    fn arrived(&self, slot: usize, r: usize, at: u32) -> bool {
        self.core
            .sync_word(self.members[r], arrival(slot))
            .is_none_or(|w| reached(w.load(SeqCst), self.epoch, at))
    }

    /// Wait (driving progress) until `arrived` says member `r` is there.
    fn await_stamp(&self, r: usize, arrived: &dyn Fn() -> bool) -> Result<()> {
        if arrived() {
            return Ok(());
        }
        let watch = Watch::Step {
            peer: self.members[r],
            members: &self.members,
            abort: None,
        };
        self.core
            .wait_checking_first(watch, arrived, |_, _| Ok(arrived().then_some(())))
    }

    /// The sync slot of an all-reduction of `bytes` bytes of items aligned to `align`
    /// when it meets in shared memory: a slot with data buffers, items that fit one.
    pub(crate) fn host_reduce_slot(&self, bytes: usize, align: usize) -> Option<usize> {
        self.host_slot()
            .filter(|&slot| self.operands_fit(slot, bytes, align))
    }

    /// Whether operands of `bytes` bytes aligned to `align` fit slot `slot`'s buffers.
    fn operands_fit(&self, slot: usize, bytes: usize, align: usize) -> bool {
        slot < DATA_SLOTS && bytes <= self.core.sync_data() && align <= 8
    }

    /// All-reduction number `seq` in sync slot `slot`: each member puts its operand in one
    /// of its slot's two data buffers (they alternate), meets the others as in a barrier,
    /// combines every member's operand itself, in rank order, and says it has read them
    /// (its second word in the slot). A buffer is written again two all-reductions later,
    /// after every member has arrived at the one between, that is, after every member has
    /// read it; the first all-reduction of a communicator waits for the members of the
    /// slot's last one to have read theirs (`Left`).
    pub(crate) fn host_all_reduce<T: bytemuck::Pod, O: crate::op::Op<T> + ?Sized>(
        &self,
        slot: usize,
        seq: u32,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        let at = mark(seq, Kind::Reduce);
        let k = self.next_all_reduce();
        let buf = self.data_begin(slot, k)?;
        let bytes: &[u8] = bytemuck::cast_slice(send);
        let want = header::<T>(bytes.len());
        self.put_operand(buf, want, bytes)?;
        // Marked as read however it ends (a later communicator in the slot waits for it).
        let r = self.host_barrier(slot, at).and_then(|()| {
            self.slow_read();
            self.combine_all(buf, want, send, recv, op)
        });
        self.data_end(slot, at);
        r
    }

    /// recv = in_0 ∘ (in_1 ∘ (... ∘ in_{n-1})) from every member's operand in data buffer
    /// `buf` (`send` is ours): `combine` takes the lower rank's operand first.
    fn combine_all<T: bytemuck::Pod, O: crate::op::Op<T> + ?Sized>(
        &self,
        buf: usize,
        want: u64,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        if n - 1 == me {
            recv.copy_from_slice(send);
        } else {
            self.take_operand::<T>(n - 1, buf, bytemuck::cast_slice_mut(recv), want)?;
        }
        let mut tmp = [0u64; crate::transport::shm::SYNC_DATA / 8];
        let tmp: &mut [u8] =
            &mut bytemuck::cast_slice_mut(&mut tmp[..])[..std::mem::size_of_val(recv)];
        for i in (0..n - 1).rev() {
            if i == me {
                op.combine(send, recv);
            } else {
                self.take_operand::<T>(i, buf, tmp, want)?;
                op.combine(bytemuck::cast_slice(tmp), recv);
            }
        }
        Ok(())
    }

    /// Member `i`'s operand (or its leader's result) from data buffer `buf` into `dst`,
    /// when its header is `want` (the element type and length this rank passed).
    fn take_operand<T>(&self, i: usize, buf: usize, dst: &mut [u8], want: u64) -> Result<()> {
        let got = self.core.read_sync_data(self.members[i], buf, dst);
        if got == Some(want) {
            return Ok(());
        }
        let detail = match got {
            None => format!("rank {i}'s operand is not in this host's shared memory"),
            Some(h) if h >> 32 == 0 => {
                format!("rank {i}'s host leader gave the all-reduction up")
            }
            Some(h) => format!(
                "rank {i} passed {} bytes{} to the same all-reduction, this rank {} bytes of {}",
                h as u32,
                if h >> 32 == want >> 32 {
                    ""
                } else {
                    " of another element type"
                },
                want as u32,
                std::any::type_name::<T>()
            ),
        };
        Err(crate::error::Error::CollectiveMismatch { rank: i, detail })
    }

    /// The host part of a two-level all-reduction of `acc` (collective `seq`, host group
    /// `g`, sync slot `slot`; commutative operations): the members put their operands in the
    /// slot and check in, the leader combines them into its own, runs `across` (the
    /// leaders' part), puts the result in the slot and lets the members go, who read it.
    pub(crate) fn group_all_reduce<T: bytemuck::Pod, O: crate::op::Op<T> + ?Sized>(
        &self,
        slot: usize,
        seq: u32,
        g: &[usize],
        acc: &mut [T],
        op: &O,
        across: impl FnOnce(&mut [T]) -> Result<()>,
    ) -> Result<()> {
        let at = mark(seq, Kind::Reduce);
        let k = self.next_all_reduce();
        let buf = self.data_begin(slot, k)?;
        let leader = g[0];
        let want = header::<T>(std::mem::size_of_val(acc));
        if leader != self.rank() {
            self.put_operand(buf, want, bytemuck::cast_slice(acc))?;
            // Marked as read however it ends (a later communicator in the slot waits for it).
            let r = self
                .group_up(slot, at, g)
                .and_then(|()| self.group_down(slot, at, g))
                .and_then(|()| {
                    self.slow_read();
                    self.take_operand::<T>(leader, buf, bytemuck::cast_slice_mut(acc), want)
                });
            self.data_end(slot, at);
            return r;
        }
        let r = self.leader_all_reduce(slot, at, buf, want, g, acc, op, across);
        self.data_end(slot, at);
        r
    }

    /// The leader's part of [`Comm::group_all_reduce`].
    #[allow(clippy::too_many_arguments)]
    fn leader_all_reduce<T: bytemuck::Pod, O: crate::op::Op<T> + ?Sized>(
        &self,
        slot: usize,
        at: u32,
        buf: usize,
        want: u64,
        g: &[usize],
        acc: &mut [T],
        op: &O,
        across: impl FnOnce(&mut [T]) -> Result<()>,
    ) -> Result<()> {
        self.group_up(slot, at, g)?;
        self.slow_read();
        let mut tmp = [0u64; crate::transport::shm::SYNC_DATA / 8];
        let len = std::mem::size_of_val(acc);
        let tmp: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut tmp[..])[..len];
        let combined = g[1..].iter().try_for_each(|&r| {
            self.take_operand::<T>(r, buf, tmp, want)?;
            op.combine(bytemuck::cast_slice(tmp), acc);
            Ok(())
        });
        if let Err(e) = combined {
            // Operands that disagree: the members fail alike (a header of 0 tells them).
            self.put_operand(buf, 0, &[])?;
            self.group_down(slot, at, g)?;
            return Err(e);
        }
        // A lost peer across: the members, whose wait watches every member, find the same
        // cause themselves.
        across(acc)?;
        self.put_operand(buf, want, bytemuck::cast_slice(acc))?;
        self.group_down(slot, at, g)
    }

    /// Number the all-reduction this rank is starting (`host_ops`): counted alike on every
    /// member by every all-reduction that may meet in shared memory, whichever way it then
    /// goes (in a two-level one, a host's lone rank goes by messages while the others'
    /// hosts meet in memory). Data buffers alternate by this number: an all-reduction ends
    /// only after every member started it, and so finished reading the one before.
    pub(crate) fn next_all_reduce(&self) -> u32 {
        self.host_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The first of a shared-memory all-reduction's steps: which of the slot's data
    /// buffers it uses; the communicator's first waits for the slot's last readers
    /// (`Left`).
    fn data_begin(&self, slot: usize, k: u32) -> Result<usize> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let core = &*self.core;
        if self.host_last.load(Relaxed) == 0 {
            let left = core.data_left().get_mut(slot).and_then(Option::take);
            if let Some(left) = left {
                for &m in left.members.iter().filter(|&&m| m != core.rank) {
                    let read = || {
                        core.sync_word(m, read_mark(slot))
                            .is_none_or(|w| reached(w.load(Acquire), left.epoch, left.at))
                    };
                    if !read() {
                        core.wait_for(Watch::Nobody, |c, _| {
                            Ok((read() || c.peer_gone(m).is_some()).then_some(()))
                        })?;
                    }
                }
            }
        }
        Ok(2 * slot + (k % 2) as usize)
    }

    fn put_operand(&self, buf: usize, header: u64, bytes: &[u8]) -> Result<()> {
        if self.core.write_sync_data(buf, header, bytes) {
            return Ok(());
        }
        Err(crate::error::Error::InvalidArgument(format!(
            "all_reduce: {} bytes do not fit this rank's shared buffer",
            bytes.len()
        )))
    }

    /// Testing (`RANKS_TEST_SLOW_READ`): this rank reads the others' operands late.
    fn slow_read(&self) {
        if let Some((r, late)) = self.core.tuning.slow_read {
            if r == self.core.rank {
                std::thread::sleep(late);
            }
        }
    }

    /// A two-level all-reduction this rank ran by messages (collective `seq`): say it is
    /// past it all the same, as every member of the slot's communicator does (a later
    /// communicator in the slot waits for each member's word, `Left`).
    pub(crate) fn pass_all_reduce(&self, seq: u32) {
        let slot = (self.ctx / 2) as usize;
        if self.ctx.is_multiple_of(2) && slot < SYNC_SLOTS {
            if let Some(w) = self.core.sync_word(self.core.rank, read_mark(slot)) {
                let at = mark(seq, Kind::Reduce);
                w.store(stamp(self.epoch, at), std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// The last step: say what this rank has read (collective `seq`).
    fn data_end(&self, slot: usize, at: u32) {
        use std::sync::atomic::Ordering::{Relaxed, Release};
        if let Some(w) = self.core.sync_word(self.core.rank, read_mark(slot)) {
            w.store(stamp(self.epoch, at), Release);
        }
        self.host_last.store(at, Relaxed);
    }

    /// The slot of the host part of a two-level all-reduction of `bytes` bytes aligned to
    /// `align` in host group `g`, when it meets in shared memory.
    pub(crate) fn group_reduce_slot(
        &self,
        g: &[usize],
        bytes: usize,
        align: usize,
    ) -> Option<usize> {
        self.group_slot(g)
            .filter(|&slot| self.operands_fit(slot, bytes, align))
    }

    /// Barrier number `seq` in sync slot `slot` (see the module's documentation).
    pub(crate) fn host_barrier(&self, slot: usize, at: u32) -> Result<()> {
        let w = InSegment { comm: self, slot };
        let (me, epoch) = (self.rank(), self.epoch);
        if arrive(&w, me, epoch, at) {
            return Ok(());
        }
        let mut from = 0;
        while let Some(i) = first_missing(&w, from, epoch, at) {
            self.await_stamp(i, &|| reached(w.word(i).load(SeqCst), epoch, at))?;
            from = i + 1;
        }
        Ok(())
    }
}

impl crate::comm::CommData {
    /// What this communicator's all-reductions leave in its slot (when it is freed).
    pub(crate) fn data_left_behind(&self) -> Option<(usize, Left)> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.host_last.load(Relaxed) == 0 {
            return None;
        }
        // The slot its operands went to, flat or (spanning hosts) within a host group.
        let slot = (self.ctx / 2) as usize;
        let left = Left {
            members: self.members.clone(),
            epoch: self.epoch,
            at: self.host_last.load(Relaxed),
        };
        Some((slot, left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::{Arc, Condvar, Mutex};

    const B: Kind = Kind::Barrier;
    const R: Kind = Kind::Reduce;

    #[test]
    fn stamps_order_by_epoch_then_collective_and_kinds_do_not_meet() {
        // A zero word (nobody ever wrote) is no arrival, not even at the world's first.
        assert!(!reached(0, 0, mark(0, B)));
        assert!(reached(stamp(0, mark(0, B)), 0, mark(0, B)));
        assert!(
            reached(stamp(0, mark(5, B)), 0, mark(3, B)),
            "a later barrier passed this one"
        );
        assert!(reached(stamp(0, mark(5, R)), 0, mark(3, B)), "of any kind");
        assert!(!reached(stamp(0, mark(2, B)), 0, mark(3, B)));
        // The same collective called as another kind: no meeting (a mismatch hangs).
        assert!(!reached(stamp(0, mark(3, R)), 0, mark(3, B)));
        assert!(!reached(stamp(0, mark(3, B)), 0, mark(3, R)));
        // Another communicator that used the slot before this one: not arrived.
        assert!(!reached(stamp(3, mark(900, B)), 4, mark(0, B)));
        // A communicator made later: the member left this one after its last barrier.
        assert!(reached(stamp(5, mark(0, B)), 4, mark(7, R)));
        // Collective numbers wrap (30 bits of them).
        let top = u32::MAX >> 2;
        assert!(reached(stamp(1, mark(top, B)), 1, mark(top - 1, B)));
        assert!(reached(stamp(1, mark(top + 3, B)), 1, mark(top, R)));
        assert!(!reached(stamp(1, mark(top - 1, B)), 1, mark(top, B)));
    }

    proptest! {
        /// Against the plain order of (epoch, collective number) on unwrapped numbers, with
        /// equal numbers meeting only when their kinds are equal.
        #[test]
        fn reached_is_the_order_of_stamps(
            e in 0u32..4, a in 0u32..1000, ka in any::<bool>(),
            f in 0u32..4, b in 0u32..1000, kb in any::<bool>(),
        ) {
            let kind = |r: bool| if r { R } else { B };
            let want = if (e, a) == (f, b) { ka == kb } else { (e, a) > (f, b) };
            prop_assert_eq!(reached(stamp(e, mark(a, kind(ka))), f, mark(b, kind(kb))), want);
        }
    }

    /// Words in ordinary memory; wakes counted, sleepers on a condition variable.
    struct Mem {
        words: Vec<AtomicU64>,
        wakes: AtomicUsize,
        bell: (Mutex<u64>, Condvar),
    }

    impl Mem {
        fn new(n: usize) -> Mem {
            Mem {
                words: (0..n).map(|_| AtomicU64::new(0)).collect(),
                wakes: AtomicUsize::new(0),
                bell: (Mutex::new(0), Condvar::new()),
            }
        }
        /// Wait as member `me` the way `host_barrier` does, but sleeping on the bell: count
        /// the bell's rings seen, look, sleep unless they changed.
        fn wait(&self, me: usize, epoch: u32, seq: u32) {
            let _ = me;
            loop {
                let rung = *self.bell.0.lock().unwrap();
                if first_missing(self, 0, epoch, seq).is_none() {
                    return;
                }
                let g = self.bell.0.lock().unwrap();
                let _g = self.bell.1.wait_while(g, |r| *r == rung).unwrap();
            }
        }
    }

    impl Words for Mem {
        fn word(&self, i: usize) -> &AtomicU64 {
            &self.words[i]
        }
        fn members(&self) -> usize {
            self.words.len()
        }
        fn wake(&self, _i: usize) {
            self.wakes.fetch_add(1, Relaxed);
            *self.bell.0.lock().unwrap() += 1;
            self.bell.1.notify_all();
        }
    }

    #[test]
    fn the_last_arrival_passes_at_once_and_wakes_the_others() {
        let m = Mem::new(3);
        let (first, next) = (mark(0, B), mark(1, B));
        assert!(!arrive(&m, 0, 0, first));
        assert_eq!(first_missing(&m, 0, 0, first), Some(1));
        assert!(!arrive(&m, 2, 0, first));
        assert_eq!(first_missing(&m, 0, 0, first), Some(1));
        assert_eq!(m.wakes.load(Relaxed), 0, "nobody can pass yet");
        assert!(arrive(&m, 1, 0, first));
        assert_eq!(first_missing(&m, 0, 0, first), None);
        assert_eq!(m.wakes.load(Relaxed), 2);
        // The next barrier starts over; arriving at it does not pass the one before late.
        assert!(!arrive(&m, 1, 0, next));
        assert_eq!(first_missing(&m, 0, 0, next), Some(0));
        assert_eq!(first_missing(&m, 0, 0, first), None);
    }

    #[test]
    fn a_reused_slot_waits_for_members_still_in_their_old_communicator() {
        let m = Mem::new(2);
        // Member 0 did 40 barriers on the communicator of epoch 3 in this slot; member 1 was
        // elsewhere (epoch 1). The new communicator (epoch 4) waits for both.
        m.words[0].store(stamp(3, mark(39, B)), SeqCst);
        m.words[1].store(stamp(1, mark(7, R)), SeqCst);
        assert!(!arrive(&m, 1, 4, mark(0, B)));
        assert_eq!(first_missing(&m, 0, 4, mark(0, B)), Some(0));
        assert!(arrive(&m, 0, 4, mark(0, B)));
    }

    /// Threads as ranks run many barriers; none may pass one before every rank reached it
    /// (each checks the others' progress counters), and none may sleep through its end.
    #[test]
    fn threads_pass_each_barrier_together_and_none_sleeps_through() {
        for n in [2, 3, 5] {
            let m = Arc::new(Mem::new(n));
            let done: Arc<Vec<AtomicUsize>> =
                Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
            let rounds = 2000;
            std::thread::scope(|s| {
                for me in 0..n {
                    let (m, done) = (m.clone(), done.clone());
                    s.spawn(move || {
                        for seq in 0..rounds {
                            done[me].store(seq as usize + 1, SeqCst);
                            if !arrive(&*m, me, 7, mark(seq, B)) {
                                m.wait(me, 7, mark(seq, B));
                            }
                            for (j, d) in done.iter().enumerate() {
                                let at = d.load(SeqCst);
                                assert!(
                                    at > seq as usize,
                                    "rank {me} passed barrier {seq} before rank {j} reached it"
                                );
                            }
                        }
                    });
                }
            });
        }
    }
}
