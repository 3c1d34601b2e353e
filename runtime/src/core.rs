//! The progress engine of one process: transport streams in, frames out, matching, waiting.
//!
//! All mutable state sits behind one mutex ([`State`]); blocking calls run a wait loop that
//! makes progress, checks its condition, spins briefly and then sleeps on the transport's
//! wakeup (futex doorbell or `poll`), so ranks that outnumber cores do not burn them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::{Body, Matcher, Msg};
use crate::error::{Error, Result};
use crate::transport::Transport;
use crate::wire::{Decoded, FrameDecoder, Header, Kind, HEADER_LEN, RTS_PAYLOAD_LEN};

/// Tunables read from the environment at start-up.
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
}

impl Tuning {
    /// `io_threads`: the transport moves bytes on threads of its own (QUIC), which waiting
    /// ranks must not starve by spinning.
    pub(crate) fn from_env(local_ranks: usize, io_threads: bool) -> Tuning {
        fn num(var: &str) -> Option<u64> {
            std::env::var(var).ok().and_then(|v| v.trim().parse().ok())
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let oversubscribed = local_ranks > cores || io_threads;
        Tuning {
            max_message: num("RANKS_MAX_MESSAGE").unwrap_or(1 << 32),
            rendezvous_threshold: num("RANKS_RENDEZVOUS_THRESHOLD").unwrap_or(32 << 10) as usize,
            spin: Duration::from_micros(num("RANKS_SPIN_US").unwrap_or(if oversubscribed {
                0
            } else {
                100
            })),
            yields: num("RANKS_YIELDS").unwrap_or(16) as u32,
        }
    }
}

struct Out {
    bytes: Vec<u8>,
    off: usize,
}

#[derive(Default)]
struct OutQueue {
    q: VecDeque<Out>,
    /// Frames ever enqueued / fully written.
    enqueued: u64,
    sent: u64,
}

/// Everything the engine mutates.
pub(crate) struct State {
    out: Vec<OutQueue>,
    dec: Vec<FrameDecoder>,
    pub(crate) m: Matcher,
    /// Tokens of rendezvous sends the receiver finished (`Fin`) or refused to pull (`Nack`).
    /// Only a few are ever outstanding, so plain vectors.
    fins: Vec<(usize, u64)>,
    nacks: Vec<(usize, u64)>,
    rts_data: HashMap<(usize, u64), Vec<u8>>,
    /// Owned buffers of nonblocking rendezvous sends, until the receiver is done with them.
    rts_out: HashMap<u64, Vec<u8>>,
    /// Nonblocking rendezvous sends from borrowed buffers: (peer, token) -> (address, length).
    /// A `Nack` for one is answered here, by streaming a copy of the bytes.
    rts_borrowed: HashMap<(usize, u64), (u64, u64)>,
    /// Peers a write to failed (their stream may still hold data for us to read).
    write_err: Vec<Option<String>>,
    next_token: u64,
    /// Peers whose stream became unusable, with the reason.
    broken: Vec<Option<String>>,
}

fn take_token(v: &mut Vec<(usize, u64)>, token: (usize, u64)) -> bool {
    match v.iter().position(|&t| t == token) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Which peers' loss ends a wait.
#[derive(Clone, Copy)]
pub(crate) enum Watch<'a> {
    Nobody,
    /// This world rank.
    Peer(usize),
    /// All of these world ranks (an any-source receive fails only when all are gone).
    All(&'a [usize]),
}

/// A frame to send: header plus payload bytes that follow it.
pub(crate) struct Core {
    pub rank: usize,
    pub size: usize,
    pub t: Box<dyn Transport>,
    pub tuning: Tuning,
    st: Mutex<State>,
    /// Lowest context id this process may still hand to a new communicator (the world uses
    /// 0 and 1; every communicator takes two: point-to-point and collectives).
    pub next_ctx: std::sync::atomic::AtomicU32,
}

impl Core {
    pub(crate) fn new(rank: usize, size: usize, t: Box<dyn Transport>, tuning: Tuning) -> Core {
        let st = State {
            out: (0..size).map(|_| OutQueue::default()).collect(),
            dec: (0..size)
                .map(|p| FrameDecoder::new(p, tuning.max_message))
                .collect(),
            m: Matcher::default(),
            fins: Vec::new(),
            nacks: Vec::new(),
            rts_data: HashMap::new(),
            rts_out: HashMap::new(),
            rts_borrowed: HashMap::new(),
            write_err: vec![None; size],
            next_token: 1,
            broken: vec![None; size],
        };
        Core {
            rank,
            size,
            t,
            tuning,
            st: Mutex::new(st),
            next_ctx: std::sync::atomic::AtomicU32::new(2),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than the panic itself; keep going rather than poison every call.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Move bytes: flush queued frames, read and dispatch incoming frames. Never blocks.
    pub(crate) fn progress(&self, st: &mut State) -> bool {
        let mut any = false;
        for peer in 0..self.size {
            if peer == self.rank || st.broken[peer].is_some() {
                continue;
            }
            if st.write_err[peer].is_none() {
                any |= self.flush(st, peer);
            }
            if !self.t.readable(peer) {
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
                    Ok(Some(d)) => self.dispatch(st, peer, d),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(peer, error = %e, "dropping peer stream");
                        st.broken[peer] = Some(e.to_string());
                        break;
                    }
                }
            }
            if read_any {
                self.t.read_done(peer);
                any = true;
            }
        }
        any
    }

    fn flush(&self, st: &mut State, peer: usize) -> bool {
        let oq = &mut st.out[peer];
        let mut wrote = false;
        while let Some(f) = oq.q.front_mut() {
            match self.t.write(peer, &f.bytes[f.off..]) {
                Ok(n) => {
                    f.off += n;
                    wrote |= n > 0;
                    if f.off < f.bytes.len() {
                        break;
                    }
                    oq.q.pop_front();
                    oq.sent += 1;
                }
                Err(e) => {
                    st.write_err[peer] = Some(e.to_string());
                    oq.q.clear();
                    break;
                }
            }
        }
        if wrote {
            self.t.notify(peer);
        }
        wrote
    }

    fn dispatch(&self, st: &mut State, peer: usize, d: Decoded) {
        match d {
            Decoded::Frame(h, payload) => match h.kind {
                Kind::Data => st.m.incoming(Msg::new(&h, Body::Eager(payload))),
                Kind::Rts => {
                    let addr = u64::from_le_bytes(payload[0..8].try_into().expect("16 bytes"));
                    let len = u64::from_le_bytes(payload[8..16].try_into().expect("16 bytes"));
                    let body = if len > self.tuning.max_message {
                        // Release the sender; the receive that matches this reports the error.
                        self.enqueue(
                            st,
                            peer,
                            Header::control(Kind::Fin, h.aux).encode().to_vec(),
                        );
                        Body::Failed(Box::new(Error::FrameTooLarge {
                            rank: h.src as usize,
                            tag: h.tag,
                            len,
                            max: self.tuning.max_message,
                        }))
                    } else {
                        Body::Remote {
                            peer,
                            addr,
                            len,
                            token: h.aux,
                        }
                    };
                    st.m.incoming(Msg::new(&h, body));
                }
                Kind::Fin => {
                    if st.rts_out.remove(&h.aux).is_none()
                        && st.rts_borrowed.remove(&(peer, h.aux)).is_none()
                    {
                        st.fins.push((peer, h.aux));
                    }
                }
                Kind::Nack => {
                    if let Some(mut data) = st.rts_out.remove(&h.aux) {
                        // The owned buffer already has room for a header in front.
                        let len = (data.len() - HEADER_LEN) as u64;
                        let mut hd = Header::control(Kind::RtsData, h.aux);
                        hd.len = len;
                        data[..HEADER_LEN].copy_from_slice(&hd.encode());
                        self.enqueue(st, peer, data);
                    } else if let Some((addr, len)) = st.rts_borrowed.get(&(peer, h.aux)).copied() {
                        // The buffer is still borrowed by its request: copy it (a read of
                        // our own memory the kernel checks) and stream the copy.
                        let mut data = vec![0u8; HEADER_LEN + len as usize];
                        let mut hd = Header::control(Kind::RtsData, h.aux);
                        hd.len = len;
                        data[..HEADER_LEN].copy_from_slice(&hd.encode());
                        if self.t.read_own(addr, &mut data[HEADER_LEN..]) {
                            st.rts_borrowed.remove(&(peer, h.aux));
                            self.enqueue(st, peer, data);
                        } else {
                            st.nacks.push((peer, h.aux));
                        }
                    } else {
                        st.nacks.push((peer, h.aux));
                    }
                }
                Kind::RtsData => {
                    st.rts_data.insert((peer, h.aux), payload);
                }
            },
            Decoded::TooLarge(h) => {
                let err = Error::FrameTooLarge {
                    rank: h.src as usize,
                    tag: h.tag,
                    len: h.len,
                    max: self.tuning.max_message,
                };
                st.m.incoming(Msg::new(&h, Body::Failed(Box::new(err))))
            }
        }
    }

    /// A message to ourselves: straight to matching, and wake our other threads.
    pub(crate) fn deliver_local(&self, st: &mut State, msg: Msg) {
        st.m.incoming(msg);
        self.t.wake_self();
    }

    /// Queue a complete frame for `peer` and try to write it now. Returns its sequence number.
    pub(crate) fn enqueue(&self, st: &mut State, peer: usize, bytes: Vec<u8>) -> u64 {
        let oq = &mut st.out[peer];
        let seq = oq.enqueued;
        oq.enqueued += 1;
        oq.q.push_back(Out { bytes, off: 0 });
        if oq.q.len() == 1 {
            self.flush(st, peer);
        }
        seq
    }

    /// Send header + payload to `peer`, writing straight from `payload` when the stream has
    /// room; whatever does not fit is copied into the queue. Returns the frame's sequence.
    pub(crate) fn write_frame(
        &self,
        st: &mut State,
        peer: usize,
        h: &Header,
        payload: &[u8],
    ) -> u64 {
        if !st.out[peer].q.is_empty() || st.write_err[peer].is_some() {
            let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
            v.extend_from_slice(&h.encode());
            v.extend_from_slice(payload);
            return self.enqueue(st, peer, v);
        }
        let hb = h.encode();
        let r = self.t.write2(peer, &hb, payload);
        let done = *r.as_ref().unwrap_or(&0);
        if done > 0 {
            self.t.notify(peer);
        }
        let oq = &mut st.out[peer];
        let seq = oq.enqueued;
        oq.enqueued += 1;
        if let Err(e) = r {
            st.write_err[peer] = Some(e.to_string());
            oq.sent += 1;
            return seq;
        }
        let total = HEADER_LEN + payload.len();
        if done == total {
            oq.sent += 1;
        } else {
            let mut rest = Vec::with_capacity(total - done);
            if done < HEADER_LEN {
                rest.extend_from_slice(&hb[done..]);
                rest.extend_from_slice(payload);
            } else {
                rest.extend_from_slice(&payload[done - HEADER_LEN..]);
            }
            oq.q.push_back(Out {
                bytes: rest,
                off: 0,
            });
        }
        seq
    }

    /// Whether frame `seq` to `peer` is fully written to the transport.
    pub(crate) fn frame_sent(&self, st: &State, peer: usize, seq: u64) -> bool {
        st.out[peer].sent > seq
    }

    pub(crate) fn new_token(&self, st: &mut State) -> u64 {
        let t = st.next_token;
        st.next_token += 1;
        t
    }

    /// Register the owned buffer (header space + payload) of a nonblocking rendezvous send.
    pub(crate) fn start_rts_owned(
        &self,
        st: &mut State,
        peer: usize,
        h: &Header,
        buf: Vec<u8>,
    ) -> u64 {
        let token = self.new_token(st);
        let addr = buf[HEADER_LEN..].as_ptr() as u64;
        let len = (buf.len() - HEADER_LEN) as u64;
        st.rts_out.insert(token, buf);
        self.send_rts(st, peer, h, token, addr, len);
        token
    }

    pub(crate) fn send_rts(
        &self,
        st: &mut State,
        peer: usize,
        h: &Header,
        token: u64,
        addr: u64,
        len: u64,
    ) {
        let mut rh = *h;
        rh.kind = Kind::Rts;
        rh.len = RTS_PAYLOAD_LEN;
        rh.aux = token;
        let mut v = Vec::with_capacity(HEADER_LEN + 16);
        v.extend_from_slice(&rh.encode());
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        self.enqueue(st, peer, v);
    }

    /// Whether a nonblocking rendezvous send is finished with its buffer.
    pub(crate) fn rts_owned_done(&self, st: &State, token: u64) -> bool {
        !st.rts_out.contains_key(&token)
    }

    pub(crate) fn take_fin(&self, st: &mut State, peer: usize, token: u64) -> bool {
        take_token(&mut st.fins, (peer, token))
    }

    pub(crate) fn take_nack(&self, st: &mut State, peer: usize, token: u64) -> bool {
        take_token(&mut st.nacks, (peer, token))
    }

    /// Register a nonblocking rendezvous send from a borrowed buffer.
    pub(crate) fn start_rts_borrowed(
        &self,
        st: &mut State,
        peer: usize,
        h: &Header,
        data: &[u8],
    ) -> u64 {
        let token = self.new_token(st);
        let (addr, len) = (data.as_ptr() as u64, data.len() as u64);
        st.rts_borrowed.insert((peer, token), (addr, len));
        self.send_rts(st, peer, h, token, addr, len);
        token
    }

    /// Whether a borrowed rendezvous send is done with its buffer (pulled, or copied and
    /// streamed after a `Nack`).
    pub(crate) fn rts_borrowed_done(&self, st: &State, peer: usize, token: u64) -> bool {
        !st.rts_borrowed.contains_key(&(peer, token))
    }

    /// Forget a borrowed rendezvous send whose peer is gone.
    pub(crate) fn drop_rts_borrowed(&self, st: &mut State, peer: usize, token: u64) {
        st.rts_borrowed.remove(&(peer, token));
    }

    /// Why the last write to `peer` failed, if it did.
    pub(crate) fn write_error(&self, st: &State, peer: usize) -> Option<String> {
        st.write_err[peer].clone()
    }

    pub(crate) fn take_rts_data(&self, st: &mut State, peer: usize, token: u64) -> Option<Vec<u8>> {
        st.rts_data.remove(&(peer, token))
    }

    fn gone(&self, st: &State, peer: usize) -> Option<String> {
        st.broken[peer]
            .clone()
            .or_else(|| st.write_err[peer].clone())
            .or_else(|| self.t.peer_gone(peer))
    }

    /// `PeerLost`, or `Truncated` when the peer went away in the middle of a frame.
    fn lost_error(&self, st: &State, rank: usize, detail: String) -> Error {
        if st.dec[rank].mid_frame() {
            return Error::Truncated {
                rank,
                detail: format!("its stream ended inside a frame ({detail})"),
            };
        }
        Error::PeerLost { rank, detail }
    }

    fn check_watch(&self, st: &State, watch: Watch<'_>) -> Option<(usize, String)> {
        match watch {
            Watch::Nobody => None,
            Watch::Peer(p) if p == self.rank => None,
            Watch::Peer(p) => self.gone(st, p).map(|why| (p, why)),
            Watch::All(ps) => {
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
        mut check: impl FnMut(&Core, &mut State) -> Result<Option<R>>,
    ) -> Result<Option<R>> {
        let spin = spin_cap.map_or(self.tuning.spin, |c| c.min(self.tuning.spin));
        let max_yields = if spin_cap.is_some() {
            1
        } else {
            self.tuning.yields
        };
        let mut start: Option<Instant> = None;
        let mut yields = 0;
        let mut iter: u32 = 0;
        loop {
            {
                let mut st = self.lock();
                // Peer loss is checked before progress (so everything the peer sent before it
                // went is read first), and only now and then while spinning.
                let lost = if iter.is_multiple_of(64) {
                    self.check_watch(&st, watch)
                } else {
                    None
                };
                self.progress(&mut st);
                if let Some(r) = check(self, &mut st)? {
                    return Ok(Some(r));
                }
                if let Some((rank, detail)) = lost {
                    return Err(self.lost_error(&st, rank, detail));
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
                continue;
            }
            if yields < max_yields {
                yields += 1;
                std::thread::yield_now();
                continue;
            }
            let want_write: Vec<usize> = {
                let st = self.lock();
                (0..self.size)
                    .filter(|&p| !st.out[p].q.is_empty())
                    .collect()
            };
            let mut outcome: Option<Result<R>> = None;
            let mut nap = Duration::from_millis(50);
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
        }
    }
}
