//! The progress core's lock: a mutex whose release is a plain store, and whose maker takes it
//! without a locked instruction.
//!
//! Every message takes the core's lock once on each side. With `std::sync::Mutex` the
//! release is an atomic swap, which on x86 waits for every store before it to leave the
//! store buffer, the ring writes the peer is polling among them: each send paid for a
//! cross-core transfer before it returned. Here the release is a store of 0 followed by a
//! plain load of the sleeper count, and the stores drain while the caller goes on (to its
//! receive, in a barrier).
//!
//! A store then a load may be reordered (the load passes the store), which is the classic
//! lost wakeup: a waiter counts itself and sees the lock still held, while the holder
//! stored 0 but read the count from before. It is closed as the shared-memory doorbells'
//! is (`transport::shm`): a waiter about to sleep calls `membarrier(PRIVATE_EXPEDITED)`
//! after it counts itself and before it looks at the lock. That runs a full barrier on
//! every core that runs a thread of this process, so any release either is visible to the
//! waiter's look or reads the count after it went up. Waiters pay for it (about a
//! microsecond here); they were about to sleep anyway. Where the kernel has no private
//! expedited `membarrier`, or `RANKS_TEST_FENCED_LOCK=1`, releases fence (`fence(SeqCst)`
//! after the store) instead, which costs a little more than the atomic swap of a
//! three-state futex mutex such as std's; that form has a loom model (`model` below).
//!
//! Taking the lock is itself a locked instruction (a compare-and-swap), and on x86 that too
//! waits for the store buffer: a send paid for its previous frame's ring stores before it
//! could begin. So the lock is *biased* to the thread that made it (the rank's own thread):
//! that thread takes it with plain stores and loads (`owner_in` set, then `held` looked at),
//! and every other thread, after taking `held`, calls `membarrier` and waits until the owner
//! is out (`owner_in` clear). The barrier is the owner's missing fence: either the owner's
//! mark was visible to the other thread's look, or the owner's look comes after the
//! barrier and sees `held` taken. Each foreign take costs a barrier, so after
//! `FOREIGN_TAKES` of them (a service or helper thread that uses the core often) the bias is
//! revoked for good and the owner takes `held` like everyone else. No bias where releases
//! fence. Loom cannot express a barrier one thread puts on another: in its model every
//! barrier is a `fence(SeqCst)` on both sides (`light_fence` and `heavy_fence`), the
//! symmetric form of the same argument; the stress tests below run the real barriers.
//!
//! The lock does not poison: a panic while it is held releases it.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::compiler_fence;
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};

/// How many times a contended `lock` looks before it counts itself as a sleeper.
const SPINS: u32 = if cfg!(loom) { 1 } else { 100 };

/// Takes by threads other than the owner before the bias is revoked (each pays for a
/// `membarrier`, about a microsecond; a thread that keeps coming should pay for a
/// compare-and-swap instead, and so should the owner then).
const FOREIGN_TAKES: u32 = if cfg!(loom) { 2 } else { 32 };

/// Register this process for private expedited `membarrier`s (once); false where the
/// kernel has none. Every lock made after a true answer releases with a plain store.
#[cfg(not(loom))]
pub(crate) fn barriers_available() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        use rustix::thread::{membarrier, membarrier_query, MembarrierCommand, MembarrierQuery};
        let q = membarrier_query();
        q.contains(MembarrierQuery::PRIVATE_EXPEDITED)
            && q.contains(MembarrierQuery::REGISTER_PRIVATE_EXPEDITED)
            && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
    })
}

/// The model's barriers are fences on both sides (`heavy_fence`, `light_fence`).
#[cfg(loom)]
pub(crate) fn barriers_available() -> bool {
    true
}

/// This thread's token: the address of a thread-local, distinct among live threads and
/// never 0 (which stands for no bias).
#[cfg(not(loom))]
#[inline]
fn token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|t| t as *const u8 as usize)
}

