//! The progress engine of one process: transport streams in, frames out, matching, waiting.
//!
//! All mutable state sits behind one mutex ([`State`]); blocking calls run a wait loop that
//! makes progress, checks its condition, spins briefly and then sleeps on the transport's
//! wakeup (futex doorbell or `poll`), so ranks that outnumber cores do not burn them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::lock::{Guard, Lock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::protocol::matching::{Msg, Pattern, RecvId};
use crate::protocol::{
    Protocol, ProtocolConfig, PullJob, Route, RvBuf, SendId, SendPoll, Taken, Want,
};
use crate::transport::{Offer, TakeFrame, Templated, Transport};
use crate::wire::{DataTemplate, Encoding, FrameDecoder, Header, Kind, HEADER_LEN};

/// The tunables in force (from `crate::config::Tuning`, with waiting decided by how many
/// ranks share the cores).
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// Largest payload accepted from a peer.
    pub max_message: u64,
    /// Payloads at least this big go by rendezvous (pulled by the receiver) when possible.
    pub rendezvous_threshold: usize,
    /// How long a waiter spins before it yields and sleeps.
    pub spin: Duration,
    /// How many times a waiter yields the CPU before it sleeps.
    pub yields: u32,
    /// Collective decision thresholds (bytes).
    pub bcast_large: usize,
    pub allreduce_large: usize,
    /// Two-level collectives across hosts.
    pub two_level: bool,
    /// Barriers meet in a host's shared memory where they can (`crate::host_sync`).
    pub host_sync: bool,
    /// Testing: a rank that reads shared all-reduction operands late, and how late.
    pub slow_read: Option<(usize, Duration)>,
    /// Testing: every rank's host, as numbers.
    pub test_hosts: Option<Vec<u32>>,
    /// Pulls of at least this many bytes are shared with the sender (0: never).
    pub share_pull: usize,
    /// Testing: wait for the sender to write the part offered to it.
    pub await_push: bool,
    /// The longest a sleeping waiter sleeps before it looks again unwoken.
    pub nap: Duration,
    /// Testing: the core's lock fences at every release (see `crate::lock`).
    pub fenced_lock: bool,
}

impl Tuning {
    /// Waiters spin unless the job has more ranks than this host has cores (`ranks`: the
    /// job's size; across hosts too, since other hosts may share these cores: spinning
    /// ranks there would starve the ones here). `RANKS_SPIN_US` overrides it.
    pub(crate) fn resolve(cfg: &crate::config::Tuning, ranks: usize) -> Tuning {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let oversubscribed = ranks > cores;
        Tuning {
            max_message: cfg.max_message,
            rendezvous_threshold: cfg
                .rendezvous_threshold
                .unwrap_or_else(|| default_threshold(ranks)),
            spin: cfg.spin.unwrap_or(if oversubscribed {
                Duration::ZERO
            } else {
                Duration::from_micros(100)
            }),
            yields: cfg.yields,
            bcast_large: cfg.bcast_large,
            allreduce_large: cfg.allreduce_large,
            two_level: cfg.two_level,
            host_sync: cfg.host_sync,
            slow_read: cfg.test_slow_read,
            test_hosts: cfg.test_hosts.clone(),
            share_pull: cfg.share_pull,
            await_push: cfg.await_push,
            nap: cfg.nap.unwrap_or(Duration::from_millis(50)),
            fenced_lock: cfg.fenced_lock,
        }
    }
}

/// The rendezvous threshold when none is set: a quarter of a shared-memory ring's size, and
/// at least 32 KiB. That is 256 KiB in jobs of up to 8 ranks (1 MiB rings), 128 KiB up to 11
/// ranks, 64 KiB up to 16, else 32 KiB. Below it a message is copied twice (into the ring,
/// and out of it, straight into a receive waiting for it, which waits for the whole frame
/// in the ring), by the two ranks at once; from it, once, by the receiver
/// (`process_vm_readv`) and, from `share_pull` (128 KiB), half of it by the sender
/// (`process_vm_writev`) at the same time. A pull pins every page it copies, which costs a
/// quarter of its time; the two copies through the ring stay in the caches. On two cores
/// (see BENCHMARKS.md), with 1 MiB rings, 128 and 192 KiB messages went faster eager
/// (one-way 3.0-3.4 against 7.7-9.2 us at 128 KiB, 4.7 against 10-12 us at 192 KiB;
/// streaming 1.1-2.5x at 128 KiB, level at 192 KiB; a 4-rank 512 KiB all-reduce
/// 2.2-2.6x), while streaming 256 KiB went faster as pulls (a window of 64 of them fills
/// the ring), though one at a time it is still twice as fast eager. With 512 KiB rings (10
/// ranks) 64 KiB, and with 256 KiB rings (12 ranks) 32-64 KiB, went faster eager both ways.
fn default_threshold(ranks: usize) -> usize {
    (crate::transport::shm::ring_capacity(ranks) / 4).max(32 << 10)
}

/// Everything the progress layer mutates, behind one mutex.
pub(crate) struct State {
    pub(crate) proto: Protocol,
    dec: Vec<FrameDecoder>,
    /// Peers whose stream became unusable, with the reason.
    broken: Vec<Option<String>>,
    /// Peers whose loss the protocol has been told of.
    lost_told: Vec<bool>,
    /// Per peer: threads waiting to take its next frame straight from the stream (see
    /// [`Core::recv_from_stream`]); progress leaves such a stream alone.
    stream_waiters: Vec<u32>,
    /// Nonblocking collectives in flight, advanced by every progress step.
    machines: Vec<(
        Box<dyn crate::nbc::Machine>,
        std::sync::Arc<crate::nbc::Slot>,
    )>,
    /// When they last looked for lost ranks, and the progress steps since.
    machines_looked: (Instant, u32),
    /// Posted receives whose message went straight from the stream into their buffer
    /// (counted under the lock: an atomic count would cost a locked add per message).
    pub(crate) landed: u64,
    /// Rendezvous messages progress pulled into a buffer of its own for a receive whose
    /// owner was not there (`Comm::staged_pulls`).
    pub(crate) staged_pulls: u64,
}

impl State {
    /// In a run ([`Core::take_run`]): posted receive `id` of pattern `pat` takes `payload`
    /// into the front of `dst` if it is the claimant of the frame and the payload fits,
    /// and is noted as landed. Whether it took it.
    #[inline(always)]
    pub(crate) fn land_payload(
        &mut self,
        id: RecvId,
        pat: &Pattern,
        payload: &[u8],
        dst: &mut [u8],
    ) -> bool {
        if payload.len() > dst.len() || !self.proto.land_claimed(id, pat) {
            return false;
        }
        dst[..payload.len()].copy_from_slice(payload);
        self.landed += 1;
        true
    }

    /// The message of receive `id` once it is here with its bytes (pulls of rendezvous
    /// messages are made by progress).
    pub(crate) fn take_msg(&mut self, id: RecvId) -> Option<Msg> {
        match self.proto.take(id, false)? {
            Taken::Msg(m) => Some(m),
            Taken::Pull(..) => unreachable!("only direct takers are handed pulls"),
        }
    }

    /// The oldest unmatched message matching `pat`, without taking it.
    pub(crate) fn peek(&self, pat: Pattern) -> Option<&Msg> {
        self.proto.peek(pat)
    }

    /// Whether `peer`'s stream may be read a frame at a time where it lies: it is not
    /// broken and the decoder is not inside a frame of it.
    #[inline]
    fn readable_in_place(&self, peer: usize) -> bool {
        self.broken[peer].is_none() && !self.dec[peer].mid_frame()
    }
}

/// The frames of a pattern that names one source and one tag, and one element type,
/// recognised by their header's four fixed words, which the transport compares where they
/// lie (decoding checks every field; the general decoder is for anything else). Such a
/// frame is a posted receive's if that receive is their claimant, which is known before
/// looking.
pub(crate) struct Lander {
    peer: usize,
    template: DataTemplate,
}

impl Lander {
    #[inline]
    fn new(peer: usize, pat: &Pattern, typecode: u32) -> Option<Lander> {
        let src = u32::try_from(pat.src).ok()?;
        let template = DataTemplate::new(pat.ctx, src, pat.tag, typecode)?;
        Some(Lander { peer, template })
    }

    /// The header of a frame of this lander's with a payload of `len` bytes.
    #[inline]
    pub(crate) fn header(&self, len: u64) -> Header {
        self.template.with_len(len)
    }
}

/// Whose message [`Core::recv_from_stream`] may take.
#[derive(Clone, Copy)]
pub(crate) enum Claim<'p> {
    /// A blocking receive for this pattern, with no posted receive or queued message that
    /// could come first (the caller checked).
    Blocking(&'p Pattern),
    /// This posted receive (with its pattern), if it is the oldest posted one the frame
    /// matches.
    Posted(RecvId, &'p Pattern),
    /// As `Posted`, for a receive whose thread waits for it now (its `wait`, or the one
    /// `wait_all` waits for): a frame of its that is not all there yet may land in parts,
    /// as for a blocking receive, and the wait gives it back if it ends any other way
    /// ([`Core::give_up_landing`]).
    Waited(RecvId, &'p Pattern),
}

impl<'p> Claim<'p> {
    /// The pattern of the receive.
    #[inline]
    fn pattern(self) -> &'p Pattern {
        match self {
            Claim::Blocking(pat) | Claim::Posted(_, pat) | Claim::Waited(_, pat) => pat,
        }
    }

    /// The posted receive, if the claim is one's.
    #[inline]
    fn posted(self) -> Option<RecvId> {
        match self {
            Claim::Blocking(_) => None,
            Claim::Posted(id, _) | Claim::Waited(id, _) => Some(id),
        }
    }

    /// Whether a frame of the claim's may land in parts: its thread waits for it and
    /// gives it back if the wait fails.
    #[inline]
    fn waits(self) -> bool {
        !matches!(self, Claim::Posted(..))
    }
}

/// The name a receive that lands a frame in parts goes by in the stream's decoder: where its
/// buffer is (no two live receives share a buffer).
fn landing_owner(dst: &[u8]) -> usize {
    dst.as_ptr() as usize
}

/// A thread that takes its message from one peer's stream itself
/// ([`Core::recv_from_stream`]): while it is counted, progress leaves that stream to it.
pub(crate) struct StreamWait {
    peer: usize,
    counted: bool,
}

impl StreamWait {
    pub(crate) fn new(peer: usize) -> StreamWait {
        StreamWait {
            peer,
            counted: false,
        }
    }

    pub(crate) fn peer(&self) -> usize {
        self.peer
    }

    pub(crate) fn counted(&self) -> bool {
        self.counted
    }

    /// Be counted as waiting on the stream (once).
    pub(crate) fn count(&mut self, st: &mut State) {
        if !std::mem::replace(&mut self.counted, true) {
            st.stream_waiters[self.peer] += 1;
        }
    }

    /// No longer be counted; true if it was.
    pub(crate) fn uncount(&mut self, st: &mut State) -> bool {
        let was = std::mem::take(&mut self.counted);
        if was {
            let w = &mut st.stream_waiters[self.peer];
            *w = w.saturating_sub(1);
        }
        was
    }

    /// Leave the stream to the general path: no longer counted and, if progress had left
    /// the stream to us, read it now (a wait that sleeps next would sleep with a whole
    /// frame unread, which nothing would ring for).
    pub(crate) fn hand_back(&mut self, core: &Core, st: &mut State) {
        if self.uncount(st) {
            core.progress(st);
        }
    }
}

/// What [`Core::recv_from_stream`] found.
pub(crate) enum FromStream {
    /// The frame with this header, its payload in the caller's buffer.
    Got(Header),
    /// Nothing whole there yet.
    Empty,
    /// Something the general path must handle (another message, a partial frame, an error).
    No,
}

/// Which peers' loss ends a wait.
#[derive(Clone, Copy)]
pub(crate) enum Watch<'a> {
    Nobody,
    /// This world rank.
    Peer(usize),
    /// An any-source receive among these world ranks: it fails when one of them failed
    /// (exited non-zero, was killed), or when all of them are gone.
    All(&'a [usize]),
    /// A step of a collective over `members` that waits on `peer`: it fails when the peer is
    /// gone or when any member failed (the collective cannot complete anywhere).
    Step {
        peer: usize,
        members: &'a [usize],
        /// Where another member's notice that it left the collective with an error would
        /// be (see `Comm::fail_together`); such a notice ends the wait too.
        abort: Option<Pattern>,
    },
}

/// The error to end a collective step's wait with when another member's notice that it
/// left the call with an error is here (the notice is taken).
pub(crate) fn collective_failed(st: &mut State, watch: Watch<'_>) -> Option<Error> {
    let Watch::Step {
        abort: Some(pat), ..
    } = watch
    else {
        return None;
    };
    // Only a notice: a step's message with that tag (a ring of more than 512 members has
    // round 1023) is not one.
    if st.peek(pat)?.typecode != crate::collectives::NOTICE_TYPECODE {
        return None;
    }
    let m = match st.proto.post(pat, crate::protocol::Want::Bytes) {
        Ok(m) => m,
        Err(id) => {
            st.proto.cancel(id);
            return None;
        }
    };
    let detail = match &m.body {
        crate::protocol::matching::Body::Eager(v) => String::from_utf8_lossy(v).into_owned(),
        _ => "(no detail)".into(),
    };
    Some(Error::CollectiveFailed {
        rank: m.src as usize,
        detail,
    })
}

/// What a transport error says about a lost peer, for a later `PeerLost`'s detail (not the
/// whole `PeerLost` message again, which would read "rank 3 is gone (rank 3 is gone (...)").
fn loss_detail(e: &Error) -> String {
    match e {
        Error::PeerLost { detail, .. } => detail.clone(),
        e => e.to_string(),
    }
}

/// How long after a peer's clean exit was recorded on the job board it counts as gone even
/// when its transport has not said so (what it sent before exiting has arrived by then).
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// How long a lost peer's error waits for the peer's end to appear on the board.
const BOARD_GRACE: Duration = Duration::from_millis(200);

/// A record of this thread on the job board, cleared when the wait that wrote it ends.
struct Noted<'a> {
    board: Option<&'a crate::board::Board>,
    rank: usize,
    writer: u64,
}

