//! Communicators: ranked groups of processes with typed point-to-point messaging.

use std::any::type_name;
use std::sync::Arc;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::{Core, FromStream, Watch};
use crate::protocol::matching::{Body, Msg, Pattern, RecvId, ANY_SOURCE, ANY_TAG};
use crate::protocol::{PullJob, Route, RvBuf, SendId, Taken, Want};
use crate::request::ReqState;
pub use crate::request::{wait_all, Request};
use crate::wire::{Encoding, Header, HEADER_LEN};

/// Largest user tag (tags are `0..=MAX_TAG`).
pub const MAX_TAG: i32 = i32::MAX;

/// Who a receive accepts messages from: a rank, or [`ANY_SOURCE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source(i32);

impl From<i32> for Source {
    fn from(v: i32) -> Self {
        Source(v)
    }
}
impl From<usize> for Source {
    fn from(v: usize) -> Self {
        Source(i32::try_from(v).unwrap_or(i32::MAX))
    }
}
impl From<u32> for Source {
    fn from(v: u32) -> Self {
        Source(i32::try_from(v).unwrap_or(i32::MAX))
    }
}

/// What arrived: who sent it, with which tag, and how many payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Rank of the sender in this communicator.
    pub source: usize,
    pub tag: i32,
    /// Payload size in bytes (for slices: elements times element size).
    pub len: usize,
}

impl Status {
    /// Number of `T` elements in a raw-slice message.
    pub fn count<T: Pod>(&self) -> usize {
        self.len / std::mem::size_of::<T>().max(1)
    }
}

/// A communicator: a group of ranks and a private message space.
#[derive(Clone)]
pub struct Comm {
    pub(crate) core: Arc<Core>,
    /// Context id of point-to-point traffic; collectives use `ctx + 1`.
    pub(crate) ctx: u32,
    pub(crate) rank: usize,
    /// World rank of each member.
    pub(crate) members: Arc<[usize]>,
    /// Sequence number of the next collective call (the same on every member, since all
    /// members call collectives in the same order); it keeps concurrent collectives apart.
    pub(crate) coll_seq: Arc<std::sync::atomic::AtomicU32>,
    /// Number of shared objects (queues, locks, ...) created on this communicator so far;
    /// like `coll_seq` it advances identically on every member.
    pub(crate) obj_seq: Arc<std::sync::atomic::AtomicU32>,
}

pub(crate) fn typecode<T>() -> u32 {
    // FNV-1a of the type's name: cheap, stable for the primitive types slices are made of.
    let mut h: u32 = 0x811c_9dc5;
    for b in type_name::<T>().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h | 1
}

impl Comm {
    pub(crate) fn world(core: Arc<Core>) -> Comm {
        let members: Arc<[usize]> = (0..core.size).collect();
        Comm {
            rank: core.rank,
            core,
            ctx: 0,
            members,
            coll_seq: Default::default(),
            obj_seq: Default::default(),
        }
    }

