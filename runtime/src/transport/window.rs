//! A cap on QUIC's congestion window.
//!
//! With a socket receive buffer large enough that a large message's burst is not dropped
//! (`quic.rs`, `receive_buffer`), nothing stops Cubic's window from growing to megabytes
//! between two hosts of a fast network: the data in flight then outgrows the caches, and
//! the copies of it (the sender's, quinn's, the receiver's) run from memory. 1 GiB streams
//! between two network namespaces were 10-15 % slower than with the kernel's small default
//! buffer, whose drops kept the window down (at the price of mid-size latency). [`Capped`]
//! wraps quinn's Cubic and reports at most `cap` bytes as the window; everything else is
//! Cubic's. With a cap of 1 MiB: 1159-1361 MB/s against 1056-1242 uncapped, in alternating
//! runs, and the same latency.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// The congestion controllers of QUIC connections: Cubic, its window at most `cap` bytes
/// (`RANKS_QUIC_WINDOW`), or Cubic alone for `None`.
pub(crate) fn congestion(cap: Option<u64>) -> Arc<dyn ControllerFactory + Send + Sync> {
    let cubic = Arc::new(CubicConfig::default());
    match cap {
        Some(cap) => Arc::new(CappedCubic { cap, cubic }),
        None => cubic,
    }
}

/// Builds Cubic controllers whose window is at most `cap` bytes.
pub(crate) struct CappedCubic {
    pub(crate) cap: u64,
    pub(crate) cubic: Arc<CubicConfig>,
}

impl ControllerFactory for CappedCubic {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Capped {
            inner: self.cubic.clone().build(now, current_mtu),
            cap: self.cap,
        })
    }
}

/// A controller whose window is its inner one's, at most `cap`.
pub(crate) struct Capped {
    inner: Box<dyn Controller>,
    cap: u64,
}

impl Controller for Capped {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().min(self.cap)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Capped {
            inner: self.inner.clone_box(),
            cap: self.cap,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().min(self.cap)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(cap: u64) -> Box<dyn Controller> {
        let f = Arc::new(CappedCubic {
            cap,
            cubic: Arc::new(CubicConfig::default()),
        });
        f.build(Instant::now(), 1200)
    }

    /// The window is Cubic's, at most the cap: capped while Cubic's is larger, Cubic's own
    /// once a loss brings it below.
    #[test]
    fn the_window_is_cubics_at_most_the_cap() {
        let plain = Arc::new(CubicConfig::default()).build(Instant::now(), 1200);
        let initial = plain.window();
        assert_eq!(capped(u64::MAX).window(), initial);
        let mut c = capped(initial - 1000);
        assert_eq!(c.window(), initial - 1000);
        assert_eq!(c.initial_window(), initial - 1000);
        assert_eq!(c.metrics().congestion_window, initial - 1000);
        let now = Instant::now();
        c.on_congestion_event(now, now, false, 1200);
        assert!(c.window() < initial - 1000, "a loss halves Cubic's window");
        assert_eq!(c.clone_box().window(), c.window());
    }

    /// `RANKS_QUIC_WINDOW`'s cap reaches the controllers connections are built with; no
    /// cap builds Cubic's own.
    #[test]
    fn connections_get_the_window_cap_they_are_told() {
        let build = |cap| congestion(cap).build(Instant::now(), 1200).into_any();
        let c = build(Some(3 << 20)).downcast::<Capped>().expect("capped");
        assert_eq!(c.cap, 3 << 20);
        assert!(build(None).downcast::<Capped>().is_err(), "Cubic alone");
    }
}
