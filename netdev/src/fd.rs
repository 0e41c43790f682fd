//! The one frame-per-syscall device that [`crate::Tap`] and [`crate::wire()`] share.
//!
//! A frame descriptor here is anything that reads and writes whole frames: a TAP fd opened
//! without packet info, or one end of a Unix datagram socket pair. [`FdDevice`] puts
//! smoltcp's token interface on top, with one receive and one transmit buffer that it
//! reuses for every frame.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::{Counters, ETHERNET_HEADER_LEN, Link};

/// Largest frame a read may return; a longer one is dropped rather than truncated.
const RX_BUFFER_LEN: usize = 65_536;

/// Something that moves whole Ethernet frames through a non-blocking descriptor.
pub trait FrameIo: AsFd + Send {
    /// Reads one frame into `buf`, returning its length. `WouldBlock` when none is queued.
    fn recv_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame. `WouldBlock` (or `ENOBUFS`) when the queue is full.
    fn send_frame(&self, frame: &[u8]) -> io::Result<usize>;
}

/// A [`Device`] over a [`FrameIo`], reusing its buffers: no allocation per frame.
///
/// I/O errors never panic: a full queue counts as a transmit drop, anything else is
/// counted as an error and logged (the first one as a warning, the rest at debug level,
/// so a link that went down does not flood the log).
#[derive(Debug)]
pub struct FdDevice<T> {
    pub(crate) io: T,
    mtu: usize,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    counters: Arc<Counters>,
    broken: bool,
}

impl<T: FrameIo> FdDevice<T> {
    pub(crate) fn with_io(io: T, mtu: usize) -> Self {
        FdDevice {
            io,
            mtu,
            rx_buf: vec![0; RX_BUFFER_LEN],
            tx_buf: vec![0; mtu + ETHERNET_HEADER_LEN],
            counters: Arc::new(Counters::default()),
            broken: false,
        }
    }

    /// The IP MTU: the largest frame is this plus the 14-byte Ethernet header.
    pub fn mtu(&self) -> usize {
        self.mtu
    }
}

fn note_error(counters: &Counters, what: &str, err: &io::Error) {
    counters.error();
    if counters.snapshot().errors == 1 {
        log::warn!("{what}: {err} (further device errors are logged at debug level)");
    } else {
        log::debug!("{what}: {err}");
    }
}

impl<T: FrameIo> Device for FdDevice<T> {
    type RxToken<'a>
        = RxToken<'a>
    where
        T: 'a;
    type TxToken<'a>
        = TxToken<'a, T>
    where
        T: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_, T>)> {
        if self.broken {
            return None;
        }
        let max = self.mtu + ETHERNET_HEADER_LEN;
        loop {
            match self.io.recv_frame(&mut self.rx_buf) {
                Ok(0) => return None,
                Ok(n) if n > max => {
                    // Larger than our MTU: the stack could not have asked for it.
                    self.counters.rx_drop();
                    log::debug!("dropped a {n}-byte frame: larger than MTU {}", self.mtu);
                }
                Ok(n) => {
                    self.counters.rx(n);
                    let rx = RxToken {
                        frame: &self.rx_buf[..n],
                    };
                    let tx = TxToken {
                        io: &self.io,
                        buf: &mut self.tx_buf,
                        counters: &self.counters,
                    };
                    return Some((rx, tx));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    note_error(&self.counters, "device read", &e);
                    if is_permanent(&e) && !self.broken {
                        log::error!("device read: {e}: the device is gone; no longer reading it");
                        self.broken = true;
                    }
                    return None;
                }
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_, T>> {
        Some(TxToken {
            io: &self.io,
            buf: &mut self.tx_buf,
            counters: &self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER_LEN;
        caps
    }
}

impl<T: FrameIo> Link for FdDevice<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }

    fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    fn is_broken(&self) -> bool {
        self.broken
    }
}

/// Read errors that no retry can cure: the descriptor's device no longer exists.
fn is_permanent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::ENXIO | libc::ENODEV)
    )
}

/// A received frame, borrowed from the device's receive buffer.
pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Permission to send one frame, built in the device's transmit buffer.
pub struct TxToken<'a, T> {
    io: &'a T,
    buf: &'a mut Vec<u8>,
    counters: &'a Counters,
}

impl<T: FrameIo> phy::TxToken for TxToken<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if len > self.buf.len() {
            // smoltcp keeps to the MTU we report; grow rather than fail if it ever doesn't.
            self.buf.resize(len, 0);
        }
        let frame = &mut self.buf[..len];
        let result = f(frame);
        match self.io.send_frame(frame) {
            Ok(_) => self.counters.tx(len),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(nix::libc::ENOBUFS) =>
            {
                self.counters.tx_drop()
            }
            Err(e) => note_error(self.counters, "device write", &e),
        }
        result
    }
}
