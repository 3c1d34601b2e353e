//! Who runs the QUIC transport's tasks (quinn's endpoint and connections, our stream readers
//! and writers), which live on one current-thread tokio runtime per rank.
//!
//! The rank's own threads drive the runtime while they wait: spinning, one [`Driver::tick`]
//! at a time (the ready tasks run, the UDP socket is polled without sleeping); sleeping,
//! parked in the runtime until the I/O tasks signal or a timer fires. A write ticks too, so
//! its bytes leave at once. There is no thread hand-off per message.
//!
//! A helper thread covers the rest: it ticks now and then while nobody drives (keep-alives,
//! acknowledgements, the writes of a rank that computes), and it drives continuously for
//! threads that wait without driving: a thread asleep on its shared-memory doorbell (a rank
//! with peers on its own host and on others; the I/O tasks ring the doorbell), and a thread
//! inside a tokio runtime of the program's own (the async API's blocking waits), which must
//! not start another runtime.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often the helper gives the runtime a turn while no thread of the rank drives it.
const TICK: Duration = Duration::from_millis(5);

pub(crate) struct Driver {
    rt: tokio::runtime::Runtime,
    /// Set by [`Driver::start`]: from then on waiters drive, and the helper runs.
    started: AtomicBool,
    /// Threads inside the runtime's `block_on` now.
    driving: AtomicUsize,
    /// Waiting threads that cannot drive: the helper drives for them while there are any.
    stand_ins: AtomicUsize,
    /// Set when a write could not tick: the helper ticks at once.
    kicked: AtomicBool,
    helper: Mutex<()>,
    helper_cv: Condvar,
    /// Ends the helper's continuous drive early.
    released: tokio::sync::Notify,
}

