//! Matching: which arrived message satisfies which receive.
//!
//! Pure bookkeeping, no I/O. MPI's rules: a receive names a context (communicator and
//! traffic class), a source or `ANY_SOURCE`, and a tag or `ANY_TAG`. Messages from one
//! source in one context are matched in the order they were sent; receives are matched in the
//! order they were posted.

use std::collections::VecDeque;

use super::Want;
use crate::error::Error;
use crate::wire::Encoding;

/// Wildcard source for receives and probes.
pub const ANY_SOURCE: i32 = -1;
/// Wildcard tag for receives and probes.
pub const ANY_TAG: i32 = -1;

/// Where a matched message's bytes are.
#[derive(Debug)]
pub(crate) enum Body {
    /// The whole payload, already here.
    Eager(Vec<u8>),
    /// A large payload still in the sender's memory (a rendezvous), pulled by the receiver.
    Remote {
        /// World rank of the sender.
        peer: usize,
        addr: u64,
        len: u64,
        token: u64,
    },
    /// The message could not be accepted (too large); receiving it reports this error.
    Failed(Box<Error>),
    /// This many bytes, already in the receiving request's own buffer: they went there
    /// straight from the sender's stream (see `Core::recv_from_stream`).
    Landed(u64),
}

/// A message waiting to be matched (or just matched).
#[derive(Debug)]
pub(crate) struct Msg {
    pub ctx: u32,
    /// Source rank within the communicator.
    pub src: u32,
    pub tag: i32,
    pub enc: Encoding,
    pub typecode: u32,
    pub body: Body,
    /// Arrival order, set by the matcher: a message put back goes back in its place.
    pub seq: u64,
}

impl Msg {
    /// The message a frame with header `h` carries (`seq` is set when it is matched in).
    pub fn new(h: &crate::wire::Header, body: Body) -> Msg {
        Msg {
            ctx: h.ctx,
            src: h.src,
            tag: h.tag,
            enc: h.enc,
            typecode: h.typecode,
            body,
            seq: 0,
        }
    }

    /// Size of the payload in bytes.
    pub fn len(&self) -> u64 {
        match &self.body {
            Body::Eager(v) => v.len() as u64,
            Body::Remote { len, .. } => *len,
            Body::Failed(_) => 0,
            Body::Landed(len) => *len,
        }
    }
}

/// What a receive or probe asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pattern {
    pub ctx: u32,
    /// Source within the communicator, or `ANY_SOURCE`.
    pub src: i32,
    /// Tag or `ANY_TAG`.
    pub tag: i32,
}

impl Pattern {
    /// Whether a data frame with this header would match.
    pub fn matches_header(&self, h: &crate::wire::Header) -> bool {
        self.ctx == h.ctx
            && (self.src == ANY_SOURCE || self.src as u32 == h.src)
            && (self.tag == ANY_TAG || self.tag == h.tag)
    }

    pub fn matches(&self, m: &Msg) -> bool {
        self.ctx == m.ctx
            && (self.src == ANY_SOURCE || self.src as u32 == m.src)
            && (self.tag == ANY_TAG || self.tag == m.tag)
    }
}

/// Identifies a posted receive.
pub(crate) type RecvId = u64;

/// A posted receive: its id, what it asks for, and who pulls its message if that is a
/// rendezvous (kept here, with the receive, so that posting and matching touch one queue).
#[derive(Debug, Clone, Copy)]
struct Posted {
    id: RecvId,
    pat: Pattern,
    want: Want,
}

/// The matching engine: unexpected messages and posted receives. It only decides who gets
/// what; the protocol keeps the matched messages in its request table.
#[derive(Default)]
pub(crate) struct Matcher {
    unexpected: VecDeque<Msg>,
    /// Oldest first, so in id order; most receives match the oldest (a window of posted
    /// receives filled in order), which a deque removes without moving the rest.
    posted: VecDeque<Posted>,
    next_id: RecvId,
    next_seq: u64,
}

impl Matcher {
    /// A message arrived: the oldest matching posted receive takes it (returned with its
    /// id and what it wanted), or it is queued.
    pub fn incoming(&mut self, mut msg: Msg) -> Option<(RecvId, Msg, Want)> {
        msg.seq = self.next_seq;
        self.next_seq += 1;
        self.deliver(msg)
    }

    /// Put back a message that was taken but not consumed, in its arrival place.
    pub fn incoming_front(&mut self, msg: Msg) -> Option<(RecvId, Msg, Want)> {
        self.deliver(msg)
    }

