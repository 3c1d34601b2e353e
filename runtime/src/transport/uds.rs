//! Unix-domain socket transport: one stream socket per pair of ranks, in a per-job directory.
//!
//! Rank `r` listens on `DIR/r<r>.sock`, connects to every lower rank (announcing itself with
//! its rank as 4 bytes) and accepts one connection from every higher rank. Sockets are then
//! non-blocking; waiting is `poll(2)`. A peer that exits closes its sockets, which we see as
//! end-of-file.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::Transport;
use crate::error::{Error, Result};

const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) struct Uds {
    socks: Vec<Option<UnixStream>>,
    gone: Vec<AtomicBool>,
    /// A socket pair to wake our own threads out of `poll` (messages to ourselves).
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

fn sock_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("r{rank}.sock"))
}

impl Uds {
    pub(crate) fn connect(dir: &Path, me: usize, size: usize) -> Result<Uds> {
        let listener = UnixListener::bind(sock_path(dir, me))
            .map_err(|e| Error::io(format!("binding {}", sock_path(dir, me).display()), e))?;
        let mut socks: Vec<Option<UnixStream>> = (0..size).map(|_| None).collect();
        let deadline = Instant::now() + CONNECT_DEADLINE;
        for (peer, slot) in socks.iter_mut().enumerate().take(me) {
            let path = sock_path(dir, peer);
            let mut s = loop {
                match UnixStream::connect(&path) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(Error::io(
                            format!(
                                "rank {me} could not reach rank {peer} at {}",
                                path.display()
                            ),
                            e,
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            };
            s.write_all(&(me as u32).to_le_bytes())
                .map_err(|e| Error::io(format!("greeting rank {peer}"), e))?;
            *slot = Some(s);
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("listener", e))?;
        let mut missing = size - me - 1;
        while missing > 0 {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false)
                        .map_err(|e| Error::io("accept", e))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| Error::io("accept", e))?;
                    let mut id = [0u8; 4];
                    s.read_exact(&mut id)
                        .map_err(|e| Error::io("reading a peer's greeting", e))?;
                    let peer = u32::from_le_bytes(id) as usize;
                    if peer <= me || peer >= size || socks[peer].is_some() {
                        return Err(Error::Bootstrap(format!(
                            "unexpected greeting from rank {peer} at rank {me}"
                        )));
                    }
                    socks[peer] = Some(s);
                    missing -= 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(Error::Bootstrap(format!(
                            "rank {me}: {missing} higher ranks never connected"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(Error::io("accepting a peer", e)),
            }
        }
        let _ = std::fs::remove_file(sock_path(dir, me));
        for s in socks.iter().flatten() {
            s.set_nonblocking(true)
                .map_err(|e| Error::io("socket", e))?;
            s.set_read_timeout(None)
                .map_err(|e| Error::io("socket", e))?;
        }
        let gone = (0..size).map(|_| AtomicBool::new(false)).collect();
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(|e| Error::io("socket pair", e))?;
        wake_tx
            .set_nonblocking(true)
            .map_err(|e| Error::io("socket pair", e))?;
        wake_rx
            .set_nonblocking(true)
            .map_err(|e| Error::io("socket pair", e))?;
        Ok(Uds {
            socks,
            gone,
            wake_tx,
            wake_rx,
        })
    }

    fn sock(&self, peer: usize) -> Result<&UnixStream> {
        self.socks
            .get(peer)
            .and_then(|s| s.as_ref())
            .ok_or(Error::InvalidRank {
                rank: peer as i64,
                size: self.socks.len(),
            })
    }

    /// A write failed: report it, but keep reading what the peer sent before it went.
    fn lost(&self, peer: usize, why: &str) -> Error {
        Error::PeerLost {
            rank: peer,
            detail: why.to_string(),
        }
    }
}

impl Transport for Uds {
    fn name(&self) -> &'static str {
        "uds"
    }

    fn write(&self, peer: usize, buf: &[u8]) -> Result<usize> {
        let mut s = self.sock(peer)?;
        match s.write(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Ok(0)
            }
            Err(e) => Err(self.lost(peer, &format!("its socket failed: {e}"))),
        }
    }

    fn write2(&self, peer: usize, a: &[u8], b: &[u8]) -> Result<usize> {
        let mut s = self.sock(peer)?;
        match s.write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)]) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Ok(0)
            }
            Err(e) => Err(self.lost(peer, &format!("its socket failed: {e}"))),
        }
    }

    fn read(&self, peer: usize, buf: &mut [u8]) -> Result<usize> {
        if self.gone[peer].load(Ordering::Relaxed) {
            return Ok(0);
        }
        let mut s = self.sock(peer)?;
        match s.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.gone[peer].store(true, Ordering::SeqCst);
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Ok(0)
            }
            Err(e) => {
                self.gone[peer].store(true, Ordering::SeqCst);
                tracing::debug!(peer, error = %e, "socket read failed");
                Ok(0)
            }
        }
    }

    fn readable(&self, peer: usize) -> bool {
        self.socks[peer].is_some() && !self.gone[peer].load(Ordering::Relaxed)
    }

    fn notify(&self, _peer: usize) {}

    fn wake_self(&self) {
        let _ = (&self.wake_tx).write(&[1]);
    }

    fn wait(&self, want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        if prepare() {
            return;
        }
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.socks.len() + 1);
        fds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
        for (peer, s) in self.socks.iter().enumerate() {
            let Some(s) = s else { continue };
            if self.gone[peer].load(Ordering::Relaxed) {
                continue;
            }
            let mut flags = PollFlags::IN;
            if want_write.contains(&peer) {
                flags |= PollFlags::OUT;
            }
            fds.push(PollFd::new(s, flags));
        }
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let _ = poll(&mut fds, Some(&ts));
        drop(fds);
        let mut sink = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
    }

    fn peer_gone(&self, peer: usize) -> Option<String> {
        self.gone[peer]
            .load(Ordering::SeqCst)
            .then(|| "its connection closed".to_string())
    }
}
