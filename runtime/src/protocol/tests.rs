//! Protocol cores wired by an in-memory network and stepped by hand: every interleaving a
//! test wants, with no process, socket or thread.

use std::collections::HashMap;

use proptest::prelude::*;

use super::matching::{Body, Msg, Pattern, RecvId, ANY_SOURCE, ANY_TAG};
use super::*;
use crate::wire::{Encoding, FrameDecoder, Header};

/// N protocol cores and the "memory" their rendezvous pulls read.
struct Net {
    cores: Vec<Protocol>,
    /// `dec[to][from]`: what `to` has decoded of `from`'s stream.
    dec: Vec<Vec<FrameDecoder>>,
    /// Borrowed send buffers, by (rank, address).
    mem: HashMap<(usize, u64), Vec<u8>>,
    /// Ranks whose pulls the "kernel" refuses (they get streams instead).
    refuse_pull: Vec<bool>,
    /// Ranks that cannot copy their own borrowed buffers (the owner streams them).
    refuse_copy: Vec<bool>,
    /// Ranks that are gone: nothing is delivered to or from them.
    dead: Vec<bool>,
}

const MAX: u64 = 1 << 30;

impl Net {
    fn new(n: usize, threshold: usize) -> Net {
        let cores = (0..n)
            .map(|rank| {
                Protocol::new(ProtocolConfig {
                    rank,
                    size: n,
                    max_message: MAX,
                    rendezvous_threshold: threshold,
                    can_pull: (0..n).map(|p| p != rank).collect(),
                })
            })
            .collect();
        let dec = (0..n)
            .map(|_| (0..n).map(|p| FrameDecoder::new(p, MAX)).collect())
            .collect();
        Net {
            cores,
            dec,
            mem: HashMap::new(),
            refuse_pull: vec![false; n],
            refuse_copy: vec![false; n],
            dead: vec![false; n],
        }
    }

    /// Send `data` from `from` to `to` as `tag`, borrowed (its bytes live in `mem`).
    fn send(&mut self, from: usize, to: usize, tag: i32, data: Vec<u8>) -> SendId {
        let h = Header::data(0, from as u32, tag, data.len() as u64, Encoding::Raw, 1);
        let core = &mut self.cores[from];
        match core.route(to, data.len(), false) {
            Route::SelfSend => {
                core.send_self(Msg::new(&h, Body::Eager(data)));
                SendId::Done
            }
            Route::Eager => core.queue_copy(to, &h, &data),
            Route::Rendezvous => {
                let (addr, len) = (data.as_ptr() as u64, data.len() as u64);
                self.mem.insert((from, addr), data);
                core.offer(to, &h, RvBuf::Borrowed { addr, len })
            }
        }
    }

    /// Send an owned buffer (the protocol keeps it until the receiver is done).
    fn send_owned(&mut self, from: usize, to: usize, tag: i32, data: &[u8]) -> SendId {
        let h = Header::data(0, from as u32, tag, data.len() as u64, Encoding::Raw, 1);
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(data);
        self.cores[from].offer(to, &h, RvBuf::Owned(buf))
    }

    fn post(&mut self, rank: usize, src: i32, tag: i32) -> Result<Msg, RecvId> {
        self.cores[rank].post(Pattern { ctx: 0, src, tag }, Want::Bytes)
    }

    /// Bytes at `addr` in `rank`'s memory.
    fn read(&self, rank: usize, addr: u64, len: u64) -> Option<Vec<u8>> {
        if let Some(v) = self.mem.get(&(rank, addr)) {
            return Some(v[..len as usize].to_vec());
        }
        self.cores[rank].owned_bytes(addr).map(<[u8]>::to_vec)
    }