#[cfg(loom)]
fn token() -> usize {
    use std::sync::atomic::{AtomicUsize as StdCount, Ordering as StdOrder};
    static NEXT: StdCount = StdCount::new(1);
    loom::thread_local! {
        static TOKEN: usize = NEXT.fetch_add(1, StdOrder::Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// A mutual-exclusion lock around `T`.
pub(crate) struct Lock<T> {
    /// 0: free; 1: held (by any thread but the owner taking it through its bias).
    held: AtomicU32,
    /// Threads that may be asleep on `held` (counted before their last look).
    sleepers: AtomicU32,
    /// The token of the thread that takes the lock without a locked instruction; 0: none.
    bias: AtomicUsize,
    /// 1 while the owner holds the lock through its bias, or looks whether it may.
    owner_in: AtomicU32,
    /// Threads that may be asleep on `owner_in` (at most the one holding `held`).
    owner_sleepers: AtomicU32,
    /// Takes by other threads while the lock was biased (changed only under `held`).
    foreign: AtomicU32,
    /// How many of those revoke the bias ([`FOREIGN_TAKES`]; tests change it).
    revoke_after: u32,
    /// Releases fence; waiters do not call `membarrier`.
    fenced: bool,
    #[cfg(loom)]
    futex: model::Futex,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to the value to one thread at a time (the `held` word,
// taken with Acquire and released with Release ordering, and the owner's `owner_in`, with
// the barriers described above), so sharing the lock needs only `T: Send`, as for
// `std::sync::Mutex`.
unsafe impl<T: Send> Sync for Lock<T> {}

impl<T> Lock<T> {
    /// A lock around `value`, biased to the calling thread unless `fenced`. `fenced`:
    /// releases fence, for a process where [`barriers_available`] is false (or to test
    /// that form); otherwise it must be true.
    pub(crate) fn new(value: T, fenced: bool) -> Lock<T> {
        let fenced = fenced || !barriers_available();
        Lock {
            held: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            bias: AtomicUsize::new(if fenced { 0 } else { token() }),
            owner_in: AtomicU32::new(0),
            owner_sleepers: AtomicU32::new(0),
            foreign: AtomicU32::new(0),
            revoke_after: FOREIGN_TAKES,
            fenced,
            #[cfg(loom)]
            futex: model::Futex::default(),
            value: UnsafeCell::new(value),
        }
    }

    /// Take the lock, waiting for it while another thread holds it.
    #[inline]
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        let bias = self.bias.load(Ordering::Relaxed);
        if bias != 0 && bias == token() && self.owner_take(bias) {
            return Guard {
                lock: self,
                biased: true,
                _value: PhantomData,
            };
        }
        if self
            .held
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.contended();
        }
        if self.bias.load(Ordering::Relaxed) != 0 {
            self.exclude_owner();
        }
        Guard {
            lock: self,
            biased: false,
            _value: PhantomData,
        }
    }

    /// The owner's take: mark itself in, then look that nobody holds `held` and the bias
    /// is still its own. False (and the mark cleared): take `held` instead.
    #[inline]
    fn owner_take(&self, bias: usize) -> bool {
        if self.owner_in.load(Ordering::Relaxed) != 0 {
            // Taken again by the thread that holds it: wait as for any holder (forever, as
            // a std mutex would); never hand out a second guard.
            return false;
        }
        self.owner_in.store(1, Ordering::Relaxed);
        // The mark must be stored before the looks below in the machine code; the foreign
        // taker's barrier orders them in the processor.
        light_fence();
        if self.held.load(Ordering::Acquire) == 0 && self.bias.load(Ordering::Relaxed) == bias {
            return true;
        }
        self.owner_release();
        false
    }

    /// The owner leaves: clear the mark, then wake the thread waiting for that, if any.
    #[inline]
    fn owner_release(&self) {
        self.owner_in.store(0, Ordering::Release);
        light_fence();
        if self.owner_sleepers.load(Ordering::Relaxed) != 0 {
            self.futex_wake(&self.owner_in);
        }
    }

    /// Holding `held` while the lock is (or was, a moment ago) biased: make sure the owner
    /// is not inside through its bias, and revoke the bias after `FOREIGN_TAKES` takes.
    #[cold]
    #[inline(never)]
    fn exclude_owner(&self) {
        let bias = self.bias.load(Ordering::Relaxed);
        if bias == 0 {
            return;
        }
        let me = token();
        if bias == me {
            // The owner itself, come the long way round (it found `held` taken, or it
            // holds the lock already): nobody else takes through the bias.
            self.wait_owner_out();
            return;
        }
        let revoke =
            !heavy_fence() || self.foreign.load(Ordering::Relaxed) + 1 >= self.revoke_after;
        self.wait_owner_out();
        self.foreign
            .store(self.foreign.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if revoke {
            // From the barrier on, every owner's look sees the bias gone; one that marked
            // itself before it is waited out (it sees `held` taken and leaves).
            self.bias.store(0, Ordering::Relaxed);
            heavy_fence();
            self.wait_owner_out();
        }
    }

    /// Wait until the owner is not inside through its bias.
    fn wait_owner_out(&self) {
        for _ in 0..SPINS {
            if self.owner_in.load(Ordering::Acquire) == 0 {
                return;
            }
            spin_loop();
        }
        self.owner_sleepers.fetch_add(1, Ordering::SeqCst);
        // As for `held`'s sleepers: the owner's release sees the count, or we see it out.
        let bounded = !heavy_fence();
        while self.owner_in.load(Ordering::Acquire) != 0 {
            self.futex_wait(&self.owner_in, bounded);
        }
        self.owner_sleepers.fetch_sub(1, Ordering::Relaxed);
    }

    #[cold]
    fn contended(&self) {
        for _ in 0..SPINS {
            spin_loop();
            if self.held.load(Ordering::Relaxed) == 0
                && self
                    .held
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        // Count ourselves; then make every release from here on see the count (a barrier
        // on every thread, or the releases' own fences), then look before each sleep.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let bounded = if self.fenced {
            // Pairs with the release's fence (a locked add is one on x86, but the language
            // does not promise it; loom found the lost wakeup without it).
            fence(Ordering::SeqCst);
            false
        } else {
            // Where the barrier failed, a plain release may have missed the count: then
            // nap briefly instead of sleeping unbounded.
            !heavy_fence()
        };
        loop {
            if self
                .held
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            self.futex_wait(&self.held, bounded);
        }
    }

    #[inline]
    fn unlock(&self) {
        self.held.store(0, Ordering::Release);
        if self.fenced {
            fence(Ordering::SeqCst);
        } else {
            // The waiter's barrier stands for a fence, but only if the load below stays
            // after the store in the machine code: the compiler may not hoist it.
            light_fence();
        }
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.futex_wake(&self.held);
        }
    }

    /// Sleep while `word` is 1 (at most a millisecond if `bounded`).
    #[cfg(not(loom))]
    fn futex_wait(&self, word: &AtomicU32, bounded: bool) {
        use rustix::thread::futex;
        let nap = futex::Timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // Returns at once if the word is no longer 1; EINTR and timeouts just look again.
        let _ = futex::wait(word, futex::Flags::PRIVATE, 1, bounded.then_some(&nap));
    }

    #[cold]
    #[cfg(not(loom))]
    fn futex_wake(&self, word: &AtomicU32) {
        use rustix::thread::futex;
        let _ = futex::wake(word, futex::Flags::PRIVATE, 1);
    }

    #[cfg(loom)]
    fn futex_wait(&self, word: &AtomicU32, _bounded: bool) {
        self.futex.wait(word, 1);
    }

    #[cfg(loom)]
    fn futex_wake(&self, _word: &AtomicU32) {
        self.futex.wake();
    }
}

#[cfg(not(loom))]
fn spin_loop() {
    std::hint::spin_loop();
}

#[cfg(loom)]
fn spin_loop() {
    loom::hint::spin_loop();
}

/// The side of a barrier that costs nothing: keeps the compiler from moving a load above
/// the store before it (the other thread's `heavy_fence` orders them in the processor).
#[cfg(not(loom))]
#[inline(always)]
fn light_fence() {
    compiler_fence(Ordering::SeqCst);
}

#[cfg(loom)]
fn light_fence() {
    fence(Ordering::SeqCst);
}

/// A full barrier on every thread of this process; false if the kernel refused.
#[cfg(not(loom))]
fn heavy_fence() -> bool {
    use rustix::thread::{membarrier, MembarrierCommand};
    membarrier(MembarrierCommand::PrivateExpedited).is_ok()
}

#[cfg(loom)]
fn heavy_fence() -> bool {
    fence(Ordering::SeqCst);
    true
}

/// The lock, held; released when dropped. (Shared between threads only where `T` is
/// `Sync`, as `std::sync::MutexGuard`: it hands out `&T`.)
pub(crate) struct Guard<'a, T> {
    lock: &'a Lock<T>,
    /// Taken through the owner's bias (released by clearing `owner_in`).
    biased: bool,
    /// Not `Send`: a guard is released by the thread that took it (the owner's bias is
    /// per thread).
    _value: PhantomData<(&'a mut T, *const ())>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a guard exists only while this thread holds the lock, so no other
        // reference to the value is live.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the guard is borrowed mutably, so this is the only
        // reference it hands out.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.biased {
            self.lock.owner_release();
        } else {
            self.lock.unlock();
        }
    }
}

#[cfg(loom)]
mod model {
    //! The futex, emulated for loom: a wait checks the word and sleeps under one mutex, a
    //! wake takes it, as the kernel's hash bucket lock does.
    use loom::sync::atomic::{AtomicU32, Ordering};
    use loom::sync::{Condvar, Mutex};

    #[derive(Default)]
    pub(super) struct Futex {
        bucket: Mutex<()>,
        cv: Condvar,
    }

    impl Futex {
        pub(super) fn wait(&self, word: &AtomicU32, expected: u32) {
            let g = self.bucket.lock().unwrap();
            if word.load(Ordering::SeqCst) == expected {
                drop(self.cv.wait(g).unwrap());
            }
        }

        /// Wakes every sleeper: two words share this one bucket, and a sleeper woken for
        /// the other word looks again and sleeps.
        pub(super) fn wake(&self) {
            let _g = self.bucket.lock().unwrap();
            self.cv.notify_all();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p
    //! ranks --no-default-features --lib lock` (CI does).
    use super::Lock;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// Two or three threads add to a plain (not atomic) counter under the lock: loom fails
    /// on any access that the lock does not order, and on any thread left asleep (a lost
    /// wakeup is a deadlock to it).
    fn adders(threads: usize, each: usize) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            let lock = Arc::new(Lock::new(UnsafeCell::new(0usize), true));
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let lock = lock.clone();
                    loom::thread::spawn(move || {
                        for _ in 0..each {
                            let g = lock.lock();
                            // SAFETY: under the lock (what loom checks).
                            g.with_mut(|p| unsafe { *p += 1 });
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            let g = lock.lock();
            // SAFETY: every other thread has ended.
            assert_eq!(g.with(|p| unsafe { *p }), threads * each);
        });
    }

    #[test]
    fn lock_model_two_threads_twice_each() {
        adders(2, 2);
    }

    /// The biased form (loom's barriers are fences on both sides): the thread that made the
    /// lock adds through its bias while another adds by taking `held`; its second take
    /// revokes the bias (`FOREIGN_TAKES` is 2 in the model), so the owner's takes after it go
    /// the long way. Loom checks every interleaving of the owner's mark and look against the
    /// other thread's take, barrier and revocation.
    #[test]
    fn lock_model_owner_and_another_thread() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let lock = Arc::new(Lock::new(UnsafeCell::new(0usize), false));
            assert_ne!(
                lock.bias.load(super::Ordering::Relaxed),
                0,
                "biased to its maker"
            );
            let other = {
                let lock = lock.clone();
                loom::thread::spawn(move || {
                    for _ in 0..2 {
                        let g = lock.lock();
                        // SAFETY: under the lock (what loom checks).
                        g.with_mut(|p| unsafe { *p += 1 });
                    }
                })
            };
            for _ in 0..2 {
                let g = lock.lock();
                // SAFETY: under the lock.
                g.with_mut(|p| unsafe { *p += 10 });
            }
            other.join().unwrap();
            assert_eq!(lock.bias.load(super::Ordering::Relaxed), 0, "revoked");
            let g = lock.lock();
            // SAFETY: the other thread has ended.
            assert_eq!(g.with(|p| unsafe { *p }), 22);
        });
    }

    /// The owner holds the lock through its bias while the other thread comes for it and
    /// sleeps on the owner's mark: the owner's release must wake it.
    #[test]
    fn lock_model_the_owners_release_wakes_the_other() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let lock = Arc::new(Lock::new(UnsafeCell::new(0usize), false));
            let g = lock.lock();
            let other = {
                let lock = lock.clone();
                loom::thread::spawn(move || {
                    let g = lock.lock();
                    // SAFETY: under the lock.
                    g.with_mut(|p| unsafe { *p += 1 });
                })
            };
            // SAFETY: under the lock.
            g.with_mut(|p| unsafe { *p += 10 });
            drop(g);
            other.join().unwrap();
            let g = lock.lock();
            // SAFETY: the other thread has ended.
            assert_eq!(g.with(|p| unsafe { *p }), 11);
        });
    }

    #[test]
    fn lock_model_three_threads() {
        adders(3, 1);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// `threads` threads that each take `lock` `each` times, adding 1 to its first number
    /// and their index to its second; take `i` of thread `t` holds it for `hold(i, t)`, if
    /// any, and each thread rests `pause` after every release. Returns the threads and the
    /// count of those done.
    fn adders(
        lock: &Arc<Lock<(usize, usize)>>,
        threads: usize,
        each: usize,
        hold: fn(usize, usize) -> Option<Duration>,
        pause: Duration,
    ) -> (Vec<std::thread::JoinHandle<()>>, Arc<AtomicUsize>) {
        let done = Arc::new(AtomicUsize::new(0));
        let hs = (0..threads)
            .map(|t| {
                let (lock, done) = (lock.clone(), done.clone());
                std::thread::spawn(move || {
                    for i in 0..each {
                        let mut g = lock.lock();
                        let before = g.0;
                        if let Some(d) = hold(i, t) {
                            std::thread::sleep(d);
                        }
                        g.0 = before + 1;
                        g.1 += t;
                        drop(g);
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        (hs, done)
    }

    /// Threads add to a plain counter under the lock, some holding it long enough that the
    /// others go to sleep; a lost wakeup hangs, which the watchdog turns into a failure.
    fn hammer(fenced: bool, threads: usize, each: usize) {
        let lock = Arc::new(Lock::new((0usize, 0usize), fenced));
        // Every so often one holds it a while, so the others sleep on it.
        let hold = |i: usize, t: usize| {
            (i + t)
                .is_multiple_of(97)
                .then(|| Duration::from_micros(200))
        };
        let (hs, done) = adders(&lock, threads, each, hold, Duration::ZERO);
        let start = Instant::now();
        while done.load(Ordering::SeqCst) < threads {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "threads left asleep on the lock (a lost wakeup)"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for h in hs {
            h.join().unwrap();
        }
        let g = lock.lock();
        assert_eq!(g.0, threads * each);
        assert_eq!(g.1, each * (0..threads).sum::<usize>());
    }

    /// The thread that made the lock takes it through its bias, over and over, while
    /// `others` threads take it `each` times each (some holding it a while): no update may
    /// be lost, and nobody may be left asleep. With `revoke_after` above their takes the
    /// bias must still be there at the end; at or below them it must be gone.
    fn owner_and_others(others: usize, each: usize, revoke_after: u32) {
        let mut lock = Lock::new((0usize, 0usize), false);
        lock.revoke_after = revoke_after;
        let lock = Arc::new(lock);
        assert_eq!(
            lock.bias.load(Ordering::Relaxed),
            token(),
            "biased to its maker"
        );
        let hold = |i: usize, _| (i % 7 == 3).then(|| Duration::from_micros(100));
        let (hs, done) = adders(&lock, others, each, hold, Duration::from_micros(50));
        let start = Instant::now();
        let mut mine = 0usize;
        while done.load(Ordering::SeqCst) < others || mine < 100_000 {
            let mut g = lock.lock();
            let before = g.0;
            if mine.is_multiple_of(5_000) {
                // Held a while, so the others sleep on the owner's mark.
                std::thread::sleep(Duration::from_micros(200));
            }
            g.0 = before + 1;
            drop(g);
            mine += 1;
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "threads left asleep on the lock (a lost wakeup)"
            );
        }
        for h in hs {
            h.join().unwrap();
        }
        let g = lock.lock();
        assert_eq!(g.0, mine + others * each, "an update was lost");
        assert_eq!(g.1, each * (0..others).sum::<usize>());
        drop(g);
        let biased = lock.bias.load(Ordering::Relaxed) != 0;
        let takes = (others * each) as u32;
        assert_eq!(biased, takes < revoke_after, "{takes} foreign takes");
    }

    #[test]
    fn the_owner_takes_the_lock_without_a_locked_instruction_and_loses_nothing() {
        if !barriers_available() {
            eprintln!("skipped: this kernel has no private expedited membarrier");
            return;
        }
        // Below the revocation: every foreign take meets the bias.
        owner_and_others(2, 200, 1_000);
        // Revoked half-way.
        owner_and_others(3, 100, 150);
    }

    #[test]
    fn the_bias_is_revoked_after_foreign_takes_and_the_owner_then_takes_held() {
        if !barriers_available() {
            eprintln!("skipped: this kernel has no private expedited membarrier");
            return;
        }
        let lock = Arc::new(Lock::new(0u32, false));
        {
            let g = lock.lock();
            assert!(g.biased, "the maker's take goes through its bias");
            assert_eq!(lock.held.load(Ordering::Relaxed), 0);
            assert_eq!(lock.owner_in.load(Ordering::Relaxed), 1);
        }
        assert_eq!(lock.owner_in.load(Ordering::Relaxed), 0);
        let l2 = lock.clone();
        std::thread::spawn(move || {
            for i in 1..=FOREIGN_TAKES {
                let g = l2.lock();
                assert!(!g.biased);
                let still = l2.bias.load(Ordering::Relaxed) != 0;
                assert_eq!(still, i < FOREIGN_TAKES, "take {i}");
            }
        })
        .join()
        .unwrap();
        let g = lock.lock();
        assert!(!g.biased, "after revocation the owner takes `held` too");
        assert_eq!(lock.held.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_fenced_lock_has_no_bias() {
        let lock = Lock::new(0u8, true);
        assert_eq!(lock.bias.load(Ordering::Relaxed), 0);
        assert!(!lock.lock().biased);
    }

    #[test]
    fn a_lock_released_with_a_plain_store_loses_no_update_and_no_wakeup() {
        if !barriers_available() {
            eprintln!("skipped: this kernel has no private expedited membarrier");
            return;
        }
        let l = Lock::new(0u8, false);
        assert!(!l.fenced, "with membarrier, releases do not fence");
        hammer(false, 4, 20_000);
    }

    #[test]
    fn a_lock_released_with_a_fence_loses_no_update_and_no_wakeup() {
        let l = Lock::new(0u8, true);
        assert!(l.fenced);
        hammer(true, 4, 20_000);
    }

    /// One thread holds the lock while another comes to sleep on it, over and over: each
    /// release must wake the sleeper (a lost wakeup stops the ping-pong).
    #[test]
    fn every_release_wakes_a_sleeper() {
        let forms: &[bool] = if barriers_available() {
            &[false, true]
        } else {
            eprintln!(
                "skipped for the plain-store form: this kernel has no private expedited membarrier"
            );
            &[true]
        };
        for &fenced in forms {
            let lock = Arc::new(Lock::new(0u64, fenced));
            let turns = 2_000u64;
            let other = {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    let mut mine = 0;
                    while mine < turns {
                        let mut g = lock.lock();
                        if *g % 2 == 1 {
                            *g += 1;
                            mine += 1;
                        }
                    }
                })
            };
            let mut mine = 0;
            let start = Instant::now();
            while mine < turns {
                let mut g = lock.lock();
                if *g % 2 == 0 {
                    *g += 1;
                    mine += 1;
                    // Hold it past the other's spinning, so it sleeps.
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                }
                drop(g);
                assert!(start.elapsed() < Duration::from_secs(120), "stuck");
            }
            other.join().unwrap();
            assert_eq!(*lock.lock(), 2 * turns);
        }
    }

    #[test]
    fn a_panic_under_the_lock_releases_it() {
        let lock = Arc::new(Lock::new(5u32, false));
        let l2 = lock.clone();
        let r = std::thread::spawn(move || {
            let _g = l2.lock();
            panic!("while holding the lock");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(*lock.lock(), 5);
    }
}
