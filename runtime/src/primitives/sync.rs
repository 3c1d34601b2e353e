//! Synchronisation across ranks: `Lock`, `RLock`, `Semaphore`, `BoundedSemaphore`,
//! `Condition`, `Event` and `Barrier`, with multiprocessing's meaning.
//!
//! Locks are held by ranks (an `RLock` counts re-entries of the same rank). If a rank dies
//! holding a lock, every rank waiting for it, or the next one to ask, gets
//! `Error::HolderDied` naming the dead rank; the lock is then free again.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Ctx, Handle, Object, Reply, Waiter};
use crate::comm::{encode, Comm};
use crate::error::{Error, Result};

const ACQUIRE: u8 = 1;
const RELEASE: u8 = 2;
const COND_WAIT: u8 = 3;
const NOTIFY: u8 = 4;
const HELD_BY: u8 = 5;

struct LockObj {
    holder: Option<(usize, u32)>,
    reentrant: bool,
    /// Waiting for the lock, with the re-entry count to restore (conditions).
    waiters: VecDeque<(Waiter, u32)>,
    /// Waiting on the condition, with the re-entry count they held.
    cond: VecDeque<(Waiter, u32)>,
    /// A holder died and no waiter has been told yet.
    died: Option<usize>,
}

impl LockObj {
    fn grant_next(&mut self, ctx: &mut Ctx<'_>) {
        if self.holder.is_some() {
            return;
        }
        if let Some((w, count)) = self.waiters.pop_front() {
            self.holder = Some((w.rank, count.max(1)));
            ctx.reply(w, Reply::ok(&true));
        }
    }

    fn check_holder(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((h, _)) = self.holder {
            if ctx.gone(h) {
                self.holder = None;
                self.cond.retain(|(w, _)| w.rank != h);
                if self.waiters.is_empty() {
                    self.died = Some(h);
                }
                for (w, _) in self.waiters.drain(..) {
                    ctx.reply(w, Reply::HolderDied(h as u32));
                }
            }
        }
    }

    fn holds(&self, rank: usize) -> bool {
        matches!(self.holder, Some((h, _)) if h == rank)
    }
}

impl Object for LockObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, data: &[u8]) {
        self.check_holder(ctx);
        match op {
            ACQUIRE => {
                let block = postcard::from_bytes::<bool>(data).unwrap_or(true);
                if let Some(h) = self.died.take() {
                    return ctx.reply(from, Reply::HolderDied(h as u32));
                }
                match self.holder {
                    None => {
                        self.holder = Some((from.rank, 1));
                        ctx.reply(from, Reply::ok(&true));
                    }
                    Some((h, ref mut n)) if h == from.rank && self.reentrant => {
                        *n += 1;
                        ctx.reply(from, Reply::ok(&true));
                    }
                    Some((h, _)) if h == from.rank => ctx.reply(
                        from,
                        Reply::Usage(format!(
                            "rank {h} already holds this lock (a Lock is not re-entrant; use an RLock)"
                        )),
                    ),
                    Some(_) if block => self.waiters.push_back((from, 1)),
                    Some(_) => ctx.reply(from, Reply::ok(&false)),
                }
            }
            RELEASE => {
                if !self.holds(from.rank) {
                    return ctx.reply(
                        from,
                        Reply::Usage(format!(
                            "rank {} released a lock it does not hold",
                            from.rank
                        )),
                    );
                }
                if let Some((_, n)) = &mut self.holder {
                    *n -= 1;
                    if *n == 0 {
                        self.holder = None;
                    }
                }
                ctx.reply(from, Reply::ok(&()));
                self.grant_next(ctx);
            }
            COND_WAIT => {
                let Some((_, n)) = self.holder.filter(|(h, _)| *h == from.rank) else {
                    return ctx.reply(
                        from,
                        Reply::Usage(
                            "wait on a condition whose lock this rank does not hold".into(),
                        ),
                    );
                };
                self.holder = None;
                self.cond.push_back((from, n));
                self.grant_next(ctx);
            }
            NOTIFY => {
                if !self.holds(from.rank) {
                    return ctx.reply(
                        from,
                        Reply::Usage(
                            "notify on a condition whose lock this rank does not hold".into(),
                        ),
                    );
                }
                let n = postcard::from_bytes::<u64>(data).unwrap_or(1) as usize;
                let k = n.min(self.cond.len());
                for w in self.cond.drain(..k) {
                    self.waiters.push_back(w);
                }
                ctx.reply(from, Reply::ok(&(k as u64)));
            }
            HELD_BY => ctx.reply(from, Reply::ok(&self.holder.map(|(h, _)| h as u64))),
            _ => ctx.reply(from, Reply::Usage(format!("unknown lock operation {op}"))),
        }
    }

    fn cancel(&mut self, from: Waiter) -> bool {
        let before = self.waiters.len() + self.cond.len();
        self.waiters.retain(|(w, _)| *w != from);
        self.cond.retain(|(w, _)| *w != from);
        before != self.waiters.len() + self.cond.len()
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        self.check_holder(ctx);
    }
}