impl Drop for Noted<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.board {
            b.clear(self.rank, self.writer);
        }
    }
}

/// The progress layer of one process: the protocol core, the transport, and waiting.
pub(crate) struct Core {
    pub rank: usize,
    pub size: usize,
    pub t: Box<dyn Transport>,
    /// The transport may hold back the frames of nonblocking sends
    /// ([`Transport::holds_back`]): waits flush them first ([`Core::flush_held`]).
    holds_back: bool,
    pub tuning: Tuning,
    st: Lock<State>,
    /// Context ids of this process's communicators.
    pub contexts: crate::context::Contexts,
    /// The name of this process's host in the job.
    pub host: String,
    /// The host of every world rank, as a number (equal numbers: the same host); two-level
    /// collectives group ranks by it.
    pub host_ids: Vec<u32>,
    /// The host's job board (under the launcher): how ranks ended, what we are blocked in.
    pub board: Option<std::sync::Arc<crate::board::Board>>,
    /// When the transport first said each peer was gone while the board had no record of
    /// its end (see [`Core::peer_gone`]).
    gone_news: Mutex<Vec<Option<Instant>>>,
    /// How shared pulls went (see [`Core::fetch`]).
    pub shares: Shares,
    /// Looks (`test`, `iprobe`, ...) that found nothing and gave the core away.
    pub idle_yields: AtomicU64,
    /// The newest epoch of a communicator this process joined (see `crate::host_sync`).
    pub epochs: std::sync::atomic::AtomicU32,
    /// See [`Core::data_left`].
    data_left: Mutex<Vec<Option<crate::host_sync::Left>>>,
}

/// Counts of shared pulls: parts offered to senders that they wrote, parts taken back (or
/// that the sender could not write) and pulled here, parts this rank wrote for receivers.
#[derive(Default)]
pub(crate) struct Shares {
    pub written_by_peer: AtomicU64,
    pub pulled_back: AtomicU64,
    pub written_for_peer: AtomicU64,
}

impl Core {
    pub(crate) fn new(
        rank: usize,
        size: usize,
        t: Box<dyn Transport>,
        tuning: Tuning,
        host: String,
    ) -> Core {
        let cfg = ProtocolConfig {
            rank,
            size,
            max_message: tuning.max_message,
            rendezvous_threshold: tuning.rendezvous_threshold,
            can_pull: (0..size).map(|p| p != rank && t.can_pull(p)).collect(),
        };
        let st = State {
            proto: Protocol::new(cfg),
            dec: (0..size)
                .map(|p| FrameDecoder::new(p, tuning.max_message))
                .collect(),
            broken: vec![None; size],
            lost_told: vec![false; size],
            stream_waiters: vec![0; size],
            machines: Vec::new(),
            machines_looked: (Instant::now(), 0),
            landed: 0,
            staged_pulls: 0,
        };
        Core {
            rank,
            size,
            holds_back: t.holds_back(),
            t,
            st: Lock::new(st, tuning.fenced_lock),
            tuning,
            contexts: crate::context::Contexts::new(),
            host,
            host_ids: vec![0; size],
            board: None,
            gone_news: Mutex::new(vec![None; size]),
            shares: Shares::default(),
            idle_yields: AtomicU64::new(0),
            epochs: Default::default(),
            data_left: Default::default(),
        }
    }

    /// Sync word `index` of world rank `rank`, where this process shares memory with it
    /// (see `crate::host_sync`).
    pub(crate) fn sync_word(&self, rank: usize, index: usize) -> Option<&AtomicU64> {
        self.t.sync_word(rank, index)
    }

    /// Bytes of each of this rank's sync data buffers (0: none; see `crate::host_sync`).
    pub(crate) fn sync_data(&self) -> usize {
        self.t.sync_data()
    }

    /// Put `src` in this rank's sync data buffer `buf`, behind `header`.
    pub(crate) fn write_sync_data(&self, buf: usize, header: u64, src: &[u8]) -> bool {
        self.t.write_sync_data(buf, header, src)
    }

    /// Copy world rank `rank`'s sync data buffer `buf` into `dst`; its header.
    pub(crate) fn read_sync_data(&self, rank: usize, buf: usize, dst: &mut [u8]) -> Option<u64> {
        self.t.read_sync_data(rank, buf, dst)
    }

    /// Where each sync slot's last all-reduction left its operands, for the next
    /// communicator in the slot (see `crate::host_sync`).
    pub(crate) fn data_left(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<Option<crate::host_sync::Left>>> {
        self.data_left.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake world rank `rank` if it sleeps, after stores it may wait for.
    pub(crate) fn wake(&self, rank: usize) {
        if rank != self.rank {
            self.t.notify(rank);
        }
    }

    /// The host of every world rank (`RANKS_TEST_HOSTS` replaces it, to try two-level
    /// collectives on one machine).
    pub(crate) fn with_hosts(mut self, hosts: Vec<u32>) -> Core {
        let hosts = self.tuning.test_hosts.clone().unwrap_or(hosts);
        if hosts.len() == self.size {
            self.host_ids = hosts;
        }
        self
    }

    /// Use the host's job board (attaching this process to its slot).
    pub(crate) fn with_board(mut self, board: std::sync::Arc<crate::board::Board>) -> Core {
        board.attach(self.rank);
        self.board = Some(board);
        self
    }

    pub(crate) fn lock(&self) -> Guard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than the panic itself; the lock does not poison.
        self.st.lock()
    }

    /// Move bytes: flush queued frames, read and dispatch incoming frames, and make the
    /// pulls and copies the protocol asks for. Never blocks.
    pub(crate) fn progress(&self, st: &mut State) -> bool {
        self.progress_with(st, true)
    }

    /// `progress`; `urgent` false (a wait that has only just begun) leaves receives whose
    /// owners will pull them into their own buffers to those owners.
    fn progress_with(&self, st: &mut State, urgent: bool) -> bool {
        self.t.drive();
        let mut any = false;
        for peer in 0..self.size {
            if peer == self.rank || st.broken[peer].is_some() {
                continue;
            }
            any |= self.flush_peer(st, peer);
            if st.stream_waiters[peer] > 0 || !self.t.readable(peer) {
                continue;
            }
            let mut read_any = false;
            loop {
                let t = &self.t;
                let got = st.dec[peer].pump(|buf| {
                    let n = t.read(peer, buf)?;
                    read_any |= n > 0;
                    Ok(n)
                });
                match got {
                    Ok(Some(d)) => st.proto.handle_frame(peer, d),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(peer, error = %e, "dropping peer stream");
                        st.broken[peer] = Some(loss_detail(&e));
                        break;
                    }
                }
            }
            if read_any {
                self.t.read_done(peer);
                any = true;
            }
        }
        while let Some(job) = st.proto.claim_pull(urgent) {
            st.staged_pulls += 1;
            let bytes = self.pull_new(st, &job);
            st.proto.pull_done(&job, bytes);
            any = true;
        }
        while let Some(job) = st.proto.claim_push() {
            if self.t.push(job.peer, job.token, job.src, job.len, job.dst) {
                self.shares.written_for_peer.fetch_add(1, Relaxed);
            }
            any = true;
        }
        while let Some((peer, token, addr, len)) = st.proto.claim_copy() {
            let mut data = vec![0u8; HEADER_LEN + len as usize];
            let ok = self.t.read_own(addr, &mut data[HEADER_LEN..]);
            st.proto.copy_done(peer, token, ok.then_some(data));
            any = true;
        }
        if !st.machines.is_empty() {
            any |= self.advance_machines(st);
        }
        if any {
            // Frames the protocol queued while handling input (Fin, Nack, streams).
            for peer in 0..self.size {
                if peer != self.rank && st.broken[peer].is_none() {
                    self.flush_peer(st, peer);
                }
            }
        }
        any
    }

    /// Advance every nonblocking collective in flight; true if one finished (its request's
    /// owner may be asleep in another thread: it is woken).
    fn advance_machines(&self, st: &mut State) -> bool {
        let mut ms = std::mem::take(&mut st.machines);
        let mut finished = false;
        // Now and then, with at least one whole progress step since the last time.
        let (at, steps) = &mut st.machines_looked;
        *steps = steps.saturating_add(1);
        let look = *steps >= 2 && at.elapsed() >= crate::nbc::LOOK_EVERY;
        if look {
            (*at, *steps) = (Instant::now(), 0);
        }
        ms.retain_mut(|(m, slot)| match m.advance(self, st, look) {
            Some(out) => {
                *slot.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
                slot.done.store(true, std::sync::atomic::Ordering::SeqCst);
                finished = true;
                false
            }
            None => true,
        });
        ms.append(&mut st.machines);
        st.machines = ms;
        if finished {
            self.t.wake_self();
        }
        finished
    }

    /// After a look that does not wait (`test`, `iprobe`, the request sets' tests) found
    /// nothing: when this host's ranks outnumber its cores (waits do not spin then), give
    /// the core away, as MPI implementations do under oversubscription, so that a program
    /// polling in a loop does not hold the core the rank it waits for needs.
    pub(crate) fn idle(&self) {
        if self.tuning.spin.is_zero() {
            self.idle_yields.fetch_add(1, Relaxed);
            std::thread::yield_now();
        }
    }

    /// Register a nonblocking collective and give it its first turn.
    pub(crate) fn start_machine(
        &self,
        m: Box<dyn crate::nbc::Machine>,
        call: crate::diag::Call,
    ) -> std::sync::Arc<crate::nbc::Slot> {
        let slot = std::sync::Arc::new(crate::nbc::Slot {
            done: Default::default(),
            out: Default::default(),
            call,
        });
        let mut st = self.lock();
        st.machines.push((m, slot.clone()));
        self.advance_machines(&mut st);
        slot
    }

