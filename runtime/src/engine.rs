//! Matching: which arrived message satisfies which receive.
//!
//! Pure bookkeeping, no I/O. MPI's rules: a receive names a context (communicator and
//! traffic class), a source or `ANY_SOURCE`, and a tag or `ANY_TAG`. Messages from one
//! source in one context are matched in the order they were sent; receives are matched in the
//! order they were posted.

use std::collections::VecDeque;

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
    /// A large payload still in the sender's memory, pulled when the receive completes.
    Remote {
        /// World rank of the sender.
        peer: usize,
        addr: u64,
        len: u64,
        token: u64,
    },
    /// The message could not be accepted (too large); receiving it reports this error.
    Failed(Box<Error>),
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
    pub fn matches(&self, m: &Msg) -> bool {
        self.ctx == m.ctx
            && (self.src == ANY_SOURCE || self.src as u32 == m.src)
            && (self.tag == ANY_TAG || self.tag == m.tag)
    }
}

/// Identifies a posted receive.
pub(crate) type RecvId = u64;

/// The matching engine: unexpected messages, posted receives and their completions.
#[derive(Default)]
pub(crate) struct Matcher {
    unexpected: VecDeque<Msg>,
    posted: Vec<(RecvId, Pattern)>,
    /// Completed receives not yet collected (few at a time: a vector beats a map).
    done: Vec<(RecvId, Msg)>,
    next_id: RecvId,
    next_seq: u64,
}

impl Matcher {
    /// A message arrived: give it to the oldest matching posted receive, or queue it.
    pub fn incoming(&mut self, mut msg: Msg) {
        msg.seq = self.next_seq;
        self.next_seq += 1;
        if let Some(i) = self.posted.iter().position(|(_, p)| p.matches(&msg)) {
            let (id, _) = self.posted.remove(i);
            self.done.push((id, msg));
        } else {
            self.unexpected.push_back(msg);
        }
    }

    /// Put back a message that was taken but not consumed, ahead of everything queued.
    pub fn incoming_front(&mut self, msg: Msg) {
        if let Some(i) = self.posted.iter().position(|(_, p)| p.matches(&msg)) {
            let (id, _) = self.posted.remove(i);
            self.done.push((id, msg));
        } else {
            // Back in arrival order, ahead of everything that arrived after it.
            let at = self.unexpected.partition_point(|m| m.seq < msg.seq);
            self.unexpected.insert(at, msg);
        }
    }

    /// Post a receive: the oldest matching queued message at once, or an id to wait on.
    pub fn post(&mut self, pat: Pattern) -> Result<Msg, RecvId> {
        if let Some(i) = self.unexpected.iter().position(|m| pat.matches(m)) {
            return Ok(self.unexpected.remove(i).expect("index from position"));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.posted.push((id, pat));
        Err(id)
    }

    /// The completed message of a posted receive, if it has matched.
    pub fn take(&mut self, id: RecvId) -> Option<Msg> {
        let i = self.done.iter().position(|(d, _)| *d == id)?;
        Some(self.done.swap_remove(i).1)
    }

    /// Withdraw a posted receive; a message it already matched goes back to the queue front.
    pub fn cancel(&mut self, id: RecvId) {
        self.posted.retain(|(i, _)| *i != id);
        if let Some(m) = self.take(id) {
            self.incoming_front(m);
        }
    }

    /// The oldest queued message matching `pat`, without taking it.
    pub fn peek(&self, pat: Pattern) -> Option<&Msg> {
        self.unexpected.iter().find(|m| pat.matches(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        m.incoming(msg(1, 5, 1));
        m.incoming(msg(2, 5, 2));
        m.incoming(msg(1, 5, 3));
        assert_eq!(first_byte(&m.post(pat(1, 5)).unwrap()), 1);
        assert_eq!(first_byte(&m.post(pat(ANY_SOURCE, 5)).unwrap()), 2);
        assert_eq!(first_byte(&m.post(pat(1, ANY_TAG)).unwrap()), 3);
        assert!(m.post(pat(1, 5)).is_err());
    }

    #[test]
    fn posted_receives_match_in_post_order_and_respect_context() {
        let mut m = Matcher::default();
        let a = m.post(pat(ANY_SOURCE, ANY_TAG)).unwrap_err();
        let b = m.post(pat(3, 7)).unwrap_err();
        m.incoming(Msg {
            ctx: 9,
            ..msg(3, 7, 0)
        });
        assert!(m.take(a).is_none() && m.take(b).is_none());
        m.incoming(msg(3, 7, 10));
        m.incoming(msg(3, 7, 11));
        assert_eq!(first_byte(&m.take(a).unwrap()), 10);
        assert_eq!(first_byte(&m.take(b).unwrap()), 11);
        assert!(m
            .peek(Pattern {
                ctx: 9,
                src: 3,
                tag: 7
            })
            .is_some());
    }

    #[test]
    fn a_message_put_back_keeps_its_place_and_can_match_other_receives() {
        let mut m = Matcher::default();
        m.incoming(msg(0, 1, 1)); // A
        m.incoming(msg(0, 2, 2)); // B
        let b = m.post(pat(0, 2)).unwrap();
        m.incoming_front(b);
        // A was sent first and still comes first for a wildcard receive.
        assert_eq!(first_byte(&m.post(pat(0, ANY_TAG)).unwrap()), 1);
        assert_eq!(first_byte(&m.post(pat(0, ANY_TAG)).unwrap()), 2);
        // A cancelled receive's message goes to another posted receive that wants it.
        let r1 = m.post(pat(ANY_SOURCE, 5)).unwrap_err();
        let r2 = m.post(pat(2, 5)).unwrap_err();
        m.incoming(msg(2, 5, 9));
        m.cancel(r1);
        assert_eq!(first_byte(&m.take(r2).unwrap()), 9);
    }

    #[test]
    fn cancel_returns_a_matched_message() {
        let mut m = Matcher::default();
        let a = m.post(pat(0, 0)).unwrap_err();
        m.incoming(msg(0, 0, 4));
        m.cancel(a);
        assert_eq!(first_byte(&m.post(pat(0, 0)).unwrap()), 4);
    }
}
