//! Nonblocking collectives as state machines that the progress engine advances: no thread
//! per call, so thousands can be in flight.
//!
//! A collective is compiled, on each rank, into a [`Schedule`]: rounds of sends and
//! receives on the communicator's collective context, each round followed by an optional
//! local step (combining what arrived, say). An [`Exec`] runs a schedule against a [`Net`]:
//! it starts a round's sends and posts its receives, and moves on when they are all done.
//! Registered with the core, every running schedule is advanced by every progress step of
//! the process (MPI's progress rule: any call that waits advances every pending operation),
//! so a rank blocked in a receive still plays its part in a pending collective.
//!
//! Schedules are plain data and [`Net`] is a small trait, so the algorithms are tested
//! without processes, over a simulated network stepped in random orders.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bytemuck::Pod;

use crate::collectives::{ctag, offsets};
use crate::comm::{typecode, Comm, Request};
use crate::error::{Error, Result};
use crate::op::Op;
use crate::p2p::poll_borrowed_send;
use crate::progress::{Core, State};
use crate::protocol::matching::{Body, Msg, Pattern, RecvId};
use crate::protocol::{Route, RvBuf, SendId, Want};
use crate::wire::{Encoding, Header, HEADER_LEN};

/// A receive just posted: its bytes are here already, or it waits.
pub(crate) enum Posted {
    Here(Vec<u8>),
    Wait(RecvId),
}

/// Where a schedule's messages go (peers are ranks of the communicator).
pub(crate) trait Net {
    fn send(&mut self, peer: usize, tag: i32, data: &[u8]) -> Result<SendId>;
    /// Whether the send is complete (its buffer no longer needed).
    fn sent(&mut self, id: SendId) -> Result<bool>;
    fn post(&mut self, peer: usize, tag: i32) -> Result<Posted>;
    /// The bytes of a posted receive, once they are here.
    fn take(&mut self, id: RecvId) -> Result<Option<Vec<u8>>>;
    /// Why `peer` can no longer take part, if it can't (asked now and then while waiting).
    fn lost(&mut self, peer: usize) -> Option<Error>;
    /// Withdraw a posted receive (the collective failed).
    fn cancel(&mut self, id: RecvId);
}

type Local<T> = Box<dyn FnOnce(&mut [Vec<T>]) -> Result<()> + Send>;

/// One message of a round: to or from `peer`, with `tag`, items `range` of buffer `buf`.
struct Move {
    peer: usize,
    tag: i32,
    buf: usize,
    range: Range<usize>,
}

/// Sends and receives that may all be in flight at once, then a local step.
struct Round<T> {
    sends: Vec<Move>,
    recvs: Vec<Move>,
    then: Option<Local<T>>,
}

/// A collective compiled for one rank: its buffers and its rounds.
pub(crate) struct Schedule<T> {
    seq: u32,
    bufs: Vec<Vec<T>>,
    rounds: VecDeque<Round<T>>,
}

impl<T: Pod + Send> Schedule<T> {
    /// A schedule for collective number `seq`, over buffers `bufs` (0 is the result's).
    pub(crate) fn new(seq: u32, bufs: Vec<Vec<T>>) -> Schedule<T> {
        Schedule {
            seq,
            bufs,
            rounds: VecDeque::new(),
        }
    }

    /// Start a new round (it begins once the previous one is complete).
    pub(crate) fn round(&mut self) -> &mut Self {
        self.rounds.push_back(Round {
            sends: Vec::new(),
            recvs: Vec::new(),
            then: None,
        });
        self
    }

    fn last(&mut self) -> &mut Round<T> {
        if self.rounds.is_empty() {
            self.round();
        }
        self.rounds.back_mut().expect("a round")
    }

    /// In this round, send items `range` of buffer `buf` to `peer`, as step `step`.
    pub(crate) fn send(
        &mut self,
        peer: usize,
        step: u32,
        buf: usize,
        range: Range<usize>,
    ) -> &mut Self {
        let tag = ctag(self.seq, step);
        self.last().sends.push(Move {
            peer,
            tag,
            buf,
            range,
        });
        self
    }

    /// In this round, receive step `step` from `peer` into items `range` of buffer `buf`
    /// (exactly that many).
    pub(crate) fn recv(
        &mut self,
        peer: usize,
        step: u32,
        buf: usize,
        range: Range<usize>,
    ) -> &mut Self {
        let tag = ctag(self.seq, step);
        self.last().recvs.push(Move {
            peer,
            tag,
            buf,
            range,
        });
        self
    }

    /// After this round's messages: `f` on the buffers.
    pub(crate) fn then(
        &mut self,
        f: impl FnOnce(&mut [Vec<T>]) -> Result<()> + Send + 'static,
    ) -> &mut Self {
        let r = self.last();
        assert!(r.then.is_none(), "one local step per round");
        r.then = Some(Box::new(f));
        self
    }
}

/// A schedule running: the round in flight and what is left.
pub(crate) struct Exec<T> {
    sched: Schedule<T>,
    sends: Vec<SendId>,
    /// Receives of the round in flight: `None` once landed.
    recvs: Vec<(Option<RecvId>, Move)>,
    then: Option<Local<T>>,
    started: bool,
    /// A rank found gone at the last look while a receive from it waited. It counts as lost
    /// only if it is still gone, and the receive still waiting, at the next look: progress
    /// steps between the two looks read everything it sent before it left.
    suspect: Option<usize>,
}

impl<T: Pod + Send> Exec<T> {
    pub(crate) fn new(sched: Schedule<T>) -> Exec<T> {
        Exec {
            sched,
            sends: Vec::new(),
            recvs: Vec::new(),
            then: None,
            started: false,
            suspect: None,
        }
    }

    /// Advance as far as possible without waiting: `Ok(true)` once every round is done.
    /// `look`: also look for ranks that are gone among those a receive waits on (the
    /// caller does so now and then, with progress steps in between).
    pub(crate) fn advance(&mut self, net: &mut dyn Net, look: bool) -> Result<bool> {
        loop {
            if self.started && !self.round_done(net)? {
                if look {
                    let waiting: Vec<usize> = self
                        .recvs
                        .iter()
                        .filter(|(id, _)| id.is_some())
                        .map(|(_, m)| m.peer)
                        .collect();
                    let mut seen = None;
                    for peer in waiting {
                        if let Some(e) = net.lost(peer) {
                            // A member's notice that it failed is taken when seen: final.
                            if self.suspect == Some(peer)
                                || matches!(e, Error::CollectiveFailed { .. })
                            {
                                return Err(e);
                            }
                            seen = seen.or(Some(peer));
                        }
                    }
                    self.suspect = seen;
                }
                return Ok(false);
            }
            self.started = true;
            if let Some(f) = self.then.take() {
                f(&mut self.sched.bufs)?;
            }
            let Some(round) = self.sched.rounds.pop_front() else {
                return Ok(true);
            };
            self.sends.clear();
            self.recvs.clear();
            for m in round.sends {
                let data: &[u8] = bytemuck::cast_slice(&self.sched.bufs[m.buf][m.range]);
                self.sends.push(net.send(m.peer, m.tag, data)?);
            }
            for m in round.recvs {
                match net.post(m.peer, m.tag)? {
                    Posted::Here(bytes) => self.land(&m, &bytes)?,
                    Posted::Wait(id) => self.recvs.push((Some(id), m)),
                }
            }
            self.then = round.then;
        }
    }

