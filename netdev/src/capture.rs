//! [`Capture`]: a wrapping device that shows every frame, in both directions, to a sink.
//!
//! The sink sees a received frame before the stack does and a transmitted frame as the
//! stack finished building it, so a capture under an [`crate::Impair`] records what the
//! link really carried. Sinks combine: `(PcapFile, FrameLog<_>)` writes a file and prints
//! lines, and `Option<S>` is a sink that may be switched off.

use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant;

use crate::{Counters, Link};

/// Which way a frame crossed the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the link into the stack.
    In,
    /// From the stack onto the link.
    Out,
}

impl Direction {
    /// An arrow for one-line logs: `<` for in, `>` for out.
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::In => "<",
            Direction::Out => ">",
        }
    }
}

/// Receives every frame a [`Capture`] sees.
pub trait FrameSink: Send {
    /// Called once per frame. Must not fail: a sink that cannot keep up drops or logs.
    fn frame(&mut self, direction: Direction, frame: &[u8]);
    /// Called at the end of every driver pass, before it sleeps.
    fn flush(&mut self) {}
}

impl<S: FrameSink> FrameSink for Option<S> {
    fn frame(&mut self, direction: Direction, frame: &[u8]) {
        if let Some(sink) = self {
            sink.frame(direction, frame);
        }
    }

    fn flush(&mut self) {
        if let Some(sink) = self {
            sink.flush();
        }
    }
}

impl<S: FrameSink + ?Sized> FrameSink for Box<S> {
    fn frame(&mut self, direction: Direction, frame: &[u8]) {
        (**self).frame(direction, frame);
    }

    fn flush(&mut self) {
        (**self).flush();
    }
}

impl<A: FrameSink, B: FrameSink> FrameSink for (A, B) {
    fn frame(&mut self, direction: Direction, frame: &[u8]) {
        self.0.frame(direction, frame);
        self.1.frame(direction, frame);
    }

    fn flush(&mut self) {
        self.0.flush();
        self.1.flush();
    }
}

/// A sink that calls a function for every frame: to print [`crate::describe`] lines, say.
pub struct FrameLog<F>(pub F);

impl<F: FnMut(Direction, &[u8]) + Send> FrameSink for FrameLog<F> {
    fn frame(&mut self, direction: Direction, frame: &[u8]) {
        (self.0)(direction, frame);
    }
}

/// A device that shows its inner device's frames to a [`FrameSink`].
///
/// # Examples
/// ```
/// use netdev::{Capture, FrameLog, WireOptions, describe, wire};
///
/// let (a, _b) = wire(&WireOptions::default())?;
/// let logged = Capture::new(a, FrameLog(|dir: netdev::Direction, frame: &[u8]| {
///     println!("{} {}", dir.arrow(), describe(frame));
/// }));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Capture<D, S> {
    inner: D,
    sink: RefCell<S>,
}

impl<D: Link, S: FrameSink> Capture<D, S> {
    /// Wraps `inner`, showing its frames to `sink`.
    pub fn new(inner: D, sink: S) -> Self {
        Capture {
            inner,
            sink: RefCell::new(sink),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Unwraps the device and the sink.
    pub fn into_parts(self) -> (D, S) {
        (self.inner, self.sink.into_inner())
    }
}

impl<D: Link, S: FrameSink> Device for Capture<D, S> {
    type RxToken<'a>
        = RxToken<'a, D::RxToken<'a>, S>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D::TxToken<'a>, S>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (rx, tx) = self.inner.receive(timestamp)?;
        let sink = &self.sink;
        Some((RxToken { inner: rx, sink }, TxToken { inner: tx, sink }))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let tx = self.inner.transmit(timestamp)?;
        Some(TxToken {
            inner: tx,
            sink: &self.sink,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<D: Link, S: FrameSink> Link for Capture<D, S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }

    fn poll_at(&self) -> Option<Instant> {
        self.inner.poll_at()
    }

    fn service(&mut self, now: Instant) {
        self.inner.service(now);
    }

    fn flush(&mut self) {
        self.inner.flush();
        self.sink.get_mut().flush();
    }

    fn counters(&self) -> &Arc<Counters> {
        self.inner.counters()
    }

    fn is_broken(&self) -> bool {
        self.inner.is_broken()
    }
}

/// A received frame, shown to the sink as it is consumed.
pub struct RxToken<'a, T, S> {
    inner: T,
    sink: &'a RefCell<S>,
}

impl<T: phy::RxToken, S: FrameSink> phy::RxToken for RxToken<'_, T, S> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let sink = self.sink;
        self.inner.consume(|frame| {
            sink.borrow_mut().frame(Direction::In, frame);
            f(frame)
        })
    }

    fn meta(&self) -> phy::PacketMeta {
        self.inner.meta()
    }
}

/// A frame to send, shown to the sink once the stack has built it.
pub struct TxToken<'a, T, S> {
    inner: T,
    sink: &'a RefCell<S>,
}

impl<T: phy::TxToken, S: FrameSink> phy::TxToken for TxToken<'_, T, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let sink = self.sink;
        self.inner.consume(len, |frame| {
            let result = f(frame);
            sink.borrow_mut().frame(Direction::Out, frame);
            result
        })
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.inner.set_meta(meta);
    }
}