impl Driver {
    pub(crate) fn new() -> std::io::Result<Arc<Driver>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Arc::new(Driver {
            rt,
            started: AtomicBool::new(false),
            driving: AtomicUsize::new(0),
            stand_ins: AtomicUsize::new(0),
            kicked: AtomicBool::new(false),
            helper: Mutex::new(()),
            helper_cv: Condvar::new(),
            released: tokio::sync::Notify::new(),
        }))
    }

    /// Run `f` to completion, driving the runtime meanwhile (start-up, before [`start`]).
    ///
    /// [`start`]: Driver::start
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        let _driving = Count::up(&self.driving);
        self.rt.block_on(f)
    }

    /// Spawn a task on the runtime (it runs when someone drives).
    pub(crate) fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }

    /// Hand the runtime to the rank's waiting threads (wiring is over) and start the helper.
    pub(crate) fn start(self: &Arc<Self>) -> std::io::Result<()> {
        // The helper holds the driver weakly: it ends once the transport is dropped.
        let d = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("ranks-quic".into())
            .spawn(move || help(d))?;
        self.started.store(true, SeqCst);
        Ok(())
    }

    /// Whether the runtime is in its waiters' hands (after [`Driver::start`]).
    pub(crate) fn started(&self) -> bool {
        self.started.load(SeqCst)
    }

    /// Whether this thread may drive: after [`Driver::start`], and neither inside a tokio
    /// runtime (where starting ours would panic) nor past the end of its thread-locals (the
    /// main thread in `atexit` handlers).
    pub(crate) fn can_drive(&self) -> bool {
        self.started()
            && tokio::runtime::Handle::try_current().is_err_and(|e| e.is_missing_context())
    }

    /// One turn: run the tasks that are ready, poll the sockets without sleeping, and run
    /// the tasks that woke. Cheap (two `epoll_wait`s with a zero timeout when idle).
    pub(crate) fn tick(&self) {
        if self.can_drive() {
            self.block_on(async {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
            });
        }
    }

    /// After a write: its bytes should leave now. Tick, or have the helper tick.
    pub(crate) fn push(&self) {
        if self.can_drive() && self.driving.load(SeqCst) == 0 {
            self.tick();
        } else if self.started() {
            // Another thread drives (its tick may end before our writer runs), or this one
            // cannot: the helper makes sure of it.
            self.kicked.store(true, SeqCst);
            self.wake_helper();
        }
    }

    /// Park this thread in the runtime, driving it, until `done` completes or `timeout`.
    pub(crate) fn park<F: Future<Output = ()>>(&self, done: F, timeout: Duration) {
        self.block_on(async {
            tokio::select! {
                _ = done => {}
                _ = tokio::time::sleep(timeout) => {}
            }
        });
    }

    /// This thread waits without driving until the guard is dropped: the helper drives
    /// continuously while any such thread waits.
    pub(crate) fn stand_in(&self) -> StandIn<'_> {
        self.stand_ins.fetch_add(1, SeqCst);
        self.wake_helper();
        StandIn(self)
    }

    fn wake_helper(&self) {
        let _g = self.helper.lock().unwrap_or_else(|p| p.into_inner());
        self.helper_cv.notify_one();
    }

    /// Wait until `cond` holds or `deadline` passes, making sure the runtime is driven
    /// meanwhile (by this thread when it can).
    pub(crate) fn wait_until(&self, cond: impl Fn() -> bool, deadline: Instant) {
        let driven_here = self.can_drive();
        let _stand_in = (!driven_here).then(|| self.stand_in());
        while !cond() && Instant::now() < deadline {
            if driven_here {
                self.park(std::future::pending::<()>(), Duration::from_millis(1));
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// A count of threads doing something, undone when dropped (also when a panic unwinds).
pub(crate) struct Count<'a>(&'a AtomicUsize);

impl<'a> Count<'a> {
    pub(crate) fn up(c: &'a AtomicUsize) -> Count<'a> {
        c.fetch_add(1, SeqCst);
        Count(c)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// See [`Driver::stand_in`].
pub(crate) struct StandIn<'a>(&'a Driver);

impl Drop for StandIn<'_> {
    fn drop(&mut self) {
        if self.0.stand_ins.fetch_sub(1, SeqCst) == 1 {
            self.0.released.notify_waiters();
        }
    }
}

/// The helper thread: ticks every [`TICK`] while nobody drives, at once when kicked, and
/// drives continuously while a stand-in waits. Ends when the driver is gone.
fn help(d: std::sync::Weak<Driver>) {
    loop {
        let Some(d) = d.upgrade() else { return };
        {
            let g = d.helper.lock().unwrap_or_else(|p| p.into_inner());
            if d.stand_ins.load(SeqCst) == 0 && !d.kicked.load(SeqCst) {
                let _ = d.helper_cv.wait_timeout(g, TICK);
            }
        }
        if d.stand_ins.load(SeqCst) > 0 {
            d.block_on(async {
                loop {
                    // Registered before the count is read: a release just after is seen.
                    let released = d.released.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    if d.stand_ins.load(SeqCst) == 0 {
                        break;
                    }
                    tokio::select! {
                        _ = released => {}
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            });
        } else if d.kicked.swap(false, SeqCst) || d.driving.load(SeqCst) == 0 {
            d.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task spawned while nobody drives runs when a waiter ticks, and the helper runs it
    /// within a few ticks when nobody does; a thread inside another runtime does not drive
    /// (that would panic) but still gets its task run, by the helper.
    #[test]
    fn tasks_run_by_ticks_by_the_helper_and_for_threads_that_cannot_drive() {
        let d = Driver::new().unwrap();
        d.start().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));

        // A tick runs a ready task at once.
        let h = hits.clone();
        d.spawn(async move {
            h.fetch_add(1, SeqCst);
        });
        d.tick();
        assert_eq!(hits.load(SeqCst), 1);

        // The helper runs one spawned while nobody drives (within a few of its ticks).
        let h = hits.clone();
        d.spawn(async move {
            h.fetch_add(1, SeqCst);
        });
        d.wait_until(
            || hits.load(SeqCst) == 2,
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!(hits.load(SeqCst), 2);

        // From inside another runtime: no driving here, the helper stands in.
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = hits.clone();
        let d2 = d.clone();
        other.block_on(async move {
            assert!(!d2.can_drive());
            let h2 = h.clone();
            d2.spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                h2.fetch_add(1, SeqCst);
            });
            d2.wait_until(
                || h.load(SeqCst) == 3,
                Instant::now() + Duration::from_secs(5),
            );
        });
        assert_eq!(hits.load(SeqCst), 3);
    }

    /// A parked waiter wakes when a task of the runtime notifies it, not at its timeout.
    #[test]
    fn a_parked_waiter_wakes_on_its_signal() {
        let d = Driver::new().unwrap();
        d.start().unwrap();
        let n = Arc::new(tokio::sync::Notify::new());
        let n2 = n.clone();
        d.spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            n2.notify_waiters();
        });
        let t = Instant::now();
        let notified = n.notified();
        d.park(notified, Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
