//! Python `multiprocessing`'s tools across ranks: queues, pipes, locks, semaphores,
//! conditions, events, barriers, shared values and arrays, managers and pools.
//!
//! Each shared object is created collectively on a communicator (every member calls the
//! constructor, in the same order) and lives on an *owner* rank. Requests go to the owner's
//! service thread, which answers while the owner computes or blocks elsewhere; a request
//! that must wait (a `get` on an empty queue, an `acquire` of a held lock) is answered when
//! it can be. Objects are written only against [`Comm`], in contexts of their own.

pub mod manager;
pub mod pipe;
pub mod pool;
pub mod queue;
pub mod shared;
pub mod sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::comm::{encode, Comm, Source};
use crate::core::Core;
use crate::engine::ANY_SOURCE;
use crate::error::{Error, Result};
use crate::wire::Encoding;

/// Context of requests to service threads.
const SVC_CTX: u32 = u32::MAX - 1;
/// Context of their replies.
const REPLY_CTX: u32 = u32::MAX - 3;
/// Context of pipes.
pub(crate) const PIPE_CTX: u32 = u32::MAX - 5;
/// How long service threads and their clients spin before they sleep.
const SHORT_SPIN: Duration = Duration::from_micros(50);
/// Operation code of a cancellation (of a request that timed out on the client).
const OP_CANCEL: u8 = 255;

#[derive(Serialize, Deserialize)]
struct Request {
    obj: u64,
    id: u64,
    op: u8,
    data: Vec<u8>,
}

/// An owner's answer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) enum Reply {
    Ok(Vec<u8>),
    Timeout,
    Empty,
    Full,
    Closed,
    HolderDied(u32),
    Broken(String),
    Usage(String),
}

impl Reply {
    pub(crate) fn ok<T: Serialize>(v: &T) -> Reply {
        Reply::Ok(postcard::to_allocvec(v).unwrap_or_default())
    }

    /// The payload of an `Ok`, or the error the reply stands for.
    pub(crate) fn into_result(self, what: &'static str) -> Result<Vec<u8>> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Timeout => Err(Error::Timeout),
            Reply::Empty => Err(Error::Empty),
            Reply::Full => Err(Error::Full),
            Reply::Closed => Err(Error::Closed(what)),
            Reply::HolderDied(r) => Err(Error::HolderDied {
                rank: r as usize,
                what,
            }),
            Reply::Broken(why) => Err(Error::BrokenBarrier(why)),
            Reply::Usage(m) => Err(Error::Usage(m)),
        }
    }
}

pub(crate) fn decode_as<T: serde::de::DeserializeOwned>(bytes: &[u8], from: usize) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::TypeMismatch {
        rank: from,
        tag: 0,
        expected: std::any::type_name::<T>(),
        detail: e.to_string(),
    })
}

/// A client waiting for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiter {
    /// World rank of the client.
    pub rank: usize,
    pub req: u64,
}

/// What an object's handler may do: reply now, look at peers.
pub(crate) struct Ctx<'a> {
    replies: Vec<(Waiter, Reply)>,
    core: &'a Core,
}

impl Ctx<'_> {
    pub(crate) fn reply(&mut self, to: Waiter, r: Reply) {
        self.replies.push((to, r));
    }
    /// Whether world rank `rank` has exited or died.
    pub(crate) fn gone(&self, rank: usize) -> bool {
        rank != self.core.rank && self.core.t.peer_gone(rank).is_some()
    }
}

/// The owner's side of a shared object.
pub(crate) trait Object: Send {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, data: &[u8]);
    /// Withdraw a waiting request; true if it was still waiting (the caller replies Timeout).
    fn cancel(&mut self, from: Waiter) -> bool;
    /// Called now and then: notice holders that died, and the like.
    fn tick(&mut self, _ctx: &mut Ctx<'_>) {}
}

#[derive(Default)]
struct Registry {
    objects: HashMap<u64, Box<dyn Object>>,
    /// Requests that arrived before their object was registered.
    early: HashMap<u64, Vec<(usize, Request)>>,
}

struct Service {
    reg: Mutex<Registry>,
}

static SERVICE: OnceLock<Arc<Service>> = OnceLock::new();

fn world_ctx(comm: &Comm, ctx: u32) -> Comm {
    let mut w = Comm::world(comm.core.clone());
    w.ctx = ctx;
    w
}

/// Start (once) the thread that serves this process's objects.
fn service(comm: &Comm) -> Arc<Service> {
    SERVICE
        .get_or_init(|| {
            let svc = Arc::new(Service {
                reg: Mutex::new(Registry::default()),
            });
            let s2 = svc.clone();
            let rx = world_ctx(comm, SVC_CTX);
            let tx = world_ctx(comm, REPLY_CTX);
            std::thread::Builder::new()
                .name("ranks-service".into())
                .spawn(move || serve(s2, rx, tx))
                .expect("spawning the service thread");
            svc
        })
        .clone()
}

