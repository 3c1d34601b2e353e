//! Transports move bytes between the ranks of a job; they know nothing of messages.
//!
//! Each ordered pair of ranks has a byte stream (a ring in shared memory, or a Unix socket).
//! The engine writes frames into streams and reads frames out of them with the
//! [`crate::wire::FrameDecoder`]. Calls never block except [`Transport::wait`].

use std::time::Duration;

use crate::error::Result;
use crate::wire::{DataTemplate, HEADER_LEN};

#[cfg(feature = "quic")]
pub(crate) mod driver;
#[cfg(feature = "quic")]
mod gso;
#[cfg(feature = "quic")]
pub(crate) mod hybrid;
pub(crate) mod local;
#[cfg(feature = "quic")]
pub mod quic;
#[cfg(all(test, loom))]
mod ring_model;
#[allow(unsafe_code)]
pub mod shm;
pub(crate) mod uds;
#[cfg(feature = "quic")]
mod window;

/// A way for one rank to exchange byte streams with the others.
pub(crate) trait Transport: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &'static str;

    /// Accept up to `buf.len()` bytes for `peer`'s stream; 0 when it is full.
    fn write(&self, peer: usize, buf: &[u8]) -> Result<usize>;

    /// Accept up to all of `a` then `b` (in that order) for `peer`'s stream, as one write.
    /// Returns how many bytes of the two were taken.
    fn write2(&self, peer: usize, a: &[u8], b: &[u8]) -> Result<usize> {
        let n = self.write(peer, a)?;
        if n < a.len() || b.is_empty() {
            return Ok(n);
        }
        Ok(n + self.write(peer, b)?)
    }

    /// Write the frame of header `h` and `payload` for `peer` as [`Transport::write2`] of
    /// the encoded header and the payload does, and tell `peer` (as
    /// [`Transport::notify`]) when anything was written. Returns how many bytes of the two
    /// were taken. Transports that can write a small frame in one step do so.
    fn write_frame(&self, peer: usize, h: &crate::wire::Header, payload: &[u8]) -> Result<usize> {
        let n = self.write2(peer, &h.encode(), payload)?;
        if n > 0 {
            self.notify(peer);
        }
        Ok(n)
    }

    /// Read available bytes of `peer`'s stream to us; 0 when nothing is there now.
    fn read(&self, peer: usize, buf: &mut [u8]) -> Result<usize>;

    /// Cheap hint that `read(peer)` may return data.
    fn readable(&self, peer: usize) -> bool;

    /// Bytes of `peer`'s stream that `read` would return now, if the transport can tell
    /// (and [`Transport::peek`] at them); `None` when it cannot. The count may stop once it
    /// reaches `want`: it is at least `want` when that many bytes are there.
    fn available(&self, _peer: usize, _want: usize) -> Option<usize> {
        None
    }

    /// Whether `peer`'s stream to us can be read in place at all ([`Transport::available`],
    /// [`Transport::peek`], [`Transport::take_frame`]): a cheap test of the transport's
    /// kind, made where a receive is posted.
    fn in_place(&self, _peer: usize) -> bool {
        false
    }

    /// Copy the next `buf.len()` bytes of `peer`'s stream without consuming them (at most
    /// what is available). Only for transports whose `available` is `Some`.
    fn peek(&self, _peer: usize, _buf: &mut [u8]) -> usize {
        0
    }

    /// Take the next frame of `peer`'s stream in one step when the transport can (a small
    /// frame whole in one piece of a ring): `pick` sees its first `head` bytes and says how
    /// many bytes after them go to the front of `dst` (at most its length), or `None` to
    /// leave the frame where it is. Only the one thread reading `peer`'s stream may call
    /// this; a frame taken needs no `read_done`.
    fn take_frame(
        &self,
        _peer: usize,
        _head: usize,
        _dst: &mut [u8],
        _pick: &mut dyn FnMut(&[u8]) -> Option<usize>,
    ) -> TakeFrame {
        TakeFrame::Slow
    }

    /// [`Transport::take_frame`] for the one frame header `tmpl` describes (any payload
    /// length up to `dst.len()`): the header's length once its payload is at the front of
    /// `dst`. Transports that can compare the header where it lies do so (no callback);
    /// the others pick through `take_frame`.
    fn take_templated(&self, peer: usize, tmpl: &DataTemplate, dst: &mut [u8]) -> Templated {
        let room = dst.len();
        let mut got = 0;
        let mut pick = |hb: &[u8]| {
            let h = tmpl.header(hb.try_into().ok()?)?;
            got = h.len;
            (h.len <= room as u64).then_some(h.len as usize)
        };
        match self.take_frame(peer, HEADER_LEN, dst, &mut pick) {
            TakeFrame::Took(_) => Templated::Took(got),
            TakeFrame::Empty => Templated::Empty,
            TakeFrame::Left => Templated::Other,
            TakeFrame::Slow => Templated::Slow,
        }
    }

    /// Take the frames with `tmpl`'s header that are next in `peer`'s stream, one after
    /// another, each in one step, while `each` takes the frame's payload (copies it where
    /// it goes and says true; false leaves the frame and ends the run): how many it took,
    /// or `None` where the transport takes such frames only one at a time
    /// ([`Transport::take_templated`]). Only the one thread reading `peer`'s stream may
    /// call this.
    fn take_run(
        &self,
        _peer: usize,
        _tmpl: &DataTemplate,
        _each: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<usize> {
        None
    }

    /// Whether `peer`'s stream to us holds `bytes` at once, so that a reader may wait for a
    /// frame of that size to be all there before it reads any of it (false if it cannot
    /// tell).
    fn holds(&self, _peer: usize, _bytes: usize) -> bool {
        false
    }

    /// Whether a receive its thread waits for (a blocking one, or a posted one in its
    /// wait) may read a frame of `peer`'s stream that is not all there yet a part at a time, straight into its buffer, as the rest arrives (asked
    /// where the stream cannot hold the frame whole: [`Transport::holds`]).
    fn lands_in_parts(&self, _peer: usize) -> bool {
        false
    }

    /// Tell `peer` that we wrote to it or made room in its stream (wakes it if asleep).
    fn notify(&self, peer: usize);

    /// [`Transport::write_frame`] for a nonblocking send, whose caller waits for it (or
    /// calls in again) soon after: a transport whose every push of bytes costs a packet
    /// (QUIC) may hold the frame back until then ([`Transport::flush`], or the next
    /// [`Transport::drive`]), so that a window of small sends leaves in a few packets
    /// instead of one each. Where nothing is held back, `write_frame`.
    fn write_frame_later(
        &self,
        peer: usize,
        h: &crate::wire::Header,
        payload: &[u8],
    ) -> Result<usize> {
        self.write_frame(peer, h, payload)
    }

    /// [`Transport::notify`] after writes of a nonblocking send (as
    /// [`Transport::write_frame_later`]).
    fn notify_later(&self, peer: usize) {
        self.notify(peer);
    }

    /// Whether [`Transport::write_frame_later`] may hold frames back: then every wait
    /// calls [`Transport::flush`] before it looks at its requests.
    fn holds_back(&self) -> bool {
        false
    }

    /// Send what [`Transport::write_frame_later`] held back.
    fn flush(&self) {}

    /// Copy `dst.len()` bytes at `addr` in our own address space, through the kernel (which
    /// checks the range), for streaming a borrowed buffer. False if that is not possible.
    fn read_own(&self, _addr: u64, _dst: &mut [u8]) -> bool {
        false
    }

    /// Called after reading from `peer`: wake it if it may be waiting for room we made.
    fn read_done(&self, peer: usize) {
        self.notify(peer);
    }

    /// Give the transport's own I/O a turn on this thread, without blocking (QUIC run by
    /// the rank's waiting threads). Called as progress starts.
    fn drive(&self) {}

    /// Whether `peer`'s bytes come in only as this process drives the transport
    /// ([`Transport::drive`], QUIC's): a wait then has nothing to spin on between its
    /// rounds of progress, each of which drives.
    fn driven(&self, _peer: usize) -> bool {
        false
    }

    /// Wake this process's own threads sleeping in `wait` (after a message to ourselves).
    fn wake_self(&self);

    /// Sleep until something may have changed for this rank, or `timeout`.
    /// `prepare` runs after the rank is registered as a sleeper and before it sleeps; the
    /// wait is skipped when it returns true (the condition already holds).
    fn wait(&self, want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool);

    /// Why `peer` can no longer take part (exited, killed, connection closed), if it can't.
    fn peer_gone(&self, peer: usize) -> Option<String>;

    /// Sync word `index` of `peer` (this process's own when `peer` is this rank), where
    /// this process shares memory with it: host-local collectives meet there without
    /// messages (`crate::host_sync`). Only `peer` stores to its words; `notify(peer)` after
    /// a store wakes `peer` if it sleeps. `None` where there is no such memory.
    fn sync_word(&self, _peer: usize, _index: usize) -> Option<&std::sync::atomic::AtomicU64> {
        None
    }

    /// Bytes of each of this rank's sync data buffers, beside its sync words (0: none).
    fn sync_data(&self) -> usize {
        0
    }

    /// Put `src` in this rank's sync data buffer `buf`, with a header word saying what it
    /// is; false where there is none. Only while no peer reads it (`crate::host_sync` says
    /// when).
    fn write_sync_data(&self, _buf: usize, _header: u64, _src: &[u8]) -> bool {
        false
    }

    /// Copy the start of `peer`'s sync data buffer `buf` into `dst`; its header word, or
    /// `None` where there is none.
    fn read_sync_data(&self, _peer: usize, _buf: usize, _dst: &mut [u8]) -> Option<u64> {
        None
    }

    /// Whether [`Transport::pull`] can copy from `peer`'s memory.
    fn can_pull(&self, _peer: usize) -> bool {
        false
    }

    /// Copy `dst.len()` bytes at `addr` in `peer`'s address space; `Ok(false)` when the
    /// kernel refuses (the sender then streams the bytes instead).
    fn pull(&self, _peer: usize, _addr: u64, _dst: &mut [u8]) -> Result<bool> {
        Ok(false)
    }

    /// Offer `peer`, the sender of our pull of rendezvous `token`, to write a part of it
    /// into our memory itself ([`Transport::push`]). False when that is not possible (the
    /// transport cannot, or an offer to `peer` is already open); the caller then pulls all
    /// of it.
    fn offer_push(&self, _peer: usize, _token: u64) -> bool {
        false
    }

    /// Withdraw the offer for `token` to `peer`, unless `peer` took it. Never blocks:
    /// [`Offer::Taken`] means `peer` is writing now; ask again.
    fn close_offer(&self, _peer: usize, _token: u64) -> Offer {
        Offer::Withdrawn
    }

    /// Whether our offer for `token` to `peer` is still open (for tests that wait for the
    /// peer to take it).
    fn offer_open(&self, _peer: usize, _token: u64) -> bool {
        false
    }

    /// Write `len` bytes at `src` in our memory to `dst` in `peer`'s, if `peer`'s offer for
    /// `token` is still open (it is then taken, and closed when the bytes are in, or the
    /// write failed). Whether the bytes are there.
    fn push(&self, _peer: usize, _token: u64, _src: u64, _len: u64, _dst: u64) -> bool {
        false
    }
}

