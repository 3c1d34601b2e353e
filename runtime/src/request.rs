//! Requests: nonblocking operations in flight, waited on or tested.

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::p2p::poll_borrowed_send;
use crate::progress::{Claim, Core, FromStream, State, StreamWait, Watch};
use crate::protocol::matching::{Body, Msg, Pattern, RecvId};
use crate::protocol::{SendId, Taken};
use crate::transport::Templated;
use crate::wire::Header;
use std::sync::Arc;

/// Where a nonblocking operation stands.
pub(crate) enum ReqState<'a> {
    /// A send; `data` is the caller's payload when the request borrows it (a rendezvous the
    /// receiver may ask to have streamed), else empty.
    Send {
        id: SendId,
        /// Context the message goes in, and its tag.
        ctx: u32,
        tag: i32,
        data: &'a [u8],
    },
    Recv {
        id: RecvId,
        pat: Pattern,
    },
    /// A receive with its message (boxed: a request is moved often, and small moves are
    /// cheap).
    Matched(Box<Taken>),
    /// A receive whose message went straight from the sender's stream into the request's
    /// buffer: the message's header.
    Landed(Header),
    /// A nonblocking collective, a state machine the core advances (see `crate::nbc`).
    Machine(std::sync::Arc<crate::nbc::Slot>),
    Done,
}

impl ReqState<'static> {
    /// The state of a receive just posted: its message if one was here, else waiting.
    #[inline]
    pub(crate) fn posted(r: std::result::Result<Msg, RecvId>, pat: Pattern) -> Self {
        match r {
            Ok(m) => ReqState::Matched(Box::new(Taken::Msg(m))),
            Err(id) => ReqState::Recv { id, pat },
        }
    }
}

/// Turns the matched message (receives) into the result, using the borrowed buffer if any.
///
/// The message is lent (`&mut`, taken out by the finisher that consumes it): passed by value,
/// the large `Option<Taken>` was copied into every call, a send's too.
type Finish<T> = fn(&Comm, &mut Option<Taken>, Option<&mut [u8]>, Option<Background>) -> Result<T>;

/// A `Finish` followed by `Request::map`s.
type Mapped<'a, T> = Box<
    dyn FnOnce(&Comm, &mut Option<Taken>, Option<&mut [u8]>, Option<Background>) -> Result<T>
        + Send
        + 'a,
>;

/// How a request turns into its result: a plain function (no allocation), or one with
/// maps after it.
enum Finisher<'a, T> {
    Plain(Finish<T>),
    Mapped(Mapped<'a, T>),
}

/// What a background operation (a nonblocking collective) hands back: a boxed `Result<T>`.
pub(crate) type Background = Box<dyn std::any::Any + Send>;

/// A nonblocking operation in flight. `wait` blocks for its result, `test` polls.
///
/// A request may borrow the buffer it sends from or receives into (`'a`); such a request
/// (`isend_slice`, `irecv_into`, ...) borrows its communicator too, for as long. Dropping an
/// unfinished receive withdraws it; dropping an unfinished send waits until the receiver no
/// longer needs the buffer.
///
/// ```
/// let world = ranks::init()?;
/// let me = world.rank();
/// let data = vec![7u64; 1000];
/// let send = world.isend_slice(me, 0, &data)?; // borrows `data` until it completes
/// let recv = world.irecv_vec::<u64>(me, 0)?;
/// let recv = match recv.test()? {
///     Ok((v, _)) => { assert_eq!(v.len(), 1000); None } // already here
///     Err(pending) => Some(pending),                      // not yet: wait for it later
/// };
/// if let Some(r) = recv {
///     assert_eq!(r.wait()?.0.len(), 1000);
/// }
/// send.wait()?;
/// # Ok::<(), ranks::Error>(())
/// ```
#[must_use = "a request does nothing unless waited on or tested"]
pub struct Request<'a, T> {
    comm: CommRef<'a>,
    state: ReqState<'a>,
    finish: Finisher<'a, T>,
    buf: Option<&'a mut [u8]>,
    /// A receive into `buf` that may take its message straight from the stream of this
    /// world rank, when it has this element type code (see [`Request::with_buffer`]).
    land: Landing,
}

/// `Option<(world rank, element type code)>` in one word, written by one store (a request
/// is moved right after it is made, in wide copies that stall on small stores still in
/// flight).
#[derive(Clone, Copy)]
struct Landing(u64);

impl Landing {
    /// No landing (no world rank is `u32::MAX`).
    const NONE: Landing = Landing(u32::MAX as u64);

    fn new(land: Option<(u32, u32)>) -> Landing {
        match land {
            Some((peer, typecode)) if peer != u32::MAX => {
                Landing(u64::from(peer) | u64::from(typecode) << 32)
            }
            _ => Landing::NONE,
        }
    }

    #[inline]
    fn get(self) -> Option<(u32, u32)> {
        let peer = self.0 as u32;
        (peer != u32::MAX).then_some((peer, (self.0 >> 32) as u32))
    }
}

/// The communicator a request works on: borrowed by a request that borrows a buffer
/// anyway, so that making and dropping one touches no reference count (a `Comm` clone is a
/// locked add, and its drop another, per message); its own otherwise.
#[derive(Clone)]
pub(crate) enum CommRef<'a> {
    Own(Comm),
    Borrowed(&'a Comm),
}

impl std::ops::Deref for CommRef<'_> {
    type Target = Comm;
    fn deref(&self) -> &Comm {
        match self {
            CommRef::Own(c) => c,
            CommRef::Borrowed(c) => c,
        }
    }
}