    /// Whether every message of the round in flight is done (landing what arrived).
    fn round_done(&mut self, net: &mut dyn Net) -> Result<bool> {
        let mut done = true;
        for s in &mut self.sends {
            if *s != SendId::Done {
                if net.sent(*s)? {
                    *s = SendId::Done;
                } else {
                    done = false;
                }
            }
        }
        for i in 0..self.recvs.len() {
            let Some(id) = self.recvs[i].0 else { continue };
            match net.take(id)? {
                Some(bytes) => {
                    self.recvs[i].0 = None;
                    let m = Move {
                        peer: self.recvs[i].1.peer,
                        tag: self.recvs[i].1.tag,
                        buf: self.recvs[i].1.buf,
                        range: self.recvs[i].1.range.clone(),
                    };
                    self.land(&m, &bytes)?;
                }
                None => done = false,
            }
        }
        Ok(done)
    }

    fn land(&mut self, m: &Move, bytes: &[u8]) -> Result<()> {
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut self.sched.bufs[m.buf][m.range.clone()]);
        if dst.len() != bytes.len() {
            return Err(Error::InvalidArgument(format!(
                "nonblocking collective: rank {} contributed {} bytes where {} were expected \
                 (do all ranks pass the same counts?)",
                m.peer,
                bytes.len(),
                dst.len()
            )));
        }
        dst.copy_from_slice(bytes);
        Ok(())
    }

    /// Withdraw the receives still posted (the collective failed: they must not take
    /// messages meant for later ones).
    pub(crate) fn abandon(&mut self, net: &mut dyn Net) {
        for (id, _) in self.recvs.iter_mut() {
            if let Some(id) = id.take() {
                net.cancel(id);
            }
        }
    }

    /// The buffers, once done.
    pub(crate) fn into_bufs(self) -> Vec<Vec<T>> {
        self.sched.bufs
    }
}

// ----- on the real engine -----------------------------------------------------------------

/// What a finished collective hands its request: the boxed `Result` of its output.
pub(crate) type Outcome = Box<dyn std::any::Any + Send>;

/// A running collective as the core keeps it: advanced by every progress step.
pub(crate) trait Machine: Send {
    /// Advance as far as possible; the outcome once the collective is over. `look`: also
    /// look for lost ranks (the core asks now and then, with progress steps in between).
    fn advance(&mut self, core: &Core, st: &mut State, look: bool) -> Option<Outcome>;
}

/// Where a running collective's request finds its outcome.
pub(crate) struct Slot {
    pub(crate) done: AtomicBool,
    pub(crate) out: Mutex<Option<Outcome>>,
    /// Which collective it is, for hang diagnosis and traces of its waits.
    pub(crate) call: crate::diag::Call,
}

/// What makes a collective's output from its schedule's buffers.
type Output<T, O> = Box<dyn FnOnce(Vec<Vec<T>>) -> O + Send>;

/// A schedule running on a communicator, with what makes its output from its buffers.
struct OnComm<T, O> {
    exec: Option<Exec<T>>,
    ctx: u32,
    rank: usize,
    members: Arc<[usize]>,
    typecode: u32,
    type_name: &'static str,
    seq: u32,
    finish: Option<Output<T, O>>,
}

/// How often running collectives look for lost ranks (the first look only suspects).
pub(crate) const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

impl<T: Pod + Send, O: Send + 'static> Machine for OnComm<T, O> {
    fn advance(&mut self, core: &Core, st: &mut State, look: bool) -> Option<Outcome> {
        let mut net = CoreNet {
            core,
            st,
            ctx: self.ctx,
            rank: self.rank,
            members: &self.members,
            typecode: self.typecode,
            type_name: self.type_name,
            seq: self.seq,
        };
        let exec = self.exec.as_mut()?;
        let r: Result<O> = match exec.advance(&mut net, look) {
            Ok(false) => return None,
            Ok(true) => {
                let bufs = self.exec.take().expect("running").into_bufs();
                Ok((self.finish.take().expect("once"))(bufs))
            }
            Err(e) => {
                exec.abandon(&mut net);
                self.exec = None;
                let e = crate::collectives::in_collective(e);
                net.fail_together(&e);
                Err(e)
            }
        };
        Some(Box::new(r))
    }
}

/// The engine seen from a schedule: collective-context messages on one communicator,
/// with the state lock held (schedules run inside progress steps).
struct CoreNet<'a> {
    core: &'a Core,
    st: &'a mut State,
    ctx: u32,
    rank: usize,
    members: &'a [usize],
    typecode: u32,
    /// The element type's name (for a `TypeMismatch`).
    type_name: &'static str,
    /// The collective's number (for failure notices, see `Comm::fail_together`).
    seq: u32,
}

impl Net for CoreNet<'_> {
    fn send(&mut self, peer: usize, tag: i32, data: &[u8]) -> Result<SendId> {
        self.send_as(peer, tag, data, self.typecode)
    }

    fn sent(&mut self, id: SendId) -> Result<bool> {
        poll_borrowed_send(self.core, self.st, id, &[])
    }

    fn post(&mut self, peer: usize, tag: i32) -> Result<Posted> {
        let pat = Pattern {
            ctx: self.ctx,
            src: peer as i32,
            tag,
        };
        match self.st.proto.post(pat, Want::Bytes) {
            Ok(msg) => Ok(Posted::Here(self.bytes(msg)?)),
            Err(id) => Ok(Posted::Wait(id)),
        }
    }

    fn take(&mut self, id: RecvId) -> Result<Option<Vec<u8>>> {
        match self.st.take_msg(id) {
            Some(msg) => self.bytes(msg).map(Some),
            None => Ok(None),
        }
    }

    fn lost(&mut self, peer: usize) -> Option<Error> {
        // As a blocking collective's step: a failed member is the cause to name, even when
        // the peer left because of it; another member's notice that it failed ends it too.
        let abort = crate::collectives::notice_pattern(self.ctx, self.seq);
        let watch = crate::progress::Watch::Step {
            peer: self.members[peer],
            members: self.members,
            abort: Some(abort),
        };
        if let Some((rank, detail)) = self.core.check_watch(self.st, watch) {
            return Some(Error::PeerLost { rank, detail });
        }
        crate::progress::collective_failed(self.st, watch)
    }

    fn cancel(&mut self, id: RecvId) {
        self.st.proto.cancel(id);
    }
}

