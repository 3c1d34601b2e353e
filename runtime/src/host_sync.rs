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
//! While it waits a rank drives its progress engine (MPI's progress rule), and a member's
//! loss ends the wait with an error, as it does for a barrier by messages. Communicators
//! that span hosts, ids above the slots, larger all-reductions and `RANKS_COLL_SHM=0` use
//! messages (`Comm::dissemination`, `collectives.rs`).

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
    seq: u32,
}

/// The word a rank stores on arriving at collective `seq` of a communicator of `epoch`.
pub(crate) fn stamp(epoch: u32, seq: u32) -> u64 {
    u64::from(epoch) << 32 | u64::from(count(seq))
}

/// Collective `seq` counted from 1, so that a zero word is no arrival.
fn count(seq: u32) -> u32 {
    seq.wrapping_add(1)
}

/// Whether a member whose word reads `word` has arrived at collective `seq` of the
/// communicator of `epoch` (or left it, after its last barrier there). Counts compare
/// across their wrap (within 2^31 of each other).
pub(crate) fn reached(word: u64, epoch: u32, seq: u32) -> bool {
    let (e, c) = ((word >> 32) as u32, word as u32);
    e > epoch || (e == epoch && c.wrapping_sub(count(seq)) as i32 >= 0)
}

/// A communicator's meeting point: the words of its members in one slot.
pub(crate) trait Words {
    /// Member `i`'s word (`i` in communicator order).
    fn word(&self, i: usize) -> &AtomicU64;
    fn members(&self) -> usize;
    /// Wake member `i` if it sleeps.
    fn wake(&self, i: usize);
}

/// Arrive as member `me` at collective `seq` of the communicator of `epoch`. True when
/// every member has arrived, after waking the others.
pub(crate) fn arrive(w: &dyn Words, me: usize, epoch: u32, seq: u32) -> bool {
    w.word(me).store(stamp(epoch, seq), SeqCst);
    let all = (0..w.members()).all(|i| reached(w.word(i).load(SeqCst), epoch, seq));
    if all {
        for i in (0..w.members()).filter(|&i| i != me) {
            w.wake(i);
        }
    }
    all
}

/// The first member not yet arrived at collective `seq` (from member `from` on).
pub(crate) fn first_missing(w: &dyn Words, from: usize, epoch: u32, seq: u32) -> Option<usize> {
    (from..w.members()).find(|&i| !reached(w.word(i).load(SeqCst), epoch, seq))
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
            .sync_word(self.comm.members[i], 2 * self.slot)
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
        *self.host_slot.get_or_init(|| {
            let slot = (self.ctx / 2) as usize;
            let ok = self.core.tuning.host_sync
                && self.size() > 1
                && self.ctx.is_multiple_of(2)
                && slot < SYNC_SLOTS
                && self
                    .members
                    .iter()
                    .all(|&m| self.core.sync_word(m, 2 * slot + 1).is_some());
            ok.then_some(slot)
        })
    }

    /// The sync slot of an all-reduction of `bytes` bytes of items aligned to `align`
    /// when it meets in shared memory: a slot with data buffers, items that fit one.
    pub(crate) fn host_reduce_slot(&self, bytes: usize, align: usize) -> Option<usize> {
        let slot = self.host_slot()?;
        (slot < DATA_SLOTS && bytes <= self.core.sync_data() && align <= 8).then_some(slot)
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
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        let core = &*self.core;
        let k = self.host_ops.fetch_add(1, Relaxed);
        if k == 0 {
            let left = core.data_left().get_mut(slot).and_then(Option::take);
            if let Some(left) = left {
                for &m in left.members.iter().filter(|&&m| m != core.rank) {
                    let read = || {
                        core.sync_word(m, 2 * slot + 1)
                            .is_none_or(|w| reached(w.load(Acquire), left.epoch, left.seq))
                    };
                    if !read() {
                        core.wait_for(Watch::Nobody, |c, _| {
                            Ok((read() || c.peer_gone(m).is_some()).then_some(()))
                        })?;
                    }
                }
            }
        }
        let buf = 2 * slot + (k % 2) as usize;
        let bytes: &[u8] = bytemuck::cast_slice(send);
        if !core.write_sync_data(buf, bytes) {
            return Err(crate::error::Error::InvalidArgument(format!(
                "all_reduce: {} bytes do not fit this rank's shared buffer",
                bytes.len()
            )));
        }
        self.host_barrier(slot, seq)?;
        if let Some((r, late)) = core.tuning.slow_read {
            if r == core.rank {
                std::thread::sleep(late);
            }
        }
        // recv = in_0 ∘ (in_1 ∘ (... ∘ in_{n-1})): `combine` takes the lower rank's operand
        // first.
        let (n, me) = (self.size(), self.rank());
        let load = |i: usize, dst: &mut [u8]| {
            if i == me {
                dst.copy_from_slice(bytes);
            } else {
                core.read_sync_data(self.members[i], buf, dst);
            }
        };
        load(n - 1, bytemuck::cast_slice_mut(recv));
        let mut tmp = [0u64; crate::transport::shm::SYNC_DATA / 8];
        let tmp: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut tmp[..])[..bytes.len()];
        for i in (0..n - 1).rev() {
            if i == me {
                op.combine(send, recv);
            } else {
                load(i, tmp);
                op.combine(bytemuck::cast_slice(tmp), recv);
            }
        }
        if let Some(w) = core.sync_word(core.rank, 2 * slot + 1) {
            w.store(stamp(self.epoch, seq), Release);
        }
        self.host_last.store(seq, Relaxed);
        Ok(())
    }

    /// Barrier number `seq` in sync slot `slot` (see the module's documentation).
    pub(crate) fn host_barrier(&self, slot: usize, seq: u32) -> Result<()> {
        let w = InSegment { comm: self, slot };
        let (me, epoch) = (self.rank(), self.epoch);
        if arrive(&w, me, epoch, seq) {
            return Ok(());
        }
        let mut from = 0;
        while let Some(i) = first_missing(&w, from, epoch, seq) {
            let arrived = || reached(w.word(i).load(SeqCst), epoch, seq);
            let watch = Watch::Step {
                peer: self.members[i],
                members: &self.members,
            };
            self.core
                .wait_checking_first(watch, &arrived, |_, _| Ok(arrived().then_some(())))?;
            from = i + 1;
        }
        Ok(())
    }
}