/// A lock shared by the ranks of a communicator (`multiprocessing.Lock`).
#[derive(Clone)]
///
/// ```
/// let world = ranks::init()?;
/// let lock = ranks::Lock::new(&world, 0)?;
/// let total = ranks::Manager::new(&world, 0)?.namespace()?;
/// {
///     let _held = lock.acquire()?; // released when dropped
///     let t: u64 = total.get("t")?.unwrap_or(0);
///     total.set("t", &(t + 1))?;
/// }
/// let doubled = lock.with(|| 2 * 21)?; // or around a closure
/// assert_eq!(doubled, 42);
/// world.barrier()?;
/// assert_eq!(total.get::<u64>("t")?, Some(world.size() as u64));
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Lock {
    h: Handle,
}

/// Holding a [`Lock`] (or [`RLock`]); released when dropped.
#[must_use = "the lock is released when the guard is dropped"]
///
/// ```
/// let world = ranks::init()?;
/// let lock = ranks::Lock::new(&world, 0)?;
/// let guard = lock.acquire()?;
/// assert_eq!(lock.holder()?, Some(world.rank()));
/// guard.release()?; // or drop it; `release` reports errors
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct LockGuard<'a> {
    lock: &'a Lock,
    held: bool,
}

impl LockGuard<'_> {
    /// Release now, reporting errors (dropping the guard releases too, silently).
    pub fn release(mut self) -> Result<()> {
        self.held = false;
        self.lock.release()
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.held {
            let _ = self.lock.release();
        }
    }
}

impl Lock {
    /// Create a lock hosted by rank `owner` of `comm` (collective).
    pub fn new(comm: &Comm, owner: usize) -> Result<Lock> {
        Self::create(comm, owner, false)
    }

    fn create(comm: &Comm, owner: usize, reentrant: bool) -> Result<Lock> {
        let h = Handle::create(comm, owner, "Lock", || {
            Box::new(LockObj {
                holder: None,
                reentrant,
                waiters: VecDeque::new(),
                cond: VecDeque::new(),
                died: None,
            })
        })?;
        Ok(Lock { h })
    }

    fn acquire_with(&self, block: bool, timeout: Option<Duration>) -> Result<bool> {
        match self
            .h
            .call(ACQUIRE, encode(&block)?, timeout)?
            .into_result("lock")
        {
            Ok(b) => super::decode_as(&b, self.h.owner),
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait for the lock and hold it until the guard is dropped.
    pub fn acquire(&self) -> Result<LockGuard<'_>> {
        self.acquire_with(true, None)?;
        Ok(LockGuard {
            lock: self,
            held: true,
        })
    }

    /// Wait at most `timeout` for the lock; `None` if it stayed taken.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockGuard<'_>>> {
        Ok(self
            .acquire_with(true, Some(timeout))?
            .then_some(LockGuard {
                lock: self,
                held: true,
            }))
    }

    /// Take the lock only if it is free now.
    pub fn try_acquire(&self) -> Result<Option<LockGuard<'_>>> {
        Ok(self.acquire_with(false, None)?.then_some(LockGuard {
            lock: self,
            held: true,
        }))
    }

    /// Run `f` holding the lock.
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let g = self.acquire()?;
        let r = f();
        g.release()?;
        Ok(r)
    }

    fn release(&self) -> Result<()> {
        self.h
            .call(RELEASE, Vec::new(), None)?
            .into_result("lock")
            .map(|_| ())
    }

    /// Which rank holds the lock now, if any (world rank).
    pub fn holder(&self) -> Result<Option<usize>> {
        let h: Option<u64> = self.h.call_typed(HELD_BY, &(), None, "lock")?;
        Ok(h.map(|h| h as usize))
    }
}

