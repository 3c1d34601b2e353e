//! Point-to-point transfers: how `Comm` moves payload bytes over the progress layer.
//!
//! The internal request API that the typed methods of `comm.rs`, the collectives and the
//! primitives are written against: blocking and nonblocking sends of raw payloads,
//! receives that come back as a message with its bytes or as a pull for the caller's own
//! buffer, and turning messages into values. Nothing above this module touches the
//! protocol's state or the transport.

use std::any::type_name;

use bytemuck::Pod;
use serde::de::DeserializeOwned;

use crate::comm::{status_of, typecode, Comm, Status};
use crate::error::{Error, Result};
use crate::progress::{Claim, Core, FromStream, StreamWait, Watch};
use crate::protocol::matching::{Body, Msg, Pattern, RecvId};
use crate::protocol::{PullJob, Route, RvBuf, SendId, Taken, Want};
use crate::request::{ReqState, Request};
use crate::trace::{self, Cat};
use crate::wire::{Encoding, Header, HEADER_LEN};

impl Comm {
    /// The header of a message from this rank of this communicator.
    fn data_header(&self, ctx: u32, tag: i32, len: usize, enc: Encoding, typecode: u32) -> Header {
        Header::data(ctx, self.rank as u32, tag, len as u64, enc, typecode)
    }

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
        self.send_bytes_as(ctx, dest, tag, payload, (enc, typecode), false)
    }

    /// [`Self::send_bytes`]; `sync`: a synchronous send, which returns only once the
    /// receiver has matched it.
    pub(crate) fn send_bytes_as(
        &self,
        ctx: u32,
        dest: usize,
        tag: i32,
        payload: &[u8],
        (enc, typecode): (Encoding, u32),
        sync: bool,
    ) -> Result<()> {
        Self::check_send_tag(tag)?;
        let peer = self.peer(dest)?;
        let _trace = trace::span("send", Cat::P2p, ctx, Some(peer), Some(tag), payload.len());
        let h = self.data_header(ctx, tag, payload.len(), enc, typecode);
        let core = &*self.core;
        // Errors leave the lock first: `settle` may wait a moment for the job board.
        let step: Result<Option<SendId>> = {
            let mut st = core.lock();
            match core.route(&st, peer, payload.len(), sync) {
                Route::SelfSend => {
                    core.deliver_local(&mut st, Msg::new(&h, Body::Eager(payload.to_vec())));
                    Ok(None)
                }
                Route::Eager => {
                    if let Some(detail) = st.proto.write_error(peer) {
                        Err(Error::PeerLost {
                            rank: peer,
                            detail: detail.to_string(),
                        })
                    } else if let Some(detail) = core.t.peer_gone(peer) {
                        Err(Error::PeerLost { rank: peer, detail })
                    } else {
                        match core.write_frame(&mut st, peer, &h, payload, false) {
                            // Written whole at once (most often): nothing to wait for.
                            SendId::Done => Ok(None),
                            id => core
                                .send_finished(&mut st, id)
                                .map(|done| (!done).then_some(id)),
                        }
                    }
                }
                Route::Rendezvous => {
                    let (addr, len) = (payload.as_ptr() as u64, payload.len() as u64);
                    Ok(Some(core.offer(
                        &mut st,
                        peer,
                        &h,
                        RvBuf::Borrowed { addr, len },
                    )))
                }
            }
        };
        let id = match step {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(()),
            Err(e) => return Err(core.settle(e)),
        };
        // `payload` stays borrowed (and so alive) until the receiver is done with it.
        let _doing = crate::diag::step(crate::diag::Step {
            op: "send",
            comm: ctx,
            peer: Some(peer),
            tag: Some(tag),
            bytes: payload.len(),
        });
        let r = core.wait_for(self.watch_step(ctx, peer, tag), |core, st| {
            Ok(poll_borrowed_send(core, st, id, payload)?.then_some(()))
        });
        if r.is_err() {
            if let SendId::Rendezvous { peer, token } = id {
                core.lock().proto.abandon_send(peer, token);
            }
        }
        r
    }

    /// Nonblocking send of an owned frame buffer whose first `HEADER_LEN` bytes are free;
    /// `sync`: complete only once the receiver has matched it.
    pub(crate) fn isend_owned(
        &self,
        ctx: u32,
        dest: usize,
        tag: i32,
        mut buf: Vec<u8>,
        (enc, typecode): (Encoding, u32),
        sync: bool,
    ) -> Result<Request<'static, ()>> {
        Self::check_send_tag(tag)?;
        let peer = self.peer(dest)?;
        let len = buf.len() - HEADER_LEN;
        let _trace = trace::span("isend", Cat::P2p, ctx, Some(peer), Some(tag), len);
        let h = self.data_header(ctx, tag, len, enc, typecode);
        let core = &*self.core;
        let mut st = core.lock();
        let id = match core.route(&st, peer, len, sync) {
            Route::SelfSend => {
                buf.drain(..HEADER_LEN);
                core.deliver_local(&mut st, Msg::new(&h, Body::Eager(buf)));
                SendId::Done
            }
            Route::Rendezvous => core.offer(&mut st, peer, &h, RvBuf::Owned(buf)),
            Route::Eager => {
                buf[..HEADER_LEN].copy_from_slice(&h.encode());
                core.queue_frame_later(&mut st, peer, buf)
            }
        };
        drop(st);
        Ok(Request::send(self.clone(), id, (ctx, tag), &[]))
    }

    /// Nonblocking send straight from a borrowed buffer: small messages are written (or
    /// queued) at once; large ones are pulled by the receiver from `payload`, which the
    /// returned request borrows until it completes. `sync`: complete only once the
    /// receiver has matched it.
    #[inline(always)]
    pub(crate) fn isend_borrowed<'a>(
        &'a self,
        ctx: u32,
        dest: usize,
        tag: i32,
        payload: &'a [u8],
        enc: (Encoding, u32),
        sync: bool,
    ) -> Result<Request<'a, ()>> {
        let id = self.start_send(ctx, dest, tag, payload, enc, sync)?;
        Ok(Request::send(self, id, (ctx, tag), payload))
    }

    /// [`Comm::isend_borrowed`] without the request: the send's id.
    #[inline(always)]
    pub(crate) fn start_send(
        &self,
        ctx: u32,
        dest: usize,
        tag: i32,
        payload: &[u8],
        (enc, typecode): (Encoding, u32),
        sync: bool,
    ) -> Result<SendId> {
        Self::check_send_tag(tag)?;
        let peer = self.peer(dest)?;
        let _trace = trace::span("isend", Cat::P2p, ctx, Some(peer), Some(tag), payload.len());
        let core = &*self.core;
        let h = self.data_header(ctx, tag, payload.len(), enc, typecode);
        let mut st = core.lock();
        let id = match core.route(&st, peer, payload.len(), sync) {
            Route::SelfSend => {
                core.deliver_local(&mut st, Msg::new(&h, Body::Eager(payload.to_vec())));
                SendId::Done
            }
            Route::Rendezvous => {
                let (addr, len) = (payload.as_ptr() as u64, payload.len() as u64);
                core.offer(&mut st, peer, &h, RvBuf::Borrowed { addr, len })
            }
            Route::Eager => core.write_frame(&mut st, peer, &h, payload, true),
        };
        drop(st);
        Ok(id)
    }

    /// Post a receive: the message at once if one is here with its bytes; `want` says who
    /// pulls a rendezvous message it matches.
    #[inline]
    pub(crate) fn post(&self, pat: Pattern, want: Want) -> std::result::Result<Msg, RecvId> {
        self.core.lock().proto.post(pat, want)
    }

    /// Take the first message matching `pat` if one is here, without waiting (a rendezvous
    /// comes back as a pull for the caller to make).
    pub(crate) fn try_take(&self, pat: Pattern) -> Option<Taken> {
        let mut st = self.core.lock();
        self.core.progress(&mut st);
        match st.proto.post(pat, Want::Now) {
            Ok(msg) => Some(Taken::Msg(msg)),
            Err(id) => {
                let t = st.proto.take(id, true);
                if t.is_none() {
                    st.proto.cancel(id);
                }
                t
            }
        }
    }

    /// Note that this thread is in `op` for messages matching `pat` (see `crate::diag`).
    pub(crate) fn doing(&self, op: &'static str, pat: &Pattern) -> crate::diag::StepGuard {
        crate::diag::step(crate::diag::Step {
            op,
            comm: pat.ctx,
            peer: usize::try_from(pat.src).ok().map(|s| self.members[s]),
            tag: (pat.tag != crate::protocol::matching::ANY_TAG).then_some(pat.tag),
            bytes: 0,
        })
    }

    /// Record a call on messages matching `pat` in the trace (see `crate::trace`).
    pub(crate) fn trace_pat(&self, op: &'static str, pat: &Pattern) -> Option<trace::Span> {
        if !trace::on() {
            return None;
        }
        let peer = usize::try_from(pat.src).ok().map(|s| self.members[s]);
        let tag = (pat.tag != crate::protocol::matching::ANY_TAG).then_some(pat.tag);
        trace::span(op, Cat::P2p, pat.ctx, peer, tag, 0)
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
        let mut trace = self.trace_pat("recv", &pat);
        let r = match self.post(pat, want) {
            Ok(m) => Ok(Taken::Msg(m)),
            Err(id) => {
                let _doing = self.doing("recv", &pat);
                self.wait_taken(id, self.watch_for(&pat), direct)
            }
        };
        if let (Some(span), Ok(t)) = (&mut trace, &r) {
            let st = status_of(t.msg());
            if let Some(&w) = self.members.get(st.source) {
                span.set_peer(w);
            }
            span.set_bytes(st.len);
        }
        r
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
        let _trace = self.trace_pat("recv", &pat);
        let id = match self.post(pat, Want::Bytes) {
            Ok(m) => return Ok(Some(m)),
            Err(id) => id,
        };
        let _doing = self.doing("recv", &pat);
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

    pub(crate) fn recv_vec_pat<T: Pod>(&self, pat: Pattern) -> Result<(Vec<T>, Status)> {
        let t = self.recv_taken(pat, true)?;
        self.decode_vec(t)
    }

    pub(crate) fn recv_into_pat<T: Pod>(&self, pat: Pattern, buf: &mut [T]) -> Result<Status> {
        let from = usize::try_from(pat.src).ok().map(|s| self.members[s]);
        let t = match from {
            Some(peer) if peer != self.core.rank && self.core.t.in_place(peer) => {
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
    pub(crate) fn recv_fast(
        &self,
        peer: usize,
        pat: Pattern,
        typecode: u32,
        dst: &mut [u8],
    ) -> Result<std::result::Result<Status, Taken>> {
        let core = &*self.core;
        let mut posted: Option<RecvId> = None;
        // Counted from the first check until the message is here or posted.
        let mut wait = StreamWait::new(peer);
        let ready = || core.frame_waiting(peer);
        let _doing = self.doing("recv", &pat);
        let _trace = self.trace_pat("recv", &pat);
        let r = core.wait_checking_first(self.watch_for(&pat), &ready, |core, st| {
            if let Some(id) = posted {
                return Ok(st.proto.take(id, true).map(Err));
            }
            wait.count(st);
            // (A frame this receive lands in parts is its own whatever was posted since.)
            if st.proto.may_bypass(pat) || core.landing_into(st, peer, dst) {
                match core.recv_from_stream(st, peer, Claim::Blocking(&pat), typecode, dst) {
                    FromStream::Got(h) => {
                        wait.uncount(st);
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
            wait.hand_back(core, st);
            match st.proto.post(pat, Want::Now) {
                Ok(m) => Ok(Some(Err(Taken::Msg(m)))),
                Err(id) => {
                    posted = Some(id);
                    Ok(st.proto.take(id, true).map(Err))
                }
            }
        });
        if wait.counted() || (r.is_err() && posted.is_some()) {
            let mut st = core.lock();
            if r.is_err() {
                core.give_up_landing(&mut st, peer, dst);
            }
            wait.uncount(&mut st);
            if let (Err(_), Some(id)) = (&r, posted) {
                st.proto.cancel(id);
            }
        }
        r
    }

    #[inline(always)]
    pub(crate) fn irecv_pattern_into<'a, T: Pod>(
        &'a self,
        pat: Pattern,
        buf: &'a mut [T],
    ) -> Result<Request<'a, Status>> {
        fn finish<T: Pod>(
            c: &Comm,
            m: &mut Option<Taken>,
            buf: Option<&mut [u8]>,
            _: Option<crate::request::Background>,
        ) -> Result<Status> {
            let buf: &mut [T] = bytemuck::cast_slice_mut(buf.expect("irecv_into has a buffer"));
            c.decode_into(m.take().expect("receive"), buf)
        }
        // From one other rank over a transport whose stream can be read in place.
        let from = usize::try_from(pat.src).ok().map(|s| self.members[s]);
        let land = from
            .filter(|&p| p != self.core.rank && self.core.t.in_place(p))
            .and_then(|peer| u32::try_from(peer).ok())
            .map(|p| (p, typecode::<T>()));
        let st = ReqState::posted(self.post(pat, Want::Later), pat);
        Ok(Request::with_buffer(
            self,
            st,
            finish::<T>,
            bytemuck::cast_slice_mut(buf),
            land,
        ))
    }

    pub(crate) fn iprobe_pat(&self, pat: Pattern) -> Result<Option<Status>> {
        let core = &*self.core;
        let found = {
            let mut st = core.lock();
            core.progress(&mut st);
            st.proto.peek(pat).map(status_of)
        };
        if found.is_none() {
            core.idle();
        }
        Ok(found)
    }

    /// Pull a rendezvous message into `dst` (its exact length): from the sender's memory, or,
    /// when that is refused, as a stream the sender is asked for.
    fn land_pull(&self, job: PullJob, dst: &mut [u8]) -> Result<()> {
        let core = &*self.core;
        let pulled = core.fetch(&job, dst, &mut |cts| {
            let mut st = core.lock();
            core.queue_frame(&mut st, job.peer, cts);
            core.flush_peer(&mut st, job.peer);
        });
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
        let _doing = crate::diag::step(crate::diag::Step {
            op: "recv",
            comm: job.ctx,
            peer: Some(job.peer),
            tag: None,
            bytes: dst.len(),
        });
        match self.wait_taken(job.id, self.watch_peer(job.ctx, job.peer), true)? {
            Taken::Msg(m) => match m.body {
                Body::Eager(v) if v.len() == dst.len() => {
                    dst.copy_from_slice(&v);
                    Ok(())
                }
                Body::Failed(e) => Err(self.core.settle(*e)),
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
                    Body::Failed(e) => Err(self.core.settle(*e)),
                    Body::Remote { .. } | Body::Landed(_) => {
                        unreachable!("a taken message has its bytes")
                    }
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
            // Not lost: it stays queued for a receive of the right kind.
            self.put_back(t);
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
        if msg.typecode != 0 && msg.typecode != crate::fingerprint::of::<T>() {
            // Sent as another type: refuse it, and leave it to be received as what it is.
            let st = status_of(msg);
            let sent = crate::fingerprint::sent_as(msg.typecode);
            self.put_back(t);
            return Err(Error::TypeMismatch {
                rank: st.source,
                tag: st.tag,
                expected: type_name::<T>(),
                detail: format!("{sent}; the message stays queued"),
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
            // Not lost: it stays queued for a receive of the right type.
            self.put_back(t);
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

    #[inline]
    pub(crate) fn decode_into<T: Pod>(&self, t: impl Into<Taken>, buf: &mut [T]) -> Result<Status> {
        let t = t.into();
        // Landed from the stream: its type and room were checked then, its bytes are in
        // `buf` already.
        if let Taken::Msg(
            m @ Msg {
                body: Body::Landed(len),
                ..
            },
        ) = &t
        {
            if len.is_multiple_of(std::mem::size_of::<T>().max(1) as u64) {
                let status = status_of(m);
                // A landed message owns nothing (its bytes are in `buf`): forgetting it
                // skips its drop, which a small message's path would otherwise call.
                std::mem::forget(t);
                return Ok(status);
            }
        }
        self.decode_into_taken(t, buf)
    }

    /// [`Comm::decode_into`] of a message that did not land: check, copy or report.
    #[inline(never)]
    fn decode_into_taken<T: Pod>(&self, t: Taken, buf: &mut [T]) -> Result<Status> {
        if let Err(e) = self.check_raw::<T>(t.msg()) {
            // Not lost: it stays queued for a receive of the right type.
            self.put_back(t);
            return Err(e);
        }
        let status = status_of(t.msg());
        let dst: &mut [u8] = bytemuck::cast_slice_mut(buf);
        if status.len > dst.len() {
            // Leave the message where it was so nothing is lost.
            let err = Error::Truncated {
                rank: status.source,
                tag: status.tag,
                len: status.len,
                capacity: dst.len(),
            };
            self.put_back(t);
            return Err(err);
        }
        let dst = &mut dst[..status.len];
        match t {
            Taken::Msg(msg) => match msg.body {
                Body::Eager(v) => dst.copy_from_slice(&v),
                Body::Failed(e) => return Err(self.core.settle(*e)),
                // Already in `dst`: the request landed it there from the stream.
                Body::Landed(_) => {}
                Body::Remote { .. } => unreachable!("a taken message has its bytes"),
            },
            Taken::Pull(job, _) => self.land_pull(job, dst)?,
        }
        Ok(status)
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