impl From<Comm> for CommRef<'_> {
    fn from(c: Comm) -> Self {
        CommRef::Own(c)
    }
}

impl<'a> From<&'a Comm> for CommRef<'a> {
    fn from(c: &'a Comm) -> Self {
        CommRef::Borrowed(c)
    }
}

impl<'a> Request<'a, ()> {
    /// The request of a send started as `id` in context `ctx` with `tag`, borrowing `data`.
    pub(crate) fn send(
        comm: impl Into<CommRef<'a>>,
        id: SendId,
        (ctx, tag): (u32, i32),
        data: &'a [u8],
    ) -> Request<'a, ()> {
        let state = ReqState::Send { id, ctx, tag, data };
        Request::new(comm, state, |_, _, _, _| Ok(()))
    }
}

impl<'a, T> Request<'a, T> {
    pub(crate) fn new(
        comm: impl Into<CommRef<'a>>,
        state: ReqState<'a>,
        finish: Finish<T>,
    ) -> Self {
        Request {
            comm: comm.into(),
            state,
            finish: Finisher::Plain(finish),
            buf: None,
            land: Landing::NONE,
        }
    }

    /// A receive into its own buffer `buf`. `land`: the world rank whose stream its
    /// message may come straight from, and the element type code it must have: while its
    /// owner waits, a message of that rank's it is the first match for goes from the
    /// stream into the buffer (no decoder, no allocation, no copy). Made in one piece
    /// (a request built and then changed was copied whole on its way out, read back
    /// before the stores of its fields had landed: a quarter of the receiver's posting).
    #[inline(always)]
    pub(crate) fn with_buffer(
        comm: &'a Comm,
        state: ReqState<'a>,
        finish: Finish<T>,
        buf: &'a mut [u8],
        land: Option<(u32, u32)>,
    ) -> Self {
        Request {
            comm: CommRef::Borrowed(comm),
            state,
            finish: Finisher::Plain(finish),
            buf: Some(buf),
            land: Landing::new(land),
        }
    }

    /// Take this receive's message straight from its sender's stream into its buffer, if
    /// it is a receive that may (see [`Request::with_buffer`]), the message is next there whole,
    /// and no older receive matches it; the fast path of `drive`, for the calls that look
    /// once rather than wait (`test`, the request sets). True if it landed.
    fn land_now(&mut self, core: &Core, st: &mut State) -> bool {
        let (ReqState::Recv { id, pat }, Some((peer, typecode))) = (&self.state, self.land.get())
        else {
            return false;
        };
        let (id, pat, peer) = (*id, *pat, peer as usize);
        let Some(buf) = self.buf.as_deref_mut() else {
            return false;
        };
        match core.recv_from_stream(st, peer, Claim::Posted(id, &pat), typecode, buf) {
            FromStream::Got(h) => {
                self.state = ReqState::Landed(h);
                true
            }
            FromStream::Empty | FromStream::No => false,
        }
    }

    /// Advance the operation; true once it is complete (or failed: `complete` says how).
    /// `direct`: the caller waits now, so a rendezvous receive is pulled into its buffer.
    fn poll_state(&mut self, core: &Core, st: &mut State, direct: bool) -> Result<bool> {
        poll(&mut self.state, core, st, direct)
    }

    /// What ends a wait on `state` when ranks die.
    fn watch<'c>(comm: &'c Comm, state: &ReqState<'_>) -> Watch<'c> {
        match state {
            ReqState::Send {
                id: SendId::Frame { peer, .. } | SendId::Rendezvous { peer, .. },
                ctx,
                tag,
                ..
            } => comm.watch_step(*ctx, *peer, *tag),
            ReqState::Recv { pat, .. } => comm.watch_for(pat),
            _ => Watch::Nobody,
        }
    }

    /// Whether the operation is complete without looking further: a send written whole at
    /// once, or a receive whose message is here already.
    fn complete_now(&self) -> bool {
        matches!(
            self.state,
            ReqState::Send {
                id: SendId::Done,
                ..
            } | ReqState::Matched(_)
                | ReqState::Landed(_)
                | ReqState::Done
        )
    }

    /// Block until the operation is complete (result not yet taken).
    fn drive(&mut self) -> Result<()> {
        self.drive_with(&mut [])
    }

    /// [`Request::drive`] for the first of `reqs` while the others wait too (`wait_all`):
    /// their matched rendezvous messages are pulled into their own buffers meanwhile.
    fn drive_first(reqs: &mut [Self]) -> Result<()> {
        match reqs.split_first_mut() {
            Some((first, others)) => first.drive_with(others),
            None => Ok(()),
        }
    }

    /// [`Request::drive`], pulling for `others` (the waiting thread's too) meanwhile.
    #[inline]
    fn drive_with(&mut self, others: &mut [Self]) -> Result<()> {
        if self.complete_now() {
            // Complete without a look at the transport: what it held back of nonblocking
            // sends (this one, say) goes now, not whenever the owner next calls in.
            self.comm.core.flush_held();
            return Ok(());
        }
        self.drive_pending(others)
    }

    /// [`Request::drive_with`] of a request that is not complete yet.
    #[inline(never)]
    fn drive_pending(&mut self, others: &mut [Self]) -> Result<()> {
        let r = Self::drive_parts(
            &self.comm,
            &mut self.state,
            &mut self.buf,
            self.land.get(),
            others,
        );
        if r.is_err() {
            self.abandon();
        }
        r
    }

