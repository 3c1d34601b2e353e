//! Bigger UDP sends for QUIC.
//!
//! quinn hands its socket at most ten datagrams per send (one UDP GSO send: a constant of
//! quinn's), and the kernel's cost of a send is mostly per send, not per byte: a stream of
//! 1 MiB messages spent a third of the sender's time in `sendmsg`, most of it carrying those
//! ten datagrams through the network stack to the receiving socket. [`Joining`] wraps the
//! endpoint's socket and joins consecutive full batches for one destination into one send of
//! up to 64 KiB (the most one UDP GSO send may carry).
//!
//! A batch that cannot grow (a short last datagram, a single datagram, another destination)
//! goes out at once, after what is held: small messages are not delayed and datagrams keep
//! their order. Full batches wait in the wrapper while quinn makes more; a task of the
//! runtime, woken by the first of them, sends what is held once a turn of the runtime's
//! tasks went by without adding to it, so what is held leaves when quinn stops, in the same
//! drive of the runtime.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most UDP payload one send may carry (IPv4's limit, less headers, rounded down).
const MAX_SEND: usize = 65_000;

/// Full batches held for one send: their bytes and where they go.
#[derive(Default)]
struct Held {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
    /// Datagram size of the held batches.
    seg: usize,
    /// Bumped at every join: the flusher sends once a turn went by without one.
    joins: u64,
}

impl Held {
    /// Whether `t`, a batch of datagrams of `seg` bytes, can be added to what is held.
    fn takes(&self, t: &Transmit<'_>, seg: usize, most: usize) -> bool {
        self.buf.is_empty()
            || (self.to == Some(t.destination)
                && self.ecn == t.ecn
                && self.src_ip == t.src_ip
                && self.seg == seg
                && self.buf.len() + t.contents.len() <= most)
    }
}