/// A re-entrant lock: the rank holding it may acquire it again (`multiprocessing.RLock`).
#[derive(Clone)]
///
/// ```
/// let world = ranks::init()?;
/// let lock = ranks::RLock::new(&world, 0)?;
/// let outer = lock.acquire()?;
/// let inner = lock.acquire()?; // the holder may take it again
/// drop(inner);
/// drop(outer);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct RLock(Lock);

impl RLock {
    /// Create a re-entrant lock hosted by rank `owner` of `comm` (collective).
    pub fn new(comm: &Comm, owner: usize) -> Result<RLock> {
        Ok(RLock(Lock::create(comm, owner, true)?))
    }
    /// Acquire (again, if this rank holds it already).
    pub fn acquire(&self) -> Result<LockGuard<'_>> {
        self.0.acquire()
    }
    /// Acquire waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockGuard<'_>>> {
        self.0.acquire_timeout(timeout)
    }
    /// Acquire only if possible now.
    pub fn try_acquire(&self) -> Result<Option<LockGuard<'_>>> {
        self.0.try_acquire()
    }
}

/// A condition variable across ranks, with its own lock (`multiprocessing.Condition`).
#[derive(Clone)]
///
/// ```
/// let world = ranks::init()?;
/// let cond = ranks::Condition::new(&world, 0)?;
/// let ns = ranks::Manager::new(&world, 0)?.namespace()?;
/// if world.rank() == 0 {
///     let g = cond.acquire()?;
///     ns.set("ready", &true)?;
///     cond.notify_all(&g)?;
/// }
/// let g = cond.acquire()?;
/// while ns.get::<bool>("ready")? != Some(true) {
///     cond.wait(&g)?; // releases the lock while waiting
/// }
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Condition {
    lock: Lock,
}

impl Condition {
    /// Create a condition (and its lock) hosted by rank `owner` of `comm` (collective).
    pub fn new(comm: &Comm, owner: usize) -> Result<Condition> {
        Ok(Condition {
            lock: Lock::create(comm, owner, true)?,
        })
    }