    /// Whether a frame's header is waiting in `peer`'s stream (a hint for a spinning wait,
    /// true only where the stream can be read in place, and always where only driving the
    /// transport brings bytes in; no lock of the core's needed).
    pub(crate) fn frame_waiting(&self, peer: usize) -> bool {
        // Where bytes come only as the waiting thread drives the transport, its next round
        // (which drives) is the only way to see more.
        self.t.driven(peer)
            || self
                .t
                .available(peer, HEADER_LEN)
                .is_some_and(|n| n >= HEADER_LEN)
    }

    /// Take the next frame of `peer`'s stream straight into `dst` when it is a whole data
    /// frame for `claim`, fits, and has the element type `typecode` (MPI order is kept: a
    /// blocking receive's caller checked that no posted receive or queued message comes
    /// first; a posted receive takes only a frame it is the oldest match for). No decoder,
    /// no allocation, no queues: the small-message fast path.
    #[inline]
    pub(crate) fn recv_from_stream(
        &self,
        st: &mut State,
        peer: usize,
        claim: Claim<'_>,
        typecode: u32,
        dst: &mut [u8],
    ) -> FromStream {
        if claim.waits() {
            if let Some(got) = self.continue_landing(st, peer, dst) {
                if let FromStream::Got(_) = got {
                    self.note_landed(st, claim);
                }
                return got;
            }
        }
        if !st.readable_in_place(peer) {
            return FromStream::No;
        }
        let pat = claim.pattern();
        if let Some(l) = Lander::new(peer, pat, typecode) {
            let ours = match claim.posted() {
                None => true,
                Some(id) => st.proto.claims(id, pat),
            };
            if ours {
                match self.take_landing(st, &l, claim, dst) {
                    Templated::Took(len) => return FromStream::Got(l.header(len)),
                    Templated::Empty => return FromStream::Empty,
                    Templated::Other => return FromStream::No,
                    Templated::Slow => {}
                }
            }
        }
        self.recv_from_stream_general(st, peer, claim, typecode, dst)
    }

    /// A [`Lander`] for posted receives of `pat` from `peer` of element type `typecode`,
    /// when their frames may be taken where they lie now.
    #[inline]
    pub(crate) fn lander(
        &self,
        st: &State,
        peer: usize,
        pat: &Pattern,
        typecode: u32,
    ) -> Option<Lander> {
        if !st.readable_in_place(peer) {
            return None;
        }
        Lander::new(peer, pat, typecode)
    }

    /// [`Core::recv_from_stream`]'s templated step for posted receive `id` of `l`'s pattern
    /// `pat`, one of a run of them (`wait_all`'s window of receives): the template made
    /// once for the run, and the landed message's length returned, not its header.
    /// `Templated::Other` when `id` is not the claimant of the next frame; `Slow` when the
    /// general path must take it.
    #[inline]
    pub(crate) fn land_next(
        &self,
        st: &mut State,
        l: &Lander,
        id: RecvId,
        pat: &Pattern,
        dst: &mut [u8],
    ) -> Templated {
        if !st.proto.claims(id, pat) {
            return Templated::Other;
        }
        self.take_landing(st, l, Claim::Posted(id, pat), dst)
    }

    /// A run of `l`'s frames taken one after another where the transport can
    /// ([`Transport::take_run`]): `each` gets the state and a frame's payload, and lands it
    /// ([`State::land_payload`]) or says no, which ends the run. How many landed; `None`
    /// where the transport takes them one at a time ([`Core::land_next`]).
    #[inline]
    pub(crate) fn take_run(
        &self,
        st: &mut State,
        l: &Lander,
        mut each: impl FnMut(&mut State, &[u8]) -> bool,
    ) -> Option<usize> {
        self.t
            .take_run(l.peer, &l.template, &mut |payload| each(st, payload))
    }

    /// The transport's templated take of `l`'s next frame into `dst`, for `claim`, whose
    /// frame it is; a frame taken is noted as landed.
    #[inline]
    fn take_landing(
        &self,
        st: &mut State,
        l: &Lander,
        claim: Claim<'_>,
        dst: &mut [u8],
    ) -> Templated {
        let got = self.t.take_templated(l.peer, &l.template, dst);
        if let Templated::Took(_) = got {
            self.note_landed(st, claim);
        }
        got
    }

    /// [`Core::recv_from_stream`] past its templated step: any pattern, a frame the
    /// transport cannot take in one step, or read piece by piece.
    #[inline(never)]
    fn recv_from_stream_general(
        &self,
        st: &mut State,
        peer: usize,
        claim: Claim<'_>,
        typecode: u32,
        dst: &mut [u8],
    ) -> FromStream {
        // Ours when it is a data frame for `claim` of type `typecode` that fits `dst`.
        let room = dst.len();
        let claimed = |h: &Header, st: &State| match claim.posted() {
            None => claim.pattern().matches_header(h),
            Some(id) => st.proto.claimed_by(h, id),
        };
        let fits = |h: &Header, st: &State| {
            h.kind == Kind::Data
                && claimed(h, st)
                && h.enc == Encoding::Raw
                && h.typecode == typecode
                && h.len as usize <= room
        };
        // In one step where the transport can (a small frame whole in one piece). The
        // frames a template describes were decided by the templated step already.
        let mut got = None;
        let mut pick = |hb: &[u8]| {
            let hb: &[u8; HEADER_LEN] = hb.try_into().ok()?;
            let h = Header::decode(hb, peer).ok().filter(|h| fits(h, st))?;
            got = Some(h);
            Some(h.len as usize)
        };
        match self.t.take_frame(peer, HEADER_LEN, dst, &mut pick) {
            TakeFrame::Took(_) => {
                let h = got.expect("a frame taken was picked");
                self.note_landed(st, claim);
                return FromStream::Got(h);
            }
            TakeFrame::Empty => return FromStream::Empty,
            TakeFrame::Left => return FromStream::No,
            TakeFrame::Slow => {}
        }
        let Some(avail) = self.t.available(peer, HEADER_LEN) else {
            return FromStream::No;
        };
        if avail < HEADER_LEN {
            return FromStream::Empty;
        }
        let mut hb = [0u8; HEADER_LEN];
        if self.t.peek(peer, &mut hb) < HEADER_LEN {
            return FromStream::Empty;
        }
        let Ok(h) = Header::decode(&hb, peer) else {
            return FromStream::No;
        };
        let len = h.len as usize;
        if !fits(&h, st) {
            return FromStream::No;
        }
        let avail = if avail < HEADER_LEN + len {
            // Counted only as far as the header so far.
            self.t.available(peer, HEADER_LEN + len).unwrap_or(0)
        } else {
            avail
        };
        if avail < HEADER_LEN + len {
            // Ours, not all here yet. Wait for the rest where the stream can hold the whole
            // frame: large eager messages then go from the ring straight into the caller's
            // buffer too, copied out by us while the sender copies in the next one. Where
            // it cannot, a receive its thread waits for reads it a part at a time as it comes.
            return if self.t.holds(peer, HEADER_LEN + len) {
                FromStream::Empty
            } else if claim.waits() && self.t.lands_in_parts(peer) {
                let got = self.start_landing(st, peer, h, dst);
                if let FromStream::Got(_) = got {
                    self.note_landed(st, claim);
                }
                got
            } else {
                FromStream::No
            };
        }
        let got = self.t.read(peer, &mut hb).and_then(|n| {
            let m = self.t.read(peer, &mut dst[..len])?;
            Ok(n + m)
        });
        match got {
            Ok(n) if n == HEADER_LEN + len => {
                self.t.read_done(peer);
                self.note_landed(st, claim);
                FromStream::Got(h)
            }
            // The bytes were there a moment ago and only we read this stream: a broken ring.
            _ => {
                st.broken[peer] = Some("its stream lost bytes under a read".into());
                FromStream::No
            }
        }
    }

    /// Start landing frame `h` (ours, its payload not all there yet) of `peer`'s stream in
    /// parts: its header and the payload bytes there now are read, the rest by
    /// [`Core::continue_landing`]; meanwhile the stream's decoder knows the frame as
    /// `dst`'s. Only for a receive whose thread waits for it ([`Claim::waits`]) and gives
    /// the frame back ([`Core::give_up_landing`]) if its wait fails.
    fn start_landing(&self, st: &mut State, peer: usize, h: Header, dst: &mut [u8]) -> FromStream {
        let len = h.len as usize;
        let mut hb = [0u8; HEADER_LEN];
        let got = self.t.read(peer, &mut hb).and_then(|n| {
            let m = self.t.read(peer, &mut dst[..len])?;
            Ok((n, m))
        });
        match got {
            Ok((HEADER_LEN, n)) => {
                self.t.read_done(peer);
                if n == len {
                    // The rest came meanwhile.
                    return FromStream::Got(h);
                }
                st.dec[peer].start_landing(h, n, landing_owner(dst));
                FromStream::Empty
            }
            Ok(_) => {
                st.broken[peer] = Some("its stream lost bytes under a read".into());
                FromStream::No
            }
            Err(e) => {
                st.broken[peer] = Some(loss_detail(&e));
                FromStream::No
            }
        }
    }

    /// Whether a frame of `peer`'s stream is being landed in parts into `dst`.
    pub(crate) fn landing_into(&self, st: &State, peer: usize, dst: &[u8]) -> bool {
        st.dec[peer]
            .landing()
            .is_some_and(|(_, _, owner)| owner == landing_owner(dst))
    }

    /// Read more of the frame landing in parts into `dst`: `Got` once it is all there,
    /// else `Empty`; `None` when no frame lands into `dst`.
    fn continue_landing(&self, st: &mut State, peer: usize, dst: &mut [u8]) -> Option<FromStream> {
        let (h, have, owner) = st.dec[peer].landing()?;
        if owner != landing_owner(dst) {
            return None;
        }
        match self.t.read(peer, &mut dst[have..h.len as usize]) {
            Ok(0) => Some(FromStream::Empty),
            Ok(n) => {
                self.t.read_done(peer);
                Some(if st.dec[peer].landed_more(n) {
                    FromStream::Got(h)
                } else {
                    FromStream::Empty
                })
            }
            Err(e) => {
                st.broken[peer] = Some(loss_detail(&e));
                Some(FromStream::No)
            }
        }
    }

    /// A receive whose wait failed gives back the frame it was landing in parts
    /// into `dst`: the bytes it has go into a buffer of the decoder's, which reads the rest
    /// and hands the message to matching as any other (nothing is lost, the stream moves
    /// on).
    pub(crate) fn give_up_landing(&self, st: &mut State, peer: usize, dst: &[u8]) {
        if let Some((_, have, owner)) = st.dec[peer].landing() {
            if owner == landing_owner(dst) {
                st.dec[peer].give_up_landing(&dst[..have]);
            }
        }
    }

    /// A frame went from the stream straight to `claim`: a posted receive leaves the
    /// matcher (and is counted for `Comm::landed_receives`).
    #[inline]
    fn note_landed(&self, st: &mut State, claim: Claim<'_>) {
        if let Some(id) = claim.posted() {
            st.proto.landed(id);
            st.landed += 1;
        }
    }

    /// Pull the matched rendezvous message of posted receive `id` into `dst` now, for the
    /// thread that owns the receive while it waits for another of its requests (rather than
    /// leave it to progress, which pulls into a new buffer and copies again). Only a raw
    /// message of element type `typecode` that fits `dst`; anything else stays for the
    /// receive's own wait to report. Its header once pulled; `None` if there was nothing to
    /// pull or the sender refused (it then streams the bytes, and the receive takes them
    /// as any message).
    pub(crate) fn pull_into(
        &self,
        st: &mut State,
        id: RecvId,
        typecode: u32,
        dst: &mut [u8],
    ) -> Option<Header> {
        let m = st.proto.unpulled(id)?;
        let len = m.len();
        if m.enc != Encoding::Raw || m.typecode != typecode || len > dst.len() as u64 {
            return None;
        }
        let Some(Taken::Pull(job, msg)) = st.proto.take(id, true) else {
            return None;
        };
        let pulled = self.fetch(&job, &mut dst[..len as usize], &mut |cts| {
            self.queue_frame(st, job.peer, cts);
            self.flush_peer(st, job.peer);
        });
        st.proto
            .pull_done(&job, if pulled { Ok(None) } else { Err(()) });
        self.flush_peer(st, job.peer);
        let h = Header::data(msg.ctx, msg.src, msg.tag, len, msg.enc, msg.typecode);
        pulled.then_some(h)
    }

