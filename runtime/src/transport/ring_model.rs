//! A loom model of the shared-memory ring and its doorbells (`shm.rs`), checked over every
//! interleaving loom explores: no message is lost, reordered or read torn, and no wakeup is
//! lost, so neither side can sleep forever while the other has made progress.
//!
//! The model keeps `shm.rs`'s protocol and memory orderings: the writer fills the data and
//! publishes `head` with Release; the reader takes `head` with Acquire, copies, and frees
//! room with a Release store of `tail`; a side that finds nothing to do counts itself in
//! `sleepers`, reads the doorbell's sequence, fences, looks once more and sleeps on the
//! sequence (a futex there, a mutex and condition variable here); the other side fences and
//! rings (bumps the sequence and wakes) only when it sees a sleeper. The writer writes
//! whole items and waits only when the ring is full; the reader looks at the writer's
//! doorbell after every read that took something, as `shm.rs` does. An earlier `shm.rs` did
//! so only when the ring had been more than half full: `half_full_shortcut_loses_a_wakeup`
//! shows loom finding the lost wakeup that shortcut allows (the writer slept through room that was made; the
//! real wait naps at most 50 ms, so it was a stall, not a hang).
//!
//! `shm.rs`'s reader also keeps the writer's position it last saw and skips the load of
//! `head` while that shows enough bytes; it loads `head` whenever the cache shows the ring
//! empty, which is the only load the sleep protocol depends on, so the model loads it every
//! time (the cache itself is tested in `shm.rs`'s `ring_tests`).
//!
//! The offer word through which a receiver shares a large pull with its sender (`shm.rs`'s
//! module documentation) is modelled too: the sender writes the part only if it took the
//! offer, the receiver reads the part only once it is marked written (and sees the write),
//! and an offer taken back is never written (`an_offer_is_written_by_the_sender_or_taken_back_never_both`; a
//! take-back without a compare-and-swap fails it).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p ranks
//! --no-default-features --lib ring_model` (CI does).

use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};
use loom::sync::{Arc, Condvar, Mutex};

const CAP: u64 = 2;

/// A doorbell: a sequence word, a sleeper count, and the futex emulated.
#[derive(Default)]
struct Doorbell {
    seq: AtomicU32,
    sleepers: AtomicU32,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Doorbell {
    /// `shm.rs`'s `ring_doorbell(_, false)`.
    fn ring(&self) {
        fence(SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            self.seq.fetch_add(1, SeqCst);
            let _g = self.lock.lock().unwrap();
            self.cv.notify_all();
        }
    }

    /// `shm.rs`'s `wait`: sleep unless `ready()` holds or the sequence moved.
    fn wait(&self, ready: impl Fn() -> bool) {
        self.sleepers.fetch_add(1, SeqCst);
        let before = self.seq.load(SeqCst);
        fence(SeqCst);
        if !ready() {
            // FUTEX_WAIT(seq, before): returns at once if the word changed.
            let mut g = self.lock.lock().unwrap();
            while self.seq.load(SeqCst) == before {
                g = self.cv.wait(g).unwrap();
            }
        }
        self.sleepers.fetch_sub(1, SeqCst);
    }
}

#[derive(Default)]
struct Ring {
    head: AtomicU64,
    tail: AtomicU64,
    data: [AtomicU64; CAP as usize],
    /// The reader's doorbell (rung by the writer) and the writer's (rung by the reader).
    reader_bell: Doorbell,
    writer_bell: Doorbell,
}

fn write_all(r: &Ring, items: &[u64]) {
    for &v in items {
        loop {
            let h = r.head.load(Relaxed);
            let t = r.tail.load(Acquire);
            if h - t < CAP {
                r.data[(h % CAP) as usize].store(v, Relaxed);
                r.head.store(h + 1, Release);
                r.reader_bell.ring();
                break;
            }
            // Full: sleep until the reader makes room.
            r.writer_bell
                .wait(|| r.head.load(Relaxed) - r.tail.load(Acquire) < CAP);
        }
    }
}

fn read_all(r: &Ring, n: usize, half_full_shortcut: bool) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        let t = r.tail.load(Relaxed);
        let h = r.head.load(Acquire);
        if h != t {
            let v = r.data[(t % CAP) as usize].load(Relaxed);
            r.tail.store(t + 1, Release);
            got.push(v);
            if !half_full_shortcut || h - t > CAP / 2 {
                r.writer_bell.ring();
            }
            continue;
        }
        r.reader_bell.wait(|| r.head.load(Acquire) != t);
    }
    got
}