impl crate::comm::CommData {
    /// What this communicator's all-reductions leave in its slot (when it is freed).
    pub(crate) fn data_left_behind(&self) -> Option<(usize, Left)> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.host_ops.load(Relaxed) == 0 {
            return None;
        }
        let slot = (*self.host_slot.get()?)?;
        let left = Left {
            members: self.members.clone(),
            epoch: self.epoch,
            seq: self.host_last.load(Relaxed),
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

    #[test]
    fn stamps_order_by_epoch_then_count() {
        // A zero word (nobody ever wrote) is no arrival, not even at the world's first.
        assert!(!reached(0, 0, 0));
        assert!(reached(stamp(0, 0), 0, 0));
        assert!(
            reached(stamp(0, 5), 0, 3),
            "a later barrier passed this one"
        );
        assert!(!reached(stamp(0, 2), 0, 3));
        // Another communicator that used the slot before this one: not arrived.
        assert!(!reached(stamp(3, 900), 4, 0));
        // A communicator made later: the member left this one after its last barrier.
        assert!(reached(stamp(5, 0), 4, 7));
        // Counts wrap.
        assert!(reached(stamp(1, u32::MAX), 1, u32::MAX - 1));
        assert!(reached(stamp(1, 2), 1, u32::MAX));
        assert!(!reached(stamp(1, u32::MAX - 1), 1, u32::MAX));
    }

    proptest! {
        /// Against the plain order of (epoch, collective number) on unwrapped numbers.
        #[test]
        fn reached_is_the_order_of_stamps(e in 0u32..4, a in 0u32..1000, f in 0u32..4, b in 0u32..1000) {
            prop_assert_eq!(reached(stamp(e, a), f, b), (e, a) >= (f, b));
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
        assert!(!arrive(&m, 0, 0, 0));
        assert_eq!(first_missing(&m, 0, 0, 0), Some(1));
        assert!(!arrive(&m, 2, 0, 0));
        assert_eq!(first_missing(&m, 0, 0, 0), Some(1));
        assert_eq!(m.wakes.load(Relaxed), 0, "nobody can pass yet");
        assert!(arrive(&m, 1, 0, 0));
        assert_eq!(first_missing(&m, 0, 0, 0), None);
        assert_eq!(m.wakes.load(Relaxed), 2);
        // The next barrier starts over; arriving at it does not pass the one before late.
        assert!(!arrive(&m, 1, 0, 1));
        assert_eq!(first_missing(&m, 0, 0, 1), Some(0));
        assert_eq!(first_missing(&m, 0, 0, 0), None);
    }

    #[test]
    fn a_reused_slot_waits_for_members_still_in_their_old_communicator() {
        let m = Mem::new(2);
        // Member 0 did 40 barriers on the communicator of epoch 3 in this slot; member 1 was
        // elsewhere (epoch 1). The new communicator (epoch 4) waits for both.
        m.words[0].store(stamp(3, 39), SeqCst);
        m.words[1].store(stamp(1, 7), SeqCst);
        assert!(!arrive(&m, 1, 4, 0));
        assert_eq!(first_missing(&m, 0, 4, 0), Some(0));
        assert!(arrive(&m, 0, 4, 0));
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
                            if !arrive(&*m, me, 7, seq) {
                                m.wait(me, 7, seq);
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