    /// Acquire the condition's lock.
    pub fn acquire(&self) -> Result<LockGuard<'_>> {
        self.lock.acquire()
    }

    /// Release the lock, wait for a notification, re-acquire the lock. The guard must be
    /// this condition's.
    pub fn wait(&self, guard: &LockGuard<'_>) -> Result<()> {
        self.wait_timeout(guard, None).map(|_| ())
    }

    /// `wait` for at most `timeout`; returns false if it timed out (the lock is held again
    /// either way).
    pub fn wait_timeout(&self, guard: &LockGuard<'_>, timeout: Option<Duration>) -> Result<bool> {
        self.check_guard(guard)?;
        match self
            .lock
            .h
            .call(COND_WAIT, Vec::new(), timeout)?
            .into_result("condition")
        {
            Ok(_) => Ok(true),
            Err(Error::Timeout) => {
                self.lock.acquire_with(true, None)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Wait until `pred()` holds (checked with the lock held), at most `timeout` in all;
    /// returns the last value of `pred()`.
    pub fn wait_for(
        &self,
        guard: &LockGuard<'_>,
        mut pred: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let end = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if pred() {
                return Ok(true);
            }
            let left = match end {
                Some(e) => {
                    let now = std::time::Instant::now();
                    if now >= e {
                        return Ok(pred());
                    }
                    Some(e - now)
                }
                None => None,
            };
            self.wait_timeout(guard, left)?;
        }
    }

    /// Wake up to `n` waiting ranks (they continue once they re-acquire the lock).
    pub fn notify(&self, guard: &LockGuard<'_>, n: usize) -> Result<usize> {
        self.check_guard(guard)?;
        let k: u64 = self
            .lock
            .h
            .call_typed(NOTIFY, &(n as u64), None, "condition")?;
        Ok(k as usize)
    }

    /// Wake every waiting rank.
    pub fn notify_all(&self, guard: &LockGuard<'_>) -> Result<usize> {
        self.notify(guard, usize::MAX)
    }

    fn check_guard(&self, guard: &LockGuard<'_>) -> Result<()> {
        if !std::ptr::eq(guard.lock, &self.lock) || !guard.held {
            return Err(Error::Usage(
                "the guard does not belong to this condition".into(),
            ));
        }
        Ok(())
    }
}

// ----- semaphores ----------------------------------------------------------------------------

struct SemObj {
    value: u64,
    bound: Option<u64>,
    waiters: VecDeque<Waiter>,
}

impl Object for SemObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, data: &[u8]) {
        match op {
            ACQUIRE => {
                let block = postcard::from_bytes::<bool>(data).unwrap_or(true);
                if self.value > 0 {
                    self.value -= 1;
                    ctx.reply(from, Reply::ok(&true));
                } else if block {
                    self.waiters.push_back(from);
                } else {
                    ctx.reply(from, Reply::ok(&false));
                }
            }
            RELEASE => {
                if let Some(w) = self.waiters.pop_front() {
                    ctx.reply(w, Reply::ok(&true));
                } else if self.bound.is_some_and(|b| self.value >= b) {
                    return ctx.reply(
                        from,
                        Reply::Usage("a bounded semaphore was released too many times".into()),
                    );
                } else {
                    self.value += 1;
                }
                ctx.reply(from, Reply::ok(&()));
            }
            HELD_BY => ctx.reply(from, Reply::ok(&self.value)),
            _ => ctx.reply(
                from,
                Reply::Usage(format!("unknown semaphore operation {op}")),
            ),
        }
    }
    fn cancel(&mut self, from: Waiter) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|w| *w != from);
        before != self.waiters.len()
    }
}

/// A counting semaphore across ranks (`multiprocessing.Semaphore`; `bounded` makes it a
/// `BoundedSemaphore`, whose releases may not raise it above its initial value).
#[derive(Clone)]
///
/// ```
/// let world = ranks::init()?;
/// let slots = ranks::Semaphore::new(&world, 0, 2)?; // at most two at a time
/// slots.acquire()?;
/// // ... use one of the two slots ...
/// slots.release()?;
/// world.barrier()?;
/// assert_eq!(slots.value()?, 2);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Semaphore {
    h: Handle,
}

impl Semaphore {
    /// A semaphore with `value` permits hosted by rank `owner` of `comm` (collective).
    pub fn new(comm: &Comm, owner: usize, value: u64) -> Result<Semaphore> {
        Self::create(comm, owner, value, None)
    }

    /// A bounded semaphore (collective).
    pub fn bounded(comm: &Comm, owner: usize, value: u64) -> Result<Semaphore> {
        Self::create(comm, owner, value, Some(value))
    }

    fn create(comm: &Comm, owner: usize, value: u64, bound: Option<u64>) -> Result<Semaphore> {
        let h = Handle::create(comm, owner, "Semaphore", || {
            Box::new(SemObj {
                value,
                bound,
                waiters: VecDeque::new(),
            })
        })?;
        Ok(Semaphore { h })
    }

    fn acquire_with(&self, block: bool, timeout: Option<Duration>) -> Result<bool> {
        match self
            .h
            .call(ACQUIRE, encode(&block)?, timeout)?
            .into_result("semaphore")
        {
            Ok(b) => super::decode_as(&b, self.h.owner),
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Take a permit, waiting for one.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_with(true, None).map(|_| ())
    }
    /// Take a permit, waiting at most `timeout`; false if none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        self.acquire_with(true, Some(timeout))
    }
    /// Take a permit if one is free now.
    pub fn try_acquire(&self) -> Result<bool> {
        self.acquire_with(false, None)
    }
    /// Give a permit back.
    pub fn release(&self) -> Result<()> {
        self.h
            .call(RELEASE, Vec::new(), None)?
            .into_result("semaphore")
            .map(|_| ())
    }
    /// Free permits right now.
    pub fn value(&self) -> Result<u64> {
        self.h.call_typed(HELD_BY, &(), None, "semaphore")
    }
}