    /// This process's rank in the communicator, `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the communicator.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Name of the transport in use (`shm`, `uds`, or `local` for a world of one).
    pub fn transport(&self) -> &'static str {
        self.core.t.name()
    }

    /// End the whole job with `code`: the launcher stops every other rank.
    pub fn abort(&self, code: i32) -> ! {
        eprintln!("ranks: rank {} called abort({code})", self.core.rank);
        std::process::exit(if code == 0 { 1 } else { code })
    }

    fn peer(&self, dest: usize) -> Result<usize> {
        self.members.get(dest).copied().ok_or(Error::InvalidRank {
            rank: dest as i64,
            size: self.size(),
        })
    }

    fn check_send_tag(tag: i32) -> Result<()> {
        if tag < 0 {
            return Err(Error::InvalidTag(tag));
        }
        Ok(())
    }

    pub(crate) fn pattern(&self, ctx: u32, source: Source, tag: i32) -> Result<Pattern> {
        let Source(src) = source;
        if src != ANY_SOURCE && (src < 0 || src as usize >= self.size()) {
            return Err(Error::InvalidRank {
                rank: i64::from(src),
                size: self.size(),
            });
        }
        if tag < 0 && tag != ANY_TAG {
            return Err(Error::InvalidTag(tag));
        }
        Ok(Pattern { ctx, src, tag })
    }

    pub(crate) fn watch_for(&self, pat: &Pattern) -> Watch<'_> {
        if pat.src == ANY_SOURCE {
            Watch::All(&self.members)
        } else {
            Watch::Peer(self.members[pat.src as usize])
        }
    }

    // ----- sending -------------------------------------------------------------------------

    /// Blocking send of raw payload bytes. Returns when the bytes are in the transport (or,
    /// for a rendezvous, once the receiver has them).
    pub(crate) fn send_bytes(
        &self,
        ctx: u32,
        dest: usize,
        tag: i32,
        payload: &[u8],
        enc: Encoding,
        typecode: u32,
    ) -> Result<()> {
        Self::check_send_tag(tag)?;
        let peer = self.peer(dest)?;
        let h = Header::data(
            ctx,
            self.rank as u32,
            tag,
            payload.len() as u64,
            enc,
            typecode,
        );
        let core = &*self.core;
        let id = {
            let mut st = core.lock();
            match core.route(&st, peer, payload.len()) {
                Route::SelfSend => {
                    core.deliver_local(&mut st, Msg::new(&h, Body::Eager(payload.to_vec())));
                    return Ok(());
                }
                Route::Eager => {
                    if let Some(detail) = st.proto.write_error(peer) {
                        return Err(Error::PeerLost {
                            rank: peer,
                            detail: detail.to_string(),
                        });
                    }
                    if let Some(detail) = core.t.peer_gone(peer) {
                        return Err(Error::PeerLost { rank: peer, detail });
                    }
                    let id = core.write_frame(&mut st, peer, &h, payload);
                    if core.send_finished(&mut st, id)? {
                        return Ok(());
                    }
                    id
                }
                Route::Rendezvous => {
                    let (addr, len) = (payload.as_ptr() as u64, payload.len() as u64);
                    core.offer(&mut st, peer, &h, RvBuf::Borrowed { addr, len })
                }
            }
        };
        // `payload` stays borrowed (and so alive) until the receiver is done with it.
        let r = core.wait_for(Watch::Peer(peer), |core, st| {
            Ok(poll_borrowed_send(core, st, id, payload)?.then_some(()))
        });
        if r.is_err() {
            if let SendId::Rendezvous { peer, token } = id {
                core.lock().proto.abandon_send(peer, token);
            }
        }
        r
    }

    /// Nonblocking send of an owned frame buffer whose first `HEADER_LEN` bytes are free.
    pub(crate) fn isend_owned(
        &self,
        ctx: u32,
        dest: usize,
        tag: i32,
        mut buf: Vec<u8>,
        enc: Encoding,
        typecode: u32,
    ) -> Result<Request<'static, ()>> {
        Self::check_send_tag(tag)?;
        let peer = self.peer(dest)?;
        let len = buf.len() - HEADER_LEN;
        let h = Header::data(ctx, self.rank as u32, tag, len as u64, enc, typecode);
        let core = &*self.core;
        let mut st = core.lock();
        let id = match core.route(&st, peer, len) {
            Route::SelfSend => {
                buf.drain(..HEADER_LEN);
                core.deliver_local(&mut st, Msg::new(&h, Body::Eager(buf)));
                SendId::Done
            }
            Route::Rendezvous => core.offer(&mut st, peer, &h, RvBuf::Owned(buf)),
            Route::Eager => {
                buf[..HEADER_LEN].copy_from_slice(&h.encode());
                core.queue_frame(&mut st, peer, buf)
            }
        };
        drop(st);
        Ok(Request::new(
            self.clone(),
            ReqState::Send { id, data: &[] },
            |_, _, _, _| Ok(()),
        ))
    }

    /// Nonblocking send straight from a borrowed buffer: small messages are written (or
    /// queued) at once; large ones are pulled by the receiver from `payload`, which the
    /// returned request borrows until it completes.
    pub(crate) fn isend_borrowed<'a>(
        &self,
        ctx: u32,
        dest: usize,
        tag: i32,
        payload: &'a [u8],
        enc: Encoding,
        typecode: u32,
    ) -> Result<Request<'a, ()>> {
        Self::check_send_tag(tag)?;
        let peer = self.peer(dest)?;
        let core = &*self.core;
        let h = Header::data(
            ctx,
            self.rank as u32,
            tag,
            payload.len() as u64,
            enc,
            typecode,
        );
        let mut st = core.lock();
        let id = match core.route(&st, peer, payload.len()) {
            Route::SelfSend => {
                core.deliver_local(&mut st, Msg::new(&h, Body::Eager(payload.to_vec())));
                SendId::Done
            }
            Route::Rendezvous => {
                let (addr, len) = (payload.as_ptr() as u64, payload.len() as u64);
                core.offer(&mut st, peer, &h, RvBuf::Borrowed { addr, len })
            }
            Route::Eager => core.write_frame(&mut st, peer, &h, payload),
        };
        drop(st);
        Ok(Request::new(
            self.clone(),
            ReqState::Send { id, data: payload },
            |_, _, _, _| Ok(()),
        ))
    }

    /// Send a serde value to `dest` with `tag`.
    ///
    /// Returns once the message is on its way; like MPI's standard mode, a large message may
    /// wait until the receiver takes it.
    pub fn send<T: Serialize + ?Sized>(&self, dest: usize, tag: i32, value: &T) -> Result<()> {
        let bytes = encode(value)?;
        self.send_bytes(self.ctx, dest, tag, &bytes, Encoding::Serde, 0)
    }

    /// Send a slice of plain numbers (no serde, no copy into an intermediate buffer).
    pub fn send_slice<T: Pod>(&self, dest: usize, tag: i32, data: &[T]) -> Result<()> {
        self.send_bytes(
            self.ctx,
            dest,
            tag,
            bytemuck::cast_slice(data),
            Encoding::Raw,
            typecode::<T>(),
        )
    }

    /// Nonblocking send of a serde value; the value is encoded before this returns.
    pub fn isend<T: Serialize + ?Sized>(
        &self,
        dest: usize,
        tag: i32,
        value: &T,
    ) -> Result<Request<'static, ()>> {
        let mut buf = vec![0u8; HEADER_LEN];
        buf = postcard::to_extend(value, buf).map_err(|e| Error::Encode(e.to_string()))?;
        self.isend_owned(self.ctx, dest, tag, buf, Encoding::Serde, 0)
    }

    /// Nonblocking send of a slice of plain numbers, without copying it: the request
    /// borrows `data` until it completes (dropping it unfinished waits for completion).
    /// As with MPI, the buffer must outlive the transfer: leaking the request with
    /// `mem::forget` and freeing the buffer lets a receiver that pulls a large message read
    /// whatever the memory then holds (no memory unsafety here; wrong data there).
    pub fn isend_slice<'a, T: Pod>(
        &self,
        dest: usize,
        tag: i32,
        data: &'a [T],
    ) -> Result<Request<'a, ()>> {
        self.isend_borrowed(
            self.ctx,
            dest,
            tag,
            bytemuck::cast_slice(data),
            Encoding::Raw,
            typecode::<T>(),
        )
    }

    // ----- receiving -----------------------------------------------------------------------

    /// Post a receive: the message at once if one is here with its bytes; `want` says who
    /// pulls a rendezvous message it matches.
    pub(crate) fn post(&self, pat: Pattern, want: Want) -> ReqState<'static> {
        match self.core.lock().proto.post(pat, want) {
            Ok(msg) => ReqState::Matched(Taken::Msg(msg)),
            Err(id) => ReqState::Recv { id, pat },
        }
    }

    /// Wait until receive `id` has something: its message, or (`direct`) a pull to make.
    /// A failed wait withdraws the receive.
    pub(crate) fn wait_taken(&self, id: RecvId, watch: Watch<'_>, direct: bool) -> Result<Taken> {
        let r = self
            .core
            .wait_for(watch, |_, st| Ok(st.proto.take(id, direct)));
        if r.is_err() {
            self.core.lock().proto.cancel(id);
        }
        r
    }

    /// Blocking receive of the next message matching `pat` (`direct`: a rendezvous comes
    /// back as a pull for the caller to make into its own buffer).
    pub(crate) fn recv_taken(&self, pat: Pattern, direct: bool) -> Result<Taken> {
        let want = if direct { Want::Now } else { Want::Bytes };
        match self.post(pat, want) {
            ReqState::Matched(t) => Ok(t),
            ReqState::Recv { id, pat } => self.wait_taken(id, self.watch_for(&pat), direct),
            _ => unreachable!("post yields a receive state"),
        }
    }

    /// Receive the next message matching `pat`, with its bytes here, or `None` once
    /// `deadline` passes (no deadline: wait as long as it takes). `spin_cap`: see
    /// `Core::wait_until`.
    pub(crate) fn recv_msg_until(
        &self,
        pat: Pattern,
        deadline: Option<std::time::Instant>,
        spin_cap: Option<std::time::Duration>,
        watch: bool,
    ) -> Result<Option<Msg>> {
        let id = match self.post(pat, Want::Bytes) {
            ReqState::Matched(Taken::Msg(m)) => return Ok(Some(m)),
            ReqState::Recv { id, .. } => id,
            _ => unreachable!("post yields a receive state"),
        };
        let w = if watch {
            self.watch_for(&pat)
        } else {
            Watch::Nobody
        };
        let r = self.core.wait_until(w, deadline, spin_cap, |_, st| {
            Ok(match st.proto.take(id, false) {
                Some(Taken::Msg(m)) => Some(m),
                _ => None,
            })
        });
        if !matches!(r, Ok(Some(_))) {
            self.core.lock().proto.cancel(id);
        }
        r
    }

    /// Receive a serde value from `source` (or [`ANY_SOURCE`]) with `tag` (or [`ANY_TAG`]).
    pub fn recv<T: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(T, Status)> {
        let t = self.recv_taken(self.pattern(self.ctx, source.into(), tag)?, true)?;
        self.decode(t)
    }

    /// Receive a slice of plain numbers into a new vector.
    pub fn recv_vec<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(Vec<T>, Status)> {
        self.recv_vec_pat(self.pattern(self.ctx, source.into(), tag)?)
    }

    pub(crate) fn recv_vec_pat<T: Pod>(&self, pat: Pattern) -> Result<(Vec<T>, Status)> {
        let t = self.recv_taken(pat, true)?;
        self.decode_vec(t)
    }

    /// Receive a slice of plain numbers into `buf`; the message may be shorter than `buf`
    /// (see `Status::count`), not longer.
    pub fn recv_into<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
        buf: &mut [T],
    ) -> Result<Status> {
        self.recv_into_pat(self.pattern(self.ctx, source.into(), tag)?, buf)
    }

    pub(crate) fn recv_into_pat<T: Pod>(&self, pat: Pattern, buf: &mut [T]) -> Result<Status> {
        let from = usize::try_from(pat.src).ok().map(|s| self.members[s]);
        let t = match from {
            Some(peer) if peer != self.core.rank && self.core.t.available(peer).is_some() => {
                match self.recv_fast(peer, pat, typecode::<T>(), bytemuck::cast_slice_mut(buf))? {
                    Ok(status) => return Ok(status),
                    Err(t) => t,
                }
            }
            _ => self.recv_taken(pat, true)?,
        };
        self.decode_into(t, buf)
    }

    /// A blocking receive from one peer that takes a small message straight from the
    /// peer's stream into `dst` when nothing else could claim it first (the common case of
    /// a ping-pong or a collective step); anything else goes the general way and comes back
    /// as `Err(taken)` for the caller to finish.
    fn recv_fast(
        &self,
        peer: usize,
        pat: Pattern,
        typecode: u32,
        dst: &mut [u8],
    ) -> Result<std::result::Result<Status, Taken>> {
        let core = &*self.core;
        let mut posted: Option<RecvId> = None;
        // Whether this thread is counted as waiting on the stream (from the first check on).
        let mut fast = false;
        let mut first = true;
        let stop_fast = |core: &Core, st: &mut crate::progress::State, fast: &mut bool| {
            if std::mem::replace(fast, false) {
                core.stream_waiter(st, peer, false);
            }
        };
        let ready = || core.t.available(peer).is_some_and(|n| n >= HEADER_LEN);
        let r = core.wait_checking_first(Watch::Peer(peer), &ready, |core, st| {
            if let Some(id) = posted {
                return Ok(st.proto.take(id, true).map(Err));
            }
            if std::mem::take(&mut first) {
                core.stream_waiter(st, peer, true);
                fast = true;
            }
            if st.proto.may_bypass(pat) {
                match core.recv_from_stream(st, peer, &pat, typecode, dst) {
                    FromStream::Got(h) => {
                        stop_fast(core, st, &mut fast);
                        return Ok(Some(Ok(Status {
                            source: h.src as usize,
                            tag: h.tag,
                            len: h.len as usize,
                        })));
                    }
                    FromStream::Empty => return Ok(None),
                    FromStream::No => {}
                }
            }
            stop_fast(core, st, &mut fast);
            match st.proto.post(pat, Want::Now) {
                Ok(m) => Ok(Some(Err(Taken::Msg(m)))),
                Err(id) => {
                    posted = Some(id);
                    Ok(None)
                }
            }
        });
        if fast || (r.is_err() && posted.is_some()) {
            let mut st = core.lock();
            stop_fast(core, &mut st, &mut fast);
            if let (Err(_), Some(id)) = (&r, posted) {
                st.proto.cancel(id);
            }
        }
        r
    }

    /// Nonblocking receive of a serde value.
    pub fn irecv<T: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<Request<'static, (T, Status)>> {
        let st = self.post(self.pattern(self.ctx, source.into(), tag)?, Want::Bytes);
        Ok(Request::new(self.clone(), st, |c, m, _, _| {
            c.decode(m.expect("receive"))
        }))
    }

    /// Nonblocking receive of a slice of plain numbers.
    pub fn irecv_vec<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<Request<'static, (Vec<T>, Status)>> {
        let st = self.post(self.pattern(self.ctx, source.into(), tag)?, Want::Bytes);
        Ok(Request::new(self.clone(), st, |c, m, _, _| {
            c.decode_vec(m.expect("receive"))
        }))
    }

    /// Nonblocking receive of a slice of plain numbers into `buf`, which the request
    /// borrows until it completes.
    pub fn irecv_into<'a, T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
        buf: &'a mut [T],
    ) -> Result<Request<'a, Status>> {
        self.irecv_pattern_into(self.pattern(self.ctx, source.into(), tag)?, buf)
    }

    pub(crate) fn irecv_pattern_into<'a, T: Pod>(
        &self,
        pat: Pattern,
        buf: &'a mut [T],
    ) -> Result<Request<'a, Status>> {
        fn finish<T: Pod>(
            c: &Comm,
            m: Option<Taken>,
            buf: Option<&mut [u8]>,
            _: Option<crate::request::Background>,
        ) -> Result<Status> {
            let buf: &mut [T] = bytemuck::cast_slice_mut(buf.expect("irecv_into has a buffer"));
            c.decode_into(m.expect("receive"), buf)
        }
        let st = self.post(pat, Want::Later);
        Ok(Request::with_buffer(
            self.clone(),
            st,
            finish::<T>,
            bytemuck::cast_slice_mut(buf),
        ))
    }

    /// Send `value` to `dest` and receive from `source` at the same time (no deadlock when
    /// two ranks exchange).
    pub fn sendrecv<S: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        value: &S,
        dest: usize,
        send_tag: i32,
        source: impl Into<Source>,
        recv_tag: i32,
    ) -> Result<(R, Status)> {
        let rreq = self.irecv::<R>(source, recv_tag)?;
        let sreq = self.isend(dest, send_tag, value)?;
        let got = rreq.wait()?;
        sreq.wait()?;
        Ok(got)
    }

    /// Wait for a message matching `source`/`tag` without receiving it.
    pub fn probe(&self, source: impl Into<Source>, tag: i32) -> Result<Status> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        self.core.wait_for(self.watch_for(&pat), |_, st| {
            Ok(st.proto.peek(pat).map(status_of))
        })
    }

    /// Like `probe`, but returns `None` at once when nothing matching has arrived.
    pub fn iprobe(&self, source: impl Into<Source>, tag: i32) -> Result<Option<Status>> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        self.iprobe_pat(pat)
    }

    /// `iprobe` in another context, by world rank (for primitives in their own contexts).
    pub(crate) fn iprobe_ctx(&self, ctx: u32, source: usize, tag: i32) -> Result<Option<Status>> {
        self.iprobe_pat(self.pattern(ctx, Source::from(source), tag)?)
    }

    fn iprobe_pat(&self, pat: Pattern) -> Result<Option<Status>> {
        let core = &*self.core;
        let mut st = core.lock();
        core.progress(&mut st);
        Ok(st.proto.peek(pat).map(status_of))
    }

    // ----- turning messages into values ----------------------------------------------------

    /// Pull a rendezvous message into `dst` (its exact length): from the sender's memory, or,
    /// when that is refused, as a stream the sender is asked for.
    fn land_pull(&self, job: PullJob, dst: &mut [u8]) -> Result<()> {
        let core = &*self.core;
        let pulled = matches!(core.t.pull(job.peer, job.addr, dst), Ok(true));
        {
            let mut st = core.lock();
            st.proto
                .pull_done(&job, if pulled { Ok(None) } else { Err(()) });
            // Send the Fin (or Nack) now; no general progress here, which would pull the
            // receives their owners are about to pull themselves.
            core.flush_peer(&mut st, job.peer);
        }
        if pulled {
            return Ok(());
        }
        match self.wait_taken(job.id, Watch::Peer(job.peer), true)? {
            Taken::Msg(m) => match m.body {
                Body::Eager(v) if v.len() == dst.len() => {
                    dst.copy_from_slice(&v);
                    Ok(())
                }
                Body::Failed(e) => Err(*e),
                _ => Err(Error::Malformed {
                    rank: job.peer,
                    detail: "a streamed message of the wrong length".into(),
                }),
            },
            Taken::Pull(..) => Err(Error::Malformed {
                rank: job.peer,
                detail: "a refused pull was offered again".into(),
            }),
        }
    }

    /// The payload bytes of a taken message (pulling them if they are still at the sender).
    fn payload(&self, t: Taken) -> Result<(Vec<u8>, Status)> {
        match t {
            Taken::Msg(msg) => {
                let status = status_of(&msg);
                match msg.body {
                    Body::Eager(v) => Ok((v, status)),
                    Body::Failed(e) => Err(*e),
                    Body::Remote { .. } => unreachable!("a taken message has its bytes"),
                }
            }
            Taken::Pull(job, msg) => {
                let status = status_of(&msg);
                let mut v = Vec::new();
                if v.try_reserve_exact(job.len as usize).is_err() {
                    self.release(Taken::Pull(job, msg));
                    return Err(Error::FrameTooLarge {
                        rank: status.source,
                        tag: status.tag,
                        len: status.len as u64,
                        max: self.core.tuning.max_message,
                    });
                }
                v.resize(job.len as usize, 0);
                self.land_pull(job, &mut v)?;
                Ok((v, status))
            }
        }
    }

    /// Drop a taken message nobody will receive; a sender waiting for its pull is released.
    fn release(&self, t: Taken) {
        let mut st = self.core.lock();
        match t {
            Taken::Msg(m) => st.proto.discard(m),
            Taken::Pull(job, _) => st.proto.pull_done(&job, Ok(None)),
        }
    }

    /// Give a taken message back to matching, in its place (nothing is lost).
    pub(crate) fn put_back(&self, t: Taken) {
        let mut st = self.core.lock();
        match t {
            Taken::Msg(m) => st.proto.put_back(m),
            Taken::Pull(job, m) => st.proto.unpull(&job, m),
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self, t: impl Into<Taken>) -> Result<(T, Status)> {
        let t = t.into();
        let msg = t.msg();
        if msg.enc == Encoding::Raw {
            let st = status_of(msg);
            self.release(t);
            return Err(Error::TypeMismatch {
                rank: st.source,
                tag: st.tag,
                expected: type_name::<T>(),
                detail: format!(
                    "it is a raw slice of {} bytes (sent with send_slice); receive it with recv_vec or recv_into",
                    st.len
                ),
            });
        }
        let (bytes, status) = self.payload(t)?;
        let mismatch = |detail: String| Error::TypeMismatch {
            rank: status.source,
            tag: status.tag,
            expected: type_name::<T>(),
            detail,
        };
        match postcard::take_from_bytes::<T>(&bytes) {
            Ok((v, [])) => Ok((v, status)),
            Ok((_, rest)) => Err(mismatch(format!(
                "{} of its {} bytes are left over after decoding",
                rest.len(),
                bytes.len()
            ))),
            Err(e) => Err(mismatch(format!("{e} ({} bytes)", bytes.len()))),
        }
    }

    fn check_raw<T: Pod>(&self, msg: &Msg) -> Result<()> {
        let st = status_of(msg);
        let mismatch = |detail: String| Error::TypeMismatch {
            rank: st.source,
            tag: st.tag,
            expected: type_name::<[T]>(),
            detail,
        };
        if let Body::Failed(_) = msg.body {
            return Ok(());
        }
        if msg.enc != Encoding::Raw {
            return Err(mismatch(
                "it is a serde value (sent with send); receive it with recv".into(),
            ));
        }
        if msg.typecode != typecode::<T>() {
            return Err(mismatch("its elements are of another type".into()));
        }
        if !msg
            .len()
            .is_multiple_of(std::mem::size_of::<T>().max(1) as u64)
        {
            return Err(mismatch(format!(
                "{} bytes is not a whole number of elements",
                msg.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn decode_vec<T: Pod>(&self, t: impl Into<Taken>) -> Result<(Vec<T>, Status)> {
        let t = t.into();
        if let Err(e) = self.check_raw::<T>(t.msg()) {
            self.release(t);
            return Err(e);
        }
        let n = t.msg().len() as usize / std::mem::size_of::<T>().max(1);
        let mut v = Vec::new();
        if v.try_reserve_exact(n).is_err() {
            let st = status_of(t.msg());
            self.release(t);
            return Err(Error::FrameTooLarge {
                rank: st.source,
                tag: st.tag,
                len: st.len as u64,
                max: self.core.tuning.max_message,
            });
        }
        v.resize(n, T::zeroed());
        let st = self.decode_into(t, &mut v)?;
        Ok((v, st))
    }

    pub(crate) fn decode_into<T: Pod>(&self, t: impl Into<Taken>, buf: &mut [T]) -> Result<Status> {
        let t = t.into();
        if let Err(e) = self.check_raw::<T>(t.msg()) {
            self.release(t);
            return Err(e);
        }
        let status = status_of(t.msg());
        let dst: &mut [u8] = bytemuck::cast_slice_mut(buf);
        if status.len > dst.len() {
            // Leave the message where it was so nothing is lost.
            let err = Error::InvalidArgument(format!(
                "message from rank {} with tag {} has {} bytes but the buffer holds {}",
                status.source,
                status.tag,
                status.len,
                dst.len()
            ));
            self.put_back(t);
            return Err(err);
        }
        let dst = &mut dst[..status.len];
        match t {
            Taken::Msg(msg) => match msg.body {
                Body::Eager(v) => dst.copy_from_slice(&v),
                Body::Failed(e) => return Err(*e),
                Body::Remote { .. } => unreachable!("a taken message has its bytes"),
            },
            Taken::Pull(job, _) => self.land_pull(job, dst)?,
        }
        Ok(status)
    }

    // ----- async -----------------------------------------------------------------------------

    /// Receive from an async task (tokio): the wait runs on a blocking thread.
    #[cfg(feature = "tokio")]
    pub async fn recv_async<T: DeserializeOwned + Send + 'static>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(T, Status)> {
        self.irecv::<T>(source, tag)?.wait_async().await
    }

    /// Send from an async task (tokio).
    #[cfg(feature = "tokio")]
    pub async fn send_async<T: Serialize + ?Sized>(
        &self,
        dest: usize,
        tag: i32,
        value: &T,
    ) -> Result<()> {
        self.isend(dest, tag, value)?.wait_async().await
    }
}

/// Advance a send whose payload the caller still holds: stream it if the receiver asked
/// and no thread could copy it. `Ok(true)` when done.
pub(crate) fn poll_borrowed_send(
    core: &Core,
    st: &mut crate::progress::State,
    id: SendId,
    data: &[u8],
) -> Result<bool> {
    if let SendId::Rendezvous { peer, token } = id {
        if st.proto.needs_stream(peer, token) {
            st.proto.stream_borrowed(peer, token, data);
            core.flush_peer(st, peer);
        }
    }
    core.send_finished(st, id)
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::Encode(e.to_string()))
}

pub(crate) fn status_of(m: &Msg) -> Status {
    Status {
        source: m.src as usize,
        tag: m.tag,
        len: m.len() as usize,
    }
}
