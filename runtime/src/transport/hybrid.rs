//! A job spanning hosts: shared memory between the ranks of one host, QUIC to the others.
//!
//! Each host has its own segment holding only its ranks, indexed by their position among the
//! host's ranks; this transport maps world ranks to that index. The QUIC side rings the rank's
//! shared-memory doorbell when bytes arrive, so a rank sleeps in one place for both; while it
//! sleeps there, QUIC's helper thread drives QUIC for it, and while it spins, it drives QUIC
//! itself.

use std::time::Duration;

use super::quic::Quic;
use super::shm::Shm;
use super::{local_indices, TakeFrame, Templated, Transport};
use crate::error::{Error, Result};
use crate::wire::DataTemplate;

pub(crate) struct Hybrid {
    /// Per world rank: its index in this host's segment, or `None` when it is on another host.
    local: Vec<Option<usize>>,
    /// Present when this host runs more than one rank of the job.
    shm: Option<Shm>,
    /// Present when some rank runs on another host.
    quic: Option<Quic>,
}

impl Hybrid {
    pub(crate) fn connect(
        place: &crate::config::Placement,
        tuning: &crate::config::Tuning,
        hosts: &[u32],
    ) -> Result<Hybrid> {
        let (me, size) = (place.rank, place.size);
        let dir = place.need_path(&place.dir, crate::config::env::DIR)?;
        let local = local_indices(hosts, me);
        let n_local = local.iter().flatten().count();
        let shm = if n_local > 1 {
            let path = place.shm.as_ref().ok_or_else(|| {
                Error::Bootstrap("this host runs several ranks but RANKS_SHM is not set".into())
            })?;
            Some(Shm::attach(
                path,
                local[me].expect("we are local"),
                n_local,
                tuning,
                crate::bootstrap::spins(tuning, size),
            )?)
        } else {
            None
        };
        let remote: Vec<bool> = local.iter().map(Option::is_none).collect();
        let quic = if n_local < size {
            Some(Quic::connect(
                dir,
                place,
                &remote,
                shm.as_ref().map(Shm::waker),
            )?)
        } else {
            None
        };
        Ok(Hybrid::from_parts(local, shm, quic))
    }

    /// `local[r]`: rank `r`'s index in this host's segment `shm`, or `None` for a rank on
    /// another host, reached through `quic`.
    pub(crate) fn from_parts(
        local: Vec<Option<usize>>,
        shm: Option<Shm>,
        quic: Option<Quic>,
    ) -> Hybrid {
        Hybrid { local, shm, quic }
    }

    fn route(&self, peer: usize) -> Result<(&dyn Transport, usize)> {
        match self.local.get(peer) {
            Some(Some(i)) => Ok((self.shm.as_ref().expect("local peers use shm"), *i)),
            Some(None) => Ok((self.quic.as_ref().expect("remote peers use quic"), peer)),
            None => Err(Error::InvalidRank {
                rank: peer as i64,
                size: self.local.len(),
            }),
        }
    }
}

