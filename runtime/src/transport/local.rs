//! The transport of a world of one: there is nobody to talk to.

use std::time::Duration;

use super::Transport;
use crate::error::{Error, Result};

pub(crate) struct Local;

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
    fn wait(&self, _want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        if !prepare() {
            std::thread::sleep(timeout);
        }
    }
    fn peer_gone(&self, _peer: usize) -> Option<String> {
        Some("a world of one has no peers".into())
    }
}
