//! `Pool`: the root rank hands work items to the other ranks (`multiprocessing.Pool`).
//!
//! Every rank creates the pool with the same function (SPMD: the function is code, so each
//! rank already has it). Worker ranks serve inside [`Pool::new`] until the root closes the
//! pool; the root gets a [`Pool`] to submit work with `map`, `imap`, `imap_unordered`,
//! `apply_async` (with an optional callback run on the root), `close` and `join`.
//!
//! Work is handed out in chunks to whichever worker asks next, so a slow item never holds
//! back the others. A task that panics becomes `Error::TaskFailed` for its item; the worker
//! and the pool keep going. With a single rank, the root computes the items itself.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::decode_as;
use crate::comm::{encode, Comm};
use crate::error::{Error, Result};
use crate::protocol::matching::ANY_SOURCE;

const TAG_TASK: i32 = 1;
const TAG_RESULT: i32 = 2;
const TAG_STOP: i32 = 3;
const TAG_KICK: i32 = 4;

type TaskMsg = Vec<(u64, Vec<u8>)>;
type ResultMsg = Vec<(u64, std::result::Result<Vec<u8>, String>)>;

/// A function run on the root with each result of `apply_async`.
pub type Callback<O> = Box<dyn FnMut(&O) + Send>;
/// A function run on the root with the error of a failed `apply_async` task.
pub type ErrorCallback = Box<dyn FnMut(&Error) + Send>;

/// Results of one submission (a `map`, or one `apply_async`).
struct Batch<O> {
    state: Mutex<BatchState<O>>,
    done: Condvar,
    progress: Option<Progress>,
}

/// Tells the launcher how far a batch got (`ranks run --progress`): a line on stderr that
/// the launcher draws as a progress bar, at most every 100 ms and once at the end.
struct Progress {
    rank: usize,
    id: u64,
    label: &'static str,
    total: usize,
    last: Mutex<Option<std::time::Instant>>,
}

impl Progress {
    /// Progress reports for a batch of `total` items, if the launcher asked for them.
    fn new(rank: usize, label: &'static str, total: usize) -> Option<Progress> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let on = crate::config::Config::global().is_ok_and(|c| c.progress);
        (on && total > 0).then(|| Progress {
            rank,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            label,
            total,
            last: Mutex::new(None),
        })
    }

    fn report(&self, done: usize) {
        let now = std::time::Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100));
            if !(due || done == self.total) {
                return;
            }
            *last = Some(now);
        }
        let mut line =
            crate::config::progress_line(self.rank, self.id, done, self.total, self.label);
        line.push('\n');
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

struct BatchState<O> {
    slots: Vec<Option<Result<O>>>,
    /// Indices in the order they completed (for `imap_unordered`).
    order: VecDeque<usize>,
    remaining: usize,
}