/// What [`Transport::take_templated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Templated {
    /// Took the frame; its payload length (now at the front of `dst`).
    Took(u64),
    /// Nothing is in the stream now.
    Empty,
    /// Another frame is next, or this one does not fit.
    Other,
    /// Not in one step (see [`TakeFrame::Slow`]).
    Slow,
}

/// What [`Transport::take_frame`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakeFrame {
    /// Took the frame: this many bytes went to the front of `dst`.
    Took(usize),
    /// Nothing is in the stream now.
    Empty,
    /// `pick` left the frame.
    Left,
    /// Not in one step: the caller reads the frame with the general calls (`available`,
    /// `peek`, `read`, `read_done`), which also report a corrupt stream.
    Slow,
}

/// How an offer to a peer to write a part of a pull ended ([`Transport::close_offer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Withdrawn before the peer took it: the part is the receiver's to pull.
    Withdrawn,
    /// The peer is writing the part now.
    Taken,
    /// The peer wrote the part.
    Written,
    /// The peer took the offer but could not write the part: the receiver pulls it.
    Failed,
}

/// Per world rank, its index among the ranks of rank `me`'s host (`hosts[r]` names rank
/// `r`'s host), or `None` when it is on another host.
pub(crate) fn local_indices<H: PartialEq>(hosts: &[H], me: usize) -> Vec<Option<usize>> {
    let mut n = 0;
    hosts
        .iter()
        .map(|h| {
            (*h == hosts[me]).then(|| {
                n += 1;
                n - 1
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_indices_number_a_hosts_ranks_in_rank_order() {
        let hosts = ["a", "b", "a", "c", "a", "b"];
        assert_eq!(
            super::local_indices(&hosts, 2),
            [Some(0), None, Some(1), None, Some(2), None]
        );
        assert_eq!(
            super::local_indices(&hosts, 5),
            [None, Some(0), None, None, None, Some(1)]
        );
    }
}