// ----- event ---------------------------------------------------------------------------------

const SET: u8 = 1;
const CLEAR: u8 = 2;
const IS_SET: u8 = 3;
const WAIT: u8 = 4;

struct EventObj {
    flag: bool,
    waiters: Vec<Waiter>,
}

impl Object for EventObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, _data: &[u8]) {
        match op {
            SET => {
                self.flag = true;
                for w in self.waiters.drain(..) {
                    ctx.reply(w, Reply::ok(&true));
                }
                ctx.reply(from, Reply::ok(&()));
            }
            CLEAR => {
                self.flag = false;
                ctx.reply(from, Reply::ok(&()));
            }
            IS_SET => ctx.reply(from, Reply::ok(&self.flag)),
            WAIT if self.flag => ctx.reply(from, Reply::ok(&true)),
            WAIT => self.waiters.push(from),
            _ => ctx.reply(from, Reply::Usage(format!("unknown event operation {op}"))),
        }
    }
    fn cancel(&mut self, from: Waiter) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|w| *w != from);
        before != self.waiters.len()
    }
}

/// A flag ranks can wait on (`multiprocessing.Event`).
#[derive(Clone)]
///
/// ```
/// let world = ranks::init()?;
/// let go = ranks::Event::new(&world, 0)?;
/// if world.rank() == 0 {
///     go.set()?;
/// }
/// go.wait()?;
/// assert!(go.is_set()?);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Event {
    h: Handle,
}

impl Event {
    /// Create an event (initially clear) hosted by rank `owner` of `comm` (collective).
    pub fn new(comm: &Comm, owner: usize) -> Result<Event> {
        let h = Handle::create(comm, owner, "Event", || {
            Box::new(EventObj {
                flag: false,
                waiters: Vec::new(),
            })
        })?;
        Ok(Event { h })
    }
    /// Set the flag and wake every waiter.
    pub fn set(&self) -> Result<()> {
        self.h
            .call(SET, Vec::new(), None)?
            .into_result("event")
            .map(|_| ())
    }
    /// Clear the flag.
    pub fn clear(&self) -> Result<()> {
        self.h
            .call(CLEAR, Vec::new(), None)?
            .into_result("event")
            .map(|_| ())
    }
    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        self.h.call_typed(IS_SET, &(), None, "event")
    }
    /// Wait until the flag is set.
    pub fn wait(&self) -> Result<()> {
        self.wait_timeout(None).map(|_| ())
    }
    /// Wait at most `timeout`; returns whether the flag is set.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<bool> {
        match self.h.call(WAIT, Vec::new(), timeout)?.into_result("event") {
            Ok(_) => Ok(true),
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// ----- barrier -------------------------------------------------------------------------------

const ABORT: u8 = 2;
const RESET: u8 = 3;

struct BarrierObj {
    parties: usize,
    waiting: Vec<Waiter>,
    broken: Option<String>,
    /// World ranks of the communicator: who could still arrive.
    members: Vec<usize>,
}

impl BarrierObj {
    /// Break the barrier if ranks that are gone leave too few to ever fill it.
    fn check_parties(&mut self, ctx: &mut Ctx<'_>) {
        if self.waiting.is_empty() {
            return;
        }
        let gone: Vec<usize> = self
            .members
            .iter()
            .copied()
            .filter(|&m| ctx.gone(m))
            .collect();
        let Some(&first) = gone.first() else {
            return;
        };
        let could_come = self
            .members
            .iter()
            .filter(|&&m| !gone.contains(&m) && !self.waiting.iter().any(|w| w.rank == m))
            .count();
        if self.waiting.len() + could_come < self.parties {
            self.break_all(ctx, &format!("rank {first} is gone and can never arrive"));
        }
    }

    fn break_all(&mut self, ctx: &mut Ctx<'_>, why: &str) {
        self.broken = Some(why.to_string());
        for w in self.waiting.drain(..) {
            ctx.reply(w, Reply::Broken(why.to_string()));
        }
    }
}

impl Object for BarrierObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, _data: &[u8]) {
        match op {
            WAIT => {
                if let Some(why) = &self.broken {
                    return ctx.reply(from, Reply::Broken(why.clone()));
                }
                self.waiting.push(from);
                self.check_parties(ctx);
                if self.waiting.len() == self.parties {
                    // Arrival index, as Python's Barrier.wait returns (0 for the last).
                    let n = self.waiting.len();
                    for (i, w) in self.waiting.drain(..).enumerate() {
                        ctx.reply(w, Reply::ok(&((n - 1 - i) as u64)));
                    }
                }
            }
            ABORT => {
                self.break_all(ctx, "aborted");
                ctx.reply(from, Reply::ok(&()));
            }
            RESET => {
                self.break_all(ctx, "reset while waiting");
                self.broken = None;
                ctx.reply(from, Reply::ok(&()));
            }
            HELD_BY => ctx.reply(from, Reply::ok(&(self.waiting.len() as u64))),
            _ => ctx.reply(
                from,
                Reply::Usage(format!("unknown barrier operation {op}")),
            ),
        }
    }
    fn cancel(&mut self, from: Waiter) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| *w != from);
        if before != self.waiting.len() {
            // As in Python, a timeout breaks the barrier for everyone (the others are told at
            // the next tick).
            self.broken = Some("a party timed out".into());
            return true;
        }
        false
    }
    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.broken.is_some() && !self.waiting.is_empty() {
            let why = self.broken.clone().unwrap_or_default();
            self.break_all(ctx, &why);
        }
        if let Some(dead) = self
            .waiting
            .iter()
            .find(|w| ctx.gone(w.rank))
            .map(|w| w.rank)
        {
            self.break_all(ctx, &format!("rank {dead} died while waiting"));
        }
        self.check_parties(ctx);
    }
}

