//! Communicators: ranked groups of processes with typed point-to-point messaging.

use std::any::type_name;
use std::sync::Arc;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::{Core, State, Watch};
use crate::engine::{Body, Msg, Pattern, RecvId, ANY_SOURCE, ANY_TAG};
use crate::error::{Error, Result};
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

    fn watch_for(&self, pat: &Pattern) -> Watch<'_> {
        if pat.src == ANY_SOURCE {
            Watch::All(&self.members)
        } else {
            Watch::Peer(self.members[pat.src as usize])
        }
    }

    // ----- sending -------------------------------------------------------------------------

    /// Blocking send of raw payload bytes. Returns when the bytes are in the transport (or,
    /// for a rendezvous, once the receiver has pulled them).
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
        if peer == core.rank {
            core.deliver_local(
                &mut core.lock(),
                Msg::new(&h, Body::Eager(payload.to_vec())),
            );
            return Ok(());
        }
        if payload.len() >= core.tuning.rendezvous_threshold && core.t.can_pull(peer) {
            let token = {
                let mut st = core.lock();
                let token = core.new_token(&mut st);
                core.send_rts(
                    &mut st,
                    peer,
                    &h,
                    token,
                    payload.as_ptr() as u64,
                    payload.len() as u64,
                );
                token
            };
            // `payload` stays borrowed (and so alive) until the receiver says it is done.
            let streamed = core.wait_for(Watch::Peer(peer), |core, st| {
                if core.take_fin(st, peer, token) {
                    return Ok(Some(None));
                }
                if core.take_nack(st, peer, token) {
                    // The receiver cannot pull: stream the bytes instead.
                    let mut dh = crate::wire::Header::control(crate::wire::Kind::RtsData, token);
                    dh.len = payload.len() as u64;
                    return Ok(Some(Some(core.write_frame(st, peer, &dh, payload))));
                }
                Ok(None)
            })?;
            if let Some(seq) = streamed {
                core.wait_for(Watch::Peer(peer), |core, st| {
                    Ok(core.frame_sent(st, peer, seq).then_some(()))
                })?;
            }
            return Ok(());
        }
        if let Some(detail) = core.t.peer_gone(peer) {
            return Err(Error::PeerLost { rank: peer, detail });
        }
        let seq = {
            let mut st = core.lock();
            let seq = core.write_frame(&mut st, peer, &h, payload);
            if let Some(detail) = core.write_error(&st, peer) {
                return Err(Error::PeerLost { rank: peer, detail });
            }
            if core.frame_sent(&st, peer, seq) {
                return Ok(());
            }
            seq
        };
        core.wait_for(Watch::Peer(peer), |core, st| {
            Ok(core.frame_sent(st, peer, seq).then_some(()))
        })
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
        let state = if peer == core.rank {
            buf.drain(..HEADER_LEN);
            core.deliver_local(&mut st, Msg::new(&h, Body::Eager(buf)));
            ReqState::Done
        } else if len >= core.tuning.rendezvous_threshold && core.t.can_pull(peer) {
            ReqState::SendRts {
                peer,
                token: core.start_rts_owned(&mut st, peer, &h, buf),
            }
        } else {
            buf[..HEADER_LEN].copy_from_slice(&h.encode());
            ReqState::Send {
                peer,
                seq: core.enqueue(&mut st, peer, buf),
            }
        };
        drop(st);
        Ok(Request::new(self.clone(), state, |_, _, _, _| Ok(())))
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
        let state = if peer == core.rank {
            core.deliver_local(&mut st, Msg::new(&h, Body::Eager(payload.to_vec())));
            ReqState::Done
        } else if payload.len() >= core.tuning.rendezvous_threshold && core.t.can_pull(peer) {
            let token = core.start_rts_borrowed(&mut st, peer, &h, payload);
            ReqState::SendRtsBorrowed {
                peer,
                token,
                data: payload,
            }
        } else {
            ReqState::Send {
                peer,
                seq: core.write_frame(&mut st, peer, &h, payload),
            }
        };
        drop(st);
        Ok(Request::new(self.clone(), state, |_, _, _, _| Ok(())))
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

    /// Post a receive in context `ctx`: the message at once if one is queued.
    pub(crate) fn post(&self, pat: Pattern) -> ReqState<'static> {
        match self.core.lock().m.post(pat) {
            Ok(msg) => ReqState::Matched(msg),
            Err(id) => ReqState::Recv { id, pat },
        }
    }

    /// Blocking receive of the next message matching `pat`.
    pub(crate) fn recv_msg(&self, pat: Pattern) -> Result<Msg> {
        match self.post(pat) {
            ReqState::Matched(m) => Ok(m),
            ReqState::Recv { id, pat } => self.wait_recv(id, pat),
            _ => unreachable!("post yields a receive state"),
        }
    }

    /// Receive the next message matching `pat`, or `None` once `deadline` passes (no
    /// deadline: wait as long as it takes). `spin_cap`: see `Core::wait_until`.
    pub(crate) fn recv_msg_until(
        &self,
        pat: Pattern,
        deadline: Option<std::time::Instant>,
        spin_cap: Option<std::time::Duration>,
        watch: bool,
    ) -> Result<Option<Msg>> {
        let id = match self.post(pat) {
            ReqState::Matched(m) => return Ok(Some(m)),
            ReqState::Recv { id, .. } => id,
            _ => unreachable!("post yields a receive state"),
        };
        let w = if watch {
            self.watch_for(&pat)
        } else {
            Watch::Nobody
        };
        let r = self
            .core
            .wait_until(w, deadline, spin_cap, |_, st| Ok(st.m.take(id)));
        if !matches!(r, Ok(Some(_))) {
            self.core.lock().m.cancel(id);
        }
        r
    }

    fn wait_recv(&self, id: RecvId, pat: Pattern) -> Result<Msg> {
        let r = self
            .core
            .wait_for(self.watch_for(&pat), |_, st| Ok(st.m.take(id)));
        if r.is_err() {
            self.core.lock().m.cancel(id);
        }
        r
    }

    /// Receive a serde value from `source` (or [`ANY_SOURCE`]) with `tag` (or [`ANY_TAG`]).
    pub fn recv<T: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(T, Status)> {
        let msg = self.recv_msg(self.pattern(self.ctx, source.into(), tag)?)?;
        self.decode(msg)
    }

    /// Receive a slice of plain numbers into a new vector.
    pub fn recv_vec<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(Vec<T>, Status)> {
        let msg = self.recv_msg(self.pattern(self.ctx, source.into(), tag)?)?;
        self.decode_vec(msg)
    }

    /// Receive a slice of plain numbers into `buf`; the message may be shorter than `buf`
    /// (see `Status::count`), not longer.
    pub fn recv_into<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
        buf: &mut [T],
    ) -> Result<Status> {
        let msg = self.recv_msg(self.pattern(self.ctx, source.into(), tag)?)?;
        self.decode_into(msg, buf)
    }

    /// Nonblocking receive of a serde value.
    pub fn irecv<T: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<Request<'static, (T, Status)>> {
        let st = self.post(self.pattern(self.ctx, source.into(), tag)?);
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
        let st = self.post(self.pattern(self.ctx, source.into(), tag)?);
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
            m: Option<Msg>,
            buf: Option<&mut [u8]>,
            _: Option<Background>,
        ) -> Result<Status> {
            let buf: &mut [T] = bytemuck::cast_slice_mut(buf.expect("irecv_into has a buffer"));
            c.decode_into(m.expect("receive"), buf)
        }
        let st = self.post(pat);
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
            Ok(st.m.peek(pat).map(status_of))
        })
    }

    /// Like `probe`, but returns `None` at once when nothing matching has arrived.
    pub fn iprobe(&self, source: impl Into<Source>, tag: i32) -> Result<Option<Status>> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        let core = &*self.core;
        let mut st = core.lock();
        core.progress(&mut st);
        Ok(st.m.peek(pat).map(status_of))
    }

    /// `iprobe` in another context, by world rank (for primitives in their own contexts).
    pub(crate) fn iprobe_ctx(&self, ctx: u32, source: usize, tag: i32) -> Result<Option<Status>> {
        let pat = self.pattern(ctx, Source::from(source), tag)?;
        let core = &*self.core;
        let mut st = core.lock();
        core.progress(&mut st);
        Ok(st.m.peek(pat).map(status_of))
    }

    // ----- turning messages into values ----------------------------------------------------

    /// The message's payload bytes, pulling them from the sender if they are still there.
    fn payload(&self, msg: Msg) -> Result<(Vec<u8>, Status)> {
        let status = status_of(&msg);
        let bytes = match msg.body {
            Body::Eager(v) => v,
            Body::Failed(e) => return Err(*e),
            Body::Remote {
                peer,
                addr,
                len,
                token,
            } => {
                let mut v = Vec::new();
                if v.try_reserve_exact(len as usize).is_err() {
                    self.discard_remote(peer, token);
                    return Err(Error::FrameTooLarge {
                        rank: status.source,
                        tag: status.tag,
                        len,
                        max: self.core.tuning.max_message,
                    });
                }
                v.resize(len as usize, 0);
                self.pull_into(peer, addr, token, &mut v)?;
                v
            }
        };
        Ok((bytes, status))
    }

    /// Fill `dst` with a rendezvous message's bytes: pull them, or ask the sender to stream.
    fn pull_into(&self, peer: usize, addr: u64, token: u64, dst: &mut [u8]) -> Result<()> {
        let core = &*self.core;
        if core.t.pull(peer, addr, dst)? {
            let mut st = core.lock();
            core.enqueue(
                &mut st,
                peer,
                Header::control(crate::wire::Kind::Fin, token)
                    .encode()
                    .to_vec(),
            );
            return Ok(());
        }
        {
            let mut st = core.lock();
            core.enqueue(
                &mut st,
                peer,
                Header::control(crate::wire::Kind::Nack, token)
                    .encode()
                    .to_vec(),
            );
        }
        let data = core.wait_for(Watch::Peer(peer), |core, st| {
            Ok(core.take_rts_data(st, peer, token))
        })?;
        if data.len() != dst.len() {
            return Err(Error::Malformed {
                rank: peer,
                detail: format!(
                    "streamed {} bytes for a {}-byte message",
                    data.len(),
                    dst.len()
                ),
            });
        }
        dst.copy_from_slice(&data);
        Ok(())
    }

    /// Drop a message nobody will receive; a sender waiting to have it pulled is released.
    fn discard(&self, msg: Msg) {
        if let Body::Remote { peer, token, .. } = msg.body {
            self.discard_remote(peer, token);
        }
    }

    fn discard_remote(&self, peer: usize, token: u64) {
        let core = &*self.core;
        let mut st = core.lock();
        let fin = Header::control(crate::wire::Kind::Fin, token)
            .encode()
            .to_vec();
        core.enqueue(&mut st, peer, fin);
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self, msg: Msg) -> Result<(T, Status)> {
        let enc = msg.enc;
        if enc == Encoding::Raw {
            let st = status_of(&msg);
            self.discard(msg);
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
        let (bytes, status) = self.payload(msg)?;
        let mismatch = |detail: String| Error::TypeMismatch {
            rank: status.source,
            tag: status.tag,
            expected: type_name::<T>(),
            detail,
        };
        if enc == Encoding::Raw {
            return Err(mismatch(format!(
                "it is a raw slice of {} bytes (sent with send_slice); receive it with recv_vec or recv_into",
                bytes.len()
            )));
        }
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

    pub(crate) fn decode_vec<T: Pod>(&self, msg: Msg) -> Result<(Vec<T>, Status)> {
        if let Err(e) = self.check_raw::<T>(&msg) {
            self.discard(msg);
            return Err(e);
        }
        let n = msg.len() as usize / std::mem::size_of::<T>().max(1);
        let mut v = vec![T::zeroed(); n];
        let st = self.decode_into(msg, &mut v)?;
        Ok((v, st))
    }

    pub(crate) fn decode_into<T: Pod>(&self, msg: Msg, buf: &mut [T]) -> Result<Status> {
        if let Err(e) = self.check_raw::<T>(&msg) {
            self.discard(msg);
            return Err(e);
        }
        let status = status_of(&msg);
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
            self.core.lock().m.incoming_front(msg);
            return Err(err);
        }
        let dst = &mut dst[..status.len];
        match msg.body {
            Body::Eager(v) => dst.copy_from_slice(&v),
            Body::Failed(e) => return Err(*e),
            Body::Remote {
                peer, addr, token, ..
            } => self.pull_into(peer, addr, token, dst)?,
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

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::Encode(e.to_string()))
}

fn status_of(m: &Msg) -> Status {
    Status {
        source: m.src as usize,
        tag: m.tag,
        len: m.len() as usize,
    }
}

/// Where a nonblocking operation stands.
pub(crate) enum ReqState<'a> {
    Send {
        peer: usize,
        seq: u64,
    },
    SendRts {
        peer: usize,
        token: u64,
    },
    SendRtsBorrowed {
        peer: usize,
        token: u64,
        data: &'a [u8],
    },
    Recv {
        id: RecvId,
        pat: Pattern,
    },
    Matched(Msg),
    /// Runs on its own thread (nonblocking collectives).
    Thread(std::thread::JoinHandle<Background>),
    Done,
}