impl<O> Batch<O> {
    fn new(n: usize, progress: Option<Progress>) -> Arc<Batch<O>> {
        if let Some(p) = &progress {
            p.report(0);
        }
        Arc::new(Batch {
            state: Mutex::new(BatchState {
                slots: (0..n).map(|_| None).collect(),
                order: VecDeque::new(),
                remaining: n,
            }),
            done: Condvar::new(),
            progress,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState<O>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleep until the next result arrives.
    fn wait<'a>(
        &self,
        g: std::sync::MutexGuard<'a, BatchState<O>>,
    ) -> std::sync::MutexGuard<'a, BatchState<O>> {
        self.done.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    fn fill(&self, i: usize, r: Result<O>) {
        let mut st = self.lock();
        if st.slots[i].is_none() {
            st.slots[i] = Some(r);
            st.order.push_back(i);
            st.remaining -= 1;
            if let Some(p) = &self.progress {
                p.report(st.slots.len() - st.remaining);
            }
        }
        self.done.notify_all();
    }
}

struct Task<O> {
    batch: Arc<Batch<O>>,
    index: usize,
    item: Vec<u8>,
    chunk: usize,
    callback: Option<Arc<Mutex<Callback<O>>>>,
    on_error: Option<Arc<Mutex<ErrorCallback>>>,
}

struct Shared<O> {
    queue: VecDeque<(u64, Task<O>)>,
    next_id: u64,
    closed: bool,
}

/// The root's handle on a pool.
///
/// ```
/// fn square(x: u64) -> u64 { x * x }
///
/// let world = ranks::init()?;
/// // The workers serve inside `new` until the root closes the pool; the root gets the pool.
/// if let Some(mut pool) = ranks::Pool::new(&world, 0, square)? {
///     assert_eq!(pool.map(vec![1, 2, 3])?, [1, 4, 9]);
///     let later = pool.apply_async(10, Some(Box::new(|r: &u64| println!("got {r}"))))?;
///     assert_eq!(later.get()?, 100);
///     pool.close();
///     pool.join()?;
/// }
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Pool<I, O> {
    comm: Comm,
    shared: Arc<Mutex<Shared<O>>>,
    dispatcher: Option<std::thread::JoinHandle<Result<()>>>,
    workers: usize,
    _t: std::marker::PhantomData<fn(I)>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "the task panicked".into()
    }
}

fn run_one<I: DeserializeOwned, O: Serialize>(
    f: &(dyn Fn(I) -> O + Sync),
    bytes: &[u8],
    from: usize,
) -> std::result::Result<Vec<u8>, String> {
    let item: I = decode_as(bytes, from).map_err(|e| e.to_string())?;
    match catch_unwind(AssertUnwindSafe(|| f(item))) {
        Ok(o) => encode(&o).map_err(|e| e.to_string()),
        Err(p) => Err(format!("panicked: {}", panic_message(p))),
    }
}

impl<I, O> Pool<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    /// Create a pool over `comm` whose tasks run `f`. Collective: every rank calls it with
    /// the same function. On `root` it returns `Some(pool)` at once; on the other ranks it
    /// serves tasks and returns `None` when the root closes the pool.
    pub fn new<F>(comm: &Comm, root: usize, f: F) -> Result<Option<Pool<I, O>>>
    where
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        if root >= comm.size() {
            return Err(Error::InvalidRank {
                rank: root as i64,
                size: comm.size(),
            });
        }
        let comm = comm.dup()?;
        if comm.rank() != root {
            serve(&comm, root, &f)?;
            return Ok(None);
        }
        let shared = Arc::new(Mutex::new(Shared {
            queue: VecDeque::new(),
            next_id: 0,
            closed: false,
        }));
        let workers = comm.size() - 1;
        let d_comm = comm.clone();
        let d_shared = shared.clone();
        let f: Arc<dyn Fn(I) -> O + Send + Sync> = Arc::new(f);
        let dispatcher = std::thread::Builder::new()
            .name("ranks-pool".into())
            .spawn(move || dispatch::<I, O>(d_comm, d_shared, f))
            .map_err(|e| Error::io("starting the pool dispatcher", e))?;
        Ok(Some(Pool {
            comm,
            shared,
            dispatcher: Some(dispatcher),
            workers,
            _t: std::marker::PhantomData,
        }))
    }

    /// Number of worker ranks.
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn submit(
        &self,
        items: Vec<I>,
        chunksize: Option<usize>,
        callback: Option<Callback<O>>,
        on_error: Option<ErrorCallback>,
        label: Option<&'static str>,
    ) -> Result<Arc<Batch<O>>> {
        let n = items.len();
        let progress = label.and_then(|l| Progress::new(self.comm.world_rank(), l, n));
        let batch = Batch::new(n, progress);
        let chunk = chunksize
            .unwrap_or_else(|| n.div_ceil(4 * self.workers.max(1)))
            .max(1);
        let callback = callback.map(|c| Arc::new(Mutex::new(c)));
        let on_error = on_error.map(|c| Arc::new(Mutex::new(c)));
        {
            let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if sh.closed {
                return Err(Error::Closed("the pool"));
            }
            for (index, item) in items.into_iter().enumerate() {
                let id = sh.next_id;
                sh.next_id += 1;
                sh.queue.push_back((
                    id,
                    Task {
                        batch: batch.clone(),
                        index,
                        item: encode(&item)?,
                        chunk,
                        callback: callback.clone(),
                        on_error: on_error.clone(),
                    },
                ));
            }
        }
        self.kick()?;
        Ok(batch)
    }

    fn kick(&self) -> Result<()> {
        self.comm.send(self.comm.rank(), TAG_KICK, &())
    }

    /// Apply the function to every item; results in item order. The first failed item's
    /// error is returned (after all items finished).
    pub fn map(&self, items: Vec<I>) -> Result<Vec<O>> {
        self.map_chunked(items, None)
    }

    /// `map` with an explicit number of items per task message.
    pub fn map_chunked(&self, items: Vec<I>, chunksize: Option<usize>) -> Result<Vec<O>> {
        let batch = self.submit(items, chunksize, None, None, Some("Pool.map"))?;
        let mut st = batch.lock();
        while st.remaining > 0 {
            st = batch.wait(st);
        }
        st.slots
            .drain(..)
            .map(|s| s.expect("every slot is filled"))
            .collect()
    }

    /// `map` for functions of several arguments: items are tuples (Python's `starmap`).
    pub fn starmap(&self, items: Vec<I>) -> Result<Vec<O>> {
        self.map(items)
    }

    /// Results one by one, in item order, as they become available.
    pub fn imap(
        &self,
        items: Vec<I>,
        chunksize: Option<usize>,
    ) -> Result<impl Iterator<Item = Result<O>>> {
        let n = items.len();
        let batch = self.submit(items, chunksize, None, None, Some("Pool.imap"))?;
        Ok((0..n).map(move |i| {
            let mut st = batch.lock();
            while st.slots[i].is_none() {
                st = batch.wait(st);
            }
            st.slots[i].take().expect("filled")
        }))
    }

    /// Results one by one in the order they complete.
    pub fn imap_unordered(
        &self,
        items: Vec<I>,
        chunksize: Option<usize>,
    ) -> Result<impl Iterator<Item = Result<O>>> {
        let n = items.len();
        let batch = self.submit(items, chunksize, None, None, Some("Pool.imap_unordered"))?;
        Ok((0..n).map(move |_| {
            let mut st = batch.lock();
            loop {
                if let Some(i) = st.order.pop_front() {
                    return st.slots[i].take().expect("filled");
                }
                st = batch.wait(st);
            }
        }))
    }

    /// Submit one item; the handle gives its result. `callback` (if any) runs on the root,
    /// on the pool's dispatcher thread, with the result as soon as it arrives.
    pub fn apply_async(&self, item: I, callback: Option<Callback<O>>) -> Result<AsyncResult<O>> {
        self.apply_async_with(item, callback, None)
    }

    /// `apply_async` with an error callback too (run on the root if the task fails).
    pub fn apply_async_with(
        &self,
        item: I,
        callback: Option<Callback<O>>,
        on_error: Option<ErrorCallback>,
    ) -> Result<AsyncResult<O>> {
        let batch = self.submit(vec![item], Some(1), callback, on_error, None)?;
        Ok(AsyncResult { batch })
    }

    /// No more submissions; work already submitted still completes.
    pub fn close(&self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        let _ = self.kick();
    }

    /// Wait for all submitted work, then release the workers (their `Pool::new` returns).
    /// Call `close` first (`join` closes the pool if you did not).
    pub fn join(&mut self) -> Result<()> {
        self.close();
        match self.dispatcher.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("the pool dispatcher panicked".into()))),
            None => Ok(()),
        }
    }
}