    /// Pull this receive's matched rendezvous message into its buffer now if it is one
    /// that may land (see [`Request::with_buffer`]) and nobody pulls it yet: its owner waits
    /// for another request meanwhile. True if it did.
    fn pull_now(&mut self, core: &Core, st: &mut State) -> bool {
        let (ReqState::Recv { id, .. }, Some((_, typecode)), Some(buf)) =
            (&self.state, self.land.get(), self.buf.as_deref_mut())
        else {
            return false;
        };
        match core.pull_into(st, *id, typecode, buf) {
            Some(h) => {
                self.state = ReqState::Landed(h);
                true
            }
            None => false,
        }
    }

    /// [`Request::drive`] on the request's parts (so the communicator is borrowed, not
    /// cloned: a clone is a locked add on its count, and another when dropped).
    fn drive_parts(
        comm: &Comm,
        state: &mut ReqState<'a>,
        buf: &mut Option<&'a mut [u8]>,
        land: Option<(u32, u32)>,
        others: &mut [Self],
    ) -> Result<()> {
        let watch = Self::watch(comm, state);
        // The wait of a nonblocking collective is noted as the collective itself.
        let _call = match &*state {
            ReqState::Machine(slot) => Some(crate::diag::call(slot.call, crate::trace::Cat::Coll)),
            _ => None,
        };
        let _doing = match &*state {
            ReqState::Recv { pat, .. } => Some(comm.doing("wait", pat)),
            ReqState::Send {
                id: SendId::Frame { peer, .. } | SendId::Rendezvous { peer, .. },
                ctx,
                data,
                ..
            } => Some(crate::diag::step(crate::diag::Step {
                op: "wait",
                comm: *ctx,
                peer: Some(*peer),
                tag: None,
                bytes: data.len(),
            })),
            _ => None,
        };
        let _trace = match &*state {
            ReqState::Recv { pat, .. } => comm.trace_pat("wait", pat),
            ReqState::Send {
                id: SendId::Frame { peer, .. } | SendId::Rendezvous { peer, .. },
                ctx,
                data,
                ..
            } => crate::trace::span(
                "wait",
                crate::trace::Cat::P2p,
                *ctx,
                Some(*peer),
                None,
                data.len(),
            ),
            _ => None,
        };
        let recv = match *state {
            ReqState::Recv { id, pat } => Some((id, pat)),
            _ => None,
        };
        let mut first = true;
        // Landing from the stream: the stream waited on, and the element type code.
        let core = &*comm.core;
        let mut landing = match (recv, land, buf.is_some()) {
            (Some(_), Some((peer, typecode)), true) => {
                Some((StreamWait::new(peer as usize), typecode))
            }
            _ => None,
        };
        let mut check = |core: &Core, st: &mut State| {
            if let (Some((id, pat)), Some((wait, typecode)), Some(dst)) =
                (recv, &mut landing, buf.as_deref_mut())
            {
                if matches!(state, ReqState::Recv { .. }) {
                    // Waited for now: a large frame may land in parts, given back by
                    // `abandon` if the wait fails.
                    let claim = Claim::Waited(id, &pat);
                    match core.recv_from_stream(st, wait.peer(), claim, *typecode, dst) {
                        FromStream::Got(h) => {
                            wait.uncount(st);
                            *state = ReqState::Landed(h);
                            return Ok(Some(()));
                        }
                        // Nothing whole yet: progress leaves the stream to us meanwhile. (The
                        // receive may still have matched already, a rendezvous: look below.)
                        FromStream::Empty => wait.count(st),
                        // Another receive's message first, or one that is not for this path:
                        // the general path takes it now, and we look again next time.
                        FromStream::No => wait.hand_back(core, st),
                    }
                }
            }
            if let Some((id, _)) = recv.filter(|_| std::mem::take(&mut first)) {
                // We wait now: a rendezvous it matches is pulled into our buffer.
                st.proto.set_direct(id);
            }
            if poll(state, core, st, true)? {
                return Ok(Some(()));
            }
            // Not yet: the other requests of the set are ours, and their pulls are work
            // this thread would do anyway, into their own buffers.
            if st.proto.pulls_waiting() {
                for o in others.iter_mut() {
                    if Arc::ptr_eq(&o.comm.core, &comm.core) {
                        o.pull_now(core, st);
                    }
                }
            }
            Ok(None)
        };
        let r = match land {
            Some((peer, _)) if recv.is_some() => {
                let ready = || core.frame_waiting(peer as usize);
                core.wait_checking_first(watch, &ready, &mut check)
            }
            _ => core.wait_for(watch, &mut check),
        };
        if let Some((wait, _)) = landing.as_mut().filter(|(w, _)| w.counted()) {
            wait.uncount(&mut core.lock());
        }
        r
    }

    /// Give up on an operation whose wait failed (its peer is gone): a receive gives back
    /// the frame it was landing in parts, if any, and is withdrawn.
    fn abandon(&mut self) {
        let mut st = self.comm.core.lock();
        match std::mem::replace(&mut self.state, ReqState::Done) {
            ReqState::Recv { id, .. } => {
                if let (Some((peer, _)), Some(buf)) = (self.land.get(), self.buf.as_deref()) {
                    self.comm.core.give_up_landing(&mut st, peer as usize, buf);
                }
                st.proto.cancel(id)
            }
            ReqState::Send {
                id: SendId::Rendezvous { peer, token },
                ..
            } => st.proto.abandon_send(peer, token),
            other => self.state = other,
        }
    }

