//! `Queue<T>`: a FIFO hosted by an owner rank, usable by every rank (`multiprocessing.Queue`).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode_as, Ctx, Handle, Object, Reply, Waiter};
use crate::comm::{encode, Comm};
use crate::error::Result;

const PUT: u8 = 1;
const GET: u8 = 2;
const QSIZE: u8 = 3;
const CLOSE: u8 = 4;

struct QueueObj {
    items: VecDeque<Vec<u8>>,
    maxsize: usize,
    closed: bool,
    getters: VecDeque<Waiter>,
    putters: VecDeque<(Waiter, Vec<u8>)>,
}

impl QueueObj {
    fn full(&self) -> bool {
        self.maxsize > 0 && self.items.len() >= self.maxsize
    }
}

impl Object for QueueObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, data: &[u8]) {
        match op {
            PUT => {
                let Ok((block, item)) = postcard::from_bytes::<(bool, Vec<u8>)>(data) else {
                    return ctx.reply(from, Reply::Usage("malformed put".into()));
                };
                if self.closed {
                    ctx.reply(from, Reply::Closed);
                } else if let Some(g) = self.getters.pop_front() {
                    ctx.reply(g, Reply::Ok(item));
                    ctx.reply(from, Reply::ok(&()));
                } else if self.full() {
                    if block {
                        self.putters.push_back((from, item));
                    } else {
                        ctx.reply(from, Reply::Full);
                    }
                } else {
                    self.items.push_back(item);
                    ctx.reply(from, Reply::ok(&()));
                }
            }
            GET => {
                let block = postcard::from_bytes::<bool>(data).unwrap_or(true);
                if let Some(item) = self.items.pop_front() {
                    ctx.reply(from, Reply::Ok(item));
                    if let Some((p, item)) = self.putters.pop_front() {
                        self.items.push_back(item);
                        ctx.reply(p, Reply::ok(&()));
                    }
                } else if self.closed {
                    ctx.reply(from, Reply::Closed);
                } else if block {
                    self.getters.push_back(from);
                } else {
                    ctx.reply(from, Reply::Empty);
                }
            }
            QSIZE => ctx.reply(from, Reply::ok(&(self.items.len() as u64))),
            CLOSE => {
                self.closed = true;
                for g in self.getters.drain(..) {
                    ctx.reply(g, Reply::Closed);
                }
                for (p, _) in self.putters.drain(..) {
                    ctx.reply(p, Reply::Closed);
                }
                ctx.reply(from, Reply::ok(&()));
            }
            _ => ctx.reply(from, Reply::Usage(format!("unknown queue operation {op}"))),
        }
    }

    fn cancel(&mut self, from: Waiter) -> bool {
        let before = self.getters.len() + self.putters.len();
        self.getters.retain(|w| *w != from);
        self.putters.retain(|(w, _)| *w != from);
        before != self.getters.len() + self.putters.len()
    }
}

/// A first-in first-out queue shared by the ranks of a communicator, hosted by one of them.
///
/// Every item is delivered exactly once; items from one producer come out in the order it
/// put them. `maxsize` 0 means unbounded; otherwise `put` blocks while the queue is full.
///
/// ```
/// let world = ranks::init()?;
/// let q: ranks::Queue<String> = ranks::Queue::new(&world, 0, 0)?; // hosted by rank 0, unbounded
/// q.put(&format!("job from rank {}", world.rank()))?;
/// world.barrier()?;
/// if world.rank() == 0 {
///     for _ in 0..world.size() {
///         let job = q.get()?;
///         assert!(job.starts_with("job from rank"));
///     }
///     assert!(matches!(q.try_get(), Err(ranks::Error::Empty)));
/// }
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Queue<T> {
    h: Handle,
    maxsize: usize,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            h: self.h.clone(),
            maxsize: self.maxsize,
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Create a queue hosted by rank `owner` of `comm`. Collective: every rank of `comm`
    /// calls it (in the same order as its other shared objects).
    pub fn new(comm: &Comm, owner: usize, maxsize: usize) -> Result<Queue<T>> {
        let h = Handle::create(comm, owner, "Queue", || {
            Box::new(QueueObj {
                items: VecDeque::new(),
                maxsize,
                closed: false,
                getters: VecDeque::new(),
                putters: VecDeque::new(),
            })
        })?;
        Ok(Queue {
            h,
            maxsize,
            _t: PhantomData,
        })
    }

    fn put_with(&self, item: &T, block: bool, timeout: Option<Duration>) -> Result<()> {
        let data = encode(&(block, encode(item)?))?;
        self.h
            .call(PUT, data, timeout)?
            .into_result("the queue")
            .map(|_| ())
    }

    fn get_with(&self, block: bool, timeout: Option<Duration>) -> Result<T> {
        let bytes = self
            .h
            .call(GET, encode(&block)?, timeout)?
            .into_result("the queue")
            .map_err(|e| match e {
                crate::Error::Timeout => crate::Error::Empty,
                e => e,
            })?;
        decode_as(&bytes, self.h.owner)
    }

    /// Append an item, waiting while the queue is full.
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_with(item, true, None)
    }

    /// Append an item, waiting at most `timeout` for room (`Error::Full` after that).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        self.put_with(item, true, Some(timeout))
            .map_err(|e| match e {
                crate::Error::Timeout => crate::Error::Full,
                e => e,
            })
    }

    /// Append an item if there is room now (`Error::Full` otherwise).
    pub fn try_put(&self, item: &T) -> Result<()> {
        self.put_with(item, false, None)
    }

    /// Take the oldest item, waiting for one.
    pub fn get(&self) -> Result<T> {
        self.get_with(true, None)
    }

    /// Take the oldest item, waiting at most `timeout` (`Error::Empty` after that).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_with(true, Some(timeout))
    }

    /// Take the oldest item if there is one now (`Error::Empty` otherwise).
    pub fn try_get(&self) -> Result<T> {
        self.get_with(false, None)
    }

    /// Number of items in the queue right now.
    pub fn qsize(&self) -> Result<usize> {
        let n: u64 = self.h.call_typed(QSIZE, &(), None, "the queue")?;
        Ok(n as usize)
    }

    /// Whether the queue is empty right now.
    pub fn empty(&self) -> Result<bool> {
        Ok(self.qsize()? == 0)
    }

    /// Whether the queue is full right now (never, when unbounded).
    pub fn full(&self) -> Result<bool> {
        Ok(self.maxsize > 0 && self.qsize()? >= self.maxsize)
    }

    /// Close the queue: further puts fail with `Error::Closed`; gets drain what is left and
    /// then fail with `Error::Closed` instead of waiting forever.
    pub fn close(&self) -> Result<()> {
        self.h
            .call(CLOSE, Vec::new(), None)?
            .into_result("the queue")
            .map(|_| ())
    }
}