fn serve(svc: Arc<Service>, rx: Comm, tx: Comm) {
    let pat = match rx.pattern(SVC_CTX, Source::from(ANY_SOURCE), crate::engine::ANY_TAG) {
        Ok(p) => p,
        Err(_) => return,
    };
    let mut last_tick = Instant::now();
    let mut last_request = Instant::now();
    loop {
        let deadline = Instant::now() + Duration::from_millis(100);
        // Stay awake a little while requests keep coming; otherwise sleep.
        let spin = if last_request.elapsed() < Duration::from_millis(1) {
            SHORT_SPIN
        } else {
            Duration::ZERO
        };
        let got = rx.recv_msg_until(pat, Some(deadline), Some(spin), false);
        if matches!(got, Ok(Some(_))) {
            last_request = Instant::now();
        }
        let mut replies = Vec::new();
        {
            let mut reg = svc.reg.lock().unwrap_or_else(|p| p.into_inner());
            let mut ctx = Ctx {
                replies: Vec::new(),
                core: &rx.core,
            };
            match got {
                Ok(Some(msg)) => {
                    let from = msg.src as usize;
                    match rx.decode::<Request>(msg) {
                        Ok((req, _)) => dispatch(&mut reg, &mut ctx, from, req),
                        Err(e) => tracing::warn!(from, error = %e, "bad request to the service"),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "service receive failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                for o in reg.objects.values_mut() {
                    o.tick(&mut ctx);
                }
            }
            replies.append(&mut ctx.replies);
        }
        for (to, r) in replies {
            send_reply(&tx, to, &r);
        }
    }
}

fn send_reply(tx: &Comm, to: Waiter, r: &Reply) {
    let bytes = match encode(r) {
        Ok(b) => b,
        Err(_) => return,
    };
    if let Err(e) = tx.send_bytes(
        REPLY_CTX,
        to.rank,
        reply_tag(to.req),
        &bytes,
        Encoding::Serde,
        0,
    ) {
        tracing::debug!(to = to.rank, error = %e, "could not answer a request");
    }
}

fn reply_tag(req: u64) -> i32 {
    (req & 0x7fff_ffff) as i32
}

fn dispatch(reg: &mut Registry, ctx: &mut Ctx<'_>, from: usize, req: Request) {
    let Some(obj) = reg.objects.get_mut(&req.obj) else {
        reg.early.entry(req.obj).or_default().push((from, req));
        return;
    };
    let w = Waiter {
        rank: from,
        req: req.id,
    };
    if req.op == OP_CANCEL {
        let Ok(orig) = postcard::from_bytes::<u64>(&req.data) else {
            return;
        };
        let target = Waiter {
            rank: from,
            req: orig,
        };
        if obj.cancel(target) {
            ctx.reply(target, Reply::Timeout);
        }
        return;
    }
    obj.handle(ctx, w, req.op, &req.data);
}

/// A handle on a shared object: where it lives and how to reach it.
#[derive(Clone)]
pub(crate) struct Handle {
    /// World communicator in the reply context (requests use `send_bytes` with SVC_CTX).
    world: Comm,
    /// World rank of the owner.
    pub owner: usize,
    pub obj: u64,
}

static NEXT_REQ: AtomicU64 = AtomicU64::new(1);

impl Handle {
    /// Create object number `obj_seq` of `comm` (collective), served by comm rank `owner`;
    /// `make` runs on the owner only.
    pub(crate) fn create(
        comm: &Comm,
        owner: usize,
        make: impl FnOnce() -> Box<dyn Object>,
    ) -> Result<Handle> {
        let owner_world = *comm.members.get(owner).ok_or(Error::InvalidRank {
            rank: owner as i64,
            size: comm.size(),
        })?;
        let seq = comm.obj_seq.fetch_add(1, Ordering::Relaxed);
        let obj = (u64::from(comm.ctx) << 32) | u64::from(seq);
        if comm.core.rank == owner_world {
            register(comm, obj, make());
        }
        Ok(Handle {
            world: world_ctx(comm, REPLY_CTX),
            owner: owner_world,
            obj,
        })
    }

    /// Send a request and wait for the answer (at most `timeout`, after which the request is
    /// withdrawn: the answer is then `Reply::Timeout` unless it was granted meanwhile).
    pub(crate) fn call(&self, op: u8, data: Vec<u8>, timeout: Option<Duration>) -> Result<Reply> {
        let id = NEXT_REQ.fetch_add(1, Ordering::Relaxed);
        self.send(op, id, data)?;
        let pat = self
            .world
            .pattern(REPLY_CTX, Source::from(self.owner), reply_tag(id))?;
        let deadline = timeout.map(|t| Instant::now() + t);
        // A short spin, then sleep: the answer comes from a service thread that needs a core.
        let msg = match self.world.recv_msg_until(pat, deadline, Some(SHORT_SPIN), true)? {
            Some(m) => m,
            None => {
                self.send(OP_CANCEL, 0, encode(&id)?)?;
                self.world.recv_msg(pat)?
            }
        };
        Ok(self.world.decode::<Reply>(msg)?.0)
    }

    fn send(&self, op: u8, id: u64, data: Vec<u8>) -> Result<()> {
        let req = Request {
            obj: self.obj,
            id,
            op,
            data,
        };
        self.world
            .send_bytes(SVC_CTX, self.owner, 0, &encode(&req)?, Encoding::Serde, 0)
    }

    /// `call` with a serde argument, expecting `Ok`, decoding its payload.
    pub(crate) fn call_typed<A: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        op: u8,
        arg: &A,
        timeout: Option<Duration>,
        what: &'static str,
    ) -> Result<R> {
        let bytes = self.call(op, encode(arg)?, timeout)?.into_result(what)?;
        decode_as(&bytes, self.owner)
    }
}

fn register(comm: &Comm, obj: u64, o: Box<dyn Object>) {
    let svc = service(comm);
    let mut reg = svc.reg.lock().unwrap_or_else(|p| p.into_inner());
    reg.objects.insert(obj, o);
    // Requests that raced ahead of the registration: serve them now, in arrival order.
    let early = reg.early.remove(&obj).unwrap_or_default();
    let mut ctx = Ctx {
        replies: Vec::new(),
        core: &comm.core,
    };
    for (from, req) in early {
        dispatch(&mut reg, &mut ctx, from, req);
    }
    let replies = std::mem::take(&mut ctx.replies);
    drop(reg);
    let tx = world_ctx(comm, REPLY_CTX);
    for (to, r) in replies {
        send_reply(&tx, to, &r);
    }
}