    /// The result of a complete operation, taken out in place (the request is left done,
    /// so dropping it does nothing).
    fn complete(&mut self) -> Result<T> {
        // The common ends, with no move of the whole state: a small receive's header
        // becomes its message; a send written at once has none.
        match &self.state {
            ReqState::Landed(h) => {
                let mut taken = Some(Taken::Msg(Msg::new(h, Body::Landed(h.len))));
                self.state = ReqState::Done;
                return self.finish_with(&mut taken, None);
            }
            ReqState::Send {
                id: SendId::Done, ..
            } => {
                self.state = ReqState::Done;
                return self.finish_with(&mut None, None);
            }
            _ => {}
        }
        let (mut taken, bg) = match std::mem::replace(&mut self.state, ReqState::Done) {
            ReqState::Matched(t) => (Some(*t), None),
            ReqState::Machine(slot) => (
                None,
                slot.out.lock().unwrap_or_else(|p| p.into_inner()).take(),
            ),
            _ => (None, None),
        };
        self.finish_with(&mut taken, bg)
    }

    /// Run the finisher on the taken message (the state is done already).
    #[inline]
    fn finish_with(&mut self, taken: &mut Option<Taken>, bg: Option<Background>) -> Result<T> {
        let buf = self.buf.take();
        match &self.finish {
            // A plain function may stay (it owns nothing); the state says the result is taken.
            &Finisher::Plain(f) => f(&self.comm, taken, buf, bg),
            Finisher::Mapped(_) => {
                match std::mem::replace(&mut self.finish, Finisher::Plain(finished)) {
                    Finisher::Mapped(f) => f(&self.comm, taken, buf, bg),
                    Finisher::Plain(f) => f(&self.comm, taken, buf, bg),
                }
            }
        }
    }

    /// A request for `f` of this one's result: requests of different kinds (sends,
    /// receives, collectives) mapped into one type can wait together in a set
    /// ([`wait_any`], [`wait_some`], [`test_any`], ...). `f` runs when the result is taken;
    /// an error passes through unchanged.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let me = world.rank();
    /// enum Done { Sent, Got(Vec<u32>), Total(Vec<u64>) }
    /// let data = vec![1u32, 2, 3];
    /// let mut set = vec![
    ///     world.irecv_vec::<u32>(me, 0)?.map(|(v, _)| Done::Got(v)),
    ///     world.isend_slice(me, 0, &data)?.map(|()| Done::Sent),
    ///     world.iall_reduce(vec![1u64], ranks::op::Sum).map(Done::Total),
    /// ];
    /// let mut finished = 0;
    /// while let Some((_, r)) = ranks::wait_any(&mut set) {
    ///     match r? {
    ///         Done::Got(v) => assert_eq!(v, data),
    ///         Done::Sent => {}
    ///         Done::Total(t) => assert_eq!(t, vec![world.size() as u64]),
    ///     }
    ///     finished += 1;
    /// }
    /// assert_eq!(finished, 3);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn map<U>(mut self, f: impl FnOnce(T) -> U + Send + 'a) -> Request<'a, U>
    where
        T: 'a,
    {
        let first = std::mem::replace(&mut self.finish, Finisher::Plain(finished));
        let then: Mapped<'a, U> = Box::new(move |c, t, b, bg| {
            match first {
                Finisher::Plain(g) => g(c, t, b, bg),
                Finisher::Mapped(g) => g(c, t, b, bg),
            }
            .map(f)
        });
        Request {
            comm: self.comm.clone(),
            // Ours is left done, so dropping `self` does nothing.
            state: std::mem::replace(&mut self.state, ReqState::Done),
            finish: Finisher::Mapped(then),
            buf: self.buf.take(),
            land: self.land,
        }
    }

    /// Block until the operation completes and return its result.
    pub fn wait(mut self) -> Result<T> {
        self.drive()?;
        self.complete()
    }

    /// Complete the operation if it can be without waiting; otherwise hand the request back.
    pub fn test(mut self) -> Result<std::result::Result<T, Request<'a, T>>> {
        if self.check()? {
            self.complete().map(Ok)
        } else {
            Ok(Err(self))
        }
    }

    /// Whether the operation has completed (makes progress; does not consume the request).
    pub fn is_complete(&mut self) -> bool {
        // An error is complete too: `wait` or `test` reports it.
        self.check().unwrap_or(true)
    }

    fn check(&mut self) -> Result<bool> {
        let core = self.comm.core.clone();
        let done = {
            let mut st = core.lock();
            if self.land_now(&core, &mut st) {
                return Ok(true);
            }
            core.progress(&mut st);
            self.poll_state(&core, &mut st, false)
        };
        if matches!(done, Ok(false)) {
            core.idle();
        }
        done
    }

    /// Wait from an async task (tokio): the blocking wait runs on tokio's blocking pool.
    #[cfg(feature = "tokio")]
    pub async fn wait_async(self) -> Result<T>
    where
        T: Send + 'static,
        'a: 'static,
    {
        match tokio::task::spawn_blocking(move || self.wait()).await {
            Ok(r) => r,
            Err(e) => Err(Error::InvalidArgument(format!(
                "the waiting task failed: {e}"
            ))),
        }
    }
}