/// Turns the matched message (receives) into the result, using the borrowed buffer if any.
type Finish<T> = fn(&Comm, Option<Msg>, Option<&mut [u8]>, Option<Background>) -> Result<T>;

/// What a background operation (a nonblocking collective) hands back: a boxed `Result<T>`.
pub(crate) type Background = Box<dyn std::any::Any + Send>;

/// A nonblocking operation in flight. `wait` blocks for its result, `test` polls.
///
/// A request may borrow the buffer it sends from or receives into (`'a`). Dropping an
/// unfinished receive withdraws it; dropping an unfinished send waits until the receiver no
/// longer needs the buffer.
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

    /// Advance the operation; true once it is complete.
    fn poll_state(&mut self, core: &Core, st: &mut State) -> bool {
        match &self.state {
            ReqState::Send { peer, seq } => core.frame_sent(st, *peer, *seq),
            ReqState::SendRts { token, .. } => core.rts_owned_done(st, *token),
            ReqState::SendRtsBorrowed { peer, token, data } => {
                let (peer, token, data) = (*peer, *token, *data);
                if core.rts_borrowed_done(st, peer, token) {
                    self.state = ReqState::Done;
                    return true;
                }
                if core.take_nack(st, peer, token) {
                    // The engine could not copy the buffer itself: stream it from here.
                    core.drop_rts_borrowed(st, peer, token);
                    let mut h = Header::control(crate::wire::Kind::RtsData, token);
                    h.len = data.len() as u64;
                    let seq = core.write_frame(st, peer, &h, data);
                    self.state = ReqState::Send { peer, seq };
                    return core.frame_sent(st, peer, seq);
                }
                false
            }
            ReqState::Recv { id, .. } => match st.m.take(*id) {
                Some(m) => {
                    self.state = ReqState::Matched(m);
                    true
                }
                None => false,
            },
            ReqState::Thread(h) => h.is_finished(),
            ReqState::Matched(_) | ReqState::Done => true,
        }
    }

    fn watch(&self) -> Option<usize> {
        match &self.state {
            ReqState::Send { peer, .. }
            | ReqState::SendRts { peer, .. }
            | ReqState::SendRtsBorrowed { peer, .. } => Some(*peer),
            ReqState::Recv { pat, .. } if pat.src != ANY_SOURCE => {
                Some(self.comm.members[pat.src as usize])
            }
            _ => None,
        }
    }

    /// Block until the operation is complete (result not yet taken).
    fn drive(&mut self) -> Result<()> {
        if let ReqState::Thread(_) = self.state {
            return Ok(()); // `complete` joins the thread
        }
        let core = self.comm.core.clone();
        let members = self.comm.members.clone();
        let any = matches!(&self.state, ReqState::Recv { pat, .. } if pat.src == ANY_SOURCE);
        let watch = match self.watch() {
            Some(p) => Watch::Peer(p),
            None if any => Watch::All(&members),
            None => Watch::Nobody,
        };
        core.wait_for(watch, |core, st| {
            Ok(self.poll_state(core, st).then_some(()))
        })
    }

    fn complete(mut self) -> Result<T> {
        let (msg, bg) = match std::mem::replace(&mut self.state, ReqState::Done) {
            ReqState::Matched(m) => (Some(m), None),
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
        (self.finish)(&self.comm, msg, buf, bg)
    }

    /// Block until the operation completes and return its result.
    pub fn wait(mut self) -> Result<T> {
        self.drive()?;
        self.complete()
    }

    /// Complete the operation if it can be without waiting; otherwise hand the request back.
    pub fn test(mut self) -> Result<std::result::Result<T, Request<'a, T>>> {
        if self.is_complete() {
            self.complete().map(Ok)
        } else {
            Ok(Err(self))
        }
    }

    /// Whether the operation has completed (makes progress; does not consume the request).
    pub fn is_complete(&mut self) -> bool {
        let core = self.comm.core.clone();
        let mut st = core.lock();
        core.progress(&mut st);
        self.poll_state(&core, &mut st)
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
            _: Option<Msg>,
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
            ReqState::Recv { id, .. } => self.comm.core.lock().m.cancel(id),
            // A message this request took but nobody consumed goes back, in its place.
            ReqState::Matched(m) => self.comm.core.lock().m.incoming_front(m),
            ReqState::Thread(h) => {
                // A collective must finish on every rank: let it run to the end.
                let _ = h.join();
            }
            state @ ReqState::SendRtsBorrowed { .. } => {
                // The receiver may still read the borrowed buffer: wait until it is done
                // (or gone; errors cannot be reported from here).
                let (peer, token) = match &state {
                    ReqState::SendRtsBorrowed { peer, token, .. } => (*peer, *token),
                    _ => unreachable!(),
                };
                self.state = state;
                if self.drive().is_err() {
                    let core = self.comm.core.clone();
                    core.drop_rts_borrowed(&mut core.lock(), peer, token);
                }
            }
            _ => {}
        }
    }
}

/// Wait for every request and collect the results in order.
pub fn wait_all<'a, T>(reqs: impl IntoIterator<Item = Request<'a, T>>) -> Result<Vec<T>> {
    reqs.into_iter().map(Request::wait).collect()
}
