//! Requests: nonblocking operations in flight, waited on or tested.

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::p2p::poll_borrowed_send;
use crate::progress::{Core, State, Watch};
use crate::protocol::matching::{Pattern, RecvId};
use crate::protocol::{SendId, Taken};

/// Where a nonblocking operation stands.
pub(crate) enum ReqState<'a> {
    /// A send; `data` is the caller's payload when the request borrows it (a rendezvous the
    /// receiver may ask to have streamed), else empty.
    Send {
        id: SendId,
        /// Context the message goes in.
        ctx: u32,
        data: &'a [u8],
    },
    Recv {
        id: RecvId,
        pat: Pattern,
    },
    Matched(Taken),
    /// Runs on its own thread (nonblocking collectives).
    Thread(std::thread::JoinHandle<Background>),
    Done,
}

/// Turns the matched message (receives) into the result, using the borrowed buffer if any.
type Finish<T> = fn(&Comm, Option<Taken>, Option<&mut [u8]>, Option<Background>) -> Result<T>;

/// What a background operation (a nonblocking collective) hands back: a boxed `Result<T>`.
pub(crate) type Background = Box<dyn std::any::Any + Send>;

/// A nonblocking operation in flight. `wait` blocks for its result, `test` polls.
///
/// A request may borrow the buffer it sends from or receives into (`'a`). Dropping an
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
    comm: Comm,
    state: ReqState<'a>,
    finish: Finish<T>,
    buf: Option<&'a mut [u8]>,
}

impl<'a, T> Request<'a, T> {
    pub(crate) fn new(comm: Comm, state: ReqState<'a>, finish: Finish<T>) -> Self {
        Request {
            comm,
            state,
            finish,
            buf: None,
        }
    }

    pub(crate) fn with_buffer(
        comm: Comm,
        state: ReqState<'a>,
        finish: Finish<T>,
        buf: &'a mut [u8],
    ) -> Self {
        Request {
            comm,
            state,
            finish,
            buf: Some(buf),
        }
    }

    /// Advance the operation; true once it is complete (or failed: `complete` says how).
    /// `direct`: the caller waits now, so a rendezvous receive is pulled into its buffer.
    fn poll_state(&mut self, core: &Core, st: &mut State, direct: bool) -> Result<bool> {
        match &self.state {
            ReqState::Send { id, data, .. } => {
                let done = poll_borrowed_send(core, st, *id, data)?;
                if done {
                    self.state = ReqState::Done;
                }
                Ok(done)
            }
            ReqState::Recv { id, .. } => match st.proto.take(*id, direct) {
                Some(t) => {
                    self.state = ReqState::Matched(t);
                    Ok(true)
                }
                None => Ok(false),
            },
            ReqState::Thread(h) => Ok(h.is_finished()),
            ReqState::Matched(_) | ReqState::Done => Ok(true),
        }
    }

    /// What ends a wait on `state` when ranks die.
    fn watch<'c>(comm: &'c Comm, state: &ReqState<'_>) -> Watch<'c> {
        match state {
            ReqState::Send {
                id: SendId::Frame { peer, .. } | SendId::Rendezvous { peer, .. },
                ctx,
                ..
            } => comm.watch_peer(*ctx, *peer),
            ReqState::Recv { pat, .. } => comm.watch_for(pat),
            _ => Watch::Nobody,
        }
    }

    /// Block until the operation is complete (result not yet taken).
    fn drive(&mut self) -> Result<()> {
        match self.state {
            ReqState::Thread(_) => return Ok(()), // `complete` joins the thread
            // A send written whole at once, or a message here already: nothing to wait for.
            ReqState::Send {
                id: SendId::Done, ..
            }
            | ReqState::Matched(_)
            | ReqState::Done => return Ok(()),
            _ => {}
        }
        let comm = self.comm.clone();
        let watch = Self::watch(&comm, &self.state);
        let _doing = match &self.state {
            ReqState::Recv { pat, .. } => Some(comm.doing("wait", pat)),
            ReqState::Send {
                id: SendId::Frame { peer, .. } | SendId::Rendezvous { peer, .. },
                ctx,
                data,
            } => Some(crate::diag::step(crate::diag::Step {
                op: "wait",
                comm: *ctx,
                peer: Some(*peer),
                tag: None,
                bytes: data.len(),
            })),
            _ => None,
        };
        let _trace = match &self.state {
            ReqState::Recv { pat, .. } => comm.trace_pat("wait", pat),
            ReqState::Send {
                id: SendId::Frame { peer, .. } | SendId::Rendezvous { peer, .. },
                ctx,
                data,
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
        let recv = match self.state {
            ReqState::Recv { id, .. } => Some(id),
            _ => None,
        };
        let mut first = true;
        let r = comm.core.wait_for(watch, |core, st| {
            if let Some(id) = recv.filter(|_| std::mem::take(&mut first)) {
                // We wait now: a rendezvous it matches is pulled into our buffer.
                st.proto.set_direct(id);
            }
            Ok(self.poll_state(core, st, true)?.then_some(()))
        });
        if r.is_err() {
            self.abandon();
        }
        r
    }

    /// Give up on an operation whose wait failed (its peer is gone).
    fn abandon(&mut self) {
        let mut st = self.comm.core.lock();
        match std::mem::replace(&mut self.state, ReqState::Done) {
            ReqState::Recv { id, .. } => st.proto.cancel(id),
            ReqState::Send {
                id: SendId::Rendezvous { peer, token },
                ..
            } => st.proto.abandon_send(peer, token),
            other => self.state = other,
        }
    }

    fn complete(mut self) -> Result<T> {
        let (taken, bg) = match std::mem::replace(&mut self.state, ReqState::Done) {
            ReqState::Matched(t) => (Some(t), None),
            ReqState::Thread(h) => match h.join() {
                Ok(v) => (None, Some(v)),
                Err(_) => {
                    return Err(Error::InvalidArgument(
                        "a nonblocking collective panicked".into(),
                    ))
                }
            },
            _ => (None, None),
        };
        let buf = self.buf.take();
        (self.finish)(&self.comm, taken, buf, bg)
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
        let mut st = core.lock();
        core.progress(&mut st);
        self.poll_state(&core, &mut st, false)
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

impl<T: Send + 'static> Request<'static, T> {
    /// A request for work done on a background thread (which returns `Result<T>`).
    pub(crate) fn spawn(comm: &Comm, work: impl FnOnce() -> Result<T> + Send + 'static) -> Self {
        fn finish<T: 'static>(
            _: &Comm,
            _: Option<Taken>,
            _: Option<&mut [u8]>,
            bg: Option<Background>,
        ) -> Result<T> {
            match bg.map(|b| b.downcast::<Result<T>>()) {
                Some(Ok(r)) => *r,
                _ => Err(Error::InvalidArgument(
                    "background request lost its result".into(),
                )),
            }
        }
        let h = std::thread::spawn(move || Box::new(work()) as Background);
        Request::new(comm.clone(), ReqState::Thread(h), finish::<T>)
    }
}

impl<T> Drop for Request<'_, T> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, ReqState::Done) {
            ReqState::Recv { id, .. } => self.comm.core.lock().proto.cancel(id),
            // A message this request took but nobody consumed goes back, in its place.
            ReqState::Matched(t) => self.comm.put_back(t),
            ReqState::Thread(h) => {
                // A collective must finish on every rank: let it run to the end.
                let _ = h.join();
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
    reqs.into_iter().map(Request::wait).collect()
}
