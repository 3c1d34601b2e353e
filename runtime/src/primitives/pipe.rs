//! `Pipe<T>`: a channel between two ranks (`multiprocessing.Pipe`), duplex or one-way.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::PIPE_CTX;
use crate::comm::{Comm, Source};
use crate::error::{Error, Result};

#[derive(Serialize, Deserialize)]
enum Frame<T> {
    Item(T),
    Close,
    /// The end was dropped while its thread panicked: most likely its process is about to
    /// exit with a failure, which must reach the launcher before the reader's reaction.
    Broken,
}

/// How long a reader that got `Frame::Broken` waits for the writer's process to end (a
/// thread that panicked may also be caught and the process go on: then the reader gets its
/// end of stream after this).
const BROKEN_GRACE: Duration = Duration::from_secs(1);

/// One end of a pipe. Both ranks call [`Pipe::new`]; each gets its end.
///
/// ```
/// let world = ranks::init()?;
/// // Between rank 0 and the last rank (a pipe needs two ranks).
/// let last = world.size() - 1;
/// if last == 0 {
///     return Ok(());
/// }
/// if let Some(mut end) = ranks::Pipe::<Vec<u8>>::new(&world, 0, last, true)? {
///     if world.rank() == 0 {
///         end.send(&vec![1, 2, 3])?;
///     }
///     if world.rank() == last {
///         assert_eq!(end.recv()?, [1, 2, 3]);
///     }
/// }
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Pipe<T> {
    world: Comm,
    /// World rank of the other end.
    peer: usize,
    tag: i32,
    can_send: bool,
    can_recv: bool,
    closed_by_peer: bool,
    closed: bool,
    /// Sends the close frame as a `Frame<T>` (its type checked on arrival like any
    /// message), for `Drop`, which cannot name `T`'s serde bounds.
    send_close: fn(&Comm, usize, i32, bool) -> Result<()>,
    _t: PhantomData<fn(T) -> T>,
}

fn send_close<T: Serialize>(world: &Comm, peer: usize, tag: i32, broken: bool) -> Result<()> {
    let frame = if broken {
        Frame::<T>::Broken
    } else {
        Frame::<T>::Close
    };
    world.send(peer, tag, &frame)
}

impl<T: Serialize + DeserializeOwned> Pipe<T> {
    /// Connect ranks `a` and `b` of `comm`. Collective over `comm` (every rank calls it, in
    /// the same order as other shared objects); ranks other than `a` and `b` get `None`.
    /// With `duplex` false, only `a` sends and only `b` receives.
    pub fn new(comm: &Comm, a: usize, b: usize, duplex: bool) -> Result<Option<Pipe<T>>> {
        for r in [a, b] {
            if r >= comm.size() {
                return Err(Error::InvalidRank {
                    rank: r as i64,
                    size: comm.size(),
                });
            }
        }
        if a == b {
            return Err(Error::InvalidArgument(
                "a pipe needs two different ranks".into(),
            ));
        }
        let seq = comm
            .obj_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = ((u64::from(comm.ctx) << 20 | u64::from(seq)) & 0x7fff_ffff) as i32;
        let me = comm.rank();
        if me != a && me != b {
            return Ok(None);
        }
        let world = Comm::world_in(comm.core.clone(), PIPE_CTX);
        let other = if me == a { b } else { a };
        Ok(Some(Pipe {
            world,
            peer: comm.members[other],
            tag,
            can_send: duplex || me == a,
            can_recv: duplex || me == b,
            closed_by_peer: false,
            closed: false,
            send_close: send_close::<T>,
            _t: PhantomData,
        }))
    }

    /// Send an item to the other end.
    pub fn send(&self, item: &T) -> Result<()> {
        if !self.can_send {
            return Err(Error::Usage(
                "this end of a one-way pipe only receives".into(),
            ));
        }
        if self.closed {
            return Err(Error::Closed("this end of the pipe"));
        }
        self.world.send(self.peer, self.tag, &Frame::Item(item))
    }

    /// Receive the next item; `Error::EndOfStream` once the other end closed the pipe (or
    /// exited) and everything it sent has been received.
    pub fn recv(&mut self) -> Result<T> {
        self.recv_until(None)?.ok_or(Error::Timeout)
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Option<T>> {
        if !self.can_recv {
            return Err(Error::Usage("this end of a one-way pipe only sends".into()));
        }
        if self.closed_by_peer {
            return Err(Error::EndOfStream);
        }
        let pat = self
            .world
            .pattern(PIPE_CTX, Source::from(self.peer), self.tag)?;
        let msg = match self.world.recv_msg_until(pat, deadline, None, true) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(Error::PeerLost { .. }) => {
                self.closed_by_peer = true;
                return Err(Error::EndOfStream);
            }
            Err(e) => return Err(e),
        };
        match self.world.decode::<Frame<T>>(msg)?.0 {
            Frame::Item(v) => Ok(Some(v)),
            Frame::Close => {
                self.closed_by_peer = true;
                Err(Error::EndOfStream)
            }
            Frame::Broken => {
                self.closed_by_peer = true;
                self.world.core.await_end(self.peer, BROKEN_GRACE);
                Err(Error::EndOfStream)
            }
        }
    }

    /// Receive, waiting at most `timeout` (`Error::Timeout` after that).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.recv_until(Some(Instant::now() + timeout))?
            .ok_or(Error::Timeout)
    }

    /// Whether something (an item or the end of the stream) can be received, waiting at most
    /// `timeout` for it.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        if self.closed_by_peer {
            return Ok(true);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .world
                .iprobe_ctx(PIPE_CTX, self.peer, self.tag)?
                .is_some()
            {
                return Ok(true);
            }
            if self.world.core.peer_gone(self.peer).is_some() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_micros(200).min(timeout));
        }
    }

    /// Close this end: the other end's `recv` returns `EndOfStream` after what was sent.
    pub fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.can_send {
            (self.send_close)(&self.world, self.peer, self.tag, false)?;
        }
        Ok(())
    }
}

impl<T> Drop for Pipe<T> {
    fn drop(&mut self) {
        if !self.closed && self.can_send {
            self.closed = true;
            // Not `Frame::<()>`: the reader checks the frame's type, and `Frame<()>` is not
            // its `Frame<T>` (a dropped pipe read as a type mismatch instead of its end).
            // A panicking thread's end says so: the reader then lets the launcher hear of
            // this process's failure before it fails itself (the first failure sets the
            // job's exit code; a plain close raced the panic's exit code).
            let broken = std::thread::panicking();
            let _ = (self.send_close)(&self.world, self.peer, self.tag, broken);
        }
    }
}