    /// Pull a rendezvous payload into a new buffer (`Err` when refused).
    fn pull_new(&self, st: &mut State, job: &PullJob) -> std::result::Result<Option<Vec<u8>>, ()> {
        let mut v = Vec::new();
        if v.try_reserve_exact(job.len as usize).is_err() {
            return Err(()); // the stream's frame limit then reports it
        }
        v.resize(job.len as usize, 0);
        let pulled = self.fetch(job, &mut v, &mut |cts| {
            self.queue_frame(st, job.peer, cts);
            self.flush_peer(st, job.peer);
        });
        if pulled {
            Ok(Some(v))
        } else {
            Err(())
        }
    }

    /// Copy the bytes of rendezvous `job` from the sender's memory into `dst` (its exact
    /// length); false when the transport refuses. From `tuning.share_pull` bytes, the copy
    /// is shared: `send_cts` sends the sender a `Cts` offering it the second half (it
    /// writes it straight into `dst` if it is in the library to see the offer, so both
    /// ranks copy at once), we pull the first half, and then take the offer back unless the
    /// sender took it, pulling the second half too. A sender busy elsewhere costs nothing
    /// but the `Cts`.
    pub(crate) fn fetch(
        &self,
        job: &PullJob,
        dst: &mut [u8],
        send_cts: &mut dyn FnMut(Vec<u8>),
    ) -> bool {
        let pull = |addr: u64, dst: &mut [u8]| matches!(self.t.pull(job.peer, addr, dst), Ok(true));
        let share = self.tuning.share_pull;
        if share == 0 || dst.len() < share.max(8192) || !self.t.offer_push(job.peer, job.token) {
            return pull(job.addr, dst);
        }
        // Halves on a page boundary (the kernel copies page by page).
        let half = (dst.len() / 2) & !4095;
        let (mine, theirs) = dst.split_at_mut(half);
        send_cts(Protocol::cts_frame(
            job.token,
            half as u64,
            theirs.len() as u64,
            theirs.as_mut_ptr() as u64,
        ));
        let got = pull(job.addr, mine);
        // From here until the offer is settled the sender may be writing `theirs`: nothing
        // here touches it.
        match self.settle_offer(job.peer, job.token) {
            Offer::Written => {
                self.shares.written_by_peer.fetch_add(1, Relaxed);
                got
            }
            _ => {
                self.shares.pulled_back.fetch_add(1, Relaxed);
                got && pull(job.addr + half as u64, theirs)
            }
        }
    }

