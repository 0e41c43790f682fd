//! Link devices: where Ethernet frames enter and leave a tapnet stack.
//!
//! Every device here is a [`smoltcp::phy::Device`] and also a [`Link`], the small extension
//! the stack's driver loop needs to sleep well: a file descriptor to wait on, the time at
//! which the device itself has work to do (a frame held back by a delay), and counters.
//!
//! Base devices move frames through a file descriptor, one `read`/`write` per frame into
//! buffers they reuse, so no frame costs a heap allocation:
//!
//! - [`Tap`]: a Linux TAP device, opened (or created) by name.
//! - [`wire()`]: two connected in-memory Ethernet devices. Everything in tapnet runs on
//!   it without root.
//!
//! Wrapping devices stack on any [`Link`], in the spirit of smoltcp's `phy` middleware,
//! so `Impair<Capture<Tap, PcapFile>>` is a TAP whose frames are recorded and then
//! impaired:
//!
//! - [`Capture`]: shows every frame, in both directions, to a [`FrameSink`]: a
//!   [`PcapFile`], a [`FrameLog`] that prints one line per frame, or both.
//! - [`Impair`]: netem-like loss, delay with jitter, reorder, duplication, corruption and
//!   a rate limit, per direction, seeded so a run can be repeated.
//!
//! [`describe`] turns a frame into one readable line ("ARP who-has 10.0.0.2 tell
//! 10.0.0.1"), for logs and demos.

mod capture;
mod describe;
mod fd;
mod impair;
mod pcap;
mod sys;
mod tap;
mod wire;

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use smoltcp::phy::Device;
pub use smoltcp::time::Instant;

pub use capture::{Capture, Direction, FrameLog, FrameSink};
pub use describe::{arp_of, describe};
pub use fd::FdDevice;
pub use impair::{
    DirectionStats, Impair, ImpairConfig, ImpairControl, ImpairStats, Impairment, parse_duration,
    parse_percent, parse_rate,
};
pub use pcap::PcapFile;
pub use tap::{Tap, TapOptions};
pub use wire::{WireEnd, WireOptions, wire};

/// Bytes of Ethernet header in front of every frame's payload (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// What the driver loop needs from a device beyond smoltcp's [`Device`].
///
/// The driver waits on [`Link::as_fd`] for readability and on [`Link::poll_at`] for the
/// device's own timers, whichever comes first, then calls [`Link::service`], lets the
/// interface receive and transmit, and finally calls [`Link::flush`].
pub trait Link: Device + Send {
    /// A descriptor that becomes readable when a frame may be waiting. Level-triggered:
    /// it stays readable while frames are queued.
    fn as_fd(&self) -> BorrowedFd<'_>;

    /// When the device next has work of its own, such as a delayed frame that falls due.
    /// `None` means it only ever has work when its descriptor is readable.
    fn poll_at(&self) -> Option<Instant> {
        None
    }

    /// Moves frames whose time has come (delayed transmissions, for one). Called once at
    /// the start of every pass of the driver loop.
    fn service(&mut self, _now: Instant) {}

    /// Pushes out anything buffered (a capture file, for one). Called at the end of every
    /// pass, before the driver sleeps.
    fn flush(&mut self) {}

    /// The base device's counters. Wrapping devices return their inner device's.
    fn counters(&self) -> &Arc<Counters>;

    /// Whether the descriptor has failed for good (its TAP was deleted, say): it then
    /// polls readable but every read fails, so the driver stops waiting on it rather
    /// than spin, and keeps serving timers and calls.
    fn is_broken(&self) -> bool {
        false
    }
}

/// Frame and byte counters of a base device, shared with whoever wants to read them.
///
/// Updated with relaxed atomics: each field is exact, a snapshot of several is not a
/// single instant.
#[derive(Debug, Default)]
pub struct Counters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Frames received from the link.
    pub rx_frames: u64,
    /// Bytes received from the link, Ethernet headers included.
    pub rx_bytes: u64,
    /// Frames handed to the link.
    pub tx_frames: u64,
    /// Bytes handed to the link, Ethernet headers included.
    pub tx_bytes: u64,
    /// Frames dropped on receive (truncated, or larger than the MTU allows).
    pub rx_dropped: u64,
    /// Frames dropped on transmit because the link's queue was full.
    pub tx_dropped: u64,
    /// Device I/O errors other than a full queue.
    pub errors: u64,
}

impl Counters {
    pub(crate) fn rx(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn tx(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn rx_drop(&self) {
        self.rx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tx_drop(&self) {
        self.tx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rx {} frames {} bytes, tx {} frames {} bytes, dropped rx {} tx {}, errors {}",
            self.rx_frames,
            self.rx_bytes,
            self.tx_frames,
            self.tx_bytes,
            self.rx_dropped,
            self.tx_dropped,
            self.errors
        )
    }
}
