//! A record of the calls a rank makes, for `ranks run --trace job.json`.
//!
//! The launcher names a file in `RANKS_TRACE`; the rank then notes every send, receive,
//! wait, probe, collective and primitive call (what, on which communicator, with whom, tag,
//! bytes, when, how long) and writes the list to that file when it exits. The launcher
//! merges the ranks' files into one Chrome/Perfetto trace.
//!
//! Off (the default), a call pays one relaxed atomic load. On, each call appends one event
//! (about 64 bytes) to a list under a mutex. A rank keeps at most [`MAX_EVENTS`] events
//! and counts the rest as dropped. A rank killed by a signal writes nothing.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Events a rank keeps; later ones are counted in [`RankTrace::dropped`].
pub const MAX_EVENTS: usize = 2_000_000;

/// What kind of call an event is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cat {
    /// Send, receive, wait, probe (collectives' own steps included).
    P2p,
    /// A collective call.
    Coll,
    /// A call on a primitive (`Lock.acquire`, `Queue.get`, ...).
    Prim,
}

impl Cat {
    pub fn name(self) -> &'static str {
        match self {
            Cat::P2p => "p2p",
            Cat::Coll => "collective",
            Cat::Prim => "primitive",
        }
    }
}

/// One call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub cat: Cat,
    /// Which thread of the rank made the call (0, 1, ... in order of their first call).
    pub tid: u32,
    /// Start, nanoseconds after [`RankTrace::t0_unix_ns`].
    pub start_ns: u64,
    pub dur_ns: u64,
    /// Communicator context id.
    pub comm: u32,
    /// The peer (world rank) of a point-to-point call, the root of a collective (its rank in
    /// the communicator), the owner of a primitive (world rank); `None`: any source, no root.
    pub peer: Option<u32>,
    pub tag: Option<i32>,
    /// Payload bytes of a send.
    pub bytes: u64,
}

/// Everything one rank recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RankTrace {
    pub rank: u32,
    pub host: String,
    pub pid: u32,
    /// When the rank started recording (Unix time, ns).
    pub t0_unix_ns: u64,
    /// Events not kept (over [`MAX_EVENTS`]).
    pub dropped: u64,
    /// Names of the threads by `tid`.
    pub threads: Vec<String>,
    pub events: Vec<Event>,
}

impl RankTrace {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<RankTrace, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("malformed trace: {e}"))
    }
}

struct Raw {
    name: &'static str,
    cat: Cat,
    tid: u32,
    start_ns: u64,
    dur_ns: u64,
    comm: u32,
    peer: Option<u32>,
    tag: Option<i32>,
    bytes: u64,
}

struct Tracer {
    path: PathBuf,
    rank: u32,
    host: String,
    t0_unix_ns: u64,
    epoch: Instant,
    events: Mutex<Vec<Raw>>,
    threads: Mutex<Vec<String>>,
    dropped: AtomicU64,
}

static ON: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<Tracer> = OnceLock::new();
static NEXT_TID: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static TID: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Start recording: write to `path` at exit.
pub(crate) fn start(path: PathBuf, rank: usize, host: String) {
    let t0_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let tracer = Tracer {
        path,
        rank: rank as u32,
        host,
        t0_unix_ns,
        epoch: Instant::now(),
        events: Mutex::new(Vec::with_capacity(4096)),
        threads: Mutex::new(Vec::new()),
        dropped: AtomicU64::new(0),
    };
    if TRACER.set(tracer).is_ok() {
        ON.store(true, Relaxed);
        crate::at_exit::add(write_at_exit);
    }
}

/// Whether this rank records a trace.
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Relaxed)
}

/// A call being recorded; the event is written when it drops.
pub(crate) struct Span {
    name: &'static str,
    cat: Cat,
    comm: u32,
    peer: Option<u32>,
    tag: Option<i32>,
    bytes: u64,
    start: Instant,
}

impl Span {
    /// The peer turned out to be `peer` (the source an any-source receive matched).
    pub(crate) fn set_peer(&mut self, peer: usize) {
        self.peer = Some(peer as u32);
    }