/// Advance the operation in `state`; true once it is complete (or failed: completing it
/// says how). `direct`: the caller waits now, so a rendezvous receive is pulled into its
/// buffer.
fn poll(state: &mut ReqState<'_>, core: &Core, st: &mut State, direct: bool) -> Result<bool> {
    match state {
        ReqState::Send { id, data, .. } => {
            let done = poll_borrowed_send(core, st, *id, data)?;
            if done {
                *state = ReqState::Done;
            }
            Ok(done)
        }
        ReqState::Recv { id, .. } => match st.proto.take(*id, direct) {
            Some(t) => {
                *state = ReqState::Matched(Box::new(t));
                Ok(true)
            }
            None => Ok(false),
        },
        ReqState::Machine(slot) => Ok(slot.done.load(std::sync::atomic::Ordering::SeqCst)),
        ReqState::Matched(_) | ReqState::Landed(_) | ReqState::Done => Ok(true),
    }
}

/// The finisher left behind in a request whose result was taken (never called).
fn finished<T>(
    _: &Comm,
    _: &mut Option<Taken>,
    _: Option<&mut [u8]>,
    _: Option<Background>,
) -> Result<T> {
    Err(Error::InvalidArgument(
        "this request's result was already taken".into(),
    ))
}

impl<T: Send + 'static> Request<'static, T> {
    /// The request of a nonblocking collective the core runs (its outcome lands in `slot`).
    pub(crate) fn running(comm: Comm, slot: std::sync::Arc<crate::nbc::Slot>) -> Self {
        fn finish<T: 'static>(
            _: &Comm,
            _: &mut Option<Taken>,
            _: Option<&mut [u8]>,
            bg: Option<Background>,
        ) -> Result<T> {
            match bg.map(|b| b.downcast::<Result<T>>()) {
                Some(Ok(r)) => *r,
                _ => Err(Error::InvalidArgument(
                    "a nonblocking collective lost its result".into(),
                )),
            }
        }
        Request::new(comm, ReqState::Machine(slot), finish::<T>)
    }
}

impl<T> Drop for Request<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Finished, or complete with nothing held (the common end of a request).
        if !matches!(
            self.state,
            ReqState::Done
                | ReqState::Landed(_)
                | ReqState::Send {
                    id: SendId::Done,
                    ..
                }
        ) {
            self.drop_pending();
        }
    }
}

impl<T> Request<'_, T> {
    /// What dropping an unfinished request does: withdraw it, or see it through.
    #[inline(never)]
    fn drop_pending(&mut self) {
        match std::mem::replace(&mut self.state, ReqState::Done) {
            // Withdrawn, with any frame it was landing in parts given back.
            state @ ReqState::Recv { .. } => {
                self.state = state;
                self.abandon();
            }
            // A message this request took but nobody consumed goes back, in its place.
            ReqState::Matched(t) => self.comm.put_back(*t),
            ReqState::Machine(slot) => {
                // A collective must finish on every rank: let it run to the end.
                self.state = ReqState::Machine(slot);
                let _ = self.drive();
            }
            state @ ReqState::Send {
                id: SendId::Rendezvous { .. },
                data,
                ..
            } if !data.is_empty() => {
                // The receiver may still read the borrowed buffer: wait until it is done
                // (or gone; errors cannot be reported from here).
                self.state = state;
                let _ = self.drive();
            }
            _ => {}
        }
    }
}

/// Wait for every request and collect the results in order.
///
/// ```
/// let world = ranks::init()?;
/// let me = world.rank();
/// let sends: Vec<_> = (0..3).map(|t| world.isend(me, t, &t)).collect::<Result<_, _>>()?;
/// let recvs: Vec<_> = (0..3).map(|t| world.irecv::<i32>(me, t)).collect::<Result<_, _>>()?;
/// ranks::wait_all(sends)?;
/// let got: Vec<i32> = ranks::wait_all(recvs)?.into_iter().map(|(v, _)| v).collect();
/// assert_eq!(got, [0, 1, 2]);
/// # Ok::<(), ranks::Error>(())
/// ```
pub fn wait_all<'a, T>(reqs: impl IntoIterator<Item = Request<'a, T>>) -> Result<Vec<T>> {
    // Finished in place, in order (a vector given is reused, not moved); on an error the
    // rest are dropped, which withdraws them.
    let mut reqs: Vec<Request<'a, T>> = reqs.into_iter().collect();
    let mut out = Vec::with_capacity(reqs.len());
    // The process's core (one count for the whole call, not one per sweep).
    let core = reqs.first().map(|r| r.comm.core.clone());
    if let Some(core) = &core {
        core.flush_held();
        own_pulls(&reqs, core);
    }
    // Requests before `ready` are complete (landed or finished at once).
    let mut ready = 0;
    for i in 0..reqs.len() {
        if i >= ready {
            let first = &reqs[i];
            let core = core.as_ref().filter(|c| Arc::ptr_eq(c, &first.comm.core));
            // Complete at once (a send written, most often), on the core flushed above:
            // nothing to drive.
            if !(core.is_some() && first.complete_now()) {
                if let Some(core) = core {
                    // Land every receive whose message is in its stream now, under one
                    // lock, up to the first request that must wait; then wait for that
                    // one alone.
                    let mut st = core.lock();
                    ready = i;
                    while let Some(r) = reqs.get_mut(ready) {
                        if !Arc::ptr_eq(&r.comm.core, core) {
                            break;
                        }
                        if r.complete_now() {
                            ready += 1;
                            continue;
                        }
                        // A run of receives of one pattern (a window), or this one alone.
                        match land_run(&mut reqs[ready..], core, &mut st) {
                            0 if reqs[ready].land_now(core, &mut st) => ready += 1,
                            0 => break,
                            n => ready += n,
                        }
                    }
                }
                Request::drive_first(&mut reqs[i..])?;
            }
        }
        out.push(reqs[i].complete()?);
    }
    Ok(out)
}

