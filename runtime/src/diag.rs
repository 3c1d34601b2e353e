//! What this thread is doing, cheaply, for hang diagnosis.
//!
//! Every call that may block notes what it is (two thread-local cells: the point-to-point step
//! and the collective or primitive call around it, a few nanoseconds to set and restore).
//! Nothing is written anywhere until a wait goes to sleep: then the progress layer publishes
//! the note on the host's job board (see `crate::board`), and clears it when the wait ends.
//! The launcher reads the boards to explain a stuck job.

use std::cell::Cell;

use crate::board::{Blocked, Within};

/// A point-to-point step: `recv` from a peer, `send` to one, `wait`, `probe`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub op: &'static str,
    pub comm: u32,
    /// World rank waited on (`None`: any source).
    pub peer: Option<usize>,
    pub tag: Option<i32>,
    pub bytes: usize,
}

/// A collective or primitive call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    pub op: &'static str,
    pub comm: u32,
    pub seq: u64,
    /// Root of a rooted collective (comm rank), owner of a primitive (world rank).
    pub root: Option<usize>,
}

thread_local! {
    static STEP: Cell<Option<Step>> = const { Cell::new(None) };
    static CALL: Cell<Option<Call>> = const { Cell::new(None) };
    static WRITER: Cell<u64> = const { Cell::new(0) };
}

/// Restores the previous step when dropped.
pub(crate) struct StepGuard(Option<Step>);

impl Drop for StepGuard {
    fn drop(&mut self) {
        STEP.with(|s| s.set(self.0));
    }
}

/// Note the point-to-point step this thread is in until the guard drops.
pub(crate) fn step(step: Step) -> StepGuard {
    StepGuard(STEP.with(|s| s.replace(Some(step))))
}

/// Restores the previous call when dropped (and ends its trace event, if tracing).
pub(crate) struct CallGuard {
    prev: Option<Call>,
    /// Ends the call's trace event when the guard drops.
    _span: Option<crate::trace::Span>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        CALL.with(|c| c.set(self.prev));
    }
}

/// Note the collective or primitive (`cat`) call this thread is in until the guard drops.
pub(crate) fn call(call: Call, cat: crate::trace::Cat) -> CallGuard {
    let span = crate::trace::span(call.op, cat, call.comm, call.root, None, 0);
    CallGuard {
        prev: CALL.with(|c| c.replace(Some(call))),
        _span: span,
    }
}

/// What this thread is blocked in, if it noted anything.
pub(crate) fn current() -> Option<Blocked> {
    let step = STEP.with(Cell::get);
    let call = CALL.with(Cell::get);
    if step.is_none() && call.is_none() {
        return None;
    }
    let within = call.map(|c| Within {
        op: c.op.to_string(),
        comm: c.comm,
        seq: c.seq,
        root: c.root.map(|r| r as u32),
    });
    Some(match step {
        Some(s) => Blocked {
            op: s.op.to_string(),
            comm: s.comm,
            peer: s.peer.map(|p| p as u32),
            tag: s.tag,
            bytes: s.bytes as u64,
            since_ms: crate::board::now_ms(),
            within,
        },
        None => Blocked {
            op: "wait".into(),
            comm: call.map_or(0, |c| c.comm),
            peer: None,
            tag: None,
            bytes: 0,
            since_ms: crate::board::now_ms(),
            within,
        },
    })
}

/// A number telling this thread's board records from other threads' (never 0).
pub(crate) fn writer() -> u64 {
    WRITER.with(|w| {
        if w.get() == 0 {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            w.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        }
        w.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        assert!(current().is_none());
        {
            let _c = call(
                Call {
                    op: "barrier",
                    comm: 2,
                    seq: 7,
                    root: None,
                },
                crate::trace::Cat::Coll,
            );
            {
                let _s = step(Step {
                    op: "recv",
                    comm: 3,
                    peer: Some(1),
                    tag: Some(5),
                    bytes: 0,
                });
                let b = current().unwrap();
                assert_eq!((b.op.as_str(), b.peer, b.tag), ("recv", Some(1), Some(5)));
                assert_eq!(b.within.unwrap().seq, 7);
            }
            let b = current().unwrap();
            assert_eq!(b.op, "wait");
            assert_eq!(b.within.unwrap().op, "barrier");
        }
        assert!(current().is_none());
        assert_ne!(writer(), 0);
    }
}