    /// Move every queued byte from `from` to `to` and let `to` handle the frames.
    fn deliver(&mut self, from: usize, to: usize) -> bool {
        if self.dead[from] || self.dead[to] {
            return false;
        }
        let mut moved = false;
        while let Some(bytes) = self.cores[from].out_front(to) {
            let bytes = bytes.to_vec();
            self.cores[from].out_advance(to, bytes.len());
            let mut at = 0;
            loop {
                let got = self.dec[to][from]
                    .pump(|buf| {
                        let n = buf.len().min(bytes.len() - at);
                        buf[..n].copy_from_slice(&bytes[at..at + n]);
                        at += n;
                        Ok(n)
                    })
                    .expect("frames decode");
                match got {
                    Some(d) => self.cores[to].handle_frame(from, d),
                    None => break,
                }
            }
            moved = true;
        }
        moved
    }

    /// What a waiting thread of `rank` does besides moving bytes: pulls and copies.
    fn work(&mut self, rank: usize) -> bool {
        let mut any = false;
        while let Some(job) = self.cores[rank].claim_pull(true) {
            let r = if self.refuse_pull[rank] {
                Err(())
            } else {
                Ok(Some(
                    self.read(job.peer, job.addr, job.len)
                        .expect("sender memory"),
                ))
            };
            self.cores[rank].pull_done(&job, r);
            any = true;
        }
        while let Some((peer, token, addr, len)) = self.cores[rank].claim_copy() {
            let copy = if self.refuse_copy[rank] {
                None
            } else {
                let mut v = vec![0u8; HEADER_LEN];
                v.extend(self.read(rank, addr, len).expect("own memory"));
                Some(v)
            };
            self.cores[rank].copy_done(peer, token, copy);
            any = true;
        }
        any
    }

    /// One step of `rank`: read from everyone, then do its work.
    fn step(&mut self, rank: usize) -> bool {
        let mut any = false;
        for from in 0..self.cores.len() {
            if from != rank {
                any |= self.deliver(from, rank);
            }
        }
        any | self.work(rank)
    }

    /// Step ranks in the given order, over and over, until nothing moves.
    fn settle(&mut self, order: &[usize]) {
        for _ in 0..1000 {
            let mut any = false;
            for &r in order {
                if !self.dead[r] {
                    any |= self.step(r);
                }
            }
            if !any {
                return;
            }
        }
        panic!("the network never settles");
    }

    fn take(&mut self, rank: usize, id: RecvId) -> Option<Msg> {
        match self.cores[rank].take(id, false)? {
            Taken::Msg(m) => Some(m),
            Taken::Pull(..) => panic!("a non-direct take got a pull"),
        }
    }
}

fn bytes(m: &Msg) -> &[u8] {
    match &m.body {
        Body::Eager(v) => v,
        other => panic!("no bytes: {other:?}"),
    }
}

fn payload(from: usize, to: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (from * 31 + to * 7 + i) as u8).collect()
}

/// The halo exchange of issue 9: every rank posts receives from both neighbours, then
/// sends to both. Nobody's own receive is ever waited on: the cores finish it by stepping.
fn halo(n: usize, len: usize, threshold: usize, order: &[usize], refuse: &[usize]) {
    let mut net = Net::new(n, threshold);
    for &r in refuse {
        net.refuse_pull[r] = true;
    }
    let mut recvs = Vec::new();
    for me in 0..n {
        let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
        let l = net.post(me, prev as i32, 0).expect_err("nothing sent yet");
        let r = net.post(me, next as i32, 1).expect_err("nothing sent yet");
        recvs.push((me, prev, l));
        recvs.push((me, next, r));
    }
    let mut sends = Vec::new();
    for me in 0..n {
        let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
        sends.push((me, net.send(me, next, 0, payload(me, next, len))));
        sends.push((me, net.send(me, prev, 1, payload(me, prev, len))));
    }
    net.settle(order);
    for (me, id) in sends {
        assert_eq!(net.cores[me].poll_send(id), SendPoll::Done, "send of {me}");
    }
    for (me, from, id) in recvs {
        let m = net.take(me, id).expect("receive complete");
        assert_eq!(bytes(&m), payload(from, me, len), "{me} from {from}");
    }
    for c in &net.cores {
        assert_eq!(c.in_flight(), (0, 0));
    }
}