/// Land the receives at the front of `reqs` whose messages are next in their sender's
/// stream, while they are posted receives of the first one's pattern, sender and element
/// type, each the claimant of the next frame in turn (a window of receives posted in
/// order): the template made once for the run, each header written straight into its
/// request. How many landed (0: the first is no such receive, or its message is not
/// there whole; `land_now` handles the general cases).
fn land_run<T>(reqs: &mut [Request<'_, T>], core: &Core, st: &mut State) -> usize {
    let Some(first) = reqs.first() else {
        return 0;
    };
    let (ReqState::Recv { pat, .. }, Some((peer, typecode))) = (&first.state, first.land.get())
    else {
        return 0;
    };
    let (pat, land) = (*pat, (peer, typecode));
    let Some(lander) = core.lander(st, peer as usize, &pat, typecode) else {
        return 0;
    };
    let mut n = 0;
    // Where the transport takes a run of frames: each frame's payload to the next request.
    let ran = core.take_run(st, &lander, |st, payload| {
        let Some(r) = reqs.get_mut(n) else {
            return false;
        };
        let (ReqState::Recv { id, pat: p }, Some(buf)) = (&r.state, r.buf.as_deref_mut()) else {
            return false;
        };
        if *p != pat || r.land.get() != Some(land) || !st.land_payload(*id, &pat, payload, buf) {
            return false;
        }
        // The state replaced is a receive's, which owns nothing: forgotten, not dropped
        // (the drop was a call per message, to look which state it was).
        std::mem::forget(std::mem::replace(
            &mut r.state,
            ReqState::Landed(lander.header(payload.len() as u64)),
        ));
        n += 1;
        true
    });
    if let Some(n) = ran {
        return n;
    }
    for r in reqs {
        let (ReqState::Recv { id, pat: p }, Some(buf)) = (&r.state, r.buf.as_deref_mut()) else {
            break;
        };
        if *p != pat || r.land.get() != Some(land) {
            break;
        }
        match core.land_next(st, &lander, *id, &pat, buf) {
            Templated::Took(len) => {
                r.state = ReqState::Landed(lander.header(len));
                n += 1;
            }
            _ => break,
        }
    }
    n
}

/// The receives of `reqs` (a set one thread waits for whole) that a rendezvous may come
/// to are pulled by that thread into their own buffers while it waits for any of them
/// ([`Request::drive_first`]): progress no longer takes them into a buffer of its own after
/// a while (then they were copied twice, into memory the kernel had to fault in first).
fn own_pulls<T>(reqs: &[Request<'_, T>], core: &Arc<Core>) {
    if reqs.iter().any(|r| r.land.get().is_some()) {
        mark_pulls(reqs, core, &mut core.lock(), true);
    }
}

/// The receives `own_pulls` gave a set's waiting thread go back to being pulled by whoever
/// waits a while (the thread returns with them still pending: `wait_some`, `wait_any`).
fn release_pulls<T>(reqs: &[Request<'_, T>], core: &Arc<Core>) {
    if reqs.iter().any(|r| r.land.get().is_some()) {
        mark_pulls(reqs, core, &mut core.lock(), false);
    }
}

/// `own_pulls` (`own`) or `release_pulls`, under the lock.
fn mark_pulls<T>(reqs: &[Request<'_, T>], core: &Arc<Core>, st: &mut State, own: bool) {
    for r in reqs.iter().filter(|r| Arc::ptr_eq(&r.comm.core, core)) {
        let (ReqState::Recv { id, .. }, Some((peer, _)), Some(b)) =
            (&r.state, r.land.get(), &r.buf)
        else {
            continue;
        };
        if st.proto.may_pull(peer as usize, b.len()) {
            if own {
                st.proto.set_direct(*id);
            } else {
                st.proto.set_later(*id);
            }
        }
    }
}

/// One look at a request set without waiting (the `test_*` calls), under one lock: land
/// what is in the streams, progress, then `sweep`. The set's rendezvous messages are the
/// caller's to pull, into their own buffers, for the length of the look.
fn look_once<T, R>(
    reqs: &mut [Request<'_, T>],
    core: &Arc<Core>,
    sweep: impl FnOnce(&mut [Request<'_, T>], &mut State) -> R,
) -> R {
    let mut st = core.lock();
    land_all(reqs, core, &mut st);
    mark_pulls(reqs, core, &mut st, true);
    core.progress(&mut st);
    let found = sweep(reqs, &mut st);
    mark_pulls(reqs, core, &mut st, false);
    found
}

/// What a request set's sweep found for one request: complete, or ended by a lost peer.
enum Found {
    Done,
    Lost(Error),
}

impl<T> Request<'_, T> {
    /// Look at the request without waiting (state lock held): `Some` once it completed or
    /// its peer is gone (checked only when `look_for_loss`).
    fn sweep(&mut self, core: &Core, st: &mut State, look_for_loss: bool) -> Option<Found> {
        if self.land_now(core, st) {
            return Some(Found::Done);
        }
        match self.poll_state(core, st, false) {
            Ok(true) => Some(Found::Done),
            // A matched rendezvous nobody pulls yet: the caller owns the request, so its
            // pull goes straight into its buffer now.
            Ok(false) if st.proto.pulls_waiting() && self.pull_now(core, st) => Some(Found::Done),
            Ok(false) if look_for_loss => {
                let watch = Self::watch(&self.comm, &self.state);
                core.check_watch(st, watch)
                    .map(|(rank, detail)| Found::Lost(Error::PeerLost { rank, detail }))
            }
            Ok(false) => None,
            Err(e) => Some(Found::Lost(e)),
        }
    }

    /// The result of a request the sweep found.
    fn finish_found(mut self, found: Found) -> Result<T> {
        match found {
            Found::Done => self.complete(),
            Found::Lost(e) => {
                self.abandon();
                Err(e)
            }
        }
    }
}

/// Let every receive of `reqs` that can take its message straight from the stream do so
/// now, before progress reads the frames into the matcher's queues: windows of one
/// pattern in runs (`land_run`), any other alone.
fn land_all<T>(reqs: &mut [Request<'_, T>], core: &Core, st: &mut State) {
    let mut i = 0;
    while i < reqs.len() {
        match land_run(&mut reqs[i..], core, st) {
            0 if !reqs[i].land_now(core, st) => {
                // A receive that cannot land now: nor can the receives of its pattern
                // that follow it, when posted after it (a window; the oldest comes
                // first). They are not looked at here; the sweep still looks at each.
                let pat = match reqs[i].state {
                    ReqState::Recv { pat, .. } => Some(pat),
                    _ => None,
                };
                i += 1;
                while pat.is_some()
                    && reqs.get(i).is_some_and(
                        |r| matches!(r.state, ReqState::Recv { pat: p, .. } if Some(p) == pat),
                    )
                {
                    i += 1;
                }
            }
            0 => i += 1,
            n => i += n,
        }
    }
}

/// Whether a message may be waiting in the stream of a peer some receive of `reqs` lands
/// from (a hint for a spinning wait; `peers` from the requests).
fn any_landing(core: &Core, peers: &[usize]) -> bool {
    peers.iter().any(|&p| core.frame_waiting(p))
}

/// The peers the receives of `reqs` may land from.
fn landing_peers<T>(reqs: &[Request<'_, T>]) -> Vec<usize> {
    let mut peers: Vec<usize> = reqs
        .iter()
        .filter_map(|r| r.land.get().map(|(p, _)| p as usize))
        .collect();
    peers.sort_unstable();
    peers.dedup();
    peers
}

/// Every request of `reqs` the sweep finds complete (or failed), as `(index, found)`.
fn sweep_all<T>(
    reqs: &mut [Request<'_, T>],
    core: &Core,
    st: &mut State,
    look_for_loss: bool,
) -> Vec<(usize, Found)> {
    reqs.iter_mut()
        .enumerate()
        .filter_map(|(i, r)| r.sweep(core, st, look_for_loss).map(|f| (i, f)))
        .collect()
}

/// Take the found requests out of `reqs` (the rest keep their order) and finish them:
/// `(index in reqs before, result)`, by index.
fn take_found<T>(
    reqs: &mut Vec<Request<'_, T>>,
    found: Vec<(usize, Found)>,
) -> Vec<(usize, Result<T>)> {
    let mut out = Vec::with_capacity(found.len());
    for (i, f) in found.into_iter().rev() {
        out.push((i, reqs.remove(i).finish_found(f)));
    }
    out.reverse();
    out
}

/// Block until at least one of `reqs` completes; take out and finish every request that
/// has (MPI's `Waitsome`). Each comes with its index in `reqs` as it was, and its own result
/// (a request whose peer is gone fails alone with `PeerLost`; the others go on). Empty `reqs`:
/// nothing to wait for, an empty answer.
///
/// ```
/// let world = ranks::init()?;
/// let me = world.rank();
/// let mut reqs = vec![world.irecv::<u32>(me, 1)?, world.irecv::<u32>(me, 2)?];
/// world.send(me, 2, &20u32)?;
/// let done = ranks::wait_some(&mut reqs);
/// assert_eq!(done.len(), 1);
/// assert_eq!(done[0].0, 1); // the receive with tag 2
/// assert_eq!(done[0].1.as_ref().unwrap().0, 20);
/// assert_eq!(reqs.len(), 1); // the other one is still pending
/// # Ok::<(), ranks::Error>(())
/// ```
pub fn wait_some<T>(reqs: &mut Vec<Request<'_, T>>) -> Vec<(usize, Result<T>)> {
    let Some(core) = reqs.first().map(|r| r.comm.core.clone()) else {
        return Vec::new();
    };
    let mut looks: u32 = 0;
    // Each look lands what it can (windows in runs) and sweeps before progress, so
    // receives land from the stream.
    let peers = landing_peers(reqs);
    let ready = || any_landing(&core, &peers);
    core.flush_held();
    own_pulls(reqs, &core);
    let found = core.wait_checking_first(Watch::Nobody, &ready, |core, st| {
        // Lost peers are looked for now and then (the first look is for what is here).
        looks = looks.wrapping_add(1);
        land_all(reqs, core, st);
        let found = sweep_all(reqs, core, st, looks.is_multiple_of(16));
        Ok((!found.is_empty()).then_some(found))
    });
    release_pulls(reqs, &core);
    match found {
        Ok(found) => take_found(reqs, found),
        // The wait itself cannot fail without a watch; be safe anyway.
        Err(e) => vec![(0, Err(e))],
    }
}

/// Block until one of `reqs` completes, take it out and finish it (MPI's `Waitany`):
/// `(its index, its result)`, or `None` for an empty set. When several are complete, the
/// lowest index goes first.
///
/// ```
/// let world = ranks::init()?;
/// let me = world.rank();
/// let mut reqs = vec![world.irecv::<u8>(me, 1)?, world.irecv::<u8>(me, 2)?];
/// world.send(me, 1, &1u8)?;
/// world.send(me, 2, &2u8)?;
/// let mut tags = Vec::new();
/// while let Some((_, r)) = ranks::wait_any(&mut reqs) {
///     tags.push(r?.1.tag);
/// }
/// assert_eq!(tags, [1, 2]);
/// # Ok::<(), ranks::Error>(())
/// ```
pub fn wait_any<T>(reqs: &mut Vec<Request<'_, T>>) -> Option<(usize, Result<T>)> {
    let core = reqs.first().map(|r| r.comm.core.clone())?;
    let mut looks: u32 = 0;
    let peers = landing_peers(reqs);
    let ready = || any_landing(&core, &peers);
    core.flush_held();
    own_pulls(reqs, &core);
    let found = core.wait_checking_first(Watch::Nobody, &ready, |core, st| {
        looks = looks.wrapping_add(1);
        let look = looks.is_multiple_of(16);
        land_all(reqs, core, st);
        Ok(reqs
            .iter_mut()
            .enumerate()
            .find_map(|(i, r)| r.sweep(core, st, look).map(|f| (i, f))))
    });
    release_pulls(reqs, &core);
    match found {
        Ok((i, f)) => Some((i, reqs.remove(i).finish_found(f))),
        Err(e) => Some((0, Err(e))),
    }
}

/// Take out and finish every request of `reqs` complete now, without waiting (MPI's
/// `Testsome`); an empty answer when none is.
pub fn test_some<T>(reqs: &mut Vec<Request<'_, T>>) -> Vec<(usize, Result<T>)> {
    let Some(core) = reqs.first().map(|r| r.comm.core.clone()) else {
        return Vec::new();
    };
    let found = look_once(reqs, &core, |reqs, st| sweep_all(reqs, &core, st, true));
    if found.is_empty() {
        core.idle();
    }
    take_found(reqs, found)
}

/// Take out and finish the first request of `reqs` complete now, if any (MPI's
/// `Testany`).
pub fn test_any<T>(reqs: &mut Vec<Request<'_, T>>) -> Option<(usize, Result<T>)> {
    let core = reqs.first().map(|r| r.comm.core.clone())?;
    let found = look_once(reqs, &core, |reqs, st| {
        reqs.iter_mut()
            .enumerate()
            .find_map(|(i, r)| r.sweep(&core, st, true).map(|f| (i, f)))
    });
    if found.is_none() {
        core.idle();
    }
    found.map(|(i, f)| (i, reqs.remove(i).finish_found(f)))
}

/// If every request of `reqs` is complete now, take them all out and finish them, in order
/// (MPI's `Testall`); otherwise `None`, and `reqs` stays as it was.
///
/// ```
/// let world = ranks::init()?;
/// let me = world.rank();
/// let mut reqs = vec![world.irecv::<u8>(me, 5)?];
/// assert!(ranks::test_all(&mut reqs).is_none()); // nothing sent yet
/// world.send(me, 5, &9u8)?;
/// let all = loop {
///     if let Some(all) = ranks::test_all(&mut reqs) {
///         break all;
///     }
/// };
/// assert_eq!(all[0].as_ref().unwrap().0, 9);
/// # Ok::<(), ranks::Error>(())
/// ```
pub fn test_all<T>(reqs: &mut Vec<Request<'_, T>>) -> Option<Vec<Result<T>>> {
    let Some(core) = reqs.first().map(|r| r.comm.core.clone()) else {
        return Some(Vec::new());
    };
    let found = look_once(reqs, &core, |reqs, st| sweep_all(reqs, &core, st, true));
    if found.len() < reqs.len() {
        // Completed ones stay in their requests (a receive keeps the message it matched)
        // until a later test or wait finishes them.
        core.idle();
        return None;
    }
    Some(
        take_found(reqs, found)
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
    )
}
#[cfg(test)]
mod tests {
    /// Requests are moved by value through the calls that make and collect them (a window
    /// of nonblocking receives moves each several times); above 128 bytes each move is a
    /// call to `memmove`, which showed in profiles of small-message streaming.
    #[test]
    fn a_request_is_small_enough_to_move_inline() {
        use std::mem::size_of;
        assert!(size_of::<super::Request<'static, ()>>() <= 128);
        assert!(size_of::<super::Request<'static, crate::comm::Status>>() <= 128);
        assert!(size_of::<super::Request<'static, (Vec<u8>, crate::comm::Status)>>() <= 128);
    }

    /// A landing's rank and element type code come back as they went in, whatever the
    /// type code; a rank that does not fit is no landing.
    #[test]
    fn a_landing_holds_its_rank_and_type_code_in_one_word() {
        use super::Landing;
        for (peer, code) in [(0, 0), (1, 0xb42b_2f90), (7, u32::MAX), (u32::MAX - 1, 3)] {
            assert_eq!(Landing::new(Some((peer, code))).get(), Some((peer, code)));
        }
        assert_eq!(Landing::new(None).get(), None);
        assert_eq!(Landing::NONE.get(), None);
        assert_eq!(Landing::new(Some((u32::MAX, 5))).get(), None);
        assert_eq!(std::mem::size_of::<Landing>(), 8);
    }
}