/// A reusable barrier for `parties` callers (`multiprocessing.Barrier`), with timeout and
/// abort. Unlike `Comm::barrier`, any ranks may take part, any number of times.
#[derive(Clone)]
///
/// ```
/// let world = ranks::init()?;
/// let b = ranks::Barrier::new(&world, 0, world.size())?;
/// let i = b.wait()?; // a different number 0..parties on each rank
/// assert!(i < b.parties());
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Barrier {
    h: Handle,
    parties: usize,
}

impl Barrier {
    /// Create a barrier for `parties` hosted by rank `owner` of `comm` (collective).
    pub fn new(comm: &Comm, owner: usize, parties: usize) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::InvalidArgument(
                "a barrier needs at least one party".into(),
            ));
        }
        let members = comm.members.to_vec();
        let h = Handle::create(comm, owner, "Barrier", || {
            Box::new(BarrierObj {
                parties,
                waiting: Vec::new(),
                broken: None,
                members,
            })
        })?;
        Ok(Barrier { h, parties })
    }
    /// Number of parties.
    pub fn parties(&self) -> usize {
        self.parties
    }
    /// Wait for all parties; returns this caller's index (0..parties, 0 for the last one).
    pub fn wait(&self) -> Result<usize> {
        self.wait_timeout(None)
    }
    /// Wait at most `timeout`; a timeout breaks the barrier (`Error::BrokenBarrier`).
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<usize> {
        match self
            .h
            .call(WAIT, Vec::new(), timeout)?
            .into_result("barrier")
        {
            Ok(b) => Ok(super::decode_as::<u64>(&b, self.h.owner)? as usize),
            Err(Error::Timeout) => Err(Error::BrokenBarrier("this party timed out".into())),
            Err(e) => Err(e),
        }
    }
    /// Break the barrier: waiters and later callers get `Error::BrokenBarrier`.
    pub fn abort(&self) -> Result<()> {
        self.h
            .call(ABORT, Vec::new(), None)?
            .into_result("barrier")
            .map(|_| ())
    }
    /// Return the barrier to its initial state (current waiters get `BrokenBarrier`).
    pub fn reset(&self) -> Result<()> {
        self.h
            .call(RESET, Vec::new(), None)?
            .into_result("barrier")
            .map(|_| ())
    }
    /// Number of parties waiting now.
    pub fn n_waiting(&self) -> Result<usize> {
        let n: u64 = self.h.call_typed(HELD_BY, &(), None, "barrier")?;
        Ok(n as usize)
    }
}