impl Transport for Hybrid {
    fn name(&self) -> &'static str {
        "auto"
    }

    fn write(&self, peer: usize, buf: &[u8]) -> Result<usize> {
        let (t, p) = self.route(peer)?;
        t.write(p, buf)
    }

    fn write2(&self, peer: usize, a: &[u8], b: &[u8]) -> Result<usize> {
        let (t, p) = self.route(peer)?;
        t.write2(p, a, b)
    }

    fn write_frame(&self, peer: usize, h: &crate::wire::Header, payload: &[u8]) -> Result<usize> {
        let (t, p) = self.route(peer)?;
        t.write_frame(p, h, payload)
    }

    fn write_frame_later(
        &self,
        peer: usize,
        h: &crate::wire::Header,
        payload: &[u8],
    ) -> Result<usize> {
        let (t, p) = self.route(peer)?;
        t.write_frame_later(p, h, payload)
    }

    fn notify_later(&self, peer: usize) {
        if let Ok((t, p)) = self.route(peer) {
            t.notify_later(p)
        }
    }

    fn holds_back(&self) -> bool {
        self.quic.as_ref().is_some_and(|q| q.holds_back())
    }

    fn flush(&self) {
        if let Some(q) = &self.quic {
            q.flush();
        }
    }

    fn read(&self, peer: usize, buf: &mut [u8]) -> Result<usize> {
        let (t, p) = self.route(peer)?;
        t.read(p, buf)
    }

    fn readable(&self, peer: usize) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.readable(p))
    }

    fn in_place(&self, peer: usize) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.in_place(p))
    }

    fn available(&self, peer: usize, want: usize) -> Option<usize> {
        self.route(peer)
            .ok()
            .and_then(|(t, p)| t.available(p, want))
    }

    fn peek(&self, peer: usize, buf: &mut [u8]) -> usize {
        self.route(peer).map_or(0, |(t, p)| t.peek(p, buf))
    }

    fn take_frame(
        &self,
        peer: usize,
        head: usize,
        dst: &mut [u8],
        pick: &mut dyn FnMut(&[u8]) -> Option<usize>,
    ) -> TakeFrame {
        self.route(peer)
            .map_or(TakeFrame::Slow, |(t, p)| t.take_frame(p, head, dst, pick))
    }

    fn take_templated(&self, peer: usize, tmpl: &DataTemplate, dst: &mut [u8]) -> Templated {
        self.route(peer)
            .map_or(Templated::Slow, |(t, p)| t.take_templated(p, tmpl, dst))
    }

    fn take_run(
        &self,
        peer: usize,
        tmpl: &DataTemplate,
        each: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<usize> {
        let (t, p) = self.route(peer).ok()?;
        t.take_run(p, tmpl, each)
    }

    fn holds(&self, peer: usize, bytes: usize) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.holds(p, bytes))
    }

    fn lands_in_parts(&self, peer: usize) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.lands_in_parts(p))
    }

    fn driven(&self, peer: usize) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.driven(p))
    }

    fn notify(&self, peer: usize) {
        if let Ok((t, p)) = self.route(peer) {
            t.notify(p)
        }
    }

    fn sync_word(&self, peer: usize, index: usize) -> Option<&std::sync::atomic::AtomicU64> {
        let i = (*self.local.get(peer)?)?;
        self.shm.as_ref()?.sync_word(i, index)
    }

    fn sync_data(&self) -> usize {
        self.shm.as_ref().map_or(0, |s| s.sync_data())
    }

    fn write_sync_data(&self, buf: usize, header: u64, src: &[u8]) -> bool {
        self.shm
            .as_ref()
            .is_some_and(|s| s.write_sync_data(buf, header, src))
    }

    fn read_sync_data(&self, peer: usize, buf: usize, dst: &mut [u8]) -> Option<u64> {
        match (self.local.get(peer), &self.shm) {
            (Some(Some(i)), Some(s)) => s.read_sync_data(*i, buf, dst),
            _ => None,
        }
    }

    fn read_own(&self, addr: u64, dst: &mut [u8]) -> bool {
        self.shm.as_ref().is_some_and(|s| s.read_own(addr, dst))
    }

    fn read_done(&self, peer: usize) {
        if let Ok((t, p)) = self.route(peer) {
            t.read_done(p)
        }
    }

    fn drive(&self) {
        if let Some(q) = &self.quic {
            q.drive();
        }
    }

    fn wake_self(&self) {
        match (&self.shm, &self.quic) {
            (Some(s), _) => s.wake_self(),
            (None, Some(q)) => q.wake_self(),
            (None, None) => {}
        }
    }

    fn wait(&self, want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        match (&self.shm, &self.quic) {
            (Some(s), Some(q)) => q.asleep_elsewhere(|| s.wait(want_write, timeout, prepare)),
            (Some(s), None) => s.wait(want_write, timeout, prepare),
            (None, Some(q)) => q.wait(want_write, timeout, prepare),
            (None, None) => {
                if !prepare() {
                    std::thread::sleep(timeout.min(Duration::from_millis(10)));
                }
            }
        }
    }

    fn peer_gone(&self, peer: usize) -> Option<String> {
        let (t, p) = self.route(peer).ok()?;
        t.peer_gone(p)
    }

    fn can_pull(&self, peer: usize) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.can_pull(p))
    }

    fn pull(&self, peer: usize, addr: u64, dst: &mut [u8]) -> Result<bool> {
        let (t, p) = self.route(peer)?;
        t.pull(p, addr, dst)
    }

    fn offer_push(&self, peer: usize, token: u64) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.offer_push(p, token))
    }

    fn close_offer(&self, peer: usize, token: u64) -> super::Offer {
        match self.route(peer) {
            Ok((t, p)) => t.close_offer(p, token),
            Err(_) => super::Offer::Withdrawn,
        }
    }

    fn offer_open(&self, peer: usize, token: u64) -> bool {
        self.route(peer).is_ok_and(|(t, p)| t.offer_open(p, token))
    }

    fn push(&self, peer: usize, token: u64, src: u64, len: u64, dst: u64) -> bool {
        self.route(peer)
            .is_ok_and(|(t, p)| t.push(p, token, src, len, dst))
    }
}
