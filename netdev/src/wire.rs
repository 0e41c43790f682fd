//! The in-memory wire: two Ethernet devices joined back to back, no root needed.
//!
//! Each end is one side of a Unix datagram socket pair, so a frame is one datagram, the
//! queue lives in the kernel and is bounded by the socket's send buffer, and each end has
//! a descriptor that is readable while frames wait: the driver waits on a wire exactly as
//! it waits on a TAP. When the far end's queue is full the frame is dropped (drop-tail)
//! and counted in the sender's `tx_dropped`.

use std::io;
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{setsockopt, sockopt};

use crate::fd::{FdDevice, FrameIo};

/// One end of a [`wire()`].
pub type WireEnd = FdDevice<UnixDatagram>;

/// How to build a [`wire()`].
#[derive(Debug, Clone)]
pub struct WireOptions {
    /// The IP MTU of both ends.
    pub mtu: usize,
    /// Bytes each direction may hold before frames are dropped. The kernel counts its
    /// own overhead too, so this holds somewhat fewer frames than `queue_bytes / mtu`.
    pub queue_bytes: usize,
}

impl Default for WireOptions {
    fn default() -> Self {
        WireOptions {
            mtu: 1500,
            queue_bytes: 256 * 1024,
        }
    }
}

impl FrameIo for UnixDatagram {
    fn recv_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }

    fn send_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.send(frame)
    }
}

/// Returns two connected Ethernet devices: what one transmits, the other receives.
///
/// # Errors
/// Only if the kernel refuses a socket pair (out of descriptors, say).
///
/// # Examples
/// ```
/// use netdev::{Device, Instant, WireOptions, wire};
/// use smoltcp::phy::{RxToken, TxToken};
///
/// let (mut a, mut b) = wire(&WireOptions::default())?;
/// let now = Instant::from_millis(0);
/// a.transmit(now).unwrap().consume(60, |frame| frame.fill(7));
/// let (rx, _tx) = b.receive(now).expect("the frame crossed the wire");
/// assert_eq!(rx.consume(|frame| frame.len()), 60);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn wire(options: &WireOptions) -> io::Result<(WireEnd, WireEnd)> {
    let (a, b) = UnixDatagram::pair()?;
    for end in [&a, &b] {
        end.set_nonblocking(true)?;
        // The kernel doubles what it is given, for its bookkeeping; ask for half.
        setsockopt(end, sockopt::SndBuf, &(options.queue_bytes / 2).max(1))
            .map_err(io::Error::from)?;
    }
    Ok((
        FdDevice::with_io(a, options.mtu),
        FdDevice::with_io(b, options.mtu),
    ))
}
