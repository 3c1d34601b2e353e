//! The protocol core of one process, without I/O: frames in, frames out, completions.
//!
//! Nothing here touches a socket, a ring, a thread or a clock. The progress layer
//! (`crate::progress`) feeds it decoded frames ([`Protocol::handle_frame`]), asks it how a
//! send goes ([`Protocol::route`]), takes the frames it queued for each peer
//! ([`Protocol::out_front`] / [`Protocol::out_advance`]), and carries out the pulls and
//! copies it asks for ([`Protocol::claim_pull`], [`Protocol::claim_copy`]), reporting back.
//! Tests drive two or more cores through an in-memory network (`tests.rs`).
//!
//! What it keeps:
//! - per peer, the queue of frames not yet written and how many were ever written;
//! - the matcher (posted receives, unexpected messages);
//! - the request table: receives that matched a rendezvous message and are being pulled or
//!   streamed, and rendezvous sends waiting for the receiver (`Fin`, `Nack`).
//!
//! Rendezvous: a payload of at least `rendezvous_threshold` bytes to a peer that can read
//! our memory goes as an `Rts` (address, length, token). The receive that matches it pulls
//! the bytes and answers `Fin`; a receiver whose pull is refused answers `Nack`, and the
//! sender streams the bytes in an `RtsData` frame. The pull of a matched receive is made by
//! whichever thread of the process is waiting (MPI's progress rule), not only by the
//! receive's own `wait`, so a rank blocked in a send still lets its peers' sends finish.
//!
//! A large pull may be shared: the receiver answers `Cts` (clear to send: a later part of
//! the message and where in its buffer it goes), pulls the first part, and the sender,
//! if it is in the library when the `Cts` comes, writes the later part itself
//! ([`Protocol::claim_push`]). Whether it does is settled through the transport (an offer
//! the receiver withdraws when its own part is done, unless the sender took it), so a
//! sender busy elsewhere never holds the receiver up. Either way the receiver answers
//! `Fin` when all the bytes are in.

pub(crate) mod matching;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::Error;
use crate::wire::{Decoded, Header, Kind, CTS_PAYLOAD_LEN, HEADER_LEN, RTS_PAYLOAD_LEN};
use matching::{Body, Matcher, Msg, Pattern, RecvId};

/// A hasher for the request table's small integer keys: one multiply, no SipHash (which
/// showed in profiles of the small-message path).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// How a send of a payload goes: the one place that decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To ourselves: straight into our own matcher.
    SelfSend,
    /// The whole payload in one frame.
    Eager,
    /// An `Rts`; the receiver pulls (or asks for a stream).
    Rendezvous,
}

/// Where the bytes of a rendezvous send are.
#[derive(Debug)]
pub(crate) enum RvBuf {
    /// Owned by the protocol until the receiver is done; `HEADER_LEN` free bytes in front
    /// (so a refused pull streams it without a copy).
    Owned(Vec<u8>),
    /// Borrowed from a caller who keeps it alive until the send completes.
    Borrowed { addr: u64, len: u64 },
}

impl RvBuf {
    fn addr_len(&self) -> (u64, u64) {
        match self {
            RvBuf::Owned(v) => (
                v[HEADER_LEN..].as_ptr() as u64,
                (v.len() - HEADER_LEN) as u64,
            ),
            RvBuf::Borrowed { addr, len } => (*addr, *len),
        }
    }
}

#[derive(Debug)]
enum RvSendState {
    /// `Rts` sent; waiting for `Fin` or `Nack`.
    Offered,
    /// The receiver asked for a stream of a borrowed buffer: someone who can read it must
    /// copy it ([`Protocol::claim_copy`]) or stream it ([`Protocol::stream_borrowed`]).
    Nacked,
    /// A copy is being made by some thread.
    Copying,
    /// The bytes are in the out queue as frame `seq`.
    Streaming {
        seq: u64,
    },
    Failed(String),
}

#[derive(Debug)]
struct RvSend {
    buf: RvBuf,
    state: RvSendState,
}

/// A receive in the request table (it matched a rendezvous message, or is waited on).
#[derive(Debug)]
enum Slot {
    /// A matched message ready to be taken (eager bytes, pulled bytes, or an error).
    Ready(Msg),
    /// Matched a rendezvous message nobody pulls yet; `want` says who should.
    NeedPull { msg: Msg, want: Want },
    /// Some thread is pulling it. `cancelled`: the receive was withdrawn meanwhile.
    Pulling { msg: Msg, cancelled: bool },
    /// The pull was refused; `Nack` sent, waiting for `RtsData`.
    AwaitStream { msg: Msg, cancelled: bool },
}

/// Who pulls a receive's rendezvous message, and where to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Any waiting thread, into a new buffer (the receive wants the bytes in a vector).
    Bytes,
    /// The receive has a buffer of its own and will wait for it later: its owner pulls
    /// straight into that buffer; another thread pulls it (into a new buffer) only when it
    /// has waited a while without progress, so that nobody waits on it forever.
    Later,
    /// The owner waits for it now with its own buffer: only the owner pulls it.
    Now,
}