impl CoreNet<'_> {
    /// Send `data` to member `peer` with `tag`, as elements of type code `typecode`.
    fn send_as(&mut self, peer: usize, tag: i32, data: &[u8], typecode: u32) -> Result<SendId> {
        let world = self.members[peer];
        let h = Header::data(
            self.ctx,
            self.rank as u32,
            tag,
            data.len() as u64,
            Encoding::Raw,
            typecode,
        );
        let st = &mut *self.st;
        Ok(match self.core.route(st, world, data.len(), false) {
            Route::SelfSend => {
                self.core
                    .deliver_local(st, Msg::new(&h, Body::Eager(data.to_vec())));
                SendId::Done
            }
            Route::Rendezvous => {
                let mut buf = vec![0u8; HEADER_LEN + data.len()];
                buf[HEADER_LEN..].copy_from_slice(data);
                self.core.offer(st, world, &h, RvBuf::Owned(buf))
            }
            Route::Eager => self.core.write_frame(st, world, &h, data, false),
        })
    }

    /// After this rank's own finding that the operands do not match (see
    /// `Comm::fail_together`), tell every other member.
    fn fail_together(&mut self, e: &Error) {
        let Some(why) = crate::collectives::notice_of(e) else {
            return;
        };
        let tag = crate::collectives::notice_tag(self.seq);
        let me = self.rank;
        for peer in (0..self.members.len()).filter(|&p| p != me) {
            let code = crate::collectives::NOTICE_TYPECODE;
            let _ = self.send_as(peer, tag, why.as_bytes(), code);
        }
    }

    fn bytes(&self, msg: Msg) -> Result<Vec<u8>> {
        if msg.enc != Encoding::Raw || msg.typecode != self.typecode {
            return Err(Error::TypeMismatch {
                rank: msg.src as usize,
                tag: msg.tag,
                expected: self.type_name,
                detail: "its elements are of another type".into(),
            });
        }
        match msg.body {
            Body::Eager(v) => Ok(v),
            Body::Failed(e) => Err(*e),
            Body::Remote { .. } | Body::Landed(_) => Err(Error::InvalidArgument(
                "a collective's message came without its bytes".into(),
            )),
        }
    }
}