    fn deliver(&mut self, msg: Msg) -> Option<(RecvId, Msg, Want)> {
        if let Some(i) = self.posted.iter().position(|r| r.pat.matches(&msg)) {
            let r = self.posted.remove(i).expect("index from position");
            return Some((r.id, msg, r.want));
        }
        // In arrival order, ahead of everything that arrived after it (a fresh message has
        // the highest sequence so far and goes to the back).
        if self.unexpected.back().is_none_or(|m| m.seq < msg.seq) {
            self.unexpected.push_back(msg);
        } else {
            let at = self.unexpected.partition_point(|m| m.seq < msg.seq);
            self.unexpected.insert(at, msg);
        }
        None
    }

    /// A fresh receive id (for a receive that matched at once, or that is not posted here).
    pub fn new_id(&mut self) -> RecvId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Post a receive: the oldest matching queued message at once (with the id the receive
    /// got), or the id it waits under, wanting what `want` says.
    #[inline]
    pub fn post(&mut self, pat: Pattern, want: Want) -> (RecvId, Option<Msg>) {
        let id = self.new_id();
        // (Nothing queued, most often: no search.)
        if !self.unexpected.is_empty() {
            if let Some(i) = self.unexpected.iter().position(|m| pat.matches(m)) {
                return (id, self.unexpected.remove(i));
            }
        }
        self.posted.push_back(Posted { id, pat, want });
        (id, None)
    }

    /// Posted receive `id` now wants what `want` says; false if it is not posted.
    pub fn set_want(&mut self, id: RecvId, want: Want) -> bool {
        match self.posted.binary_search_by_key(&id, |r| r.id) {
            Ok(i) => {
                self.posted[i].want = want;
                true
            }
            Err(_) => false,
        }
    }

    /// What posted receive `id` wants (`None`: it is not posted).
    pub fn want_of(&self, id: RecvId) -> Option<Want> {
        let i = self.posted.binary_search_by_key(&id, |r| r.id).ok()?;
        Some(self.posted[i].want)
    }

    /// The posted receive a data frame with header `h` would go to if it arrived now: the
    /// oldest that matches it (`None`: it would wait as an unexpected message).
    pub fn claimant(&self, h: &crate::wire::Header) -> Option<RecvId> {
        self.posted
            .iter()
            .find(|r| r.pat.matches_header(h))
            .map(|r| r.id)
    }

    /// Whether posted receive `id` is the [`Matcher::claimant`] of data frames with the
    /// context, source and tag of `pat` (which names one source and one tag).
    #[inline]
    pub fn claims(&self, id: RecvId, pat: &Pattern) -> bool {
        // Most often the oldest: a window of receives posted in order.
        if let Some(first) = self.posted.front() {
            if first.id == id {
                return true;
            }
            if first.pat == *pat {
                return false;
            }
        }
        let wants = |p: &Pattern| {
            p.ctx == pat.ctx
                && (p.src == ANY_SOURCE || p.src == pat.src)
                && (p.tag == ANY_TAG || p.tag == pat.tag)
        };
        self.posted.iter().find(|r| wants(&r.pat)).map(|r| r.id) == Some(id)
    }

    /// Posted receive `id` takes the next data frame with the context, source and tag of
    /// `pat` (its pattern, which names one source and one tag) if it is the frame's
    /// [`Matcher::claimant`] (see [`Matcher::claims`]): it leaves the posted receives.
    /// Whether it took it.
    #[inline(always)]
    pub fn take_claimed(&mut self, id: RecvId, pat: &Pattern) -> bool {
        // Most often the oldest: a window of receives posted in order.
        if self.posted.front().is_some_and(|r| r.id == id) {
            self.posted.pop_front();
            return true;
        }
        self.claims(id, pat) && self.cancel(id)
    }

    /// Withdraw a posted receive that has not matched; false if it is not posted.
    #[inline]
    pub fn cancel(&mut self, id: RecvId) -> bool {
        // Most often the oldest (a receive that just took its message from the stream).
        if self.posted.front().is_some_and(|r| r.id == id) {
            return self.posted.pop_front().is_some();
        }
        self.cancel_inside(id)
    }

    /// [`Matcher::cancel`] of a receive that is not the oldest.
    #[inline(never)]
    fn cancel_inside(&mut self, id: RecvId) -> bool {
        match self.posted.binary_search_by_key(&id, |r| r.id) {
            Ok(i) => self.posted.remove(i).is_some(),
            Err(_) => false,
        }
    }

    /// Whether any receive is posted (and so may claim the next arrival first).
    pub fn has_posted(&self) -> bool {
        !self.posted.is_empty()
    }

    /// The oldest queued message matching `pat`, without taking it.
    pub fn peek(&self, pat: Pattern) -> Option<&Msg> {
        self.unexpected.iter().find(|m| pat.matches(m))
    }

    /// Queued messages (for tests and the model check).
    #[cfg(test)]
    pub fn unexpected_len(&self) -> usize {
        self.unexpected.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(src: u32, tag: i32, byte: u8) -> Msg {
        Msg {
            ctx: 0,
            src,
            tag,
            enc: Encoding::Serde,
            typecode: 0,
            body: Body::Eager(vec![byte]),
            seq: 0,
        }
    }
    fn first_byte(m: &Msg) -> u8 {
        match &m.body {
            Body::Eager(v) => v[0],
            _ => panic!("not eager"),
        }
    }
    fn pat(src: i32, tag: i32) -> Pattern {
        Pattern { ctx: 0, src, tag }
    }

    #[test]
    fn unexpected_messages_match_in_arrival_order() {
        let mut m = Matcher::default();
        assert!(m.incoming(msg(1, 5, 1)).is_none());
        assert!(m.incoming(msg(2, 5, 2)).is_none());
        assert!(m.incoming(msg(1, 5, 3)).is_none());
        assert_eq!(first_byte(&m.post(pat(1, 5), Want::Bytes).1.unwrap()), 1);
        assert_eq!(
            first_byte(&m.post(pat(ANY_SOURCE, 5), Want::Bytes).1.unwrap()),
            2
        );
        assert_eq!(
            first_byte(&m.post(pat(1, ANY_TAG), Want::Bytes).1.unwrap()),
            3
        );
        assert!(m.post(pat(1, 5), Want::Bytes).1.is_none());
    }

    #[test]
    fn posted_receives_match_in_post_order_and_respect_context() {
        let mut m = Matcher::default();
        let (a, _) = m.post(pat(ANY_SOURCE, ANY_TAG), Want::Bytes);
        let (b, _) = m.post(pat(3, 7), Want::Bytes);
        let other_ctx = Msg {
            ctx: 9,
            ..msg(3, 7, 0)
        };
        assert!(m.incoming(other_ctx).is_none());
        let (id, got, _) = m.incoming(msg(3, 7, 10)).unwrap();
        assert_eq!((id, first_byte(&got)), (a, 10));
        let (id, got, _) = m.incoming(msg(3, 7, 11)).unwrap();
        assert_eq!((id, first_byte(&got)), (b, 11));
        let ctx9 = Pattern {
            ctx: 9,
            src: 3,
            tag: 7,
        };
        assert!(m.peek(ctx9).is_some());
    }

    #[test]
    fn a_message_put_back_keeps_its_place_and_can_match_other_receives() {
        let mut m = Matcher::default();
        m.incoming(msg(0, 1, 1)); // A
        m.incoming(msg(0, 2, 2)); // B
        let b = m.post(pat(0, 2), Want::Bytes).1.unwrap();
        assert!(m.incoming_front(b).is_none());
        // A was sent first and still comes first for a wildcard receive.
        assert_eq!(
            first_byte(&m.post(pat(0, ANY_TAG), Want::Bytes).1.unwrap()),
            1
        );
        assert_eq!(
            first_byte(&m.post(pat(0, ANY_TAG), Want::Bytes).1.unwrap()),
            2
        );
        // A message put back goes to a posted receive that wants it.
        let (r2, _) = m.post(pat(2, 5), Want::Bytes);
        let (_, got) = m.post(pat(ANY_SOURCE, ANY_TAG), Want::Bytes);
        assert!(got.is_none());
        let c = Msg {
            seq: 0,
            ..msg(2, 5, 9)
        };
        // Of the two waiting receives that match, the one posted first takes it.
        let (id, _, _) = m.incoming_front(c).unwrap();
        assert_eq!(id, r2);
    }

    #[test]
    fn cancel_withdraws_only_posted_receives() {
        let mut m = Matcher::default();
        let (a, _) = m.post(pat(0, 0), Want::Bytes);
        assert!(m.cancel(a));
        assert!(!m.cancel(a));
        assert!(m.incoming(msg(0, 0, 4)).is_none());
        assert_eq!(first_byte(&m.post(pat(0, 0), Want::Bytes).1.unwrap()), 4);
    }

    proptest! {
        /// `claims` (the fast test of a landing receive) says what `claimant` says for
        /// frames of the receive's own pattern, whatever else is posted before and after.
        #[test]
        fn claims_agrees_with_claimant(
            posted in proptest::collection::vec((-1i32..3, -1i32..3, 0u32..2), 1..12),
            pick in 0usize..12,
        ) {
            let mut m = Matcher::default();
            let ids: Vec<(RecvId, Pattern)> = posted
                .iter()
                .map(|&(src, tag, ctx)| {
                    let p = Pattern { ctx, src, tag };
                    (m.post(p, Want::Bytes).0, p)
                })
                .collect();
            let (id, pat) = ids[pick % ids.len()];
            prop_assume!(pat.src >= 0 && pat.tag >= 0);
            let h = crate::wire::Header::data(
                pat.ctx,
                pat.src as u32,
                pat.tag,
                8,
                Encoding::Raw,
                0,
            );
            prop_assert_eq!(m.claims(id, &pat), m.claimant(&h) == Some(id));
            // And once the oldest receives are withdrawn one by one.
            for &(other, _) in &ids {
                if other == id {
                    break;
                }
                m.cancel(other);
                prop_assert_eq!(m.claims(id, &pat), m.claimant(&h) == Some(id));
            }
        }
    }

    /// What can happen to a matcher.
    #[derive(Debug, Clone)]
    enum Op {
        Arrive {
            src: u32,
            tag: i32,
            ctx: u32,
        },
        Post {
            src: i32,
            tag: i32,
            ctx: u32,
        },
        /// Cancel the k-th receive posted so far (if still waiting).
        Cancel(usize),
        /// The k-th receive posted so far, if it names one source and one tag, takes a new
        /// frame of theirs straight from the stream if it is the frame's claimant.
        Land(usize),
        /// Take the k-th matched message and put it back.
        PutBack(usize),
        /// The k-th receive posted so far (if still waiting) wants this now.
        SetWant(usize, u8),
    }

    /// The want of a code (receives are posted with `want(index)`).
    fn want(code: usize) -> Want {
        [Want::Bytes, Want::Later, Want::Now][code % 3]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..3, 0i32..3, 0u32..2).prop_map(|(src, tag, ctx)| Op::Arrive { src, tag, ctx }),
            4 => (-1i32..3, -1i32..3, 0u32..2).prop_map(|(src, tag, ctx)| Op::Post { src, tag, ctx }),
            1 => (0usize..16).prop_map(Op::Cancel),
            2 => (0usize..16).prop_map(Op::Land),
            1 => (0usize..16).prop_map(Op::PutBack),
            1 => (0usize..16, 0u8..3).prop_map(|(k, w)| Op::SetWant(k, w)),
        ]
    }

