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
use crate::error::{Error, Result};
use crate::progress::Core;
use crate::protocol::matching::ANY_SOURCE;
use crate::wire::Encoding;

/// Context of requests to service threads.
const SVC_CTX: u32 = u32::MAX - 1;
/// Context of their replies.
const REPLY_CTX: u32 = u32::MAX - 3;
/// Context of pipes.
pub(crate) const PIPE_CTX: u32 = u32::MAX - 5;
/// How long service threads and their clients spin before they sleep.
const SHORT_SPIN: Duration = Duration::from_micros(50);
/// How often the objects a process hosts check on their holders and waiters.
const TICK: Duration = Duration::from_millis(100);
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
        rank != self.core.rank && self.core.peer_gone(rank).is_some()
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
    /// Bytes held in `early` (bounded by `EARLY_LIMIT`: requests for objects that never
    /// come, from a confused or malicious peer, must not grow without bound).
    early_bytes: usize,
}

/// Most bytes of requests kept for objects not registered yet.
const EARLY_LIMIT: usize = 64 << 20;

struct Service {
    reg: Mutex<Registry>,
    /// Threads of ours now in a call to an object ([`Client`]), which serve requests
    /// themselves as they wait. While there are any, the service thread stands aside, off
    /// the doorbell (so senders need not wake it), waiting on `nudge`.
    clients: std::sync::atomic::AtomicUsize,
    /// How many times the last client left.
    handovers: AtomicU64,
    /// When the clients' present spell began (the first of them came), in nanoseconds
    /// since `born`.
    spell_from: AtomicU64,
    born: Instant,
    /// Rung by a last client that leaves after a long call (see [`Client`]).
    nudge: (Mutex<u64>, std::sync::Condvar),
}

/// A spell of calls at least this long ends by waking the service thread at once.
const LONG_CALL: Duration = Duration::from_micros(50);
/// After short calls, the service thread looks this often whether they have ended.
const HANDOVER: Duration = Duration::from_millis(1);

static SERVICE: OnceLock<Arc<Service>> = OnceLock::new();

fn world_ctx(comm: &Comm, ctx: u32) -> Comm {
    Comm::world_in(comm.core.clone(), ctx)
}