impl Comm {
    /// Run `sched` as a nonblocking collective: registered with the core, advanced by every
    /// progress step; its request's result is `finish` of the buffers.
    fn start<T: Pod + Send, O: Send + 'static>(
        &self,
        (op, root): (&'static str, Option<usize>),
        sched: Schedule<T>,
        finish: impl FnOnce(Vec<Vec<T>>) -> O + Send + 'static,
    ) -> Request<'static, O> {
        let call = crate::diag::Call {
            op,
            comm: self.ctx,
            seq: u64::from(sched.seq),
            root,
        };
        let m = OnComm {
            exec: Some(Exec::new(sched)),
            ctx: self.coll_ctx(),
            rank: self.rank(),
            members: self.members.clone(),
            typecode: typecode::<T>(),
            type_name: std::any::type_name::<T>(),
            seq: call.seq as u32,
            finish: Some(Box::new(finish)),
        };
        let slot = self.core.start_machine(Box::new(m), call);
        Request::running(self.clone(), slot)
    }

    /// The first buffer of a finished schedule: the result of most collectives.
    fn first<T>(mut bufs: Vec<Vec<T>>) -> Vec<T> {
        bufs.swap_remove(0)
    }

    /// Nonblocking barrier: the request completes once every rank has called it.
    pub fn ibarrier(&self) -> Request<'static, ()> {
        let seq = self.next_seq();
        self.start(
            ("ibarrier", None),
            barrier(seq, self.rank(), self.size()),
            |_| (),
        )
    }

    /// Nonblocking broadcast: the request gives `root`'s `buf` on every rank (all ranks pass
    /// buffers of the same length).
    pub fn ibroadcast_slice<T: Pod + Send>(
        &self,
        root: usize,
        buf: Vec<T>,
    ) -> Result<Request<'static, Vec<T>>> {
        self.check_root(root)?;
        let seq = self.next_seq();
        Ok(self.start(
            ("ibroadcast_slice", Some(root)),
            bcast(seq, root, self.rank(), self.size(), buf),
            Self::first,
        ))
    }

    /// Nonblocking reduction to `root`: its request gives `Some(result)` there, `None`
    /// elsewhere.
    pub fn ireduce<T: Pod + Send, O: Op<T> + Send + 'static>(
        &self,
        root: usize,
        buf: Vec<T>,
        op: O,
    ) -> Result<Request<'static, Option<Vec<T>>>> {
        self.check_root(root)?;
        let seq = self.next_seq();
        let me = self.rank();
        let s = reduce(seq, root, me, self.size(), buf, Arc::new(op));
        Ok(self.start(("ireduce", Some(root)), s, move |b| {
            (me == root).then(|| Self::first(b))
        }))
    }

    /// Nonblocking all-reduce: the request gives every rank the combination of all `buf`s.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// // Thousands may be in flight: each is a state machine, not a thread.
    /// let reqs: Vec<_> = (0..1000u64)
    ///     .map(|i| world.iall_reduce(vec![i], ranks::op::Sum))
    ///     .collect();
    /// for (i, v) in ranks::wait_all(reqs)?.into_iter().enumerate() {
    ///     assert_eq!(v, vec![i as u64 * world.size() as u64]);
    /// }
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn iall_reduce<T: Pod + Send, O: Op<T> + Send + 'static>(
        &self,
        buf: Vec<T>,
        op: O,
    ) -> Request<'static, Vec<T>> {
        let seq = self.next_seq();
        let s = all_reduce(seq, self.rank(), self.size(), buf, Arc::new(op));
        self.start(("iall_reduce", None), s, Self::first)
    }

    /// Nonblocking inclusive prefix reduction: rank r gets `x0 ∘ ... ∘ xr`.
    pub fn iscan<T: Pod + Send, O: Op<T> + Send + 'static>(
        &self,
        buf: Vec<T>,
        op: O,
    ) -> Request<'static, Vec<T>> {
        let seq = self.next_seq();
        let s = scan(seq, self.rank(), self.size(), buf, Arc::new(op), true);
        self.start(("iscan", None), s, Self::first)
    }

    /// Nonblocking exclusive prefix reduction: rank r > 0 gets `x0 ∘ ... ∘ x(r-1)`; rank 0
    /// gets its own `buf` back.
    pub fn iexscan<T: Pod + Send, O: Op<T> + Send + 'static>(
        &self,
        buf: Vec<T>,
        op: O,
    ) -> Request<'static, Vec<T>> {
        let seq = self.next_seq();
        let s = scan(seq, self.rank(), self.size(), buf, Arc::new(op), false);
        self.start(("iexscan", None), s, Self::first)
    }

    /// Nonblocking reduce-scatter: `buf` is one block per rank (`counts[i]` items for rank
    /// i); rank r gets reduced block r.
    pub fn ireduce_scatter<T: Pod + Send, O: Op<T> + Send + 'static>(
        &self,
        buf: Vec<T>,
        counts: &[usize],
        op: O,
    ) -> Result<Request<'static, Vec<T>>> {
        self.check_counts("ireduce_scatter", counts, Some(buf.len()))?;
        let seq = self.next_seq();
        let s = reduce_scatter(seq, self.rank(), self.size(), buf, counts, Arc::new(op));
        Ok(self.start(("ireduce_scatter", None), s, Self::first))
    }

    /// Nonblocking gather of equal-sized blocks to `root`: its request gives
    /// `Some(concatenation in rank order)` there, `None` elsewhere.
    pub fn igather<T: Pod + Send>(
        &self,
        root: usize,
        send: Vec<T>,
    ) -> Result<Request<'static, Option<Vec<T>>>> {
        self.check_root(root)?;
        let seq = self.next_seq();
        let me = self.rank();
        let s = gather(seq, root, me, self.size(), send);
        Ok(self.start(("igather", Some(root)), s, move |b| {
            (me == root).then(|| Self::first(b))
        }))
    }

    /// Nonblocking scatter: `root`'s `send` (`count` items per rank, in rank order; ignored
    /// elsewhere) is cut into blocks, and rank r's request gives block r.
    pub fn iscatter<T: Pod + Send>(
        &self,
        root: usize,
        send: Vec<T>,
        count: usize,
    ) -> Result<Request<'static, Vec<T>>> {
        self.check_root(root)?;
        let n = self.size();
        if self.rank() == root && send.len() != count * n {
            return Err(Error::InvalidArgument(format!(
                "iscatter: {} items at the root for {n} ranks of {count}",
                send.len()
            )));
        }
        let seq = self.next_seq();
        let s = scatter(seq, root, self.rank(), n, count, send);
        Ok(self.start(("iscatter", Some(root)), s, Self::first))
    }

    /// Nonblocking all-gather of equal-sized blocks: the result is the concatenation.
    pub fn iall_gather<T: Pod + Send>(&self, send: Vec<T>) -> Request<'static, Vec<T>> {
        let seq = self.next_seq();
        let s = all_gather(seq, self.rank(), self.size(), send);
        self.start(("iall_gather", None), s, Self::first)
    }

    /// Check that `counts` has one entry per rank (and, with `total`, sums to it).
    fn check_counts(&self, what: &str, counts: &[usize], total: Option<usize>) -> Result<()> {
        let n = self.size();
        if counts.len() != n || total.is_some_and(|t| counts.iter().sum::<usize>() != t) {
            return Err(Error::InvalidArgument(format!(
                "{what}: {} counts summing to {} for {n} ranks{}",
                counts.len(),
                counts.iter().sum::<usize>(),
                total.map_or(String::new(), |t| format!(" and {t} items")),
            )));
        }
        Ok(())
    }

    /// Nonblocking gather of blocks of different sizes: rank r sends `counts[r]` items;
    /// `counts` is needed at the root (MPI's `MPI_Igatherv`), which gets `Some(blocks in
    /// rank order)`.
    pub fn igather_varcount<T: Pod + Send>(
        &self,
        root: usize,
        send: Vec<T>,
        counts: &[usize],
    ) -> Result<Request<'static, Option<Vec<T>>>> {
        self.check_root(root)?;
        let me = self.rank();
        if me == root {
            self.check_counts("igather_varcount", counts, None)?;
            if counts[me] != send.len() {
                return Err(Error::InvalidArgument(format!(
                    "igather_varcount: the root sends {} items but counts says {}",
                    send.len(),
                    counts[me]
                )));
            }
        }
        let seq = self.next_seq();
        let s = gatherv(seq, root, me, self.size(), send, counts);
        Ok(self.start(("igather_varcount", Some(root)), s, move |b| {
            (me == root).then(|| Self::first(b))
        }))
    }

    /// Nonblocking scatter of blocks of different sizes: rank r gets `counts[r]` items of
    /// the root's `send` (ignored elsewhere); `counts` is needed on every rank.
    pub fn iscatter_varcount<T: Pod + Send>(
        &self,
        root: usize,
        send: Vec<T>,
        counts: &[usize],
    ) -> Result<Request<'static, Vec<T>>> {
        self.check_root(root)?;
        let total = (self.rank() == root).then_some(send.len());
        self.check_counts("iscatter_varcount", counts, total)?;
        let seq = self.next_seq();
        let s = scatterv(seq, root, self.rank(), self.size(), counts, send);
        Ok(self.start(("iscatter_varcount", Some(root)), s, Self::first))
    }

    /// Nonblocking all-gather of blocks of different sizes (`counts[r]` items from rank r,
    /// `counts` on every rank): the concatenation in rank order.
    pub fn iall_gather_varcount<T: Pod + Send>(
        &self,
        send: Vec<T>,
        counts: &[usize],
    ) -> Result<Request<'static, Vec<T>>> {
        self.check_counts("iall_gather_varcount", counts, None)?;
        if counts[self.rank()] != send.len() {
            return Err(Error::InvalidArgument(format!(
                "iall_gather_varcount: this rank sends {} items but counts says {}",
                send.len(),
                counts[self.rank()]
            )));
        }
        let seq = self.next_seq();
        let s = all_gatherv(seq, self.rank(), self.size(), send, counts);
        Ok(self.start(("iall_gather_varcount", None), s, Self::first))
    }

    /// Nonblocking all-to-all of blocks of different sizes: `send_counts[j]` items to rank
    /// j, `recv_counts[j]` from it (MPI's `MPI_Ialltoallv`); the blocks received, in rank
    /// order.
    pub fn iall_to_all_varcount<T: Pod + Send>(
        &self,
        send: Vec<T>,
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Request<'static, Vec<T>>> {
        self.check_counts("iall_to_all_varcount", send_counts, Some(send.len()))?;
        self.check_counts("iall_to_all_varcount", recv_counts, None)?;
        let seq = self.next_seq();
        let s = all_to_allv(
            seq,
            self.rank(),
            self.size(),
            send,
            send_counts,
            recv_counts,
        );
        Ok(self.start(("iall_to_all_varcount", None), s, Self::first))
    }

    /// Nonblocking all-to-all of equal blocks: block j of `send` goes to rank j; the result
    /// holds rank j's block for this rank at block j.
    pub fn iall_to_all<T: Pod + Send>(&self, send: Vec<T>) -> Result<Request<'static, Vec<T>>> {
        let n = self.size();
        if !send.len().is_multiple_of(n) {
            return Err(Error::InvalidArgument(format!(
                "iall_to_all: {} items do not make {n} equal blocks",
                send.len()
            )));
        }
        let seq = self.next_seq();
        let s = all_to_all(seq, self.rank(), n, send);
        Ok(self.start(("iall_to_all", None), s, Self::first))
    }
}