/// A pull to make: copy `len` bytes at `addr` in `peer`'s memory, then report with
/// [`Protocol::pull_done`].
#[derive(Debug)]
pub(crate) struct PullJob {
    pub id: RecvId,
    /// Context of the message (what ends a wait for its stream depends on it).
    pub ctx: u32,
    pub peer: usize,
    pub addr: u64,
    pub len: u64,
    /// The sender's token for the message (a `Cts` names it).
    pub token: u64,
}

/// A part of one of our rendezvous sends that its receiver offered us to write into its
/// memory (a `Cts`): `len` bytes at `src` here go to `dst` in `peer`'s memory, if the
/// transport's offer for `token` is still open (`Transport::push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PushJob {
    pub peer: usize,
    pub token: u64,
    pub src: u64,
    pub len: u64,
    pub dst: u64,
}

/// What a send is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendId {
    /// Nothing (self-sends, or finished).
    Done,
    /// Frame `seq` of `peer`'s out queue must be written.
    Frame { peer: usize, seq: u64 },
    /// A rendezvous: the receiver must be done with the buffer.
    Rendezvous { peer: usize, token: u64 },
}

/// Where a send stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendPoll {
    Pending,
    Done,
    /// The receiver wants the bytes of a borrowed buffer streamed and no thread could copy
    /// them: the caller holding the buffer must call [`Protocol::stream_borrowed`].
    StreamYourself,
    /// The peer can no longer take it.
    Failed(String),
}

/// What taking a receive yields.
#[derive(Debug)]
pub(crate) enum Taken {
    /// The message, with its bytes here (or the error receiving it reports).
    Msg(Msg),
    /// A rendezvous message for the caller to pull into its own buffer (then `pull_done`).
    Pull(PullJob, Msg),
}

impl Taken {
    /// The message (for a pull, its envelope).
    pub(crate) fn msg(&self) -> &Msg {
        match self {
            Taken::Msg(m) | Taken::Pull(_, m) => m,
        }
    }
}

impl From<Msg> for Taken {
    fn from(m: Msg) -> Taken {
        Taken::Msg(m)
    }
}

struct Out {
    bytes: Vec<u8>,
    off: usize,
}

#[derive(Default)]
struct OutQueue {
    q: VecDeque<Out>,
    /// Frames ever queued or written directly / fully written.
    enqueued: u64,
    sent: u64,
}

/// Settings of the protocol.
#[derive(Debug, Clone)]
pub(crate) struct ProtocolConfig {
    pub rank: usize,
    pub size: usize,
    /// Largest payload accepted from a peer.
    pub max_message: u64,
    /// Payloads at least this big go by rendezvous to peers that can pull.
    pub rendezvous_threshold: usize,
    /// Per peer: whether it can read our memory (so a rendezvous is worth offering).
    pub can_pull: Vec<bool>,
}

/// The protocol state of one process.
pub(crate) struct Protocol {
    cfg: ProtocolConfig,
    matcher: Matcher,
    out: Vec<OutQueue>,
    /// Why writing to a peer failed, if it did.
    write_err: Vec<Option<String>>,
    next_token: u64,
    sends: HashMap<(usize, u64), RvSend>,
    recvs: HashMap<RecvId, Slot>,
    /// Receives waiting for a stream, by (peer, token).
    streams: HashMap<(usize, u64), RecvId>,
    /// Nacked borrowed sends, for any thread that can copy them.
    copies: VecDeque<(usize, u64)>,
    /// Matched rendezvous receives nobody is pulling, oldest first (may hold stale ids).
    pulls: VecDeque<RecvId>,
    /// Parts of our rendezvous sends their receivers offered us to write (`Cts`).
    pushes: VecDeque<PushJob>,
    /// Large frame buffers already written out, for the next copies: a fresh large
    /// allocation costs a page fault per 4 KiB written into it (a quarter of a sender's time
    /// when it streams 256 KiB eager messages).
    spare: Vec<Vec<u8>>,
}

/// Frame buffers at least this large are kept for reuse ...
const SPARE_MIN: usize = 16 << 10;
/// ... up to this many bytes of them in all.
const SPARE_BYTES: usize = 4 << 20;

