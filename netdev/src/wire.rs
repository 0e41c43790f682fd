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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Instant, Link};
    use smoltcp::phy::{RxToken, TxToken};

    #[test]
    fn a_full_queue_drops_the_tail_and_counts_it() {
        let options = WireOptions {
            mtu: 1500,
            queue_bytes: 64 * 1024,
        };
        let (mut a, mut b) = wire(&options).unwrap();
        let now = Instant::from_millis(0);
        let mut sent = 0u32;
        // Bounded: a 64 KiB queue fills long before 10,000 full-size frames.
        while a.counters().snapshot().tx_dropped == 0 && sent < 10_000 {
            a.transmit(now)
                .unwrap()
                .consume(1514, |f| f[..4].copy_from_slice(&sent.to_be_bytes()));
            sent += 1;
        }
        let sa = a.counters().snapshot();
        assert_eq!(sa.tx_dropped, 1, "no drop after {sent} frames");
        assert!(
            sa.tx_frames >= 10,
            "the queue held only {} frames",
            sa.tx_frames
        );
        // What was queued arrives whole and in order; the dropped frame is the last one.
        let mut received = 0u32;
        while let Some((rx, _)) = b.receive(now) {
            rx.consume(|f| {
                assert_eq!(f.len(), 1514);
                assert_eq!(f[..4], received.to_be_bytes());
            });
            received += 1;
        }
        assert_eq!(u64::from(received), sa.tx_frames);
        assert_eq!(b.counters().snapshot().rx_frames, sa.tx_frames);
        // Drained, the queue takes frames again.
        a.transmit(now).unwrap().consume(60, |f| f.fill(1));
        assert_eq!(a.counters().snapshot().tx_frames, sa.tx_frames + 1);
    }

    #[test]
    fn frames_over_the_mtu_are_dropped_on_receive() {
        let (mut a, mut b) = wire(&WireOptions {
            mtu: 1500,
            ..WireOptions::default()
        })
        .unwrap();
        let now = Instant::from_millis(0);
        // The sender's own buffer grows rather than fail; the receiver refuses the frame.
        a.transmit(now).unwrap().consume(1600, |f| f.fill(0));
        assert!(b.receive(now).is_none());
        assert_eq!(b.counters().snapshot().rx_dropped, 1);
    }
}
