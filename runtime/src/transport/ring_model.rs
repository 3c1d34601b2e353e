//! A loom model of the shared-memory ring and its doorbells (`shm.rs`), checked over every
//! interleaving loom explores: no message is lost, reordered or read torn, and no wakeup is
//! lost, so neither side can sleep forever while the other has made progress.
//!
//! The model keeps `shm.rs`'s protocol and memory orderings: the writer clears the header
//! word after the item, fills the payload and publishes the item with a Release store of
//! its header word; the reader polls the header word at its position with Acquire, copies,
//! and frees room with a Release store of `tail`; a side that finds nothing to do counts
//! itself in `sleepers`, reads the doorbell's sequence, fences, looks once more and sleeps
//! on the sequence (a futex there, a mutex and condition variable here); the other side
//! fences and rings (bumps the sequence and wakes) only when it sees a sleeper. The writer
//! writes whole items and waits only when the ring is full; the reader looks at the
//! writer's doorbell after every read that took something, as `shm.rs` does. An earlier
//! `shm.rs` did so only when the ring had been more than half full; loom found the lost
//! wakeup that allows (the writer slept through room that was made; the real wait naps at
//! most 50 ms, so it was a stall, not a hang).
//!
//! Payloads are chosen to look like the header the reader will want at that slot a lap
//! later: `a_ring_that_does_not_clear_the_next_header_reads_a_stale_one` shows loom finding
//! the reader taking such a stale word when the writer does not clear it; a header stored
//! Relaxed instead of Release fails the main model too (a payload read before it was
//! written).
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

/// Slots in the modelled ring. Odd, so that an item's payload slot in one lap is where a
/// header belongs in the next.
const CAP: u64 = 5;

/// The header word of the item at position `pos` (the stamp and a length of one).
fn header(pos: u64) -> u64 {
    pos << 8 | 1
}

#[derive(Default)]
struct Ring {
    /// The reader's position (its freed room), the shared `tail`.
    tail: AtomicU64,
    /// Each item takes two slots, a header word and its payload (relaxed: the header's
    /// Release store orders the payload before it, as in `shm.rs`).
    slots: [AtomicU64; CAP as usize],
    /// The reader's doorbell (rung by the writer) and the writer's (rung by the reader).
    reader_bell: Doorbell,
    writer_bell: Doorbell,
}

impl Ring {
    fn slot(&self, pos: u64) -> &AtomicU64 {
        &self.slots[(pos % CAP) as usize]
    }
}

/// The payload of the item at `pos`: a word that, read as a header, is the one the reader
/// will look for at that slot in the next lap, so a header word left stale would be taken.
fn payload(pos: u64) -> u64 {
    header(pos + 1 + CAP)
}

fn write_all(r: &Ring, items: u64, clear_next: bool) {
    let mut h = 0u64;
    for _ in 0..items {
        loop {
            // Room for the item and the cleared word after it.
            let room = |t: u64| h + 3 <= t + CAP;
            if room(r.tail.load(Acquire)) {
                if clear_next {
                    r.slot(h + 2).store(0, Relaxed);
                }
                r.slot(h + 1).store(payload(h), Relaxed);
                r.slot(h).store(header(h), Release);
                h += 2;
                r.reader_bell.ring();
                break;
            }
            // Full: sleep until the reader makes room.
            r.writer_bell.wait(|| room(r.tail.load(Acquire)));
        }
    }
}

fn read_all(r: &Ring, n: usize, half_full_shortcut: bool) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        let t = r.tail.load(Relaxed);
        let w = r.slot(t).load(Acquire);
        if w != 0 {
            assert_eq!(w, header(t), "a stale or torn header");
            let v = r.slot(t + 1).load(Relaxed);
            r.tail.store(t + 2, Release);
            got.push(v);
            if !half_full_shortcut || got.len() % 2 == 0 {
                r.writer_bell.ring();
            }
            continue;
        }
        r.reader_bell.wait(|| r.slot(t).load(Acquire) != 0);
    }
    got
}

fn model(half_full_shortcut: bool, clear_next: bool) {
    const ITEMS: u64 = 4;
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let ring = Arc::new(Ring::default());
        let w = ring.clone();
        let writer = loom::thread::spawn(move || write_all(&w, ITEMS, clear_next));
        let got = read_all(&ring, ITEMS as usize, half_full_shortcut);
        writer.join().unwrap();
        let want: Vec<u64> = (0..ITEMS).map(|i| payload(2 * i)).collect();
        assert_eq!(got, want);
    });
}

#[test]
fn ring_model_loses_no_message_and_no_wakeup() {
    model(false, true);
}

/// A writer that does not clear the word after each item: in the third lap the reader finds
/// a payload of the first where the next header belongs, and takes it for one.
#[test]
#[should_panic]
fn a_ring_that_does_not_clear_the_next_header_reads_a_stale_one() {
    model(false, false);
}

/// The old shortcut (the reader rang the writer's doorbell only now and then), for the
/// record: loom reports "deadlock" (both threads asleep). Not a test: loom aborts the
/// process on a deadlock it detects.
#[allow(dead_code)]
fn half_full_shortcut_loses_a_wakeup() {
    model(true, true);
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