impl Protocol {
    pub(crate) fn new(cfg: ProtocolConfig) -> Protocol {
        let size = cfg.size;
        Protocol {
            cfg,
            matcher: Matcher::default(),
            out: (0..size).map(|_| OutQueue::default()).collect(),
            write_err: vec![None; size],
            next_token: 1,
            sends: HashMap::default(),
            recvs: HashMap::default(),
            streams: HashMap::default(),
            copies: VecDeque::new(),
            pulls: VecDeque::new(),
            pushes: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    /// An empty buffer for a frame of `len` bytes: a spare one if one is large enough.
    fn frame_buf(&mut self, len: usize) -> Vec<u8> {
        if len >= SPARE_MIN {
            if let Some(i) = self.spare.iter().position(|b| b.capacity() >= len) {
                let mut b = self.spare.swap_remove(i);
                b.clear();
                return b;
            }
        }
        Vec::with_capacity(len)
    }

    /// Keep a written-out frame buffer for reuse, if it is large and there is room.
    fn recycle(&mut self, b: Vec<u8>) {
        let kept: usize = self.spare.iter().map(Vec::capacity).sum();
        if b.capacity() >= SPARE_MIN && kept + b.capacity() <= SPARE_BYTES {
            self.spare.push(b);
        }
    }

    // ----- sending ---------------------------------------------------------------------------

    /// How a payload of `len` bytes to world rank `peer` goes. A synchronous send (`sync`,
    /// MPI's `ssend`) always takes the rendezvous, whose sender completes only once the
    /// receiver has matched (a receiver that cannot pull answers `Nack`, and the bytes are
    /// streamed after that).
    pub(crate) fn route(&self, peer: usize, len: usize, sync: bool) -> Route {
        if peer == self.cfg.rank {
            Route::SelfSend
        } else if sync || (len >= self.cfg.rendezvous_threshold && self.cfg.can_pull[peer]) {
            Route::Rendezvous
        } else {
            Route::Eager
        }
    }

    /// A message to ourselves goes straight to matching.
    pub(crate) fn send_self(&mut self, msg: Msg) {
        self.arrived(msg);
    }

    /// Whether a frame for `peer` may be written straight to the transport now (nothing is
    /// queued ahead of it and writes work).
    pub(crate) fn can_write_direct(&self, peer: usize) -> bool {
        self.out[peer].q.is_empty() && self.write_err[peer].is_none()
    }

    /// A frame of header `h` and `payload` of which the transport took `written` bytes
    /// directly; the rest is queued (copied). Returns what the send waits for.
    #[inline]
    pub(crate) fn wrote_direct(
        &mut self,
        peer: usize,
        h: &Header,
        payload: &[u8],
        written: usize,
    ) -> SendId {
        if written >= HEADER_LEN + payload.len() {
            let oq = &mut self.out[peer];
            oq.enqueued += 1;
            oq.sent += 1;
            return SendId::Done;
        }
        self.wrote_part(peer, h, payload, written)
    }

    /// [`Protocol::wrote_direct`] of a frame the transport took only part of.
    #[inline(never)]
    fn wrote_part(&mut self, peer: usize, h: &Header, payload: &[u8], written: usize) -> SendId {
        let total = HEADER_LEN + payload.len();
        let mut rest = self.frame_buf(total - written);
        if written < HEADER_LEN {
            rest.extend_from_slice(&h.encode()[written..]);
            rest.extend_from_slice(payload);
        } else {
            rest.extend_from_slice(&payload[written - HEADER_LEN..]);
        }
        let oq = &mut self.out[peer];
        let seq = oq.enqueued;
        oq.enqueued += 1;
        oq.q.push_back(Out {
            bytes: rest,
            off: 0,
        });
        SendId::Frame { peer, seq }
    }

    /// Queue a whole frame (header included) for `peer`.
    pub(crate) fn queue_frame(&mut self, peer: usize, bytes: Vec<u8>) -> SendId {
        let oq = &mut self.out[peer];
        let seq = oq.enqueued;
        oq.enqueued += 1;
        if self.write_err[peer].is_some() {
            oq.sent += 1; // dropped: whoever waits learns of the error
        } else {
            oq.q.push_back(Out { bytes, off: 0 });
        }
        SendId::Frame { peer, seq }
    }

    /// Queue header + payload (copied) for `peer`.
    pub(crate) fn queue_copy(&mut self, peer: usize, h: &Header, payload: &[u8]) -> SendId {
        let mut v = self.frame_buf(HEADER_LEN + payload.len());
        v.extend_from_slice(&h.encode());
        v.extend_from_slice(payload);
        self.queue_frame(peer, v)
    }

    fn queue_control(&mut self, peer: usize, kind: Kind, token: u64) {
        self.queue_frame(peer, Header::control(kind, token).encode().to_vec());
    }

    /// Offer a rendezvous of `h`'s payload in `buf` to `peer`: queue the `Rts`.
    pub(crate) fn offer(&mut self, peer: usize, h: &Header, buf: RvBuf) -> SendId {
        let token = self.next_token;
        self.next_token += 1;
        let (addr, len) = buf.addr_len();
        let mut rh = *h;
        rh.kind = Kind::Rts;
        rh.len = RTS_PAYLOAD_LEN;
        rh.aux = token;
        let mut v = Vec::with_capacity(HEADER_LEN + RTS_PAYLOAD_LEN as usize);
        v.extend_from_slice(&rh.encode());
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        self.queue_frame(peer, v);
        let state = match &self.write_err[peer] {
            Some(e) => RvSendState::Failed(e.clone()),
            None => RvSendState::Offered,
        };
        self.sends.insert((peer, token), RvSend { buf, state });
        SendId::Rendezvous { peer, token }
    }

    /// Where the send `id` stands. A finished rendezvous is forgotten when this reports it.
    pub(crate) fn poll_send(&mut self, id: SendId) -> SendPoll {
        match id {
            SendId::Done => SendPoll::Done,
            SendId::Frame { peer, seq } => {
                if self.out[peer].sent > seq {
                    match &self.write_err[peer] {
                        Some(e) => SendPoll::Failed(e.clone()),
                        None => SendPoll::Done,
                    }
                } else {
                    SendPoll::Pending
                }
            }
            SendId::Rendezvous { peer, token } => {
                let Some(s) = self.sends.get(&(peer, token)) else {
                    return SendPoll::Done;
                };
                let r = match &s.state {
                    RvSendState::Offered | RvSendState::Copying => SendPoll::Pending,
                    RvSendState::Nacked => SendPoll::StreamYourself,
                    RvSendState::Streaming { seq } => {
                        match self.poll_send(SendId::Frame { peer, seq: *seq }) {
                            SendPoll::Pending => SendPoll::Pending,
                            done => done,
                        }
                    }
                    RvSendState::Failed(e) => SendPoll::Failed(e.clone()),
                };
                if matches!(r, SendPoll::Done | SendPoll::Failed(_)) {
                    self.sends.remove(&(peer, token));
                }
                r
            }
        }
    }

    /// Whether the receiver of a borrowed rendezvous wants it streamed and no thread copied
    /// it: the caller holding the buffer should [`Protocol::stream_borrowed`] it.
    pub(crate) fn needs_stream(&self, peer: usize, token: u64) -> bool {
        self.sends
            .get(&(peer, token))
            .is_some_and(|s| matches!(s.state, RvSendState::Nacked))
    }

    /// Stream a nacked borrowed rendezvous from the caller's `data` (the buffer it offered).
    pub(crate) fn stream_borrowed(&mut self, peer: usize, token: u64, data: &[u8]) {
        let Some(s) = self.sends.get_mut(&(peer, token)) else {
            return;
        };
        if !matches!(s.state, RvSendState::Nacked) {
            return;
        }
        let mut copy = Vec::with_capacity(HEADER_LEN + data.len());
        copy.resize(HEADER_LEN, 0);
        copy.extend_from_slice(data);
        self.stream(peer, token, copy);
    }

    /// A nacked borrowed buffer some thread may copy from our own memory (then
    /// [`Protocol::copy_done`]): `(peer, token, addr, len)`.
    pub(crate) fn claim_copy(&mut self) -> Option<(usize, u64, u64, u64)> {
        while let Some((peer, token)) = self.copies.pop_front() {
            if let Some(s) = self.sends.get_mut(&(peer, token)) {
                if matches!(s.state, RvSendState::Nacked) {
                    s.state = RvSendState::Copying;
                    let (addr, len) = s.buf.addr_len();
                    return Some((peer, token, addr, len));
                }
            }
        }
        None
    }

    /// The copy of a nacked borrowed buffer, with room for a header in front; `None` when it
    /// could not be made (the send's owner streams it then).
    pub(crate) fn copy_done(&mut self, peer: usize, token: u64, copy: Option<Vec<u8>>) {
        let Some(s) = self.sends.get_mut(&(peer, token)) else {
            return;
        };
        if !matches!(s.state, RvSendState::Copying) {
            return;
        }
        match copy {
            Some(data) => self.stream(peer, token, data),
            None => s.state = RvSendState::Nacked,
        }
    }

    /// Queue the bytes of rendezvous `token` (after `HEADER_LEN` free bytes in `data`) as
    /// one `RtsData` frame; the send completes when it is written.
    fn stream(&mut self, peer: usize, token: u64, mut data: Vec<u8>) {
        let mut h = Header::control(Kind::RtsData, token);
        h.len = (data.len() - HEADER_LEN) as u64;
        data[..HEADER_LEN].copy_from_slice(&h.encode());
        let SendId::Frame { seq, .. } = self.queue_frame(peer, data) else {
            unreachable!("queue_frame queues a frame")
        };
        if let Some(s) = self.sends.get_mut(&(peer, token)) {
            s.state = RvSendState::Streaming { seq };
        }
    }

    /// Forget a borrowed rendezvous whose owner gives up on it (its peer is gone).
    pub(crate) fn abandon_send(&mut self, peer: usize, token: u64) {
        self.sends.remove(&(peer, token));
    }

    // ----- the out queues --------------------------------------------------------------------

    /// The unwritten bytes of the oldest queued frame for `peer`.
    pub(crate) fn out_front(&self, peer: usize) -> Option<&[u8]> {
        self.out[peer].q.front().map(|f| &f.bytes[f.off..])
    }

    /// The transport took `n` bytes of the front frame for `peer`.
    pub(crate) fn out_advance(&mut self, peer: usize, n: usize) {
        let oq = &mut self.out[peer];
        if let Some(f) = oq.q.front_mut() {
            f.off += n;
            if f.off >= f.bytes.len() {
                let done = oq.q.pop_front().map(|f| f.bytes);
                oq.sent += 1;
                if let Some(b) = done {
                    self.recycle(b);
                }
            }
        }
    }

    /// Whether frames wait to be written to `peer`.
    pub(crate) fn wants_write(&self, peer: usize) -> bool {
        !self.out[peer].q.is_empty()
    }

    /// Writing to `peer` failed: its queue is dropped, and sends waiting on it fail.
    pub(crate) fn write_failed(&mut self, peer: usize, why: String) {
        let oq = &mut self.out[peer];
        oq.sent = oq.enqueued;
        oq.q.clear();
        for ((p, _), s) in self.sends.iter_mut() {
            if *p == peer {
                s.state = RvSendState::Failed(why.clone());
            }
        }
        self.write_err[peer] = Some(why);
    }

    pub(crate) fn write_error(&self, peer: usize) -> Option<&str> {
        self.write_err[peer].as_deref()
    }

    // ----- receiving -------------------------------------------------------------------------

    /// A frame from `peer` was decoded.
    pub(crate) fn handle_frame(&mut self, peer: usize, d: Decoded) {
        match d {
            Decoded::Frame(h, payload) => match h.kind {
                Kind::Data => self.arrived(Msg::new(&h, Body::Eager(payload))),
                Kind::Rts => self.rts(peer, &h, &payload),
                Kind::Fin => {
                    self.sends.remove(&(peer, h.aux));
                }
                Kind::Nack => self.nack(peer, h.aux),
                Kind::RtsData => self.stream_arrived(peer, h.aux, payload),
                Kind::Cts => self.cts(peer, h.aux, &payload),
            },
            Decoded::TooLarge(h) => {
                let err = Error::FrameTooLarge {
                    rank: h.src as usize,
                    tag: h.tag,
                    len: h.len,
                    max: self.cfg.max_message,
                };
                self.arrived(Msg::new(&h, Body::Failed(Box::new(err))))
            }
        }
    }

    fn rts(&mut self, peer: usize, h: &Header, payload: &[u8]) {
        let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        let (addr, len) = if payload.len() == RTS_PAYLOAD_LEN as usize {
            (word(0), word(8))
        } else {
            (0, u64::MAX)
        };
        let body = if len > self.cfg.max_message {
            // Release the sender; the receive that matches this reports the error.
            self.queue_control(peer, Kind::Fin, h.aux);
            Body::Failed(Box::new(Error::FrameTooLarge {
                rank: h.src as usize,
                tag: h.tag,
                len,
                max: self.cfg.max_message,
            }))
        } else {
            Body::Remote {
                peer,
                addr,
                len,
                token: h.aux,
            }
        };
        self.arrived(Msg::new(h, body));
    }

    /// The receiver of our rendezvous `token` offers us to write a part of it. Only a part
    /// of a send still waiting for its receiver, inside its buffer, becomes a push; anything
    /// else is ignored (the receiver then withdraws its offer and pulls the part itself).
    fn cts(&mut self, peer: usize, token: u64, payload: &[u8]) {
        if payload.len() != CTS_PAYLOAD_LEN as usize {
            return;
        }
        let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        let (off, len, dst) = (word(0), word(8), word(16));
        let Some(s) = self.sends.get(&(peer, token)) else {
            return;
        };
        if !matches!(s.state, RvSendState::Offered) {
            return;
        }
        let (addr, total) = s.buf.addr_len();
        if len == 0 || off.checked_add(len).is_none_or(|end| end > total) {
            return;
        }
        self.pushes.push_back(PushJob {
            peer,
            token,
            src: addr + off,
            len,
            dst,
        });
    }

    /// A part of one of our rendezvous sends to write into its receiver's memory (then
    /// nothing to report: the receiver answers `Fin` as always). Only while the send is
    /// still waiting for that receiver.
    pub(crate) fn claim_push(&mut self) -> Option<PushJob> {
        while let Some(job) = self.pushes.pop_front() {
            if self
                .sends
                .get(&(job.peer, job.token))
                .is_some_and(|s| matches!(s.state, RvSendState::Offered))
            {
                return Some(job);
            }
        }
        None
    }

    /// The `Cts` frame offering `peer` (the sender of rendezvous `token`) to write `len`
    /// bytes of it from offset `off` to address `dst` here.
    pub(crate) fn cts_frame(token: u64, off: u64, len: u64, dst: u64) -> Vec<u8> {
        let mut h = Header::control(Kind::Cts, token);
        h.len = CTS_PAYLOAD_LEN;
        let mut v = Vec::with_capacity(HEADER_LEN + CTS_PAYLOAD_LEN as usize);
        v.extend_from_slice(&h.encode());
        for w in [off, len, dst] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    fn nack(&mut self, peer: usize, token: u64) {
        let Some(s) = self.sends.get_mut(&(peer, token)) else {
            return;
        };
        if !matches!(s.state, RvSendState::Offered) {
            return;
        }
        match &mut s.buf {
            RvBuf::Owned(data) => {
                let data = std::mem::take(data);
                self.stream(peer, token, data);
            }
            RvBuf::Borrowed { .. } => {
                s.state = RvSendState::Nacked;
                self.copies.push_back((peer, token));
            }
        }
    }

    fn stream_arrived(&mut self, peer: usize, token: u64, payload: Vec<u8>) {
        let Some(id) = self.streams.remove(&(peer, token)) else {
            tracing::debug!(peer, token, "stream for no receive; dropped");
            return;
        };
        let Some(Slot::AwaitStream { mut msg, cancelled }) = self.recvs.remove(&id) else {
            return;
        };
        let expected = msg.len();
        msg.body = if payload.len() as u64 == expected {
            Body::Eager(payload)
        } else {
            Body::Failed(Box::new(Error::Malformed {
                rank: peer,
                detail: format!(
                    "streamed {} bytes for a {expected}-byte message",
                    payload.len()
                ),
            }))
        };
        self.settle(id, msg, cancelled);
    }

    /// A matched message for receive `id`, or back to matching if that receive is gone.
    fn settle(&mut self, id: RecvId, msg: Msg, cancelled: bool) {
        if cancelled {
            self.put_back(msg);
        } else {
            self.recvs.insert(id, Slot::Ready(msg));
        }
    }

    /// A message to match (arrived, or sent to ourselves).
    fn arrived(&mut self, msg: Msg) {
        if let Some((id, msg, want)) = self.matcher.incoming(msg) {
            self.matched(id, msg, want);
        }
    }

    fn matched(&mut self, id: RecvId, msg: Msg, want: Want) {
        if matches!(msg.body, Body::Remote { .. }) {
            self.recvs.insert(id, Slot::NeedPull { msg, want });
            // Listed for every taker: progress takes those it may (`claim_pull`), an owner
            // waiting on a set looks here for its own (`pulls_waiting`).
            self.pulls.push_back(id);
        } else {
            self.recvs.insert(id, Slot::Ready(msg));
        }
    }

    /// Post a receive. A message already here with its bytes is returned at once (with no
    /// table entry); otherwise the receive waits under the returned id (a rendezvous message
    /// it matched is in the table, to be pulled, as `want` says).
    #[inline]
    pub(crate) fn post(&mut self, pat: Pattern, want: Want) -> Result<Msg, RecvId> {
        let (id, got) = self.matcher.post(pat, want);
        match got {
            Some(m) if !matches!(m.body, Body::Remote { .. }) => Ok(m),
            Some(m) => {
                self.matched(id, m, want);
                Err(id)
            }
            None => Err(id),
        }
    }

    /// Take what receive `id` has: its message, or (for a `direct` taker, or a rendezvous
    /// nobody pulls yet) a pull to make into the caller's buffer. `None`: nothing yet.
    pub(crate) fn take(&mut self, id: RecvId, direct: bool) -> Option<Taken> {
        match self.recvs.get(&id)? {
            Slot::Ready(_) => {}
            Slot::NeedPull { .. } if direct => {}
            _ => return None,
        }
        match self.recvs.remove(&id)? {
            Slot::Ready(m) => Some(Taken::Msg(m)),
            Slot::NeedPull { msg, .. } if direct => {
                let job = pull_job(id, &msg);
                self.recvs.insert(
                    id,
                    Slot::Pulling {
                        msg: strip(&msg),
                        cancelled: false,
                    },
                );
                Some(Taken::Pull(job, msg))
            }
            other => {
                self.recvs.insert(id, other);
                None
            }
        }
    }

    /// The owner of receive `id` now waits on it with its own buffer: rendezvous data goes
    /// there, not through a temporary one.
    pub(crate) fn set_direct(&mut self, id: RecvId) {
        match self.recvs.get_mut(&id) {
            Some(Slot::NeedPull { want, .. }) => *want = Want::Now,
            Some(_) => {}
            None => {
                self.matcher.set_want(id, Want::Now);
            }
        }
    }

    /// Undo [`Protocol::set_direct`]: the owner of receive `id` no longer waits on it, and
    /// another waiting thread may pull its rendezvous message after a while again.
    pub(crate) fn set_later(&mut self, id: RecvId) {
        match self.recvs.get_mut(&id) {
            Some(Slot::NeedPull { want, .. }) if *want == Want::Now => *want = Want::Later,
            Some(_) => {}
            None => {
                if self.matcher.want_of(id) == Some(Want::Now) {
                    self.matcher.set_want(id, Want::Later);
                }
            }
        }
    }

    /// A matched rendezvous receive no one is pulling, for a waiting thread to pull into a
    /// buffer of its own (then [`Protocol::pull_done`] with the bytes). `urgent`: the thread
    /// has waited a while, so receives whose owners would pull them later are taken too.
    pub(crate) fn claim_pull(&mut self, urgent: bool) -> Option<PullJob> {
        let mut i = 0;
        while i < self.pulls.len() {
            let id = self.pulls[i];
            match self.recvs.get(&id) {
                Some(Slot::NeedPull {
                    want: Want::Bytes, ..
                }) => {}
                Some(Slot::NeedPull {
                    want: Want::Later, ..
                }) if urgent => {}
                // Left to their owners (the list forgets them here once they are pulled).
                Some(Slot::NeedPull {
                    want: Want::Later | Want::Now,
                    ..
                }) => {
                    i += 1;
                    continue;
                }
                _ => {
                    self.pulls.remove(i);
                    continue;
                }
            }
            self.pulls.remove(i);
            let Some(Slot::NeedPull { msg, .. }) = self.recvs.remove(&id) else {
                unreachable!("checked above")
            };
            let job = pull_job(id, &msg);
            self.recvs.insert(
                id,
                Slot::Pulling {
                    msg,
                    cancelled: false,
                },
            );
            return Some(job);
        }
        None
    }

    /// Whether a message of `len` bytes from `peer` may come as a rendezvous (to be pulled).
    pub(crate) fn may_pull(&self, peer: usize, len: usize) -> bool {
        len >= self.cfg.rendezvous_threshold && self.cfg.can_pull.get(peer) == Some(&true)
    }

    /// Whether a matched rendezvous receive may be waiting for someone to pull it.
    pub(crate) fn pulls_waiting(&self) -> bool {
        !self.pulls.is_empty()
    }

    /// The message of receive `id` if it is a matched rendezvous nobody pulls yet.
    pub(crate) fn unpulled(&self, id: RecvId) -> Option<&Msg> {
        match self.recvs.get(&id) {
            Some(Slot::NeedPull { msg, .. }) => Some(msg),
            _ => None,
        }
    }

    /// A pull finished. `Ok(Some(bytes))`: pulled into a buffer of the protocol's (the
    /// receive becomes ready with it); `Ok(None)`: pulled into the owner's buffer (the owner
    /// has what it needs); `Err(())`: refused (ask the sender to stream).
    pub(crate) fn pull_done(&mut self, job: &PullJob, result: Result<Option<Vec<u8>>, ()>) {
        let Some(Slot::Pulling { mut msg, cancelled }) = self.recvs.remove(&job.id) else {
            return;
        };
        let Body::Remote { peer, token, .. } = msg.body else {
            return;
        };
        match result {
            Ok(bytes) => {
                self.queue_control(peer, Kind::Fin, token);
                if let Some(bytes) = bytes {
                    msg.body = Body::Eager(bytes);
                    self.settle(job.id, msg, cancelled);
                }
            }
            Err(()) => {
                self.queue_control(peer, Kind::Nack, token);
                self.streams.insert((peer, token), job.id);
                self.recvs
                    .insert(job.id, Slot::AwaitStream { msg, cancelled });
            }
        }
    }

    /// A pull handed to a direct taker that will not make it (its buffer is too small): the
    /// message goes back to matching, still at the sender.
    pub(crate) fn unpull(&mut self, job: &PullJob, msg: Msg) {
        if let Some(Slot::Pulling { .. }) = self.recvs.get(&job.id) {
            self.recvs.remove(&job.id);
        }
        self.put_back(msg);
    }

    /// Withdraw receive `id` (its request was dropped or its wait failed). A message it
    /// matched goes back to matching, in its place.
    pub(crate) fn cancel(&mut self, id: RecvId) {
        if self.matcher.cancel(id) {
            return;
        }
        match self.recvs.remove(&id) {
            Some(Slot::Ready(m)) | Some(Slot::NeedPull { msg: m, .. }) => self.put_back(m),
            Some(Slot::Pulling { msg, .. }) => {
                self.recvs.insert(
                    id,
                    Slot::Pulling {
                        msg,
                        cancelled: true,
                    },
                );
            }
            Some(Slot::AwaitStream { msg, .. }) => {
                self.recvs.insert(
                    id,
                    Slot::AwaitStream {
                        msg,
                        cancelled: true,
                    },
                );
            }
            None => {}
        }
    }

    /// A matched message the taker did not consume goes back to matching, in its place.
    pub(crate) fn put_back(&mut self, msg: Msg) {
        if let Some((id, msg, want)) = self.matcher.incoming_front(msg) {
            self.matched(id, msg, want);
        }
    }

    /// Drop a taken message nobody will receive; a sender waiting for its pull is released.
    pub(crate) fn discard(&mut self, msg: Msg) {
        if let Body::Remote { peer, token, .. } = msg.body {
            self.queue_control(peer, Kind::Fin, token);
        }
    }

    /// The oldest unmatched message matching `pat`, without taking it.
    pub(crate) fn peek(&self, pat: Pattern) -> Option<&Msg> {
        self.matcher.peek(pat)
    }

    /// Whether a message arriving now may be handed to a receive straight from its stream:
    /// no posted receive could claim it first and none matching `pat` is already queued.
    pub(crate) fn may_bypass(&self, pat: Pattern) -> bool {
        !self.matcher.has_posted() && self.matcher.peek(pat).is_none()
    }

    /// Whether any receive is posted (for tests).
    #[cfg(test)]
    pub(crate) fn has_posted(&self) -> bool {
        self.matcher.has_posted()
    }

    /// Whether a data frame with header `h` arriving now goes to posted receive `id`.
    pub(crate) fn claimed_by(&self, h: &Header, id: RecvId) -> bool {
        self.matcher.claimant(h) == Some(id)
    }

    /// [`Protocol::claimed_by`] for the frames of `pat`, the pattern of receive `id`, which
    /// names one source and one tag.
    #[inline]
    pub(crate) fn claims(&self, id: RecvId, pat: &Pattern) -> bool {
        self.matcher.claims(id, pat)
    }

    /// Posted receive `id` of pattern `pat` (one source and one tag) takes the next data
    /// frame of its source's stream straight into its owner's buffer if the frame is its
    /// ([`Protocol::claims`]): it is done. Whether it took it.
    #[inline(always)]
    pub(crate) fn land_claimed(&mut self, id: RecvId, pat: &Pattern) -> bool {
        self.matcher.take_claimed(id, pat)
    }

    /// Posted receive `id` took its message (the next frame of the sender's stream, which
    /// [`Protocol::claimed_by`] gave it) straight into its owner's buffer: it is done.
    #[inline]
    pub(crate) fn landed(&mut self, id: RecvId) {
        self.matcher.cancel(id);
    }

    /// Whether any rendezvous is in flight (sends waiting for receivers, receives being
    /// pulled or streamed, or matched receives not yet taken).
    pub(crate) fn rendezvous_pending(&self) -> bool {
        !self.sends.is_empty() || !self.recvs.is_empty()
    }

    /// `peer` is gone and everything it sent has been read: rendezvous with it fail.
    pub(crate) fn peer_lost(&mut self, peer: usize, why: &str) {
        for ((p, _), s) in self.sends.iter_mut() {
            if *p == peer && !matches!(s.state, RvSendState::Streaming { .. }) {
                s.state = RvSendState::Failed(why.to_string());
            }
        }
        let lost = |m: &Msg| matches!(m.body, Body::Remote { peer: p, .. } if p == peer);
        let ids: Vec<RecvId> = self
            .recvs
            .iter()
            .filter(|(_, s)| match s {
                Slot::NeedPull { msg, .. } | Slot::AwaitStream { msg, .. } => lost(msg),
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let (mut msg, cancelled) = match self.recvs.remove(&id) {
                Some(Slot::NeedPull { msg, .. }) => (msg, false),
                Some(Slot::AwaitStream { msg, cancelled }) => (msg, cancelled),
                _ => continue,
            };
            if let Body::Remote { token, .. } = msg.body {
                self.streams.remove(&(peer, token));
            }
            if cancelled {
                continue; // nobody wants it, and it can no longer be received
            }
            msg.body = Body::Failed(Box::new(Error::PeerLost {
                rank: peer,
                detail: format!("it went away before its message could be read ({why})"),
            }));
            self.recvs.insert(id, Slot::Ready(msg));
        }
    }

    /// Rendezvous sends waiting for their receivers, and receives being pulled or streamed.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> (usize, usize) {
        (self.sends.len(), self.recvs.len())
    }

    /// The bytes of an owned rendezvous send (what a pull from `addr` reads; for tests).
    #[cfg(test)]
    pub(crate) fn owned_bytes(&self, addr: u64) -> Option<&[u8]> {
        self.sends.values().find_map(|s| match &s.buf {
            RvBuf::Owned(v) if v.len() > HEADER_LEN && v[HEADER_LEN..].as_ptr() as u64 == addr => {
                Some(&v[HEADER_LEN..])
            }
            _ => None,
        })
    }
}

fn pull_job(id: RecvId, msg: &Msg) -> PullJob {
    match msg.body {
        Body::Remote {
            peer,
            addr,
            len,
            token,
        } => PullJob {
            id,
            ctx: msg.ctx,
            peer,
            addr,
            len,
            token,
        },
        _ => unreachable!("only rendezvous messages are pulled"),
    }
}

/// A copy of a rendezvous message's envelope (the taker holds the message itself).
fn strip(m: &Msg) -> Msg {
    let body = match m.body {
        Body::Remote {
            peer,
            addr,
            len,
            token,
        } => Body::Remote {
            peer,
            addr,
            len,
            token,
        },
        _ => Body::Eager(Vec::new()),
    };
    Msg {
        ctx: m.ctx,
        src: m.src,
        tag: m.tag,
        enc: m.enc,
        typecode: m.typecode,
        body,
        seq: m.seq,
    }
}