// ----- the algorithms --------------------------------------------------------------------

/// Steps (tag rounds) of a two-phase schedule's second phase start here.
const PHASE2: u32 = 64;

/// Dissemination barrier: in step k, send to `me + 2^k`, receive from `me - 2^k`.
pub(crate) fn barrier(seq: u32, me: usize, n: usize) -> Schedule<u8> {
    let mut s = Schedule::new(seq, vec![Vec::new()]);
    let (mut dist, mut k) = (1, 0);
    while dist < n {
        s.round()
            .send((me + dist) % n, k, 0, 0..0)
            .recv((me + n - dist) % n, k, 0, 0..0);
        dist <<= 1;
        k += 1;
    }
    s
}

/// Binomial-tree broadcast of buffer `buf` (all of it) from `root`, steps from `step0`.
fn bcast_into<T: Pod + Send>(
    s: &mut Schedule<T>,
    buf: usize,
    len: usize,
    root: usize,
    me: usize,
    n: usize,
    step0: u32,
) {
    let (parent, children) = crate::hier::binomial(n, me, root);
    // The edge from `a` down to `b` is step `log2(b - a)` (relative to the root).
    let step = |a: usize, b: usize| step0 + ((b + n - a) % n).trailing_zeros();
    if let Some(p) = parent {
        s.round().recv(p, step(p, me), buf, 0..len);
    }
    if !children.is_empty() {
        s.round();
        for c in children {
            s.send(c, step(me, c), buf, 0..len);
        }
    }
}

pub(crate) fn bcast<T: Pod + Send>(
    seq: u32,
    root: usize,
    me: usize,
    n: usize,
    data: Vec<T>,
) -> Schedule<T> {
    let len = data.len();
    let mut s = Schedule::new(seq, vec![data]);
    bcast_into(&mut s, 0, len, root, me, n, 0);
    s
}

/// Binomial-tree reduction into buffer 0 at `root` (buffer 1 is scratch). Relative ranks
/// keep rank order only when the root is 0: a non-commutative operation is reduced to rank
/// 0 and the result sent on to the root.
fn reduce_into<T: Pod + Send, O: Op<T> + Send + Sync + 'static>(
    s: &mut Schedule<T>,
    len: usize,
    root: usize,
    me: usize,
    n: usize,
    op: &Arc<O>,
) {
    let tree_root = if op.commutative() { root } else { 0 };
    let rel = (me + n - tree_root) % n;
    let mut mask = 1;
    while mask < n {
        let step = mask.trailing_zeros();
        if rel & mask != 0 {
            s.round()
                .send((rel - mask + tree_root) % n, step, 0, 0..len);
            break;
        }
        if rel + mask < n {
            let op = op.clone();
            // What the child sends covers ranks above ours: ours ∘ theirs.
            s.round()
                .recv((rel + mask + tree_root) % n, step, 1, 0..len)
                .then(move |b| {
                    let (acc, child) = b.split_at_mut(1);
                    op.combine(&acc[0], &mut child[0]);
                    std::mem::swap(&mut acc[0], &mut child[0]);
                    Ok(())
                });
        }
        mask <<= 1;
    }
    if tree_root != root {
        if me == tree_root {
            s.round().send(root, PHASE2 - 1, 0, 0..len);
        } else if me == root {
            s.round().recv(tree_root, PHASE2 - 1, 0, 0..len);
        }
    }
}

pub(crate) fn reduce<T: Pod + Send, O: Op<T> + Send + Sync + 'static>(
    seq: u32,
    root: usize,
    me: usize,
    n: usize,
    data: Vec<T>,
    op: Arc<O>,
) -> Schedule<T> {
    let len = data.len();
    let mut s = Schedule::new(seq, vec![data, vec![T::zeroed(); len]]);
    reduce_into(&mut s, len, root, me, n, &op);
    s
}

/// Reduce to rank 0, then broadcast from it.
pub(crate) fn all_reduce<T: Pod + Send, O: Op<T> + Send + Sync + 'static>(
    seq: u32,
    me: usize,
    n: usize,
    data: Vec<T>,
    op: Arc<O>,
) -> Schedule<T> {
    let len = data.len();
    let mut s = Schedule::new(seq, vec![data, vec![T::zeroed(); len]]);
    reduce_into(&mut s, len, 0, me, n, &op);
    bcast_into(&mut s, 0, len, 0, me, n, PHASE2);
    s
}

/// Every rank's `k` items to `root`, which receives them all at once into buffer 0.
pub(crate) fn gather<T: Pod + Send>(
    seq: u32,
    root: usize,
    me: usize,
    n: usize,
    data: Vec<T>,
) -> Schedule<T> {
    let k = data.len();
    if me != root {
        let mut s = Schedule::new(seq, vec![data]);
        s.round().send(root, 0, 0, 0..k);
        return s;
    }
    let mut out = vec![T::zeroed(); k * n];
    out[me * k..(me + 1) * k].copy_from_slice(&data);
    let mut s = Schedule::new(seq, vec![out]);
    s.round();
    for r in (0..n).filter(|&r| r != me) {
        s.recv(r, 0, 0, r * k..(r + 1) * k);
    }
    s
}

/// Block r of the root's `n * k` items to rank r (buffer 0 ends as this rank's block;
/// buffer 1 holds the root's items).
pub(crate) fn scatter<T: Pod + Send>(
    seq: u32,
    root: usize,
    me: usize,
    n: usize,
    k: usize,
    data: Vec<T>,
) -> Schedule<T> {
    if me != root {
        let mut s = Schedule::new(seq, vec![vec![T::zeroed(); k]]);
        s.round().recv(root, 0, 0, 0..k);
        return s;
    }
    let mine = data[me * k..(me + 1) * k].to_vec();
    let mut s = Schedule::new(seq, vec![mine, data]);
    s.round();
    for r in (0..n).filter(|&r| r != me) {
        s.send(r, 0, 1, r * k..(r + 1) * k);
    }
    s
}

/// `gather` with rank r's block `counts[r]` items long (`counts` is needed at the root).
pub(crate) fn gatherv<T: Pod + Send>(
    seq: u32,
    root: usize,
    me: usize,
    n: usize,
    data: Vec<T>,
    counts: &[usize],
) -> Schedule<T> {
    if me != root {
        let k = data.len();
        let mut s = Schedule::new(seq, vec![data]);
        s.round().send(root, 0, 0, 0..k);
        return s;
    }
    let at = offsets(counts);
    let mut out = vec![T::zeroed(); counts.iter().sum()];
    out[at[me]..at[me] + counts[me]].copy_from_slice(&data);
    let mut s = Schedule::new(seq, vec![out]);
    s.round();
    for r in (0..n).filter(|&r| r != me) {
        s.recv(r, 0, 0, at[r]..at[r] + counts[r]);
    }
    s
}

