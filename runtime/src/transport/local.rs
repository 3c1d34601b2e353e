//! The transport of a world of one: there is nobody to talk to.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::Transport;
use crate::error::{Error, Result};

/// Threads of the one process wait on a condition variable; a message to ourselves bumps
/// the counter and wakes them.
#[derive(Default)]
pub(crate) struct Local {
    seq: Mutex<u64>,
    cv: Condvar,
    /// Threads inside `wait`: without any, waking is free.
    waiting: std::sync::atomic::AtomicUsize,
}

impl Transport for Local {
    fn name(&self) -> &'static str {
        "local"
    }
    fn write(&self, peer: usize, _buf: &[u8]) -> Result<usize> {
        Err(Error::InvalidRank {
            rank: peer as i64,
            size: 1,
        })
    }
    fn read(&self, _peer: usize, _buf: &mut [u8]) -> Result<usize> {
        Ok(0)
    }
    fn readable(&self, _peer: usize) -> bool {
        false
    }
    fn notify(&self, _peer: usize) {}
    fn wake_self(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.waiting.load(SeqCst) > 0 {
            *self.seq.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            self.cv.notify_all();
        }
    }
    fn wait(&self, _want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        use std::sync::atomic::Ordering::SeqCst;
        self.waiting.fetch_add(1, SeqCst);
        let before = *self.seq.lock().unwrap_or_else(|p| p.into_inner());
        if !prepare() {
            let g = self.seq.lock().unwrap_or_else(|p| p.into_inner());
            if *g == before {
                let _ = self.cv.wait_timeout(g, timeout);
            }
        }
        self.waiting.fetch_sub(1, SeqCst);
    }
    fn peer_gone(&self, _peer: usize) -> Option<String> {
        Some("a world of one has no peers".into())
    }
}