/// Start (once) the thread that serves this process's objects.
fn service(comm: &Comm) -> Arc<Service> {
    SERVICE
        .get_or_init(|| {
            let svc = Arc::new(Service {
                reg: Mutex::new(Registry::default()),
                clients: std::sync::atomic::AtomicUsize::new(0),
                handovers: AtomicU64::new(0),
                spell_from: AtomicU64::new(0),
                born: Instant::now(),
                nudge: (Mutex::new(0), std::sync::Condvar::new()),
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

/// What requests to this process's objects match.
fn svc_pattern(comm: &Comm) -> Result<crate::protocol::matching::Pattern> {
    world_ctx(comm, SVC_CTX).pattern(
        SVC_CTX,
        Source::from(ANY_SOURCE),
        crate::protocol::matching::ANY_TAG,
    )
}

fn serve(svc: Arc<Service>, rx: Comm, tx: Comm) {
    let Ok(pat) = svc_pattern(&rx) else {
        return;
    };
    let mut last_tick = Instant::now();
    let mut last_request = Instant::now();
    let mut handovers_seen = u64::MAX;
    loop {
        let deadline = Instant::now() + Duration::from_millis(100);
        // Stay awake a little while requests keep coming; otherwise sleep.
        let spin = if last_request.elapsed() < Duration::from_millis(1) {
            SHORT_SPIN
        } else {
            Duration::ZERO
        };
        if svc.clients.load(Ordering::SeqCst) > 0 {
            // Short spells of calls end without waking us (that cost a thread switch per
            // call, 1.7 us of a 3.9 us queue hop): while spells keep ending, look every
            // `HANDOVER`. A spell that has not ended since the last look is a long one, and
            // its end wakes us.
            let handovers = svc.handovers.load(Ordering::SeqCst);
            let nap = if handovers != handovers_seen {
                HANDOVER
            } else {
                Duration::from_millis(20)
            };
            handovers_seen = handovers;
            let (m, cv) = &svc.nudge;
            let g = m.lock().unwrap_or_else(|p| p.into_inner());
            let _ = cv.wait_timeout_while(g, nap, |_| svc.clients.load(Ordering::SeqCst) > 0);
            continue;
        }
        // Look for requests without posting a receive, so a thread of ours that is waiting
        // for an answer (and serving meanwhile) can take them first, with no thread switch;
        // stand aside as soon as such a thread comes.
        let seen = rx.core.wait_until(
            crate::progress::Watch::Nobody,
            Some(deadline),
            Some(spin),
            |_, st| {
                Ok(if st.peek(pat).is_some() {
                    Some(true)
                } else {
                    (svc.clients.load(Ordering::SeqCst) > 0).then_some(false)
                })
            },
        );
        let got = match seen {
            Ok(Some(false)) => Ok(None),
            Ok(Some(true)) => {
                let posted = rx.core.post_msg(pat);
                match posted {
                    Ok(m) => Ok(Some(m)),
                    Err(id) => {
                        // Someone else took it.
                        rx.core.cancel(id);
                        Ok(None)
                    }
                }
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        if matches!(got, Ok(Some(_))) {
            last_request = Instant::now();
        }
        let msg = match got {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "service receive failed");
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        };
        let tick = last_tick.elapsed() >= TICK;
        if tick {
            last_tick = Instant::now();
        }
        serve_message(&svc, &rx, &tx, msg, tick);
    }
}

/// Handle one request (and, with `tick`, let every object check on its holders); send the
/// answers. Any thread of the owner may do this: the service thread, or a thread that is
/// itself waiting for an answer.
fn serve_message(
    svc: &Service,
    rx: &Comm,
    tx: &Comm,
    msg: Option<crate::protocol::matching::Msg>,
    tick: bool,
) {
    let replies = with_objects(svc, &rx.core, |reg, ctx| {
        if let Some(msg) = msg {
            let from = msg.src as usize;
            match rx.decode::<Request>(msg) {
                Ok((req, _)) => dispatch(reg, ctx, from, req),
                Err(e) => tracing::warn!(from, error = %e, "bad request to the service"),
            }
        }
        if tick {
            for o in reg.objects.values_mut() {
                o.tick(ctx);
            }
        }
    });
    for (to, r) in replies {
        send_reply(tx, to, &r);
    }
}

/// Serve a request of this thread to an object of this process: its answer, if it has one
/// now (other answers it causes are sent); `None` when it waits (its answer comes as a
/// message, like a remote client's).
fn serve_own(svc: &Service, tx: &Comm, req: Request) -> Option<Reply> {
    let me = Waiter {
        rank: tx.core.rank,
        req: req.id,
    };
    let mut mine = None;
    let replies = with_objects(svc, &tx.core, |reg, ctx| dispatch(reg, ctx, me.rank, req));
    for (to, r) in replies {
        if to == me && mine.is_none() {
            mine = Some(r);
        } else {
            send_reply(tx, to, &r);
        }
    }
    mine
}

/// Run `f` on this process's objects, with the registry locked; the answers it made, to
/// send once the registry is unlocked.
fn with_objects(
    svc: &Service,
    core: &Core,
    f: impl FnOnce(&mut Registry, &mut Ctx<'_>),
) -> Vec<(Waiter, Reply)> {
    let mut reg = svc.reg.lock().unwrap_or_else(|p| p.into_inner());
    let mut ctx = Ctx {
        replies: Vec::new(),
        core,
    };
    f(&mut reg, &mut ctx);
    ctx.replies
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
        let size = req.data.len() + std::mem::size_of::<Request>();
        if reg.early_bytes + size > EARLY_LIMIT {
            tracing::warn!(
                from,
                obj = req.obj,
                "dropping a request for an unknown object: {EARLY_LIMIT} bytes of such requests are held already"
            );
            return;
        }
        reg.early_bytes += size;
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
    /// What kind of object (`Lock`, `Queue`, ...), for hang diagnosis.
    kind: &'static str,
}

/// How a request to an object shows in a hang diagnosis: the calls that block by design by
/// name, the rest by the object's kind.
fn call_name(kind: &'static str, op: u8) -> &'static str {
    match (kind, op) {
        ("Lock", 1) => "Lock.acquire",
        ("Lock", 3) => "Condition.wait",
        ("Semaphore", 1) => "Semaphore.acquire",
        ("Event", 4) => "Event.wait",
        ("Barrier", 4) => "Barrier.wait",
        ("Queue", 1) => "Queue.put",
        ("Queue", 2) => "Queue.get",
        _ => kind,
    }
}

static NEXT_REQ: AtomicU64 = AtomicU64::new(1);

/// A thread of a process that hosts objects, counted among the service's clients while
/// this lives: it serves requests itself as it waits, and the service thread stands aside.
///
/// When the last client leaves, the service thread must take over. Waking it costs a thread
/// switch, so only a spell of calls (from the first client's coming to the last one's
/// leaving) that lasted `LONG_CALL` or more wakes it; after shorter ones it notices within
/// `HANDOVER`, as it looks that often after a spell began. Requests that come in that while wait for it (or for the next
/// call of ours, which serves them), so a rank trading short calls with others pays no
/// switches, and one that goes on to compute serves requests again within a millisecond.
struct Client {
    svc: Arc<Service>,
    svc_pat: crate::protocol::matching::Pattern,
}

impl Client {
    /// `None` when this process hosts no objects (there is no service to stand aside).
    fn enter(comm: &Comm) -> Result<Option<Client>> {
        let Some(svc) = SERVICE.get().cloned() else {
            return Ok(None);
        };
        let svc_pat = svc_pattern(comm)?;
        if svc.clients.fetch_add(1, Ordering::SeqCst) == 0 {
            let now = svc.born.elapsed().as_nanos() as u64;
            svc.spell_from.store(now, Ordering::SeqCst);
        }
        Ok(Some(Client { svc, svc_pat }))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.svc.clients.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let svc = &self.svc;
        svc.handovers.fetch_add(1, Ordering::SeqCst);
        let spell = (svc.born.elapsed().as_nanos() as u64)
            .saturating_sub(svc.spell_from.load(Ordering::SeqCst));
        if spell >= LONG_CALL.as_nanos() as u64 {
            let (m, cv) = &self.svc.nudge;
            *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            cv.notify_all();
        }
    }
}

impl Handle {
    /// Create object number `obj_seq` of `comm` (collective), served by comm rank `owner`;
    /// `make` runs on the owner only.
    pub(crate) fn create(
        comm: &Comm,
        owner: usize,
        kind: &'static str,
        make: impl FnOnce() -> Box<dyn Object>,
    ) -> Result<Handle> {
        let owner_world = *comm.members.get(owner).ok_or_else(|| Error::InvalidRank {
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
            kind,
        })
    }

    /// Send a request and wait for the answer (at most `timeout`, after which the request is
    /// withdrawn: the answer is then `Reply::Timeout` unless it was granted meanwhile).
    pub(crate) fn call(&self, op: u8, data: Vec<u8>, timeout: Option<Duration>) -> Result<Reply> {
        let _call = crate::diag::call(
            crate::diag::Call {
                op: call_name(self.kind, op),
                comm: (self.obj >> 32) as u32,
                seq: self.obj & 0xffff_ffff,
                root: Some(self.owner),
            },
            crate::trace::Cat::Prim,
        );
        // Counted as a client before the request goes out: a request to ourselves wakes
        // the service thread otherwise.
        let client = Client::enter(&self.world)?;
        let id = NEXT_REQ.fetch_add(1, Ordering::Relaxed);
        match &client {
            // An object of our own: served right here, with no message unless it must wait.
            Some(c) if self.owner == self.world.core.rank => {
                let req = Request {
                    obj: self.obj,
                    id,
                    op,
                    data,
                };
                if let Some(r) = serve_own(&c.svc, &self.world, req) {
                    return Ok(r);
                }
            }
            _ => self.send(op, id, data)?,
        }
        let pat = self
            .world
            .pattern(REPLY_CTX, Source::from(self.owner), reply_tag(id))?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let msg = match self.wait_reply(client.as_ref(), pat, deadline)? {
            Some(m) => m,
            None => {
                self.send(OP_CANCEL, 0, encode(&id)?)?;
                self.wait_reply(client.as_ref(), pat, None)?
                    .expect("no deadline")
            }
        };
        drop(client);
        Ok(self.world.decode::<Reply>(msg)?.0)
    }

    /// Wait for the reply matching `pat`. If this process hosts objects, requests to them
    /// that arrive meanwhile are served right here, instead of waking the service thread:
    /// two ranks trading requests then talk without any thread switch.
    fn wait_reply(
        &self,
        client: Option<&Client>,
        pat: crate::protocol::matching::Pattern,
        deadline: Option<Instant>,
    ) -> Result<Option<crate::protocol::matching::Msg>> {
        let _doing = self.world.doing("recv", &pat);
        match client {
            Some(c) => self.wait_reply_serving(&c.svc, pat, c.svc_pat, deadline),
            None => self
                .world
                .recv_msg_until(pat, deadline, Some(SHORT_SPIN), true),
        }
    }

    fn wait_reply_serving(
        &self,
        svc: &Service,
        pat: crate::protocol::matching::Pattern,
        svc_pat: crate::protocol::matching::Pattern,
        deadline: Option<Instant>,
    ) -> Result<Option<crate::protocol::matching::Msg>> {
        let rx = world_ctx(&self.world, SVC_CTX);
        let core = &self.world.core;
        let posted = core.post_msg(pat);
        let reply_id = match posted {
            Ok(m) => return Ok(Some(m)),
            Err(id) => id,
        };
        let result = loop {
            let posted = core.post_msg(svc_pat);
            let svc_id = match posted {
                Ok(m) => {
                    serve_message(svc, &rx, &self.world, Some(m), false);
                    continue;
                }
                Err(id) => id,
            };
            enum Got {
                Reply(crate::protocol::matching::Msg),
                Request(crate::protocol::matching::Msg),
            }
            // Wake up now and then to let the objects this process hosts check on their
            // holders: while a thread of ours waits here, the service thread stands aside.
            let tick_at = Instant::now() + TICK;
            let step = deadline.map_or(tick_at, |d| d.min(tick_at));
            let got = core.wait_until(
                crate::progress::Watch::Peer(self.owner),
                Some(step),
                Some(SHORT_SPIN),
                |_, st| {
                    if let Some(m) = st.take_msg(reply_id) {
                        return Ok(Some(Got::Reply(m)));
                    }
                    Ok(st.take_msg(svc_id).map(Got::Request))
                },
            );
            match got {
                Ok(Some(Got::Request(m))) => serve_message(svc, &rx, &self.world, Some(m), false),
                Ok(Some(Got::Reply(m))) => {
                    core.cancel(svc_id);
                    break Ok(Some(m));
                }
                Ok(None) if deadline.is_none_or(|d| Instant::now() < d) => {
                    core.cancel(svc_id);
                    serve_message(svc, &rx, &self.world, None, true);
                }
                Ok(None) => {
                    core.cancel(svc_id);
                    core.cancel(reply_id);
                    break Ok(None);
                }
                Err(e) => {
                    core.cancel(svc_id);
                    core.cancel(reply_id);
                    break Err(e);
                }
            }
        };
        result
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
    let held: usize = early
        .iter()
        .map(|(_, r)| r.data.len() + std::mem::size_of::<Request>())
        .sum();
    reg.early_bytes = reg.early_bytes.saturating_sub(held);
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

/// For fuzzing (not an API): serve `bytes` as a request that arrived from this rank, exactly
/// as the service thread would (decoding the envelope, then the object's own arguments),
/// and throw the answers away. `obj` and `op` set: build the envelope for object number
/// `obj` of `comm` with `bytes` as its arguments instead.
#[doc(hidden)]
pub fn serve_for_fuzzing(comm: &Comm, target: Option<(u32, u8)>, bytes: &[u8]) {
    let svc = service(comm);
    let rx = world_ctx(comm, SVC_CTX);
    let tx = world_ctx(comm, REPLY_CTX);
    let payload = match target {
        Some((seq, op)) => {
            let req = Request {
                obj: (u64::from(comm.ctx) << 32) | u64::from(seq),
                id: 1,
                op,
                data: bytes.to_vec(),
            };
            match encode(&req) {
                Ok(p) => p,
                Err(_) => return,
            }
        }
        None => bytes.to_vec(),
    };
    let h = crate::wire::Header::data(
        SVC_CTX,
        comm.core.rank as u32,
        0,
        payload.len() as u64,
        Encoding::Serde,
        crate::fingerprint::of::<Request>(),
    );
    let msg =
        crate::protocol::matching::Msg::new(&h, crate::protocol::matching::Body::Eager(payload));
    serve_message(&svc, &rx, &tx, Some(msg), true);
    // Drop the answers (to ourselves) so they do not pile up.
    if let Ok(pat) = tx.pattern(
        REPLY_CTX,
        Source::from(ANY_SOURCE),
        crate::protocol::matching::ANY_TAG,
    ) {
        loop {
            match comm.core.post_msg(pat) {
                Ok(_) => continue,
                Err(id) => {
                    comm.core.cancel(id);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer sending requests for objects that never come cannot make the owner hold more
    /// than `EARLY_LIMIT` bytes of them.
    #[test]
    fn requests_for_unknown_objects_are_bounded() {
        let w = crate::init().unwrap();
        let big = vec![7u8; 1 << 20];
        for i in 0..100 {
            serve_for_fuzzing(&w, Some((1_000_000 + i, 1)), &big);
        }
        let svc = service(&w);
        let reg = svc.reg.lock().unwrap();
        assert!(reg.early_bytes <= EARLY_LIMIT, "{}", reg.early_bytes);
        let held: usize = reg.early.values().map(Vec::len).sum();
        assert!((60..100).contains(&held), "{held} requests held");
    }
}