/// `scatter` with rank r's block `counts[r]` items long (`counts` is needed everywhere).
pub(crate) fn scatterv<T: Pod + Send>(
    seq: u32,
    root: usize,
    me: usize,
    n: usize,
    counts: &[usize],
    data: Vec<T>,
) -> Schedule<T> {
    if me != root {
        let mut s = Schedule::new(seq, vec![vec![T::zeroed(); counts[me]]]);
        s.round().recv(root, 0, 0, 0..counts[me]);
        return s;
    }
    let at = offsets(counts);
    let mine = data[at[me]..at[me] + counts[me]].to_vec();
    let mut s = Schedule::new(seq, vec![mine, data]);
    s.round();
    for r in (0..n).filter(|&r| r != me) {
        s.send(r, 0, 1, at[r]..at[r] + counts[r]);
    }
    s
}

/// Ring all-gather of blocks of `counts[r]` items (`counts` is needed everywhere).
pub(crate) fn all_gatherv<T: Pod + Send>(
    seq: u32,
    me: usize,
    n: usize,
    data: Vec<T>,
    counts: &[usize],
) -> Schedule<T> {
    let at = offsets(counts);
    let mut out = vec![T::zeroed(); counts.iter().sum()];
    out[at[me]..at[me] + counts[me]].copy_from_slice(&data);
    let mut s = Schedule::new(seq, vec![out]);
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    for i in 0..n.saturating_sub(1) {
        let give = (me + n - i) % n;
        let take = (me + 2 * n - i - 1) % n;
        s.round()
            .send(next, i as u32, 0, at[give]..at[give] + counts[give])
            .recv(prev, i as u32, 0, at[take]..at[take] + counts[take]);
    }
    s
}

/// All-to-all with `send_counts[j]` items to rank j and `recv_counts[j]` from it.
pub(crate) fn all_to_allv<T: Pod + Send>(
    seq: u32,
    me: usize,
    n: usize,
    data: Vec<T>,
    send_counts: &[usize],
    recv_counts: &[usize],
) -> Schedule<T> {
    let (sa, ra) = (offsets(send_counts), offsets(recv_counts));
    let mut out = vec![T::zeroed(); recv_counts.iter().sum()];
    out[ra[me]..ra[me] + recv_counts[me]].copy_from_slice(&data[sa[me]..sa[me] + send_counts[me]]);
    let mut s = Schedule::new(seq, vec![out, data]);
    s.round();
    for j in (0..n).filter(|&j| j != me) {
        s.send(j, 0, 1, sa[j]..sa[j] + send_counts[j]);
        s.recv(j, 0, 0, ra[j]..ra[j] + recv_counts[j]);
    }
    s
}

/// Ring all-gather: in step i, pass block `me - i` on and take block `me - i - 1`.
pub(crate) fn all_gather<T: Pod + Send>(
    seq: u32,
    me: usize,
    n: usize,
    data: Vec<T>,
) -> Schedule<T> {
    let k = data.len();
    let mut out = vec![T::zeroed(); k * n];
    out[me * k..(me + 1) * k].copy_from_slice(&data);
    let mut s = Schedule::new(seq, vec![out]);
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    for i in 0..n.saturating_sub(1) {
        let give = (me + n - i) % n;
        let take = (me + 2 * n - i - 1) % n;
        s.round()
            .send(next, i as u32, 0, give * k..(give + 1) * k)
            .recv(prev, i as u32, 0, take * k..(take + 1) * k);
    }
    s
}

/// Block j of this rank's `n * k` items to rank j, all at once (buffer 1 holds them).
pub(crate) fn all_to_all<T: Pod + Send>(
    seq: u32,
    me: usize,
    n: usize,
    data: Vec<T>,
) -> Schedule<T> {
    let k = data.len() / n.max(1);
    let mut out = vec![T::zeroed(); k * n];
    out[me * k..(me + 1) * k].copy_from_slice(&data[me * k..(me + 1) * k]);
    let mut s = Schedule::new(seq, vec![out, data]);
    s.round();
    for j in (0..n).filter(|&j| j != me) {
        s.send(j, 0, 1, j * k..(j + 1) * k);
        s.recv(j, 0, 0, j * k..(j + 1) * k);
    }
    s
}

/// Prefix reduction along the chain of ranks: rank r takes the prefix of ranks below it
/// from r - 1, and passes on its own. `inclusive`: buffer 0 ends with `x0 ∘ ... ∘ xr`;
/// otherwise with `x0 ∘ ... ∘ x(r-1)` (rank 0's left as it was).
pub(crate) fn scan<T: Pod + Send, O: Op<T> + Send + Sync + 'static>(
    seq: u32,
    me: usize,
    n: usize,
    data: Vec<T>,
    op: Arc<O>,
    inclusive: bool,
) -> Schedule<T> {
    let len = data.len();
    // 0: the result; 1: what arrives from below; 2: what goes up.
    let mut s = Schedule::new(seq, vec![data.clone(), vec![T::zeroed(); len], data]);
    if me > 0 {
        s.round().recv(me - 1, 0, 1, 0..len).then(move |b| {
            let below = b[1].clone();
            op.combine(&below, &mut b[2]); // below ∘ mine, to pass on
            b[0] = if inclusive { b[2].clone() } else { below };
            Ok(())
        });
    }
    if me + 1 < n {
        s.round().send(me + 1, 0, 2, 0..len);
    }
    s
}