    /// The naive model: every message ever sent with its arrival number and whether it is
    /// taken; every receive with its pattern and state. A new message goes to the receive
    /// posted earliest among the waiting ones that match; a new receive takes the message
    /// with the lowest arrival number among the free ones that match. Nothing is a queue.
    #[derive(Default)]
    struct Model {
        msgs: Vec<(u32, i32, u32, bool)>,           // src, tag, ctx, free
        recvs: Vec<(Pattern, Option<usize>, bool)>, // pattern, matched message, waiting
    }

    impl Model {
        fn fits(p: &Pattern, (src, tag, ctx, _): &(u32, i32, u32, bool)) -> bool {
            p.ctx == *ctx
                && (p.src == ANY_SOURCE || p.src as u32 == *src)
                && (p.tag == ANY_TAG || p.tag == *tag)
        }
        /// A free message is offered to the waiting receives; returns the receive index.
        fn offer(&mut self, mi: usize) -> Option<usize> {
            let ri = (0..self.recvs.len())
                .find(|&r| self.recvs[r].2 && Self::fits(&self.recvs[r].0, &self.msgs[mi]))?;
            self.recvs[ri].1 = Some(mi);
            self.recvs[ri].2 = false;
            self.msgs[mi].3 = false;
            Some(ri)
        }
        fn post(&mut self, p: Pattern) -> Option<usize> {
            let mi = (0..self.msgs.len())
                .filter(|&m| self.msgs[m].3 && Self::fits(&p, &self.msgs[m]))
                .min();
            if let Some(m) = mi {
                self.msgs[m].3 = false;
            }
            self.recvs.push((p, mi, mi.is_none()));
            mi
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matcher_agrees_with_the_naive_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut m = Matcher::default();
            let mut model = Model::default();
            // Receive ids by post order, and who holds which message (by its arrival number,
            // carried in the payload).
            let mut ids: Vec<RecvId> = Vec::new();
            let mut held: Vec<(usize, Msg)> = Vec::new(); // (receive index, message)
            // What each receive wants: a match hands back the receive's own.
            let mut wants: Vec<Want> = Vec::new();
            for op in ops {
                match op {
                    Op::Arrive { src, tag, ctx } => {
                        let n = model.msgs.len();
                        model.msgs.push((src, tag, ctx, true));
                        let mut x = msg(src, tag, 0);
                        x.ctx = ctx;
                        x.body = Body::Eager((n as u64).to_le_bytes().to_vec());
                        // Who a frame with this header would go to (a receive taking it
                        // straight from the stream asks this) is who the arrival goes to.
                        let h = crate::wire::Header::data(ctx, src, tag, 8, Encoding::Raw, 0);
                        let claimant = m.claimant(&h);
                        let got = m.incoming(x);
                        prop_assert_eq!(claimant, got.as_ref().map(|g| g.0));
                        let want = model.offer(n);
                        match (got, want) {
                            (None, None) => {}
                            (Some((id, x, w)), Some(ri)) => {
                                prop_assert_eq!(id, ids[ri]);
                                prop_assert_eq!(w, wants[ri]);
                                held.push((ri, x));
                            }
                            (g, w) => prop_assert!(false, "arrival {n}: matcher {:?}, model {w:?}", g.map(|g| g.0)),
                        }
                    }
                    Op::Post { src, tag, ctx } => {
                        let p = Pattern { ctx, src, tag };
                        let (id, got) = m.post(p, want(ids.len()));
                        wants.push(want(ids.len()));
                        ids.push(id);
                        let ri = ids.len() - 1;
                        let want = model.post(p);
                        let got_n = got.as_ref().map(|x| match &x.body {
                            Body::Eager(v) => u64::from_le_bytes(v[..8].try_into().unwrap()) as usize,
                            _ => unreachable!(),
                        });
                        prop_assert_eq!(got_n, want);
                        if let Some(x) = got {
                            held.push((ri, x));
                        }
                    }
                    Op::Cancel(k) => {
                        if k < ids.len() {
                            let waiting = model.recvs[k].2;
                            prop_assert_eq!(m.cancel(ids[k]), waiting);
                            model.recvs[k].2 = false;
                        }
                    }
                    Op::Land(k) => {
                        let Some(&(p, _, _)) = model.recvs.get(k) else { continue };
                        if p.src == ANY_SOURCE || p.tag == ANY_TAG {
                            continue;
                        }
                        // In the model: a frame of the pattern's arrives; it takes it if the
                        // arrival goes to receive k, else the frame stays in its stream
                        // (it never arrived).
                        let n = model.msgs.len();
                        model.msgs.push((p.src as u32, p.tag, p.ctx, true));
                        let to = model.offer(n);
                        let took = m.take_claimed(ids[k], &p);
                        prop_assert_eq!(took, to == Some(k), "receive {} landing", k);
                        match to {
                            Some(ri) if ri == k => {
                                // Landed: done, nothing held.
                                model.recvs[k].1 = None;
                            }
                            Some(ri) => {
                                // Undo: the frame stays in the stream.
                                model.recvs[ri].1 = None;
                                model.recvs[ri].2 = true;
                                model.msgs.pop();
                            }
                            None => {
                                model.msgs.pop();
                            }
                        }
                    }
                    Op::SetWant(k, w) => {
                        if k < ids.len() {
                            let waiting = model.recvs[k].2;
                            prop_assert_eq!(m.want_of(ids[k]), waiting.then_some(wants[k]));
                            prop_assert_eq!(m.set_want(ids[k], want(w.into())), waiting);
                            if waiting {
                                wants[k] = want(w.into());
                            }
                        }
                    }
                    Op::PutBack(k) => {
                        if k < held.len() {
                            let (ri, x) = held.remove(k);
                            let mi = model.recvs[ri].1.take().unwrap();
                            model.msgs[mi].3 = true;
                            let got = m.incoming_front(x);
                            let want = model.offer(mi);
                            match (got, want) {
                                (None, None) => {}
                                (Some((id, x, w)), Some(ri)) => {
                                    prop_assert_eq!(id, ids[ri]);
                                    prop_assert_eq!(w, wants[ri]);
                                    held.push((ri, x));
                                }
                                (g, w) => prop_assert!(false, "put back {mi}: matcher {:?}, model {w:?}", g.map(|g| g.0)),
                            }
                        }
                    }
                }
                let free = model.msgs.iter().filter(|x| x.3).count();
                prop_assert_eq!(m.unexpected_len(), free);
            }
        }
    }
}