impl<I, O> Drop for Pool<I, O> {
    fn drop(&mut self) {
        if let Some(h) = self.dispatcher.take() {
            self.shared.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            let _ = self.comm.send(self.comm.rank(), TAG_KICK, &());
            let _ = h.join();
        }
    }
}

/// The pending result of `apply_async`.
///
/// ```
/// let world = ranks::init()?;
/// if let Some(mut pool) = ranks::Pool::new(&world, 0, |s: String| s.len())? {
///     let r = pool.apply_async("four".to_string(), None)?;
///     r.wait(None);
///     assert!(r.ready());
///     assert_eq!(r.get()?, 4);
///     pool.close();
///     pool.join()?;
/// }
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct AsyncResult<O> {
    batch: Arc<Batch<O>>,
}

impl<O> AsyncResult<O> {
    /// Whether the result is there.
    pub fn ready(&self) -> bool {
        self.batch
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining
            == 0
    }

    /// Wait at most `timeout` for the result; true if it is there.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let end = timeout.map(|t| Instant::now() + t);
        let mut st = self.batch.lock();
        while st.remaining > 0 {
            match end {
                None => st = self.batch.wait(st),
                Some(e) => {
                    let now = Instant::now();
                    if now >= e {
                        return false;
                    }
                    st = self
                        .batch
                        .done
                        .wait_timeout(st, e - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }

    /// Wait for the result and take it.
    pub fn get(self) -> Result<O> {
        self.wait(None);
        let mut st = self.batch.lock();
        st.slots[0]
            .take()
            .unwrap_or(Err(Error::Usage("result already taken".into())))
    }
}

/// A worker's loop: ask for work, do it, report, until told to stop.
fn serve<I: DeserializeOwned, O: Serialize>(
    comm: &Comm,
    root: usize,
    f: &(dyn Fn(I) -> O + Sync),
) -> Result<()> {
    comm.send(root, TAG_RESULT, &ResultMsg::new())?;
    loop {
        let (tasks, st) = comm.recv::<Option<TaskMsg>>(root, ANY_TAG_TASK_OR_STOP)?;
        let Some(tasks) = tasks.filter(|_| st.tag == TAG_TASK) else {
            return Ok(());
        };
        let results: ResultMsg = tasks
            .into_iter()
            .map(|(id, bytes)| (id, run_one(f, &bytes, root)))
            .collect();
        comm.send(root, TAG_RESULT, &results)?;
    }
}

const ANY_TAG_TASK_OR_STOP: i32 = crate::protocol::matching::ANY_TAG;

/// The root's dispatcher: hand chunks to idle workers, collect results, run callbacks.
fn dispatch<I, O>(
    comm: Comm,
    shared: Arc<Mutex<Shared<O>>>,
    f: Arc<dyn Fn(I) -> O + Send + Sync>,
) -> Result<()>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    let me = comm.rank();
    let mut idle: VecDeque<usize> = VecDeque::new();
    let mut busy: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut inflight: HashMap<u64, Task<O>> = HashMap::new();
    // Workers that died: their items failed, nothing more goes to them.
    let mut dead: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut last_check = Instant::now();
    let workers = comm.size() - 1;
    let deliver = |task: Task<O>, r: Result<O>| {
        match (&r, &task.callback, &task.on_error) {
            (Ok(o), Some(cb), _) => (cb.lock().unwrap_or_else(|p| p.into_inner()))(o),
            (Err(e), _, Some(cb)) => (cb.lock().unwrap_or_else(|p| p.into_inner()))(e),
            _ => {}
        }
        task.batch.fill(task.index, r);
    };
    loop {
        // Hand out work.
        loop {
            let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
            if sh.queue.is_empty() {
                break;
            }
            if workers == dead.len() {
                // Nobody (left) to hand it to: compute here.
                let (id, task) = sh.queue.pop_front().expect("not empty");
                drop(sh);
                let _ = id;
                let r = run_one(&*f, &task.item, me).map_err(|m| Error::TaskFailed {
                    item: task.index,
                    rank: me,
                    message: m,
                });
                let r = r.and_then(|b| decode_as::<O>(&b, me));
                deliver(task, r);
                continue;
            }
            let Some(w) = idle.pop_front() else { break };
            let chunk = sh.queue.front().map_or(1, |(_, t)| t.chunk);
            let mut msg: TaskMsg = Vec::with_capacity(chunk);
            let mut ids = Vec::with_capacity(chunk);
            while msg.len() < chunk {
                let Some((id, task)) = sh.queue.pop_front() else {
                    break;
                };
                msg.push((id, task.item.clone()));
                ids.push(id);
                inflight.insert(id, task);
            }
            drop(sh);
            busy.insert(w, ids);
            if comm.send(w, TAG_TASK, &Some(msg)).is_err() {
                // It died while idle: the next check fails what it was given.
                last_check = Instant::now() - Duration::from_secs(1);
            }
        }
        let (closed, empty) = {
            let sh = shared.lock().unwrap_or_else(|p| p.into_inner());
            (sh.closed, sh.queue.is_empty())
        };
        if closed && empty && inflight.is_empty() && idle.len() + dead.len() == workers {
            for w in (0..comm.size()).filter(|&r| r != me && !dead.contains(&r)) {
                // A worker that died meanwhile needs no stop.
                let _ = comm.send(w, TAG_STOP, &None::<TaskMsg>);
            }
            // Drain kicks sent to ourselves.
            while comm.iprobe(me, TAG_KICK)?.is_some() {
                comm.recv::<()>(me, TAG_KICK)?;
            }
            return Ok(());
        }
        // Wait for a result or a kick.
        let pat = comm.pattern(
            comm.ctx,
            crate::comm::Source::from(ANY_SOURCE),
            crate::protocol::matching::ANY_TAG,
        )?;
        let got = comm.recv_msg_until(
            pat,
            Some(Instant::now() + Duration::from_millis(200)),
            Some(Duration::ZERO),
            false,
        )?;
        // Now and then: did a worker die? Its items fail (naming them); it gets no more.
        if got.is_none() || last_check.elapsed() >= Duration::from_millis(200) {
            last_check = Instant::now();
            for w in 0..comm.size() {
                if w == me || dead.contains(&w) {
                    continue;
                }
                let Some(why) = comm.core.peer_gone(comm.members[w]) else {
                    continue;
                };
                dead.insert(w);
                idle.retain(|&i| i != w);
                for id in busy.remove(&w).unwrap_or_default() {
                    if let Some(task) = inflight.remove(&id) {
                        let item = task.index;
                        deliver(
                            task,
                            Err(Error::TaskFailed {
                                item,
                                rank: w,
                                message: format!("the worker is gone ({why})"),
                            }),
                        );
                    }
                }
            }
        }
        let Some(msg) = got else {
            continue;
        };
        let (from, tag) = (msg.src as usize, msg.tag);
        if tag == TAG_KICK {
            comm.decode::<()>(msg)?;
            continue;
        }
        let (results, _) = comm.decode::<ResultMsg>(msg)?;
        for (id, r) in results {
            let Some(task) = inflight.remove(&id) else {
                continue;
            };
            let index = task.index;
            let r = match r {
                Ok(b) => decode_as::<O>(&b, from),
                Err(m) => Err(Error::TaskFailed {
                    item: index,
                    rank: from,
                    message: m,
                }),
            };
            deliver(task, r);
        }
        busy.remove(&from);
        if !dead.contains(&from) {
            idle.push_back(from);
        }
    }
}