    /// Take back the offer of rendezvous `token` to `peer`, or, if `peer` took it, wait
    /// until it has written its part (it copies now, so this is short) or is gone.
    fn settle_offer(&self, peer: usize, token: u64) -> Offer {
        // Testing (`await_push`): an open offer is left open, as if the sender had taken it.
        let look = || {
            if self.tuning.await_push && self.t.offer_open(peer, token) {
                Offer::Taken
            } else {
                self.t.close_offer(peer, token)
            }
        };
        let start = Instant::now();
        let mut spins: u32 = 0;
        loop {
            let o = look();
            if o != Offer::Taken {
                return o;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || start.elapsed() < self.tuning.spin {
                std::hint::spin_loop();
                continue;
            }
            if let Some(why) = self.t.peer_gone(peer) {
                tracing::debug!(
                    peer,
                    token,
                    why,
                    "the sender went away while writing its part"
                );
                return Offer::Failed;
            }
            let mut end = Offer::Taken;
            self.t.wait(&[], Duration::from_millis(10), &mut || {
                end = look();
                end != Offer::Taken
            });
            if end != Offer::Taken {
                return end;
            }
        }
    }

    pub(crate) fn flush_peer(&self, st: &mut State, peer: usize) -> bool {
        self.write_queued(st, peer, false)
    }

    /// Send what the transport held back of nonblocking sends (see
    /// [`Transport::write_frame_later`]): every wait does this before it looks, so that a
    /// request complete at once (a small send written whole) does not leave its bytes
    /// behind while its owner computes.
    #[inline]
    pub(crate) fn flush_held(&self) {
        if self.holds_back {
            self.t.flush();
        }
    }

    /// [`Core::flush_peer`]; `later`: for a nonblocking send (the transport may hold the
    /// bytes back until the next wait).
    fn write_queued(&self, st: &mut State, peer: usize, later: bool) -> bool {
        let mut wrote = false;
        while let Some(front) = st.proto.out_front(peer) {
            match self.t.write(peer, front) {
                Ok(0) => break,
                Ok(n) => {
                    wrote = true;
                    st.proto.out_advance(peer, n);
                }
                Err(e) => {
                    st.proto.write_failed(peer, loss_detail(&e));
                    break;
                }
            }
        }
        if wrote && later {
            self.t.notify_later(peer);
        } else if wrote {
            self.t.notify(peer);
        }
        wrote
    }

    /// Send header + payload to `peer` as one frame, straight from `payload` when nothing is
    /// queued ahead; whatever the transport does not take now is copied into the queue.
    /// `later`: for a nonblocking send, whose frame the transport may hold back until the
    /// next wait ([`Transport::write_frame_later`]).
    #[inline(always)]
    pub(crate) fn write_frame(
        &self,
        st: &mut State,
        peer: usize,
        h: &Header,
        payload: &[u8],
        later: bool,
    ) -> SendId {
        if !st.proto.can_write_direct(peer) {
            return st.proto.queue_copy(peer, h, payload);
        }
        let written = if later {
            self.t.write_frame_later(peer, h, payload)
        } else {
            self.t.write_frame(peer, h, payload)
        };
        match written {
            Ok(n) => st.proto.wrote_direct(peer, h, payload, n),
            Err(e) => {
                st.proto.write_failed(peer, loss_detail(&e));
                st.proto.queue_copy(peer, h, payload)
            }
        }
    }

    /// Queue a whole frame for `peer` and try to write it now.
    pub(crate) fn queue_frame(&self, st: &mut State, peer: usize, bytes: Vec<u8>) -> SendId {
        let id = st.proto.queue_frame(peer, bytes);
        self.flush_peer(st, peer);
        id
    }

    /// [`Core::queue_frame`] for a nonblocking send (see [`Core::write_frame`]'s `later`).
    pub(crate) fn queue_frame_later(&self, st: &mut State, peer: usize, bytes: Vec<u8>) -> SendId {
        let id = st.proto.queue_frame(peer, bytes);
        self.write_queued(st, peer, true);
        id
    }

    /// Offer a rendezvous to `peer` and try to write the `Rts` now.
    pub(crate) fn offer(&self, st: &mut State, peer: usize, h: &Header, buf: RvBuf) -> SendId {
        let id = st.proto.offer(peer, h, buf);
        self.flush_peer(st, peer);
        id
    }

    /// Post a receive whose message the caller wants with its bytes here: the message at
    /// once, or the id to wait on with [`State::take_msg`].
    pub(crate) fn post_msg(&self, pat: Pattern) -> std::result::Result<Msg, RecvId> {
        self.lock().proto.post(pat, Want::Bytes)
    }

    /// Withdraw a receive (a message it matched goes back to matching).
    pub(crate) fn cancel(&self, id: RecvId) {
        self.lock().proto.cancel(id);
    }

    /// Why world rank `peer` can no longer take part, if it can't: the job board says it
    /// failed (or exited a while ago), or its transport says so.
    pub(crate) fn peer_gone(&self, peer: usize) -> Option<String> {
        let ended = self.ended(peer);
        if let Some((how, ago)) = ended {
            if how.failed() || ago >= EXIT_GRACE {
                return Some(how.to_string());
            }
        }
        let why = self.t.peer_gone(peer)?;
        if let Some((how, _)) = ended {
            return Some(how.to_string());
        }
        // The transport's news (a stream that ended as the peer began to exit) can come
        // before the launcher records the end. The launcher must hear of the peer's failure
        // before of any failure this news causes here (the job's exit code is the first
        // failure's), so give the board a moment.
        if self.board.is_some() {
            let mut news = self.gone_news.lock().unwrap_or_else(|p| p.into_inner());
            if news[peer].get_or_insert_with(Instant::now).elapsed() < BOARD_GRACE {
                return None;
            }
        }
        Some(why)
    }

    /// How a payload of `len` bytes to world rank `peer` goes.
    pub(crate) fn route(&self, st: &State, peer: usize, len: usize, sync: bool) -> Route {
        st.proto.route(peer, len, sync)
    }

    /// A message to ourselves: straight to matching, and wake our other threads.
    pub(crate) fn deliver_local(&self, st: &mut State, msg: Msg) {
        st.proto.send_self(msg);
        self.t.wake_self();
    }

    /// Where a send stands, as a wait condition: `Ok(true)` when done.
    pub(crate) fn send_finished(&self, st: &mut State, id: SendId) -> Result<bool> {
        match st.proto.poll_send(id) {
            SendPoll::Done => Ok(true),
            SendPoll::Pending | SendPoll::StreamYourself => Ok(false),
            SendPoll::Failed(detail) => {
                let rank = match id {
                    SendId::Frame { peer, .. } | SendId::Rendezvous { peer, .. } => peer,
                    SendId::Done => self.rank,
                };
                Err(Error::PeerLost { rank, detail })
            }
        }
    }

    /// Tell the protocol of peers that are gone, once each, when rendezvous may wait on them.
    /// `gone` was taken before the last progress step, so their last frames were read.
    fn tell_lost(&self, st: &mut State, gone: &[(usize, String)]) {
        for (p, why) in gone {
            if !st.lost_told[*p] {
                st.lost_told[*p] = true;
                st.proto.peer_lost(*p, why);
            }
        }
    }

    fn lost_peers(&self, st: &State) -> Vec<(usize, String)> {
        if !st.proto.rendezvous_pending() {
            return Vec::new();
        }
        (0..self.size)
            .filter(|&p| p != self.rank && !st.lost_told[p])
            .filter_map(|p| self.gone(st, p).map(|why| (p, why)))
            .collect()
    }

    /// How `peer` ended and how long ago, if the board knows.
    fn ended(&self, peer: usize) -> Option<(crate::board::Ending, Duration)> {
        self.board.as_ref()?.ended(peer)
    }

    /// `peer_gone`, or its stream to us broke. (A broken connection can be news before the
    /// board has the end: `settle` then waits for it, so the error says how the peer ended.)
    pub(crate) fn gone(&self, st: &State, peer: usize) -> Option<String> {
        self.peer_gone(peer).or_else(|| {
            let why = st.broken[peer]
                .clone()
                .or_else(|| st.proto.write_error(peer).map(str::to_string))?;
            Some(self.ended(peer).map_or(why, |(how, _)| how.to_string()))
        })
    }

    /// Look at the board until `found` gives something or `BOARD_GRACE` passes.
    fn await_board<T>(&self, found: impl FnMut(&crate::board::Board) -> Option<T>) -> Option<T> {
        self.await_board_for(BOARD_GRACE, found)
    }

    /// Look at the board until `found` gives something or `within` passes.
    fn await_board_for<T>(
        &self,
        within: Duration,
        mut found: impl FnMut(&crate::board::Board) -> Option<T>,
    ) -> Option<T> {
        let board = self.board.as_ref()?;
        let until = Instant::now() + within;
        loop {
            if let Some(t) = found(board) {
                return Some(t);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The first of `members` (world ranks) that failed: exited non-zero or was killed.
    fn failed_among(&self, members: &[usize]) -> Option<(usize, String)> {
        let board = self.board.as_ref()?;
        if board.generation() == 0 {
            return None; // nobody ended yet: the common case, one load
        }
        // The first to fail: the others most likely failed because of it.
        members
            .iter()
            .filter(|&&p| p != self.rank)
            .filter_map(|&p| {
                let (how, _) = board.ended(p).filter(|(how, _)| how.failed())?;
                Some((board.end_order(p), p, how.to_string()))
            })
            .min()
            .map(|(_, p, why)| (p, why))
    }

    /// The rank to blame when a collective step or any-source wait ends because `rank` left
    /// cleanly: a member that failed, if the news of it follows within moments (the peer
    /// most likely left because of it), else `rank` itself.
    fn root_cause(&self, watch: Watch<'_>, rank: usize, detail: String) -> (usize, String) {
        let members = match watch {
            Watch::Step { members, .. } | Watch::All(members) => members,
            _ => return (rank, detail),
        };
        if self.ended(rank).is_some_and(|(how, _)| how.failed()) {
            return (rank, detail);
        }
        self.await_board(|_| self.failed_among(members))
            .unwrap_or((rank, detail))
    }

    /// `PeerLost`, or `TruncatedFrame` when the peer went away in the middle of a frame.
    fn lost_error(&self, st: &State, rank: usize, detail: String) -> Error {
        if st.dec[rank].mid_frame() {
            return Error::TruncatedFrame {
                rank,
                detail: format!("its stream ended inside a frame ({detail})"),
            };
        }
        Error::PeerLost { rank, detail }
    }

    pub(crate) fn check_watch(&self, st: &State, watch: Watch<'_>) -> Option<(usize, String)> {
        match watch {
            Watch::Nobody => None,
            Watch::Peer(p) if p == self.rank => None,
            Watch::Peer(p) => self.gone(st, p).map(|why| (p, why)),
            // A failed member is the cause to name, even when the peer left because of it.
            Watch::Step { peer, members, .. } => self.failed_among(members).or_else(|| {
                self.gone(st, peer)
                    .filter(|_| peer != self.rank)
                    .map(|why| (peer, why))
            }),
            Watch::All(ps) => {
                if let Some(failed) = self.failed_among(ps) {
                    return Some(failed);
                }
                let mut first = None;
                for &p in ps {
                    if p == self.rank {
                        continue;
                    }
                    match self.gone(st, p) {
                        Some(why) => {
                            first.get_or_insert((p, why));
                        }
                        None => return None,
                    }
                }
                first
            }
        }
    }

    /// Make progress until `check` yields a value. Fails with `PeerLost` when the watched
    /// peer is gone and `check` still has nothing after everything it sent was read.
    pub(crate) fn wait_for<R>(
        &self,
        watch: Watch<'_>,
        check: impl FnMut(&Core, &mut State) -> Result<Option<R>>,
    ) -> Result<R> {
        let r = self.wait_until(watch, None, None, check)?;
        Ok(r.expect("no deadline"))
    }

    /// `wait_for` with an optional deadline (`Ok(None)` when it passes). `spin_cap` limits
    /// spinning below the tuned value (service threads and their clients use a short one,
    /// yield once and sleep); `None` waits the usual way.
    pub(crate) fn wait_until<R>(
        &self,
        watch: Watch<'_>,
        deadline: Option<Instant>,
        spin_cap: Option<Duration>,
        check: impl FnMut(&Core, &mut State) -> Result<Option<R>>,
    ) -> Result<Option<R>> {
        self.wait_loop(watch, deadline, spin_cap, None, check)
    }

    /// `wait_for` that also checks before each progress step (for a check that reads a
    /// stream progress leaves alone). While spinning, `ready` (cheap, lock-free) says when
    /// checking is worth taking the lock for; every 64 fruitless looks the lock is taken
    /// anyway, so the rest of the process keeps moving.
    pub(crate) fn wait_checking_first<R>(
        &self,
        watch: Watch<'_>,
        ready: &dyn Fn() -> bool,
        check: impl FnMut(&Core, &mut State) -> Result<Option<R>>,
    ) -> Result<R> {
        let r = self.wait_loop(watch, None, None, Some(ready), check)?;
        Ok(r.expect("no deadline"))
    }

    fn wait_loop<R>(
        &self,
        watch: Watch<'_>,
        deadline: Option<Instant>,
        spin_cap: Option<Duration>,
        ready: Option<&dyn Fn() -> bool>,
        check: impl FnMut(&Core, &mut State) -> Result<Option<R>>,
    ) -> Result<Option<R>> {
        self.wait_loop_inner(watch, deadline, spin_cap, ready, check)
            .map_err(|e| self.settle(e))
    }

    /// A lost peer's error once the job board has recorded how the peer ended: a broken
    /// connection can be news before the peer's node has seen the end, and the launcher
    /// must hear of that end before of any failure it causes here (the first failure sets
    /// the job's exit code). Waits up to `BOARD_GRACE`; call without the state lock.
    pub(crate) fn settle(&self, e: Error) -> Error {
        let Error::PeerLost { rank, detail } = e else {
            return e;
        };
        let detail = self
            .await_board(|b| b.ended(rank).map(|(how, _)| how.to_string()))
            .unwrap_or(detail);
        Error::PeerLost { rank, detail }
    }

    /// Wait up to `within` for the board to record that world rank `rank` ended (whether
    /// it does). For news a peer sends as it fails (a pipe end dropped while its thread
    /// panics): the launcher must hear of the peer's failure before of any failure the
    /// news causes here. Call without the state lock.
    pub(crate) fn await_end(&self, rank: usize, within: Duration) -> bool {
        self.await_board_for(within, |b| b.ended(rank).map(drop))
            .is_some()
    }

    fn wait_loop_inner<R>(
        &self,
        watch: Watch<'_>,
        deadline: Option<Instant>,
        spin_cap: Option<Duration>,
        ready: Option<&dyn Fn() -> bool>,
        mut check: impl FnMut(&Core, &mut State) -> Result<Option<R>>,
    ) -> Result<Option<R>> {
        let check_first = ready.is_some();
        let spin = spin_cap.map_or(self.tuning.spin, |c| c.min(self.tuning.spin));
        let max_yields = if spin_cap.is_some() {
            1
        } else {
            self.tuning.yields
        };
        let mut start: Option<Instant> = None;
        let mut yields = 0;
        // What this thread is blocked in goes on the board when it first sleeps here.
        let mut noted = Noted {
            board: None,
            rank: self.rank,
            writer: 0,
        };
        let mut iter: u32 = 0;
        // Peer loss is looked for now and then while spinning, and after every sleep; not on
        // the first look, which most waits need no more than.
        let mut woke = false;
        loop {
            {
                let mut st = self.lock();
                // Peer loss is checked before progress (so everything the peer sent before it
                // went is read first), and only now and then while spinning.
                let looked = iter % 64 == 63 || std::mem::take(&mut woke);
                let (lost, gone) = if looked {
                    (self.check_watch(&st, watch), self.lost_peers(&st))
                } else {
                    (None, Vec::new())
                };
                if check_first {
                    if let Some(r) = check(self, &mut st)? {
                        return Ok(Some(r));
                    }
                }
                // Until this wait has spun for a while it leaves receives with buffers of their
                // own to their owners; after that it pulls whatever is matched.
                self.progress_with(&mut st, yields > 0);
                self.tell_lost(&mut st, &gone);
                if let Some(r) = check(self, &mut st)? {
                    return Ok(Some(r));
                }
                if let Some((rank, detail)) = lost {
                    drop(st);
                    let (rank, detail) = self.root_cause(watch, rank, detail);
                    return Err(self.lost_error(&self.lock(), rank, detail));
                }
                if looked {
                    if let Some(e) = collective_failed(&mut st, watch) {
                        return Err(e);
                    }
                }
            }
            let now_past = |d: Instant| Instant::now() >= d;
            if deadline.is_some_and(now_past) {
                return Ok(None);
            }
            iter = iter.wrapping_add(1);
            // Spin (checking the clock every 32 rounds) unless spinning is off, as it is when
            // ranks outnumber cores: then give the core away after every fruitless round.
            if !spin.is_zero()
                && (!iter.is_multiple_of(32)
                    || start.get_or_insert_with(Instant::now).elapsed() < spin)
            {
                if let Some(ready) = ready {
                    for _ in 0..64 {
                        if ready() {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                }
                continue;
            }
            if yields < max_yields {
                yields += 1;
                std::thread::yield_now();
                continue;
            }
            if noted.board.is_none() {
                if let (Some(board), Some(rec)) = (&self.board, crate::diag::current()) {
                    noted.writer = crate::diag::writer();
                    board.publish(self.rank, noted.writer, &rec);
                    noted.board = Some(board);
                }
            }
            let want_write: Vec<usize> = {
                let st = self.lock();
                (0..self.size)
                    .filter(|&p| st.proto.wants_write(p))
                    .collect()
            };
            let mut outcome: Option<Result<R>> = None;
            let mut nap = self.tuning.nap;
            if let Some(d) = deadline {
                nap = nap.min(d.saturating_duration_since(Instant::now()));
            }
            self.t.wait(&want_write, nap, &mut || {
                let mut st = self.lock();
                self.progress(&mut st);
                match check(self, &mut st) {
                    Ok(None) => false,
                    other => {
                        outcome = other.transpose();
                        true
                    }
                }
            });
            if let Some(r) = outcome {
                return r.map(Some);
            }
            iter = 0;
            woke = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::{Board, Ending};

    /// A transport whose every peer's stream has ended.
    struct AllGone;

    impl Transport for AllGone {
        fn name(&self) -> &'static str {
            "all-gone"
        }
        fn write(&self, _peer: usize, _buf: &[u8]) -> Result<usize> {
            Ok(0)
        }
        fn read(&self, _peer: usize, _buf: &mut [u8]) -> Result<usize> {
            Ok(0)
        }
        fn readable(&self, _peer: usize) -> bool {
            false
        }
        fn notify(&self, _peer: usize) {}
        fn wake_self(&self) {}
        fn wait(&self, _w: &[usize], _t: Duration, _prepare: &mut dyn FnMut() -> bool) {}
        fn peer_gone(&self, _peer: usize) -> Option<String> {
            Some("its stream ended".into())
        }
    }

    /// Rank 1's stream as a script: bytes that are there from the start, and bytes that
    /// arrive when rank 0 first goes to sleep. Notes whether a sleep began with bytes
    /// still unread (a sleep only a timeout would end).
    #[derive(Default)]
    struct Script {
        stream: Mutex<std::collections::VecDeque<u8>>,
        at_first_sleep: Mutex<Option<Vec<u8>>>,
        slept_unread: std::sync::atomic::AtomicBool,
        /// Blocking receives land frames not all there yet in parts (as over QUIC).
        in_parts: bool,
        /// Rank 1 has gone.
        gone: std::sync::atomic::AtomicBool,
        /// Bytes come in only as the process drives the transport (as over QUIC): these
        /// come at the drive that makes `drives` reach the count.
        driven: Option<(usize, Vec<u8>)>,
        drives: std::sync::atomic::AtomicUsize,
        /// Calls of `available`.
        looks: std::sync::atomic::AtomicUsize,
        /// Frames of nonblocking sends may be held back (as over QUIC): what the engine
        /// asked for is counted, `notify` (at once), `later` (held back) and `flush`.
        holds: bool,
        nows: std::sync::atomic::AtomicUsize,
        laters: std::sync::atomic::AtomicUsize,
        flushes: std::sync::atomic::AtomicUsize,
        /// Frames of a template are taken in runs (as from a shared-memory ring): the runs
        /// and the frames they took are counted.
        runs: Option<std::sync::atomic::AtomicUsize>,
        run_frames: std::sync::atomic::AtomicUsize,
    }

    impl Transport for std::sync::Arc<Script> {
        fn name(&self) -> &'static str {
            "script"
        }
        fn write(&self, _peer: usize, buf: &[u8]) -> Result<usize> {
            Ok(buf.len())
        }
        fn read(&self, _peer: usize, buf: &mut [u8]) -> Result<usize> {
            let mut s = self.stream.lock().unwrap();
            let n = buf.len().min(s.len());
            for (d, b) in buf.iter_mut().zip(s.drain(..n)) {
                *d = b;
            }
            Ok(n)
        }
        fn readable(&self, _peer: usize) -> bool {
            !self.stream.lock().unwrap().is_empty()
        }
        fn in_place(&self, _peer: usize) -> bool {
            true
        }

        fn available(&self, _peer: usize, _want: usize) -> Option<usize> {
            self.looks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(self.stream.lock().unwrap().len())
        }
        fn driven(&self, _peer: usize) -> bool {
            self.driven.is_some()
        }
        fn drive(&self) {
            let n = self
                .drives
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if let Some((at, bytes)) = &self.driven {
                if n == *at {
                    self.stream.lock().unwrap().extend(bytes);
                }
            }
        }
        fn peek(&self, _peer: usize, buf: &mut [u8]) -> usize {
            let s = self.stream.lock().unwrap();
            let n = buf.len().min(s.len());
            for (d, b) in buf.iter_mut().zip(s.iter()) {
                *d = *b;
            }
            n
        }
        fn notify(&self, _peer: usize) {
            self.nows.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn write_frame_later(&self, peer: usize, h: &Header, payload: &[u8]) -> Result<usize> {
            if !self.holds {
                return self.write_frame(peer, h, payload);
            }
            self.notify_later(peer);
            Ok(HEADER_LEN + payload.len())
        }
        fn notify_later(&self, peer: usize) {
            if !self.holds {
                return self.notify(peer);
            }
            self.laters
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn holds_back(&self) -> bool {
            self.holds
        }
        fn flush(&self) {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn wake_self(&self) {}
        fn wait(&self, _w: &[usize], _t: Duration, prepare: &mut dyn FnMut() -> bool) {
            if let Some(bytes) = self.at_first_sleep.lock().unwrap().take() {
                self.stream.lock().unwrap().extend(bytes);
            }
            if !prepare() && !self.stream.lock().unwrap().is_empty() {
                self.slept_unread
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        fn lands_in_parts(&self, _peer: usize) -> bool {
            self.in_parts
        }
        fn take_run(
            &self,
            _peer: usize,
            tmpl: &DataTemplate,
            each: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Option<usize> {
            use std::sync::atomic::Ordering::SeqCst;
            self.runs.as_ref()?.fetch_add(1, SeqCst);
            let mut s = self.stream.lock().unwrap();
            let mut n = 0;
            loop {
                let v: Vec<u8> = s.iter().copied().collect();
                let Some(h) = v
                    .get(..HEADER_LEN)
                    .and_then(|hb| tmpl.header(hb.try_into().ok()?))
                else {
                    break;
                };
                let Some(payload) = v.get(HEADER_LEN..HEADER_LEN + h.len as usize) else {
                    break;
                };
                if !each(payload) {
                    break;
                }
                s.drain(..HEADER_LEN + payload.len());
                n += 1;
            }
            self.run_frames.fetch_add(n, SeqCst);
            Some(n)
        }
        fn peer_gone(&self, _peer: usize) -> Option<String> {
            self.gone
                .load(std::sync::atomic::Ordering::SeqCst)
                .then(|| "it ended".into())
        }
    }

    fn frame(tag: i32, payload: &[u8]) -> Vec<u8> {
        let tc = crate::comm::typecode::<u8>();
        let h = Header::data(0, 1, tag, payload.len() as u64, Encoding::Raw, tc);
        [&h.encode()[..], payload].concat()
    }

    /// Over a transport that may hold frames back (QUIC), nonblocking sends (of slices and
    /// of serde values) ask for it, and every wait (`wait`, `wait_all`, `wait_any`,
    /// `wait_some`) flushes before it looks, even on a request complete at once; a blocking
    /// send never asks. Where nothing is held back, no wait flushes.
    #[test]
    fn nonblocking_sends_may_be_held_back_until_the_next_wait() {
        use std::sync::atomic::Ordering::SeqCst;
        for holds in [true, false] {
            let script = std::sync::Arc::new(Script {
                holds,
                ..Script::default()
            });
            let tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
            let core = Core::new(0, 2, Box::new(script.clone()), tuning, "h".into());
            let w = crate::comm::Comm::world(std::sync::Arc::new(core));
            let counts = || {
                (
                    script.nows.load(SeqCst),
                    script.laters.load(SeqCst),
                    script.flushes.load(SeqCst),
                )
            };
            let data = [7u8; 8];
            let a = w.isend_slice(1, 1, &data).unwrap();
            let b = w.isend(1, 2, &5u32).unwrap();
            let (c, d) = (w.isend(1, 3, &6u32).unwrap(), w.isend(1, 4, &7u32).unwrap());
            let held = usize::from(holds);
            assert_eq!(counts(), (4 * (1 - held), 4 * held, 0), "holds {holds}");
            a.wait().unwrap();
            assert_eq!(counts().2, held, "a wait flushes");
            crate::wait_all([b]).unwrap();
            assert_eq!(counts().2, 2 * held, "wait_all flushes");
            let mut set = vec![c];
            assert!(crate::wait_any(&mut set).is_some());
            assert_eq!(counts().2, 3 * held, "wait_any flushes");
            let mut set = vec![d];
            assert_eq!(crate::wait_some(&mut set).len(), 1);
            assert_eq!(counts().2, 4 * held, "wait_some flushes");
            w.send_slice(1, 5, &data).unwrap();
            assert_eq!(
                counts().0,
                4 * (1 - held) + 1,
                "a blocking send leaves at once"
            );
            assert_eq!(counts().1, 4 * held);
        }
    }

    /// Rank 0 of two over a `Script` whose waiters never spin or yield: at its first sleep,
    /// rank 1's frames for tag 2 ("them") and then tag 1 ("mine") arrive.
    fn sleepy_world_with_two_frames_at_first_sleep() -> (std::sync::Arc<Script>, crate::Comm) {
        let script = std::sync::Arc::new(Script::default());
        *script.at_first_sleep.lock().unwrap() =
            Some([frame(2, b"them"), frame(1, b"mine")].concat());
        let mut tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
        (tuning.spin, tuning.yields) = (Duration::ZERO, 0);
        let core = Core::new(0, 2, Box::new(script.clone()), tuning, "h".into());
        (script, crate::comm::Comm::world(std::sync::Arc::new(core)))
    }

    /// A blocking receive that waits on its peer's stream directly (progress leaves the
    /// stream to it) and finds another message's frame there when it wakes must read the
    /// stream before it sleeps again: the frame it wants may be right behind, and nothing
    /// would ring for it (before: a sleep until the 50 ms nap ended, at every such frame).
    #[test]
    fn a_blocking_receive_reads_a_frame_for_others_before_it_sleeps_again() {
        let (script, w) = sleepy_world_with_two_frames_at_first_sleep();
        let mut buf = [0u8; 4];
        let st = w.recv_into(1, 1, &mut buf).unwrap();
        assert_eq!((st.tag, &buf), (1, b"mine"));
        assert!(
            !script
                .slept_unread
                .load(std::sync::atomic::Ordering::SeqCst),
            "went to sleep with a whole frame unread"
        );
        // The other message waits for its receive.
        let st = w.recv_into(1, 2, &mut buf).unwrap();
        assert_eq!((st.tag, &buf), (2, b"them"));
    }

    /// The same for a posted receive waited on: it takes its own frame from the stream,
    /// and reads another's before it sleeps.
    #[test]
    fn a_posted_receive_reads_a_frame_for_others_before_it_sleeps_again() {
        let (script, w) = sleepy_world_with_two_frames_at_first_sleep();
        let (mut mine, mut them) = ([0u8; 4], [0u8; 4]);
        let st = w.irecv_into(1, 1, &mut mine).unwrap().wait().unwrap();
        assert_eq!((st.tag, &mine), (1, b"mine"));
        assert!(!script
            .slept_unread
            .load(std::sync::atomic::Ordering::SeqCst));
        let st = w.irecv_into(1, 2, &mut them).unwrap().wait().unwrap();
        assert_eq!((st.tag, &them), (2, b"them"));
    }

    /// Rank 0 of two over a `Script` whose stream from rank 1 is empty until the test adds
    /// frames to it (`arrive`).
    fn scripted_world() -> (crate::Comm, std::sync::Arc<Script>) {
        scripted_world_with(false)
    }

    /// [`scripted_world`] over a transport that takes frames in runs (`runs`), counting
    /// them ([`Transport::take_run`]), or one at a time.
    fn scripted_world_with(runs: bool) -> (crate::Comm, std::sync::Arc<Script>) {
        let script = std::sync::Arc::new(Script {
            runs: runs.then(Default::default),
            ..Script::default()
        });
        let mut tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
        (tuning.spin, tuning.yields) = (Duration::ZERO, 0);
        let core = Core::new(0, 2, Box::new(script.clone()), tuning, "h".into());
        (crate::comm::Comm::world(std::sync::Arc::new(core)), script)
    }

    fn arrive(script: &Script, frames: &[Vec<u8>]) {
        script.stream.lock().unwrap().extend(frames.concat());
    }

    /// How a test's receive is made and waited for.
    #[derive(Clone, Copy, Debug)]
    enum Receive {
        /// `recv_into`.
        Blocking,
        /// `irecv_into`, then its `wait`.
        Posted,
        /// `irecv_into`, waited for by `wait_all`.
        InSet,
    }

    const RECEIVES: [Receive; 3] = [Receive::Blocking, Receive::Posted, Receive::InSet];

    /// A receive (made `how`) on another thread, from rank 1 with tag 1, of a 5000-byte
    /// frame that arrives in parts over a stream where frames land in parts; the test has
    /// seen it take the header and the first 100 bytes into its buffer. Returns the world's
    /// core, the stream, the frame and the receive.
    #[allow(clippy::type_complexity)]
    fn landing_in_parts(
        how: Receive,
    ) -> (
        std::sync::Arc<Core>,
        std::sync::Arc<Script>,
        Vec<u8>,
        std::thread::JoinHandle<Result<(crate::Status, Vec<u8>)>>,
    ) {
        let script = std::sync::Arc::new(Script {
            in_parts: true,
            ..Script::default()
        });
        let mut tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
        (tuning.spin, tuning.yields) = (Duration::ZERO, 0);
        let core = std::sync::Arc::new(Core::new(
            0,
            2,
            Box::new(script.clone()),
            tuning,
            "h".into(),
        ));
        let w = crate::comm::Comm::world(core.clone());
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let recv = std::thread::spawn(move || {
            let mut buf = vec![0u8; 5000];
            let st = match how {
                Receive::Blocking => w.recv_into(1, 1, &mut buf)?,
                Receive::Posted => w.irecv_into(1, 1, &mut buf)?.wait()?,
                Receive::InSet => crate::wait_all([w.irecv_into(1, 1, &mut buf)?])?[0],
            };
            Ok((st, buf))
        });
        let bytes = frame(1, &payload);
        arrive(&script, &[bytes[..HEADER_LEN + 100].to_vec()]);
        until_landed(&core, 100, how);
        assert!(
            script.stream.lock().unwrap().is_empty(),
            "the receive read what there was of its frame into its buffer"
        );
        (core, script, bytes, recv)
    }

    /// Wait until a frame of rank 1's lands in parts and has `have` payload bytes (for the
    /// receive made `how`).
    fn until_landed(core: &Core, have: usize, how: Receive) {
        let start = std::time::Instant::now();
        while core.lock().dec[1].landing().map(|(_, h, _)| h) != Some(have) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{how:?}: never landed {have}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Over a stream that does not hold a frame whole (QUIC's), a receive its thread waits
    /// for (blocking, a posted one's `wait`, `wait_all`) reads a large frame straight into
    /// its buffer as its parts arrive, not through a buffer of the decoder's that it copies
    /// afterwards.
    #[test]
    fn a_waited_receive_lands_a_large_frame_in_parts_as_it_arrives() {
        for how in RECEIVES {
            let (core, script, bytes, recv) = landing_in_parts(how);
            arrive(&script, &[bytes[HEADER_LEN + 100..3000].to_vec()]);
            until_landed(&core, 3000 - HEADER_LEN, how);
            arrive(&script, &[bytes[3000..].to_vec()]);
            let (st, buf) = recv.join().unwrap().unwrap();
            assert_eq!((st.source, st.tag, st.len), (1, 1, 5000), "{how:?}");
            assert_eq!(buf, bytes[HEADER_LEN..], "{how:?}");
            let st = core.lock();
            assert!(st.dec[1].landing().is_none() && !st.dec[1].mid_frame());
            assert!(!st.proto.has_posted(), "{how:?}: left posted");
        }
    }

    /// While a posted receive's frame lands in parts, another thread's receive from the
    /// same sender neither takes from the middle of that frame nor waits it out: it is
    /// posted behind, and gets the next frame.
    #[test]
    fn a_receive_behind_a_frame_landing_in_parts_gets_the_next_frame() {
        let (core, script, bytes, recv) = landing_in_parts(Receive::Posted);
        let w = crate::comm::Comm::world(core.clone());
        let mut next = [0u8; 4];
        let r = w.irecv_into(1, 2, &mut next).unwrap();
        let r = r
            .test()
            .unwrap()
            .map(|_| ())
            .expect_err("nothing for it yet");
        assert_eq!(core.lock().dec[1].landing().map(|(_, h, _)| h), Some(100));
        arrive(
            &script,
            &[bytes[HEADER_LEN + 100..].to_vec(), frame(2, b"next")],
        );
        let (st, buf) = recv.join().unwrap().unwrap();
        assert_eq!((st.tag, &buf[..]), (1, &bytes[HEADER_LEN..]));
        let st = r.wait().unwrap();
        assert_eq!((st.tag, &next), (2, b"next"));
    }

    /// Where bytes come in only as the waiting thread drives the transport, a spinning
    /// blocking receive drives at every round instead of looking at the empty stream
    /// between rounds (64 looks a round, when no look could see anything new).
    #[test]
    fn a_wait_on_a_driven_transport_drives_rather_than_looks() {
        let script = std::sync::Arc::new(Script {
            driven: Some((200, frame(1, b"late"))),
            ..Script::default()
        });
        let mut tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
        (tuning.spin, tuning.yields) = (Duration::from_secs(5), 0);
        let core = Core::new(0, 2, Box::new(script.clone()), tuning, "h".into());
        let w = crate::comm::Comm::world(std::sync::Arc::new(core));
        let mut buf = [0u8; 4];
        let st = w.recv_into(1, 1, &mut buf).unwrap();
        assert_eq!((st.tag, &buf), (1, b"late"));
        let drives = script.drives.load(std::sync::atomic::Ordering::SeqCst);
        let looks = script.looks.load(std::sync::atomic::Ordering::SeqCst);
        assert!(drives >= 200);
        assert!(
            looks < 4 * drives,
            "{looks} looks at the stream for {drives} drives"
        );
    }

    /// A receive whose sender goes while its frame lands in parts fails (the stream ended
    /// inside a frame) and gives the frame back to the decoder: nothing waits on a landing
    /// that nobody will finish.
    #[test]
    fn a_receive_whose_sender_goes_mid_frame_fails_and_gives_the_frame_back() {
        for how in RECEIVES {
            let (core, script, _, recv) = landing_in_parts(how);
            script.gone.store(true, std::sync::atomic::Ordering::SeqCst);
            let err = recv.join().unwrap().unwrap_err();
            assert!(
                matches!(err, crate::Error::TruncatedFrame { rank: 1, .. }),
                "{how:?}: {err}"
            );
            let st = core.lock();
            assert!(st.dec[1].landing().is_none(), "{how:?}: given back");
            assert!(
                st.dec[1].mid_frame(),
                "{how:?}: the decoder holds the frame's first bytes"
            );
            assert!(!st.proto.has_posted(), "{how:?}: left posted");
        }
    }

    /// Posted receives that are tested, or waited on in a set, take their message straight
    /// from the stream into their buffer when it is next there, as a plain wait does; and
    /// never out of MPI's order: a younger receive does not take what an older one matches.
    #[test]
    fn tests_and_request_sets_land_posted_receives_from_the_stream_in_order() {
        let (w, script) = scripted_world();
        let mut buf = [0u8; 4];
        let r = w.irecv_into(1, 1, &mut buf).unwrap();
        arrive(&script, &[frame(1, b"abcd")]);
        let st = r.test().unwrap().ok().unwrap();
        assert_eq!((st.tag, st.len, &buf), (1, 4, b"abcd"));
        assert_eq!(w.landed_receives(), 1, "test() landed it");

        // Sets: the frame for the second receive comes first. It lands; the frame behind
        // it goes through the queues to the first receive, which test_any, lowest index
        // first, hands out first.
        let (w, script) = scripted_world();
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut set = vec![
            w.irecv_into(1, 1, &mut a).unwrap(),
            w.irecv_into(1, 2, &mut b).unwrap(),
        ];
        arrive(&script, &[frame(2, b"two!"), frame(1, b"one!")]);
        let (i, st) = crate::test_any(&mut set).unwrap();
        assert_eq!((i, st.unwrap().tag), (0, 1));
        let (i, st) = crate::wait_any(&mut set).unwrap();
        assert_eq!((i, st.unwrap().tag), (0, 2));
        drop(set);
        assert_eq!((&a, &b), (b"one!", b"two!"));
        assert_eq!(w.landed_receives(), 1, "the first frame landed");

        let (w, script) = scripted_world();
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut set = vec![
            w.irecv_into(1, 2, &mut a).unwrap(),
            w.irecv_into(1, 1, &mut b).unwrap(),
        ];
        arrive(&script, &[frame(1, b"3333"), frame(2, b"4444")]);
        let mut got = crate::wait_some(&mut set);
        got.extend(crate::test_some(&mut set));
        let tags: Vec<_> = got
            .iter()
            .map(|(i, r)| (*i, r.as_ref().unwrap().tag))
            .collect();
        assert!(set.is_empty(), "{tags:?}");
        drop(set);
        assert_eq!((&a, &b), (b"4444", b"3333"));
        assert_eq!(w.landed_receives(), 2, "both landed: {tags:?}");

        // Two receives for the same tag: the frame is the older one's, even when only the
        // younger one is tested.
        let (w, script) = scripted_world();
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let older = w.irecv_into(1, 1, &mut a).unwrap();
        let younger = w.irecv_into(1, 1, &mut b).unwrap();
        arrive(&script, &[frame(1, b"old!")]);
        let younger = younger
            .test()
            .unwrap()
            .expect_err("the younger one gets nothing");
        assert_eq!(older.wait().unwrap().tag, 1);
        drop(younger);
        assert_eq!((&a, &b), (b"old!", &[0u8; 4]));
    }

    /// `wait_all` lands receives whose frames are next in the stream, in MPI's order: a
    /// frame that is not the next receive's goes through the queues to its own receive.
    #[test]
    fn wait_all_lands_receives_in_order_and_queues_the_rest() {
        let (w, script) = scripted_world();
        let mut bufs = [[0u8; 4]; 3];
        let reqs: Vec<_> = bufs
            .iter_mut()
            .zip(1..)
            .map(|(b, tag)| w.irecv_into(1, tag, b).unwrap())
            .collect();
        arrive(
            &script,
            &[frame(1, b"1111"), frame(3, b"3333"), frame(2, b"2222")],
        );
        let tags: Vec<i32> = crate::wait_all(reqs)
            .unwrap()
            .iter()
            .map(|st| st.tag)
            .collect();
        assert_eq!(tags, [1, 2, 3]);
        assert_eq!(bufs, [*b"1111", *b"2222", *b"3333"]);
        // Tag 3's frame was in tag 2's way: progress took both into the queues.
        assert_eq!(w.landed_receives(), 1, "tag 1 landed");
    }

    /// A window of receives lands in runs of one pattern and element type (`land_run`),
    /// each receive taking the next frame in turn; where the pattern or the type changes a
    /// new run starts, and a frame no receive of the window matches goes through the
    /// queues without taking another's place.
    #[test]
    fn wait_all_lands_a_window_in_runs_in_order() {
        for runs in [false, true] {
            window_lands_in_runs_in_order(runs);
        }
    }

    /// [`wait_all_lands_a_window_in_runs_in_order`], over a transport that takes frames
    /// one at a time (`runs` false) or in runs ([`Transport::take_run`]).
    fn window_lands_in_runs_in_order(runs: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let scripted_world = || scripted_world_with(runs);
        let (w, script) = scripted_world();
        let mut bytes = [[0u8; 4]; 5];
        let mut word = [0u32; 1];
        let mut reqs: Vec<_> = bytes
            .iter_mut()
            .zip([1, 1, 1, 2, 2])
            .map(|(b, tag)| w.irecv_into(1, tag, b).unwrap())
            .collect();
        reqs.push(w.irecv_into(1, 1, &mut word).unwrap());
        let u32_frame = {
            let tc = crate::comm::typecode::<u32>();
            let h = Header::data(0, 1, 1, 4, Encoding::Raw, tc);
            [&h.encode()[..], &7u32.to_le_bytes()].concat()
        };
        arrive(
            &script,
            &[
                frame(1, b"aaaa"),
                frame(1, b"bbbb"),
                frame(1, b"cccc"),
                frame(2, b"dddd"),
                frame(2, b"eeee"),
                u32_frame,
            ],
        );
        let got: Vec<(i32, usize)> = crate::wait_all(reqs)
            .unwrap()
            .iter()
            .map(|st| (st.tag, st.len))
            .collect();
        assert_eq!(got, [(1, 4), (1, 4), (1, 4), (2, 4), (2, 4), (1, 4)]);
        assert_eq!(bytes, [*b"aaaa", *b"bbbb", *b"cccc", *b"dddd", *b"eeee"]);
        assert_eq!(word, [7]);
        assert_eq!(w.landed_receives(), 6, "every frame landed");
        if runs {
            // Tag 1's three, tag 2's two, then the u32 one: a run each.
            assert_eq!(script.run_frames.load(SeqCst), 6);
            assert_eq!(script.runs.as_ref().unwrap().load(SeqCst), 3);
        }

        // A frame for tag 7 between tag 1's: the run stops there; the frame waits in the
        // queues for its own receive, and tag 1's frames reach their receives in order.
        let (w, script) = scripted_world();
        let mut bytes = [[0u8; 4]; 3];
        let reqs: Vec<_> = bytes
            .iter_mut()
            .map(|b| w.irecv_into(1, 1, b).unwrap())
            .collect();
        arrive(
            &script,
            &[
                frame(1, b"1st!"),
                frame(7, b"zzzz"),
                frame(1, b"2nd!"),
                frame(1, b"3rd!"),
            ],
        );
        assert_eq!(crate::wait_all(reqs).unwrap().len(), 3);
        assert_eq!(bytes, [*b"1st!", *b"2nd!", *b"3rd!"]);
        assert!(w.landed_receives() >= 1, "the first one landed");
        let mut other = [0u8; 4];
        assert_eq!(w.recv_into(1, 7, &mut other).unwrap().tag, 7);
        assert_eq!(&other, b"zzzz");

        // A frame longer than its receive's buffer ends the run: that receive reports
        // `Truncated`, and the frame stays for a later receive (the window's last receive
        // is withdrawn with the error); the frame before it landed.
        let (w, script) = scripted_world();
        let mut bytes = [[0u8; 4]; 3];
        let reqs: Vec<_> = bytes
            .iter_mut()
            .map(|b| w.irecv_into(1, 1, b).unwrap())
            .collect();
        arrive(
            &script,
            &[frame(1, b"aaaa"), frame(1, b"longer!!"), frame(1, b"cccc")],
        );
        let err = crate::wait_all(reqs).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        assert_eq!(bytes[0], *b"aaaa");
        assert_eq!(w.landed_receives(), 1);
        if runs {
            assert_eq!(script.run_frames.load(SeqCst), 1);
        }
        let (mut long, mut last) = ([0u8; 8], [0u8; 4]);
        assert_eq!(w.recv_into(1, 1, &mut long).unwrap().len, 8);
        assert_eq!(&long, b"longer!!");
        w.recv_into(1, 1, &mut last).unwrap();
        assert_eq!(&last, b"cccc");
    }

    /// The calls that look at a request set once (`test_*`, and `wait_some` and `wait_any`
    /// between their sleeps) land a window of receives of one pattern in a run too, and
    /// the receive left over lands later from its own frame.
    #[test]
    fn request_sets_land_a_window_in_runs() {
        use std::sync::atomic::Ordering::SeqCst;
        let (w, script) = scripted_world_with(true);
        let counts = || {
            (
                script.runs.as_ref().unwrap().load(SeqCst),
                script.run_frames.load(SeqCst),
            )
        };
        let mut bytes = [[0u8; 4]; 4];
        let mut reqs: Vec<_> = bytes
            .iter_mut()
            .map(|b| w.irecv_into(1, 1, b).unwrap())
            .collect();
        arrive(
            &script,
            &[frame(1, b"aaaa"), frame(1, b"bbbb"), frame(1, b"cccc")],
        );
        let done: Vec<usize> = crate::wait_some(&mut reqs)
            .into_iter()
            .map(|(i, r)| {
                assert_eq!(r.unwrap().len, 4);
                i
            })
            .collect();
        assert_eq!(done, [0, 1, 2]);
        // One run took the three frames; a second, for the fourth receive, found nothing.
        assert_eq!(counts(), (2, 3));
        assert!(
            crate::test_all(&mut reqs).is_none(),
            "the fourth is not here"
        );
        arrive(&script, &[frame(1, b"dddd")]);
        let last = crate::test_all(&mut reqs).expect("the fourth is here");
        assert_eq!(last[0].as_ref().unwrap().len, 4);
        assert_eq!(counts().1, 4);
        drop(reqs);
        assert_eq!(bytes, [*b"aaaa", *b"bbbb", *b"cccc", *b"dddd"]);
        assert_eq!(w.landed_receives(), 4);
    }

    /// A collective's step ends with `CollectiveFailed` when another member's notice that
    /// it left that collective with an error arrives (before the notice, it waited for
    /// ever), and only for that collective: a notice for a later one leaves the step to its
    /// own message.
    #[test]
    fn a_collective_step_ends_at_another_members_failure_notice() {
        use crate::collectives::{ctag, notice_tag, seq_of};
        let coll_frame = |tag: i32, payload: &[u8]| {
            let tc = if tag == notice_tag(seq_of(tag)) {
                crate::collectives::NOTICE_TYPECODE
            } else {
                crate::comm::typecode::<u8>()
            };
            let h = Header::data(1, 1, tag, payload.len() as u64, Encoding::Raw, tc);
            [&h.encode()[..], payload].concat()
        };
        let script = std::sync::Arc::new(Script::default());
        *script.at_first_sleep.lock().unwrap() =
            Some(coll_frame(notice_tag(0), b"operands differ"));
        let mut tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
        (tuning.spin, tuning.yields) = (Duration::ZERO, 0);
        let core = Core::new(0, 2, Box::new(script.clone()), tuning, "h".into());
        let w = crate::comm::Comm::world(std::sync::Arc::new(core));
        let mut buf = [0u8; 4];
        match w.c_recv_into(1, ctag(0, 0), &mut buf) {
            Err(Error::CollectiveFailed { rank, detail }) => {
                assert_eq!((rank, detail.as_str()), (1, "operands differ"));
            }
            other => panic!("expected CollectiveFailed, got {other:?}"),
        }
        // Collective 2's notice, then collective 1's message: the step of 1 gets its message.
        arrive(
            &script,
            &[
                coll_frame(notice_tag(2), b"later"),
                coll_frame(ctag(1, 0), b"data"),
            ],
        );
        let st = w.c_recv_into(1, ctag(1, 0), &mut buf).unwrap();
        assert_eq!((st.len, &buf), (4, b"data"));
    }

    /// A sender's side of shared pulls, scripted: every pull copies `fill`; an offer is
    /// "taken" and stays so for `taken_for` looks, then ends as `end`, or the peer is gone.
    struct Offers {
        fill: u8,
        taken_for: std::sync::atomic::AtomicU32,
        end: Offer,
        gone: bool,
        pulls: Mutex<Vec<usize>>,
    }

    impl Transport for std::sync::Arc<Offers> {
        fn name(&self) -> &'static str {
            "offers"
        }
        fn write(&self, _peer: usize, buf: &[u8]) -> Result<usize> {
            Ok(buf.len())
        }
        fn read(&self, _peer: usize, _buf: &mut [u8]) -> Result<usize> {
            Ok(0)
        }
        fn readable(&self, _peer: usize) -> bool {
            false
        }
        fn notify(&self, _peer: usize) {}
        fn wake_self(&self) {}
        fn wait(&self, _w: &[usize], _t: Duration, prepare: &mut dyn FnMut() -> bool) {
            prepare();
        }
        fn peer_gone(&self, _peer: usize) -> Option<String> {
            self.gone.then(|| "killed".into())
        }
        fn pull(&self, _peer: usize, _addr: u64, dst: &mut [u8]) -> Result<bool> {
            dst.fill(self.fill);
            self.pulls.lock().unwrap().push(dst.len());
            Ok(true)
        }
        fn offer_push(&self, _peer: usize, _token: u64) -> bool {
            true
        }
        fn close_offer(&self, _peer: usize, _token: u64) -> Offer {
            let left = &self.taken_for;
            if left.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return self.end;
            }
            left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            Offer::Taken
        }
    }

    /// `Core::fetch` of a 256 KiB pull from a scripted sender: the `Cts` frames it sent,
    /// the lengths it pulled itself, and the counts it kept.
    fn fetch_from(t: Offers) -> (bool, Vec<Vec<u8>>, Vec<usize>, (u64, u64)) {
        let mut tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
        tuning.spin = Duration::ZERO;
        let t = std::sync::Arc::new(t);
        let core = Core::new(0, 2, Box::new(t.clone()), tuning, "h".into());
        let job = PullJob {
            id: 1,
            ctx: 0,
            peer: 1,
            addr: 0x1000,
            len: 256 << 10,
            token: 5,
        };
        let mut dst = vec![0u8; 256 << 10];
        let mut sent = Vec::new();
        let ok = core.fetch(&job, &mut dst, &mut |f| sent.push(f));
        let pulls = t.pulls.lock().unwrap().clone();
        let sh = &core.shares;
        let counts = (
            sh.written_by_peer.load(Relaxed),
            sh.pulled_back.load(Relaxed),
        );
        (ok, sent, pulls, counts)
    }

    fn offers(taken_for: u32, end: Offer, gone: bool) -> Offers {
        Offers {
            fill: 7,
            taken_for: taken_for.into(),
            end,
            gone,
            pulls: Mutex::new(Vec::new()),
        }
    }

    /// A large pull offers the sender its second half and pulls the first; the second half
    /// is pulled here too unless the sender wrote it. A sender that took the offer is
    /// waited for, and one that dies while writing is not waited for forever.
    #[test]
    fn a_shared_pull_pulls_what_the_sender_did_not_write() {
        let half = 128 << 10;
        // Written by the sender (after it was seen writing a while).
        let (ok, sent, pulls, counts) = fetch_from(offers(200, Offer::Written, false));
        assert!(ok);
        assert_eq!(pulls, vec![half], "only the first half pulled here");
        assert_eq!(counts, (1, 0));
        assert_eq!(sent.len(), 1);
        let h = Header::decode(sent[0][..HEADER_LEN].try_into().unwrap(), 1).unwrap();
        assert_eq!((h.kind, h.aux), (Kind::Cts, 5));
        let word =
            |i: usize| u64::from_le_bytes(sent[0][HEADER_LEN + i..][..8].try_into().unwrap());
        assert_eq!(
            (word(0), word(8)),
            (half as u64, half as u64),
            "offset, length"
        );
        // Taken back, or the sender's write failed: pulled here.
        for end in [Offer::Withdrawn, Offer::Failed] {
            let (ok, sent, pulls, counts) = fetch_from(offers(0, end, false));
            assert!(ok);
            assert_eq!(pulls, vec![half, half], "{end:?}");
            assert_eq!((sent.len(), counts), (1, (0, 1)));
        }
        // The sender died with the offer taken: the wait ends (the pull of its half is then
        // what reports the loss).
        let (_, _, pulls, counts) = fetch_from(offers(u32::MAX, Offer::Written, true));
        assert_eq!((pulls, counts), (vec![half, half], (0, 1)));
        // Small pulls are not shared.
        let core_small = {
            let t = std::sync::Arc::new(offers(0, Offer::Written, false));
            let tuning = Tuning::resolve(&crate::config::Tuning::default(), 2);
            Core::new(0, 2, Box::new(t), tuning, "h".into())
        };
        let job = PullJob {
            id: 1,
            ctx: 0,
            peer: 1,
            addr: 0,
            len: 64 << 10,
            token: 1,
        };
        let mut sent = 0;
        assert!(core_small.fetch(&job, &mut vec![0u8; 64 << 10], &mut |_| sent += 1));
        assert_eq!(sent, 0);
    }

    #[test]
    fn the_rendezvous_threshold_follows_the_rings_unless_set() {
        let cfg = crate::config::Tuning::default();
        // A quarter of the rings: 1 MiB up to 8 ranks, 512 KiB up to 11, 256 KiB up to 16.
        assert_eq!(Tuning::resolve(&cfg, 2).rendezvous_threshold, 256 << 10);
        assert_eq!(Tuning::resolve(&cfg, 8).rendezvous_threshold, 256 << 10);
        assert_eq!(Tuning::resolve(&cfg, 9).rendezvous_threshold, 128 << 10);
        assert_eq!(Tuning::resolve(&cfg, 11).rendezvous_threshold, 128 << 10);
        assert_eq!(Tuning::resolve(&cfg, 12).rendezvous_threshold, 64 << 10);
        assert_eq!(Tuning::resolve(&cfg, 16).rendezvous_threshold, 64 << 10);
        assert_eq!(Tuning::resolve(&cfg, 17).rendezvous_threshold, 32 << 10);
        // Small rings (64 ranks: 64 KiB each): a 48 KiB message would not fit twice; no
        // lower than 32 KiB.
        assert_eq!(Tuning::resolve(&cfg, 64).rendezvous_threshold, 32 << 10);
        let set = crate::config::Tuning {
            rendezvous_threshold: Some(1),
            ..cfg
        };
        assert_eq!(Tuning::resolve(&set, 2).rendezvous_threshold, 1);
    }

    /// A peer whose stream ended is not taken for gone before the launcher records its
    /// end (so the launcher hears of its failure before of any it causes here), unless the
    /// record is slow to come; with the record, the error says how the peer ended.
    #[test]
    fn a_lost_stream_waits_for_the_launcher_to_record_the_end() {
        let p = std::env::temp_dir().join(format!("ranks-gone-news-{}", std::process::id()));
        let board = std::sync::Arc::new(Board::create(&p, 3).unwrap());
        let tuning = Tuning::resolve(&crate::config::Tuning::default(), 3);
        let core = Core::new(0, 3, Box::new(AllGone), tuning, "h".into()).with_board(board.clone());
        assert_eq!(core.peer_gone(1), None, "gone before the board knows");
        board.set_ended(1, Ending::Code(101));
        assert_eq!(
            core.peer_gone(1).as_deref(),
            Some("it exited with code 101")
        );
        // No record: after the grace, the transport's word.
        assert_eq!(core.peer_gone(2), None);
        std::thread::sleep(BOARD_GRACE);
        assert_eq!(core.peer_gone(2).as_deref(), Some("its stream ended"));
    }
}