    pub(crate) fn set_bytes(&mut self, bytes: usize) {
        self.bytes = bytes as u64;
    }
}

/// Record a call from now until the returned span drops (`None` when not tracing).
#[inline]
pub(crate) fn span(
    name: &'static str,
    cat: Cat,
    comm: u32,
    peer: Option<usize>,
    tag: Option<i32>,
    bytes: usize,
) -> Option<Span> {
    if !on() {
        return None;
    }
    Some(Span {
        name,
        cat,
        comm,
        peer: peer.map(|p| p as u32),
        tag,
        bytes: bytes as u64,
        start: Instant::now(),
    })
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some(t) = TRACER.get() else { return };
        let end = Instant::now();
        let raw = Raw {
            name: self.name,
            cat: self.cat,
            tid: tid(t),
            start_ns: self.start.duration_since(t.epoch).as_nanos() as u64,
            dur_ns: end.duration_since(self.start).as_nanos() as u64,
            comm: self.comm,
            peer: self.peer,
            tag: self.tag,
            bytes: self.bytes,
        };
        let mut ev = t.events.lock().unwrap_or_else(|p| p.into_inner());
        if ev.len() < MAX_EVENTS {
            ev.push(raw);
        } else {
            t.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// This thread's number in the trace, given (and its name noted) on its first event.
fn tid(t: &Tracer) -> u32 {
    TID.with(|c| {
        if let Some(id) = c.get() {
            return id;
        }
        let id = NEXT_TID.fetch_add(1, Relaxed);
        let cur = std::thread::current();
        let name = cur
            .name()
            .map_or_else(|| format!("thread {id}"), str::to_string);
        let mut names = t.threads.lock().unwrap_or_else(|p| p.into_inner());
        if names.len() <= id as usize {
            names.resize(id as usize + 1, String::new());
        }
        names[id as usize] = name;
        c.set(Some(id));
        id
    })
}

/// What has been recorded so far (`None` when not tracing).
pub(crate) fn snapshot() -> Option<RankTrace> {
    let t = TRACER.get()?;
    let events = t
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|r| Event {
            name: r.name.to_string(),
            cat: r.cat,
            tid: r.tid,
            start_ns: r.start_ns,
            dur_ns: r.dur_ns,
            comm: r.comm,
            peer: r.peer,
            tag: r.tag,
            bytes: r.bytes,
        })
        .collect();
    Some(RankTrace {
        rank: t.rank,
        host: t.host.clone(),
        pid: std::process::id(),
        t0_unix_ns: t.t0_unix_ns,
        dropped: t.dropped.load(Relaxed),
        threads: t.threads.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        events,
    })
}

fn write_at_exit() {
    let (Some(t), Some(trace)) = (TRACER.get(), snapshot()) else {
        return;
    };
    // Written whole under another name first, so a reader never sees half a file.
    let tmp = t.path.with_extension("partial");
    if std::fs::write(&tmp, trace.encode()).is_ok() {
        let _ = std::fs::rename(&tmp, &t.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_trace_survives_encoding() {
        let t = RankTrace {
            rank: 3,
            host: "h2".into(),
            pid: 42,
            t0_unix_ns: 1_700_000_000_000_000_000,
            dropped: 1,
            threads: vec!["main".into()],
            events: vec![Event {
                name: "send".into(),
                cat: Cat::P2p,
                tid: 0,
                start_ns: 10,
                dur_ns: 5,
                comm: 0,
                peer: Some(1),
                tag: Some(-1),
                bytes: 8,
            }],
        };
        assert_eq!(RankTrace::decode(&t.encode()).unwrap(), t);
        assert!(RankTrace::decode(&[0xff; 3]).is_err());
    }

    #[test]
    fn spans_cost_nothing_when_off() {
        // Tests in this binary never start the tracer.
        assert!(span("send", Cat::P2p, 0, Some(1), Some(0), 8).is_none());
    }
}