fn model(half_full_shortcut: bool) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let ring = Arc::new(Ring::default());
        let w = ring.clone();
        let writer = loom::thread::spawn(move || write_all(&w, &[11, 22, 33]));
        let got = read_all(&ring, 3, half_full_shortcut);
        writer.join().unwrap();
        assert_eq!(got, vec![11, 22, 33]);
    });
}

#[test]
fn ring_model_loses_no_message_and_no_wakeup() {
    model(false);
}

/// The old shortcut, for the record: loom reports "deadlock" (both threads asleep) within a
/// few hundred interleavings. Not a test: loom aborts the process on a deadlock it detects.
#[allow(dead_code)]
fn half_full_shortcut_loses_a_wakeup() {
    model(true);
}

/// The offer word of a shared pull (`shm.rs`'s `offer_push`, `push` and `close_offer`):
/// the receiver opens the offer and, once its own part is done, takes it back, or waits
/// for the sender's mark if the sender took it; the sender writes the part only after
/// taking the offer. `racy_close`: take it back with a load and a store instead of one
/// compare-and-swap.
fn offer_model(racy_close: bool) {
    const TOKEN: u64 = 5 << 3;
    const OPEN: u64 = TOKEN | 1;
    const TAKEN: u64 = TOKEN | 2;
    const WRITTEN: u64 = TOKEN | 3;
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let word = Arc::new(AtomicU64::new(0));
        // The receiver's buffer for the part (relaxed accesses: what orders them is the
        // offer word).
        let part = Arc::new(AtomicU64::new(0));
        assert!(word.compare_exchange(0, OPEN, AcqRel, Relaxed).is_ok());
        let sender = {
            let (word, part) = (word.clone(), part.clone());
            loom::thread::spawn(move || {
                if word.compare_exchange(OPEN, TAKEN, AcqRel, Relaxed).is_err() {
                    return false;
                }
                part.store(42, Relaxed);
                word.store(WRITTEN, Release);
                true
            })
        };
        let written = loop {
            let withdrawn = if racy_close {
                let seen = word.load(Acquire) == OPEN;
                if seen {
                    word.store(0, Release);
                }
                seen
            } else {
                word.compare_exchange(OPEN, 0, AcqRel, Acquire).is_ok()
            };
            if withdrawn {
                break false;
            }
            match word.load(Acquire) {
                WRITTEN => {
                    word.store(0, Release);
                    break true;
                }
                TAKEN => loom::thread::yield_now(),
                v => panic!("offer word {v}"),
            }
        };
        if written {
            // The sender's write happened before its mark, which we read.
            assert_eq!(part.load(Relaxed), 42);
        } else {
            // Taken back: the part is ours to pull (write) ourselves.
            part.store(7, Relaxed);
        }
        assert_eq!(sender.join().unwrap(), written, "the two sides disagree");
        if !written {
            assert_eq!(part.load(Relaxed), 7, "written after it was taken back");
        }
    });
}

#[test]
fn an_offer_is_written_by_the_sender_or_taken_back_never_both() {
    offer_model(false);
}

/// Taking the offer back with a load and a store lets the sender take it in between: loom
/// finds both sides writing the part.
#[test]
#[should_panic]
fn an_offer_taken_back_without_a_compare_and_swap_is_written_twice() {
    offer_model(true);
}