/// A socket that joins quinn's full batches into bigger sends (see the module's comment).
pub(crate) struct Joining {
    inner: Arc<dyn AsyncUdpSocket>,
    held: Mutex<Held>,
    /// Wakes the flusher when batches start to be held.
    held_some: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for Joining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Joining")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Joining {
    /// Wrap `inner`, and start its flusher on the current tokio runtime.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<Joining> {
        let j = Arc::new(Joining {
            inner,
            held: Mutex::new(Held::default()),
            held_some: Arc::new(tokio::sync::Notify::new()),
        });
        tokio::spawn(flusher(Arc::downgrade(&j), j.held_some.clone()));
        j
    }

    /// The most bytes one send of datagrams of `seg` bytes may carry: 0 when sends of
    /// several datagrams are not to be joined (the socket cannot send two at once).
    fn most(&self, seg: usize) -> usize {
        let n = self
            .inner
            .max_transmit_segments()
            .min(MAX_SEND / seg.max(1));
        if n < 2 {
            0
        } else {
            n * seg
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send what is held, if anything. On `WouldBlock` it stays held; on another error it is
    /// dropped (quinn counts those datagrams lost and sends their data again).
    fn send_held(&self, h: &mut Held) -> io::Result<()> {
        if h.buf.is_empty() {
            return Ok(());
        }
        let Some(to) = h.to else {
            h.buf.clear();
            return Ok(());
        };
        let t = Transmit {
            destination: to,
            ecn: h.ecn,
            contents: &h.buf,
            segment_size: (h.buf.len() > h.seg).then_some(h.seg),
            src_ip: h.src_ip,
        };
        match self.inner.try_send(&t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            r => {
                h.buf.clear();
                r
            }
        }
    }
}

impl AsyncUdpSocket for Joining {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let mut h = self.lock();
        let seg = t.segment_size.unwrap_or(t.contents.len());
        let most = self.most(seg);
        // A batch of datagrams of `seg` bytes (the last may be shorter) that one send can
        // carry with others.
        let joinable = t.segment_size.is_some() && most != 0 && t.contents.len() <= most;
        if !joinable || !h.takes(t, seg, most) {
            // What is held leaves first (on `WouldBlock`, quinn tries `t` again later, and
            // this comes first then).
            self.send_held(&mut h)?;
        }
        if !joinable {
            return self.inner.try_send(t);
        }
        let before = h.buf.len();
        if before == 0 {
            (h.to, h.ecn, h.src_ip, h.seg) = (Some(t.destination), t.ecn, t.src_ip, seg);
        }
        h.buf.extend_from_slice(t.contents);
        h.joins += 1;
        if !t.contents.len().is_multiple_of(seg) || h.buf.len() + seg > most {
            // A short last datagram ends the batch, or there is no room for another: send.
            if let Err(e) = self.send_held(&mut h) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    // Give `t` back to quinn, to be tried again.
                    h.buf.truncate(before);
                }
                return Err(e);
            }
        } else if before == 0 {
            self.held_some.notify_one();
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Sends what is held once a turn of the runtime's tasks adds nothing to it; waits for the
/// socket when it would block. Ends with the socket.
async fn flusher(j: Weak<Joining>, held_some: Arc<tokio::sync::Notify>) {
    loop {
        held_some.notified().await;
        loop {
            let Some(s) = j.upgrade() else { return };
            let joins = s.lock().joins;
            drop(s);
            tokio::task::yield_now().await;
            let Some(s) = j.upgrade() else { return };
            let sent = {
                let mut h = s.lock();
                if h.joins != joins {
                    continue; // quinn is still adding: let it
                }
                s.send_held(&mut h)
            };
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut poller = s.inner.clone().create_io_poller();
                    drop(s);
                    if std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                        .await
                        .is_err()
                    {
                        if let Some(s) = j.upgrade() {
                            s.lock().buf.clear();
                        }
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!("a joined UDP send failed: {e}");
                    break;
                }
                Ok(()) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// A send: where to, the bytes, the datagram size.
    type Sent = (SocketAddr, Vec<u8>, Option<usize>);

    /// A socket that records what it is asked to send, and refuses (`WouldBlock`) the next
    /// `refuse` sends.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Mutex<Vec<Sent>>,
        refuse: AtomicUsize,
        segments: usize,
    }

    #[derive(Debug)]
    struct Ready;

    impl UdpPoller for Ready {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Recorder {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(Ready)
        }
        fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
            if self
                .refuse
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let sent = (t.destination, t.contents.to_vec(), t.segment_size);
            self.sent.lock().unwrap().push(sent);
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context<'_>,
            _: &mut [io::IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:1".parse().unwrap())
        }
        fn max_transmit_segments(&self) -> usize {
            self.segments
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn joining(segments: usize) -> (Arc<Recorder>, Arc<Joining>) {
        let rec = Arc::new(Recorder {
            segments,
            ..Recorder::default()
        });
        (rec.clone(), Joining::new(rec))
    }

    /// `n` datagrams of `seg` bytes (the last `last` bytes), numbered from `from`.
    fn batch(from: u8, n: usize, seg: usize, last: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let len = if i + 1 == n { last } else { seg };
                std::iter::repeat_n(from + i as u8, len)
            })
            .collect()
    }

    fn send(j: &Joining, to: SocketAddr, data: &[u8], seg: Option<usize>) -> io::Result<()> {
        j.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: seg,
            src_ip: None,
        })
    }

    const A: &str = "10.0.0.1:5";
    const B: &str = "10.0.0.2:5";

    /// Full batches are joined into sends of up to 64 KiB; a short last datagram sends them
    /// at once; every byte leaves once, in order, with the datagram size.
    #[test]
    fn full_batches_join_and_a_short_one_ends_them() {
        rt().block_on(async {
            let (rec, j) = joining(64);
            let a: SocketAddr = A.parse().unwrap();
            let mut all = Vec::new();
            for k in 0..5u8 {
                let b = batch(k * 10, 10, 1400, 1400);
                send(&j, a, &b, Some(1400)).unwrap();
                all.extend(b);
            }
            // 46 datagrams of 1400 bytes fit in 65,000: the fifth batch did not fit with
            // the first four, which left when it came.
            let sent = rec.sent.lock().unwrap().clone();
            assert_eq!(sent.len(), 1);
            assert_eq!((sent[0].1.len(), sent[0].2), (40 * 1400, Some(1400)));
            let end = batch(50, 3, 1400, 700);
            send(&j, a, &end, Some(1400)).unwrap();
            all.extend(end);
            let sent = rec.sent.lock().unwrap().clone();
            assert_eq!(sent.len(), 2, "the short last datagram ends the batch");
            assert_eq!(sent[1].1.len(), 10 * 1400 + 2 * 1400 + 700);
            let bytes: Vec<u8> = sent.into_iter().flat_map(|s| s.1).collect();
            assert_eq!(bytes, all);
        });
    }

    /// A single datagram, or a batch for another destination, goes after what is held.
    #[test]
    fn what_is_held_goes_first() {
        rt().block_on(async {
            let (rec, j) = joining(64);
            let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
            send(&j, a, &batch(0, 10, 1200, 1200), Some(1200)).unwrap();
            send(&j, a, &[99; 40], None).unwrap();
            send(&j, a, &batch(10, 10, 1200, 1200), Some(1200)).unwrap();
            send(&j, b, &batch(20, 10, 1200, 1200), Some(1200)).unwrap();
            let sent = rec.sent.lock().unwrap().clone();
            let got: Vec<(SocketAddr, usize, u8)> =
                sent.iter().map(|s| (s.0, s.1.len(), s.1[0])).collect();
            assert_eq!(got, [(a, 12000, 0), (a, 40, 99), (a, 12000, 10)]);
            assert_eq!(sent[1].2, None);
        });
    }

    /// Held batches leave once a turn of the runtime's tasks adds nothing to them.
    #[test]
    fn the_flusher_sends_what_is_held_when_quinn_stops() {
        rt().block_on(async {
            let (rec, j) = joining(64);
            let a: SocketAddr = A.parse().unwrap();
            send(&j, a, &batch(0, 10, 1300, 1300), Some(1300)).unwrap();
            tokio::task::yield_now().await;
            // Still adding: the flusher lets it.
            send(&j, a, &batch(10, 10, 1300, 1300), Some(1300)).unwrap();
            assert!(rec.sent.lock().unwrap().is_empty());
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            let sent = rec.sent.lock().unwrap().clone();
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].1, batch(0, 20, 1300, 1300));
        });
    }

    /// A send the socket refuses is given back to quinn whole, and nothing is lost or sent
    /// twice when quinn tries again.
    #[test]
    fn a_refused_send_is_given_back() {
        rt().block_on(async {
            let (rec, j) = joining(64);
            let a: SocketAddr = A.parse().unwrap();
            let first = batch(0, 10, 1400, 1400);
            send(&j, a, &first, Some(1400)).unwrap();
            let end = batch(10, 2, 1400, 100);
            rec.refuse.store(1, SeqCst);
            let e = send(&j, a, &end, Some(1400)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            send(&j, a, &end, Some(1400)).unwrap();
            let sent = rec.sent.lock().unwrap().clone();
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].1, [first, end].concat());
            // A refused single datagram after held batches: the batches stay held.
            send(&j, a, &batch(20, 10, 1400, 1400), Some(1400)).unwrap();
            rec.refuse.store(1, SeqCst);
            assert!(send(&j, a, &[7; 10], None).is_err());
            send(&j, a, &[7; 10], None).unwrap();
            let sent = rec.sent.lock().unwrap().clone();
            assert_eq!(sent.len(), 3);
            assert_eq!((sent[1].1.len(), &sent[2].1[..]), (14000, &[7u8; 10][..]));
        });
    }

    /// A socket that sends one datagram at a time gets quinn's transmits as they are.
    #[test]
    fn nothing_is_joined_for_a_socket_without_gso() {
        rt().block_on(async {
            let (rec, j) = joining(1);
            let a: SocketAddr = A.parse().unwrap();
            send(&j, a, &[1; 1200], Some(1200)).unwrap();
            send(&j, a, &[2; 1200], Some(1200)).unwrap();
            assert_eq!(rec.sent.lock().unwrap().len(), 2);
        });
    }
}
