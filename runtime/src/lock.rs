//! The progress core's lock: a mutex whose release is a plain store.
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
//! three-state futex mutex such as std's; that form has a loom model (`model` below; loom cannot
//! express a barrier one thread puts on another, so the plain-store form is covered by the
//! stress tests). Uncontended, taking the lock is one compare-and-swap.
//!
//! The lock does not poison: a panic while it is held releases it.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::atomic::compiler_fence;
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU32, Ordering};

/// How many times a contended `lock` looks before it counts itself as a sleeper.
const SPINS: u32 = if cfg!(loom) { 1 } else { 100 };

/// Register this process for private expedited `membarrier`s (once); false where the
/// kernel has none. Every lock made after a true answer releases with a plain store.
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

/// A mutual-exclusion lock around `T`.
pub(crate) struct Lock<T> {
    /// 0: free; 1: held.
    held: AtomicU32,
    /// Threads that may be asleep on `held` (counted before their last look).
    sleepers: AtomicU32,
    /// Releases fence; waiters do not call `membarrier`.
    fenced: bool,
    #[cfg(loom)]
    futex: model::Futex,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to the value to one thread at a time (the `held` word,
// taken with Acquire and released with Release ordering), so sharing the lock needs only
// `T: Send`, as for `std::sync::Mutex`.
unsafe impl<T: Send> Sync for Lock<T> {}

impl<T> Lock<T> {
    /// A lock around `value`. `fenced`: releases fence, for a process where
    /// [`barriers_available`] is false (or to test that form); otherwise it must be true.
    pub(crate) fn new(value: T, fenced: bool) -> Lock<T> {
        Lock {
            held: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            fenced: fenced || !barriers_available(),
            #[cfg(loom)]
            futex: model::Futex::default(),
            value: UnsafeCell::new(value),
        }
    }

    /// Take the lock, waiting for it while another thread holds it.
    #[inline]
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        if self
            .held
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.contended();
        }
        Guard {
            lock: self,
            _value: PhantomData,
        }
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
        if self.fenced {
            // Pairs with the release's fence (a locked add is one on x86, but the language
            // does not promise it; loom found the lost wakeup without it).
            fence(Ordering::SeqCst);
        }
        // Where the barrier failed, a plain release may have missed the count: then nap
        // briefly instead of sleeping unbounded.
        let bounded = !self.fenced && !membarrier();
        loop {
            if self
                .held
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            self.futex_wait(bounded);
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
            compiler_fence(Ordering::SeqCst);
        }
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.futex_wake();
        }
    }

    /// Sleep while `held` is 1 (at most a millisecond if `bounded`).
    #[cfg(not(loom))]
    fn futex_wait(&self, bounded: bool) {
        use rustix::thread::futex;
        let nap = futex::Timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // Returns at once if `held` is no longer 1; EINTR and timeouts just look again.
        let _ = futex::wait(
            &self.held,
            futex::Flags::PRIVATE,
            1,
            bounded.then_some(&nap),
        );
    }

    #[cold]
    #[cfg(not(loom))]
    fn futex_wake(&self) {
        use rustix::thread::futex;
        let _ = futex::wake(&self.held, futex::Flags::PRIVATE, 1);
    }

    #[cfg(loom)]
    fn futex_wait(&self, _bounded: bool) {
        self.futex.wait(&self.held, 1);
    }

    #[cfg(loom)]
    fn futex_wake(&self) {
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

/// A full barrier on every thread of this process; false if the kernel refused.
#[cfg(not(loom))]
fn membarrier() -> bool {
    use rustix::thread::{membarrier, MembarrierCommand};
    membarrier(MembarrierCommand::PrivateExpedited).is_ok()
}

#[cfg(loom)]
fn membarrier() -> bool {
    unreachable!("loom models the fenced form only")
}

/// The lock, held; released when dropped. (Shared between threads only where `T` is
/// `Sync`, as `std::sync::MutexGuard`: it hands out `&T`.)
pub(crate) struct Guard<'a, T> {
    lock: &'a Lock<T>,
    _value: PhantomData<&'a mut T>,
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
        self.lock.unlock();
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

        pub(super) fn wake(&self) {
            let _g = self.bucket.lock().unwrap();
            self.cv.notify_one();
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

    /// Threads add to a plain counter under the lock, some holding it long enough that the
    /// others go to sleep; a lost wakeup hangs, which the watchdog turns into a failure.
    fn hammer(fenced: bool, threads: usize, each: usize) {
        let lock = Arc::new(Lock::new((0usize, 0usize), fenced));
        let done = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (lock, done) = (lock.clone(), done.clone());
                std::thread::spawn(move || {
                    for i in 0..each {
                        let mut g = lock.lock();
                        let before = g.0;
                        // Every so often hold it a while, so the others sleep on it.
                        if (i + t) % 97 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        g.0 = before + 1;
                        g.1 += t;
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
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