/// Reduce everything to rank 0, then scatter block r (`counts[r]` items) to rank r.
pub(crate) fn reduce_scatter<T: Pod + Send, O: Op<T> + Send + Sync + 'static>(
    seq: u32,
    me: usize,
    n: usize,
    data: Vec<T>,
    counts: &[usize],
    op: Arc<O>,
) -> Schedule<T> {
    let len = data.len();
    let mut s = Schedule::new(seq, vec![data, vec![T::zeroed(); len]]);
    reduce_into(&mut s, len, 0, me, n, &op);
    let at = offsets(counts);
    if me == 0 {
        s.round();
        for r in 1..n {
            s.send(r, PHASE2, 0, at[r]..at[r] + counts[r]);
        }
        let mine = counts[0];
        s.then(move |b| {
            b[0].truncate(mine);
            Ok(())
        });
    } else {
        let c = counts[me];
        s.round().then(move |b| {
            b[0] = vec![T::zeroed(); c];
            Ok(())
        });
        s.round().recv(0, PHASE2, 0, 0..c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A network of `n` simulated ranks: sends are delivered at once into mailboxes;
    /// receives match in the order they were posted, per (source, tag).
    #[derive(Default)]
    struct Wires {
        mail: HashMap<(usize, usize, i32), VecDeque<Vec<u8>>>,
        posted: HashMap<RecvId, (usize, usize, i32)>,
        next_id: RecvId,
        /// When set, sends wait in `in_flight` until `deliver` (a ring not read yet).
        delayed: bool,
        in_flight: Vec<((usize, usize, i32), Vec<u8>)>,
        /// Ranks that have left.
        gone: Vec<usize>,
    }

    impl Wires {
        fn deliver(&mut self) {
            for (k, m) in self.in_flight.drain(..) {
                self.mail.entry(k).or_default().push_back(m);
            }
        }
    }

    struct SimNet<'a> {
        me: usize,
        w: &'a mut Wires,
    }

    impl Net for SimNet<'_> {
        fn send(&mut self, peer: usize, tag: i32, data: &[u8]) -> Result<SendId> {
            let key = (peer, self.me, tag);
            if self.w.delayed {
                self.w.in_flight.push((key, data.to_vec()));
            } else {
                self.w.mail.entry(key).or_default().push_back(data.to_vec());
            }
            Ok(SendId::Done)
        }
        fn sent(&mut self, _id: SendId) -> Result<bool> {
            Ok(true)
        }
        fn post(&mut self, peer: usize, tag: i32) -> Result<Posted> {
            let id = self.w.next_id;
            self.w.next_id += 1;
            self.w.posted.insert(id, (self.me, peer, tag));
            Ok(Posted::Wait(id))
        }
        fn take(&mut self, id: RecvId) -> Result<Option<Vec<u8>>> {
            let key = self.w.posted[&id];
            // Matched in post order: only the oldest posted receive of this key may take.
            let oldest = self
                .w
                .posted
                .iter()
                .filter(|(_, k)| **k == key)
                .map(|(i, _)| *i)
                .min();
            if oldest != Some(id) {
                return Ok(None);
            }
            let got = self.w.mail.get_mut(&key).and_then(VecDeque::pop_front);
            if got.is_some() {
                self.w.posted.remove(&id);
            }
            Ok(got)
        }
        fn lost(&mut self, peer: usize) -> Option<Error> {
            self.w.gone.contains(&peer).then(|| Error::PeerLost {
                rank: peer,
                detail: "it exited".into(),
            })
        }
        fn cancel(&mut self, id: RecvId) {
            self.w.posted.remove(&id);
        }
    }

    /// Run one schedule per rank to the end, advancing the ranks in an order drawn from
    /// `seed` (a rank may be advanced many times in a row, or not for a while).
    fn run<T: Pod + Send>(scheds: Vec<Schedule<T>>, seed: u64) -> Vec<Vec<Vec<T>>> {
        let n = scheds.len();
        let mut w = Wires::default();
        let mut ex: Vec<Option<Exec<T>>> = scheds.into_iter().map(|s| Some(Exec::new(s))).collect();
        let mut done: Vec<Option<Vec<Vec<T>>>> = (0..n).map(|_| None).collect();
        let mut x = seed | 1;
        let mut idle = 0;
        while done.iter().any(Option::is_none) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = (x % n as u64) as usize;
            let Some(e) = ex[r].as_mut() else { continue };
            if e.advance(&mut SimNet { me: r, w: &mut w }, false).unwrap() {
                done[r] = Some(ex[r].take().unwrap().into_bufs());
                idle = 0;
            } else {
                idle += 1;
                assert!(idle < 100_000, "the schedules are stuck");
            }
        }
        done.into_iter().map(Option::unwrap).collect()
    }

    /// A rank that sends its last message and leaves between a progress step's read and its
    /// look for lost peers is not taken for lost: the next step reads what it sent.
    #[test]
    fn a_peer_that_leaves_right_after_its_last_send_is_not_lost() {
        let mut w = Wires {
            delayed: true,
            ..Wires::default()
        };
        let mut a = Exec::new(barrier(1, 0, 2));
        let mut b = Exec::new(barrier(1, 1, 2));
        // B waits for A, looking for lost ranks each time.
        for _ in 0..3 {
            w.deliver();
            assert!(!b.advance(&mut SimNet { me: 1, w: &mut w }, true).unwrap());
        }
        // A runs, sends its last message and leaves, after B's read and before its look.
        w.deliver();
        assert!(a.advance(&mut SimNet { me: 0, w: &mut w }, true).unwrap());
        w.gone.push(0);
        let first = b.advance(&mut SimNet { me: 1, w: &mut w }, true);
        assert!(
            matches!(first, Ok(false)),
            "lost too early: {:?}",
            first.err()
        );
        w.deliver();
        assert!(b.advance(&mut SimNet { me: 1, w: &mut w }, true).unwrap());
        // A rank that leaves without sending is lost, at the second look.
        let mut c = Exec::new(barrier(2, 1, 2));
        let mut r = Ok(false);
        for _ in 0..3 {
            w.deliver();
            r = c.advance(&mut SimNet { me: 1, w: &mut w }, true);
            if r.is_err() {
                break;
            }
        }
        assert!(matches!(r, Err(Error::PeerLost { rank: 0, .. })), "{r:?}");
    }

    /// Non-commutative: composition of affine maps `x -> a x + b` (mod 2^32), each item
    /// packing `a` in its high half and `b` in its low half.
    struct Concat;
    impl Op<u64> for Concat {
        fn combine(&self, input: &[u64], inout: &mut [u64]) {
            for (f, g) in input.iter().zip(inout.iter_mut()) {
                let (a1, b1) = (f >> 32, f & 0xffff_ffff);
                let (a2, b2) = (*g >> 32, *g & 0xffff_ffff);
                let a = a1.wrapping_mul(a2) & 0xffff_ffff;
                let b = (a1.wrapping_mul(b2).wrapping_add(b1)) & 0xffff_ffff;
                *g = (a << 32) | b;
            }
        }
        fn commutative(&self) -> bool {
            false
        }
    }

    fn fold<O: Op<u64>>(op: &O, xs: &[Vec<u64>]) -> Vec<u64> {
        let mut acc = xs[0].clone();
        for x in &xs[1..] {
            let mut next = x.clone();
            op.combine(&acc, &mut next);
            acc = next;
        }
        acc
    }

    /// Every algorithm, on 1 to 9 ranks and every root, in several orders of advancing the
    /// ranks, against the sequential result (a non-commutative operation checks rank order).
    #[test]
    fn schedules_give_the_sequential_results_in_any_order() {
        for n in 1..=9usize {
            for seed in [1u64, 7, 12345] {
                let _ = run((0..n).map(|me| barrier(3, me, n)).collect(), seed);
                let input = |r: usize| {
                    vec![
                        ((r as u64 + 2) << 32) | ((r * r) as u64 + 3),
                        ((r as u64 % 3 + 1) << 32) | r as u64,
                    ]
                };
                let all: Vec<Vec<u64>> = (0..n).map(input).collect();
                for root in 0..n {
                    let out = run(
                        (0..n)
                            .map(|me| {
                                bcast(
                                    1,
                                    root,
                                    me,
                                    n,
                                    if me == root { input(me) } else { vec![0; 2] },
                                )
                            })
                            .collect(),
                        seed,
                    );
                    assert!(
                        out.iter().all(|b| b[0] == input(root)),
                        "bcast n={n} root={root}"
                    );
                    let op = Arc::new(Concat);
                    let out = run(
                        (0..n)
                            .map(|me| reduce(2, root, me, n, input(me), op.clone()))
                            .collect(),
                        seed,
                    );
                    assert_eq!(out[root][0], fold(&*op, &all), "reduce n={n} root={root}");
                    let sum = Arc::new(crate::op::Sum);
                    let out = run(
                        (0..n)
                            .map(|me| reduce(2, root, me, n, input(me), sum.clone()))
                            .collect(),
                        seed,
                    );
                    assert_eq!(
                        out[root][0],
                        fold(&crate::op::Sum, &all),
                        "sum n={n} root={root}"
                    );
                    let out = run(
                        (0..n).map(|me| gather(4, root, me, n, input(me))).collect(),
                        seed,
                    );
                    assert_eq!(out[root][0], all.concat(), "gather n={n} root={root}");
                    let flat: Vec<u64> = (0..2 * n as u64).collect();
                    let out = run(
                        (0..n)
                            .map(|me| {
                                scatter(
                                    5,
                                    root,
                                    me,
                                    n,
                                    2,
                                    if me == root { flat.clone() } else { Vec::new() },
                                )
                            })
                            .collect(),
                        seed,
                    );
                    for (r, b) in out.iter().enumerate() {
                        assert_eq!(b[0], flat[2 * r..2 * r + 2], "scatter n={n} root={root}");
                    }
                }
                let out = run(
                    (0..n)
                        .map(|me| all_reduce(6, me, n, input(me), Arc::new(Concat)))
                        .collect(),
                    seed,
                );
                assert!(
                    out.iter().all(|b| b[0] == fold(&Concat, &all)),
                    "all_reduce n={n}"
                );
                let out = run(
                    (0..n).map(|me| all_gather(7, me, n, input(me))).collect(),
                    seed,
                );
                assert!(out.iter().all(|b| b[0] == all.concat()), "all_gather n={n}");
                let out = run(
                    (0..n)
                        .map(|me| {
                            all_to_all(8, me, n, (0..n).map(|j| (me * 100 + j) as u64).collect())
                        })
                        .collect(),
                    seed,
                );
                for (me, b) in out.iter().enumerate() {
                    let want: Vec<u64> = (0..n).map(|j| (j * 100 + me) as u64).collect();
                    assert_eq!(b[0], want, "all_to_all n={n}");
                }
                for inclusive in [true, false] {
                    let out = run(
                        (0..n)
                            .map(|me| scan(9, me, n, input(me), Arc::new(Concat), inclusive))
                            .collect(),
                        seed,
                    );
                    for (r, b) in out.iter().enumerate() {
                        let want = if inclusive {
                            fold(&Concat, &all[..=r])
                        } else if r == 0 {
                            input(0)
                        } else {
                            fold(&Concat, &all[..r])
                        };
                        assert_eq!(b[0], want, "scan({inclusive}) n={n} rank {r}");
                    }
                }
                // Blocks of different sizes (some empty).
                let cv: Vec<usize> = (0..n).map(|r| (r * 2) % 5).collect();
                let at = offsets(&cv);
                let block = |r: usize| {
                    (0..cv[r] as u64)
                        .map(|i| i + 10 * r as u64)
                        .collect::<Vec<_>>()
                };
                let whole: Vec<u64> = (0..n).flat_map(block).collect();
                for root in 0..n {
                    let out = run(
                        (0..n)
                            .map(|me| gatherv(11, root, me, n, block(me), &cv))
                            .collect(),
                        seed,
                    );
                    assert_eq!(out[root][0], whole, "gatherv n={n} root={root}");
                    let out = run(
                        (0..n)
                            .map(|me| {
                                scatterv(
                                    12,
                                    root,
                                    me,
                                    n,
                                    &cv,
                                    if me == root {
                                        whole.clone()
                                    } else {
                                        Vec::new()
                                    },
                                )
                            })
                            .collect(),
                        seed,
                    );
                    for (r, b) in out.iter().enumerate() {
                        assert_eq!(
                            b[0],
                            whole[at[r]..at[r] + cv[r]],
                            "scatterv n={n} root={root}"
                        );
                    }
                }
                let out = run(
                    (0..n)
                        .map(|me| all_gatherv(13, me, n, block(me), &cv))
                        .collect(),
                    seed,
                );
                assert!(out.iter().all(|b| b[0] == whole), "all_gatherv n={n}");
                // Rank i sends (i + j) % 3 items to rank j.
                let sc = |i: usize| (0..n).map(|j| (i + j) % 3).collect::<Vec<_>>();
                let out = run(
                    (0..n)
                        .map(|me| {
                            let data: Vec<u64> = sc(me)
                                .iter()
                                .enumerate()
                                .flat_map(|(j, &c)| {
                                    (0..c as u64).map(move |x| (me * 100 + j * 10) as u64 + x)
                                })
                                .collect();
                            let rc: Vec<usize> = (0..n).map(|i| sc(i)[me]).collect();
                            all_to_allv(14, me, n, data, &sc(me), &rc)
                        })
                        .collect(),
                    seed,
                );
                for (me, b) in out.iter().enumerate() {
                    let want: Vec<u64> = (0..n)
                        .flat_map(|i| {
                            (0..sc(i)[me] as u64).map(move |x| (i * 100 + me * 10) as u64 + x)
                        })
                        .collect();
                    assert_eq!(b[0], want, "all_to_allv n={n} rank {me}");
                }
                let counts: Vec<usize> = (0..n).map(|r| r % 3 + 1).collect();
                let total: usize = counts.iter().sum();
                let data = |r: usize| {
                    (0..total as u64)
                        .map(|i| i * (r as u64 + 1))
                        .collect::<Vec<_>>()
                };
                let all_d: Vec<Vec<u64>> = (0..n).map(data).collect();
                let out = run(
                    (0..n)
                        .map(|me| reduce_scatter(10, me, n, data(me), &counts, Arc::new(Concat)))
                        .collect(),
                    seed,
                );
                let whole = fold(&Concat, &all_d);
                let mut at = 0;
                for (r, b) in out.iter().enumerate() {
                    assert_eq!(
                        b[0],
                        whole[at..at + counts[r]],
                        "reduce_scatter n={n} rank {r}"
                    );
                    at += counts[r];
                }
            }
        }
    }
}