#[test]
fn halo_exchange_completes_without_anyone_waiting_on_their_receives() {
    for n in [2, 3, 5] {
        let order: Vec<usize> = (0..n).collect();
        let rev: Vec<usize> = (0..n).rev().collect();
        for (len, threshold) in [(1 << 20, 1 << 15), (16, 1), (16, 1 << 15), (0, 0)] {
            halo(n, len, threshold, &order, &[]);
            halo(n, len, threshold, &rev, &[]);
            // Refused pulls: the senders stream instead.
            halo(n, len, threshold, &order, &[0]);
            halo(n, len, threshold, &rev, &(0..n).collect::<Vec<_>>());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Any order of stepping, eager or rendezvous, pulls refused anywhere: the halo finishes.
    #[test]
    fn halo_finishes_in_every_stepping_order(
        n in 2usize..6,
        order in proptest::collection::vec(0usize..6, 1..12),
        big in any::<bool>(),
        refuse in proptest::collection::vec(0usize..6, 0..3),
    ) {
        let mut order: Vec<usize> = order.into_iter().filter(|&r| r < n).collect();
        order.extend(0..n); // everyone steps at least once per round
        let refuse: Vec<usize> = refuse.into_iter().filter(|&r| r < n).collect();
        let (len, threshold) = if big { (3000, 1000) } else { (10, 1000) };
        halo(n, len, threshold, &order, &refuse);
    }
}

#[test]
fn head_to_head_rendezvous_into_receives_posted_after_arrival() {
    let mut net = Net::new(2, 64);
    let a = net.send(0, 1, 5, payload(0, 1, 4096));
    let b = net.send(1, 0, 5, payload(1, 0, 4096));
    net.settle(&[0, 1]);
    // Both offers arrived unexpected; neither sender is done.
    assert_eq!(net.cores[0].poll_send(a), SendPoll::Pending);
    assert_eq!(net.cores[1].poll_send(b), SendPoll::Pending);
    let r0 = net
        .post(0, 1, 5)
        .expect_err("a rendezvous is pulled, not handed over");
    let r1 = net.post(1, ANY_SOURCE, ANY_TAG).expect_err("likewise");
    net.settle(&[1, 0]);
    assert_eq!(net.cores[0].poll_send(a), SendPoll::Done);
    assert_eq!(net.cores[1].poll_send(b), SendPoll::Done);
    assert_eq!(bytes(&net.take(0, r0).unwrap()), payload(1, 0, 4096));
    assert_eq!(bytes(&net.take(1, r1).unwrap()), payload(0, 1, 4096));
}

#[test]
fn any_source_takes_whichever_arrives_first_and_keeps_each_senders_order() {
    for first in [1, 2] {
        let mut net = Net::new(3, 1 << 20);
        let any = net.post(0, ANY_SOURCE, 3).expect_err("nothing yet");
        for k in 0..3u8 {
            net.send(1, 0, 3, vec![10 + k]);
            net.send(2, 0, 3, vec![20 + k]);
        }
        let second = 3 - first;
        net.deliver(first, 0);
        let m = net.take(0, any).expect("matched the first arrival");
        assert_eq!(m.src as usize, first);
        assert_eq!(bytes(&m), [first as u8 * 10]);
        net.deliver(second, 0);
        // The rest match in each sender's order, whatever the wildcard.
        let mut seen: HashMap<u32, Vec<u8>> = HashMap::new();
        for _ in 0..5 {
            let m = net.post(0, ANY_SOURCE, ANY_TAG).expect("queued");
            seen.entry(m.src).or_default().push(bytes(&m)[0]);
        }
        let want = |s: u8, from: u8| (from..3).map(|k| s * 10 + k).collect::<Vec<_>>();
        assert_eq!(seen[&(first as u32)], want(first as u8, 1));
        assert_eq!(seen[&(second as u32)], want(second as u8, 0));
    }
}

#[test]
fn a_pull_too_big_for_the_takers_buffer_goes_back_and_the_sender_waits() {
    let mut net = Net::new(2, 100);
    let s = net.send(1, 0, 0, payload(1, 0, 500));
    net.settle(&[0, 1]);
    let pat = Pattern {
        ctx: 0,
        src: 1,
        tag: 0,
    };
    let id = net.cores[0].post(pat, Want::Now).expect_err("rendezvous");
    let Some(Taken::Pull(job, msg)) = net.cores[0].take(id, true) else {
        panic!("a direct taker makes the pull itself")
    };
    assert_eq!(job.len, 500);
    // The taker's buffer holds 100 bytes: truncation. The message goes back.
    net.cores[0].unpull(&job, msg);
    net.settle(&[0, 1]);
    assert_eq!(net.cores[1].poll_send(s), SendPoll::Pending);
    // A receive with room gets it; the sender is released.
    let id = net.post(0, 1, 0).expect_err("rendezvous");
    net.settle(&[0, 1]);
    assert_eq!(bytes(&net.take(0, id).unwrap()), payload(1, 0, 500));
    assert_eq!(net.cores[1].poll_send(s), SendPoll::Done);
}

#[test]
fn a_direct_taker_pulls_into_its_own_buffer_and_others_leave_it_alone() {
    let mut net = Net::new(2, 100);
    let pat = Pattern {
        ctx: 0,
        src: 1,
        tag: 0,
    };
    let id = net.cores[0].post(pat, Want::Now).expect_err("nothing yet");
    let s = net.send(1, 0, 0, payload(1, 0, 300));
    net.settle(&[1, 0]);
    // Progress did not pull it: the owner waits with its own buffer.
    assert_eq!(net.cores[1].poll_send(s), SendPoll::Pending);
    let Some(Taken::Pull(job, _)) = net.cores[0].take(id, true) else {
        panic!("the owner is handed the pull")
    };
    let data = net.read(1, job.addr, job.len).unwrap();
    assert_eq!(data, payload(1, 0, 300));
    net.cores[0].pull_done(&job, Ok(None));
    net.settle(&[0, 1]);
    assert_eq!(net.cores[1].poll_send(s), SendPoll::Done);
    assert_eq!(net.cores[0].in_flight(), (0, 0));
}

#[test]
fn refused_pulls_stream_owned_copied_and_owner_streamed_buffers() {
    let mut net = Net::new(2, 100);
    net.refuse_pull[0] = true;
    // Owned: the protocol streams its own buffer.
    let a = net.send_owned(1, 0, 1, &payload(1, 0, 700));
    // Borrowed: a thread of the sender copies it.
    let b = net.send(1, 0, 2, payload(1, 0, 800));
    let ra = net.post(0, 1, 1).unwrap_err();
    let rb = net.post(0, 1, 2).unwrap_err();
    net.settle(&[0, 1]);
    assert_eq!(bytes(&net.take(0, ra).unwrap()), payload(1, 0, 700));
    assert_eq!(bytes(&net.take(0, rb).unwrap()), payload(1, 0, 800));
    assert_eq!(net.cores[1].poll_send(a), SendPoll::Done);
    assert_eq!(net.cores[1].poll_send(b), SendPoll::Done);
    // Borrowed, no thread can copy it: its owner is told to stream it.
    net.refuse_copy[1] = true;
    let data = payload(1, 0, 900);
    let c = net.send(1, 0, 3, data.clone());
    let rc = net.post(0, 1, 3).unwrap_err();
    net.settle(&[0, 1]);
    assert_eq!(net.cores[1].poll_send(c), SendPoll::StreamYourself);
    let SendId::Rendezvous { peer, token } = c else {
        panic!("a rendezvous")
    };
    net.cores[1].stream_borrowed(peer, token, &data);
    net.settle(&[1, 0]);
    assert_eq!(bytes(&net.take(0, rc).unwrap()), data);
    assert_eq!(net.cores[1].poll_send(c), SendPoll::Done);
}

#[test]
fn a_receive_cancelled_while_being_pulled_leaves_its_message_for_the_next() {
    let mut net = Net::new(2, 100);
    let s = net.send(1, 0, 0, payload(1, 0, 400));
    let r = net.post(0, 1, 0).unwrap_err();
    net.deliver(1, 0);
    let job = net.cores[0].claim_pull(true).expect("a pull to make");
    net.cores[0].cancel(r);
    let data = net.read(1, job.addr, job.len).unwrap();
    net.cores[0].pull_done(&job, Ok(Some(data)));
    net.settle(&[0, 1]);
    assert_eq!(net.cores[1].poll_send(s), SendPoll::Done);
    let m = net.post(0, 1, 0).expect("the pulled message is queued");
    assert_eq!(bytes(&m), payload(1, 0, 400));
}

#[test]
fn losing_a_peer_mid_rendezvous_fails_both_sides_instead_of_waiting() {
    let mut net = Net::new(3, 100);
    net.refuse_pull[0] = true;
    // 1 offers to 0; 0 matches, is refused the pull, asks for a stream; 1 dies first.
    let _ = net.send(1, 0, 0, payload(1, 0, 400));
    let any = net.post(0, ANY_SOURCE, 0).unwrap_err();
    net.step(0);
    net.dead[1] = true;
    net.settle(&[0, 2]);
    assert!(net.take(0, any).is_none(), "still waiting for the stream");
    net.cores[0].peer_lost(1, "killed");
    let m = net.take(0, any).expect("the receive ends");
    match m.body {
        Body::Failed(e) => assert!(matches!(*e, Error::PeerLost { rank: 1, .. }), "{e}"),
        other => panic!("{other:?}"),
    }
    // 0 offers to 2, which dies before answering.
    let s = net.send(0, 2, 0, payload(0, 2, 400));
    net.step(2);
    net.dead[2] = true;
    assert_eq!(net.cores[0].poll_send(s), SendPoll::Pending);
    net.cores[0].peer_lost(2, "exited");
    assert!(matches!(net.cores[0].poll_send(s), SendPoll::Failed(_)));
}

#[test]
fn oversized_offers_are_refused_and_released() {
    let mut net = Net::new(2, 10);
    net.cores[0] = Protocol::new(ProtocolConfig {
        rank: 0,
        size: 2,
        max_message: 50,
        rendezvous_threshold: 10,
        can_pull: vec![false, true],
    });
    let s = net.send(1, 0, 0, payload(1, 0, 51));
    net.settle(&[0, 1]);
    assert_eq!(net.cores[1].poll_send(s), SendPoll::Done, "sender released");
    let m = net.post(0, 1, 0).expect("the error is the message");
    assert!(matches!(m.body, Body::Failed(_)));
}

#[test]
fn the_route_decides_self_eager_and_rendezvous_in_one_place() {
    let mut net = Net::new(3, 100);
    net.cores[0].cfg.can_pull[2] = false;
    let p = &net.cores[0];
    assert_eq!(p.route(0, 1 << 20, false), Route::SelfSend);
    assert_eq!(p.route(1, 99, false), Route::Eager);
    assert_eq!(p.route(1, 100, false), Route::Rendezvous);
    assert_eq!(
        p.route(2, 1 << 20, false),
        Route::Eager,
        "a peer that cannot pull"
    );
    // Synchronous sends take the rendezvous at any size, to any other peer.
    assert_eq!(p.route(1, 0, true), Route::Rendezvous);
    assert_eq!(p.route(2, 8, true), Route::Rendezvous);
    assert_eq!(p.route(0, 8, true), Route::SelfSend);
    let s = net.send(0, 0, 4, vec![1, 2, 3]);
    assert_eq!(s, SendId::Done);
    assert_eq!(bytes(&net.post(0, 0, 4).unwrap()), [1, 2, 3]);
}

#[test]
fn receives_with_buffers_of_their_own_are_left_to_their_owners_until_a_wait_drags_on() {
    let mut net = Net::new(2, 100);
    let pat = Pattern {
        ctx: 0,
        src: 1,
        tag: 0,
    };
    let later = net.cores[0].post(pat, Want::Later).unwrap_err();
    let s = net.send(1, 0, 0, payload(1, 0, 300));
    net.deliver(1, 0);
    // A wait that has only begun leaves it alone...
    assert!(net.cores[0].claim_pull(false).is_none());
    // ...its owner, when it waits, pulls it into its own buffer...
    net.cores[0].set_direct(later);
    assert!(matches!(
        net.cores[0].take(later, true),
        Some(Taken::Pull(..))
    ));
    // ...and a wait that drags on takes one nobody waits for, so nothing hangs.
    let other = net.cores[0].post(pat, Want::Later).unwrap_err();
    let _ = net.send(1, 0, 0, payload(1, 0, 200));
    net.deliver(1, 0);
    assert!(net.cores[0].claim_pull(false).is_none());
    let job = net.cores[0]
        .claim_pull(true)
        .expect("an urgent wait pulls it");
    assert_eq!(job.id, other);
    let _ = s;
}

/// A receive whose owner waits on its set (`wait_all`, `wait_some`) is left to the owner
/// even by a wait that drags on, and is listed as waiting for a pull; once the owner lets
/// go (`set_later`), a dragging wait takes it again, before and after it matched.
#[test]
fn a_receive_its_owner_waits_on_is_left_to_it_until_it_lets_go() {
    let mut net = Net::new(2, 100);
    let pat = Pattern {
        ctx: 0,
        src: 1,
        tag: 0,
    };
    // Marked before its message matches.
    let a = net.cores[0].post(pat, Want::Later).unwrap_err();
    net.cores[0].set_direct(a);
    let _ = net.send(1, 0, 0, payload(1, 0, 300));
    net.deliver(1, 0);
    assert!(net.cores[0].pulls_waiting(), "listed for its owner");
    assert!(net.cores[0].unpulled(a).is_some());
    assert!(net.cores[0].claim_pull(true).is_none(), "left to its owner");
    net.cores[0].set_later(a);
    assert_eq!(net.cores[0].claim_pull(true).map(|j| j.id), Some(a));
    // Marked and let go before its message matches.
    let b = net.cores[0].post(pat, Want::Later).unwrap_err();
    net.cores[0].set_direct(b);
    net.cores[0].set_later(b);
    let _ = net.send(1, 0, 0, payload(1, 0, 300));
    net.deliver(1, 0);
    assert!(
        net.cores[0].claim_pull(false).is_none(),
        "a wait just begun"
    );
    assert_eq!(net.cores[0].claim_pull(true).map(|j| j.id), Some(b));
    assert!(net.cores[0].unpulled(b).is_none(), "being pulled");
}

#[test]
fn a_receive_takes_from_the_stream_only_a_frame_it_is_the_oldest_match_for() {
    let mut p = Protocol::new(ProtocolConfig {
        rank: 0,
        size: 2,
        max_message: MAX,
        rendezvous_threshold: 1 << 20,
        can_pull: vec![false, true],
    });
    let pat = |tag| Pattern {
        ctx: 0,
        src: 1,
        tag,
    };
    let any = p.post(pat(ANY_TAG), Want::Later).unwrap_err();
    let five = p.post(pat(5), Want::Later).unwrap_err();
    let h = Header::data(0, 1, 5, 4, Encoding::Raw, 1);
    // The wildcard receive, posted first, is the one a tag-5 frame goes to.
    assert!(!p.claimed_by(&h, five));
    assert!(p.claimed_by(&h, any));
    // Another context, source or tag: nobody's.
    assert!(!p.claimed_by(&Header::data(2, 1, 5, 4, Encoding::Raw, 1), any));
    p.landed(any);
    assert!(p.claimed_by(&h, five));
    // The landed receive is done: the next tag-5 frame goes to the other one.
    p.handle_frame(1, Decoded::Frame(h, vec![1, 2, 3, 4]));
    assert!(p.take(any, false).is_none());
    match p.take(five, false) {
        Some(Taken::Msg(m)) => assert!(matches!(m.body, Body::Eager(ref v) if v == &[1, 2, 3, 4])),
        other => panic!("{other:?}"),
    }
}

/// A `Cts` from `from` about `token`, as the receiver's progress layer would send it.
fn cts(net: &mut Net, to: usize, from: usize, token: u64, off: u64, len: u64, dst: u64) {
    let f = Protocol::cts_frame(token, off, len, dst);
    let h = Header::decode(f[..HEADER_LEN].try_into().unwrap(), from).expect("a valid header");
    assert_eq!((h.kind, h.len), (Kind::Cts, CTS_PAYLOAD_LEN));
    net.cores[to].handle_frame(from, Decoded::Frame(h, f[HEADER_LEN..].to_vec()));
}

#[test]
fn a_cts_becomes_a_push_of_the_part_it_names_only_while_its_send_waits() {
    let mut net = Net::new(3, 100);
    let data = payload(0, 1, 4096);
    let sent = data.clone();
    let addr = sent.as_ptr() as u64; // `mem` keeps this allocation
    let s = net.send(0, 1, 0, sent);
    let SendId::Rendezvous { token, .. } = s else {
        panic!("{s:?}")
    };
    // Parts outside the buffer, empty ones, other tokens and other peers are ignored.
    cts(&mut net, 0, 1, token, 4000, 97, 0x9000);
    cts(&mut net, 0, 1, token, u64::MAX, 2, 0x9000);
    cts(&mut net, 0, 1, token, 10, 0, 0x9000);
    cts(&mut net, 0, 1, token + 1, 0, 10, 0x9000);
    cts(&mut net, 0, 2, token, 0, 10, 0x9000);
    assert_eq!(net.cores[0].claim_push(), None);
    // The second half, named by the receiver: our bytes from the offset go to its address.
    cts(&mut net, 0, 1, token, 2048, 2048, 0x9000);
    let job = net.cores[0].claim_push().expect("a push");
    assert_eq!(
        job,
        PushJob {
            peer: 1,
            token,
            src: addr + 2048,
            len: 2048,
            dst: 0x9000
        }
    );
    assert_eq!(net.read(0, addr, 4096).unwrap()[2048..], data[2048..]);
    assert_eq!(net.cores[0].claim_push(), None, "once");
    // A Cts the sender reads only after the receiver's Fin (it took its offer back and
    // pulled everything) is no push: the buffer may be gone.
    cts(&mut net, 0, 1, token, 2048, 2048, 0x9000);
    net.cores[1].queue_control(0, Kind::Fin, token);
    net.deliver(1, 0);
    assert_eq!(net.cores[0].poll_send(s), SendPoll::Done);
    assert_eq!(net.cores[0].claim_push(), None);
    // An owned buffer: the part starts after the header room in front of the bytes.
    let owned = payload(0, 2, 1000);
    let s = net.send_owned(0, 2, 0, &owned);
    let SendId::Rendezvous { token, .. } = s else {
        panic!("{s:?}")
    };
    cts(&mut net, 0, 2, token, 600, 400, 0x7000);
    let job = net.cores[0].claim_push().expect("a push");
    assert_eq!((job.peer, job.len, job.dst), (2, 400, 0x7000));
    let at = net.read(0, job.src - 600, 1000).expect("the owned bytes");
    assert_eq!(at, owned);
    // A send whose receiver is lost pushes nothing.
    cts(&mut net, 0, 2, token, 0, 400, 0x7000);
    net.cores[0].peer_lost(2, "killed");
    assert_eq!(net.cores[0].claim_push(), None);
}
