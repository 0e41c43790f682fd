//! Frames carried across the stack's lock: the driver reads a batch of frames from the
//! device before taking the lock, lets smoltcp process them under it through a
//! [`Staged`] device, and writes what smoltcp sent after letting the lock go. So no
//! system call happens while handles wait for the lock; under it there are only
//! smoltcp's work and a copy of each frame.

use std::cell::RefCell;
use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant;

/// The frames of one pass, and spare buffers to reuse, so a pass allocates nothing once
/// warm.
#[derive(Default)]
pub(crate) struct Stage {
    /// Read from the device, waiting for smoltcp.
    pub(crate) rx: VecDeque<Vec<u8>>,
    /// Written by smoltcp, waiting for the device.
    pub(crate) tx: RefCell<Vec<Vec<u8>>>,
    spare: RefCell<Vec<Vec<u8>>>,
}

impl Stage {
    /// Reads up to `max` frames from `device`. Returns how many.
    pub(crate) fn read_from<D: Device>(
        &mut self,
        device: &mut D,
        now: Instant,
        max: usize,
    ) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some((token, _)) = device.receive(now) else {
                break;
            };
            let mut buf = self.spare.get_mut().pop().unwrap_or_default();
            phy::RxToken::consume(token, |frame| {
                buf.clear();
                buf.extend_from_slice(frame);
            });
            self.rx.push_back(buf);
            taken += 1;
        }
        taken
    }

    /// Writes every frame smoltcp sent to `device`, in order. Returns how many were
    /// refused (a device that has no room drops them, as a full link would).
    pub(crate) fn write_to<D: Device>(&mut self, device: &mut D, now: Instant) -> usize {
        let mut refused = 0;
        let spare = self.spare.get_mut();
        for buf in self.tx.get_mut().drain(..) {
            match device.transmit(now) {
                Some(token) => {
                    phy::TxToken::consume(token, buf.len(), |out| out.copy_from_slice(&buf))
                }
                None => refused += 1,
            }
            spare.push(buf);
        }
        refused
    }

    /// The device smoltcp sees while the lock is held.
    pub(crate) fn device<'a>(&'a mut self, caps: &'a DeviceCapabilities) -> Staged<'a> {
        Staged {
            rx: &mut self.rx,
            tx: &self.tx,
            spare: &self.spare,
            caps,
        }
    }
}

/// A device whose frames are already read, and whose transmissions are kept for later.
pub(crate) struct Staged<'a> {
    rx: &'a mut VecDeque<Vec<u8>>,
    tx: &'a RefCell<Vec<Vec<u8>>>,
    spare: &'a RefCell<Vec<Vec<u8>>>,
    caps: &'a DeviceCapabilities,
}

impl Device for Staged<'_> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((
            RxToken {
                frame,
                spare: self.spare,
            },
            TxToken {
                tx: self.tx,
                spare: self.spare,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: self.tx,
            spare: self.spare,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// A frame read before the lock was taken.
pub(crate) struct RxToken<'a> {
    frame: Vec<u8>,
    spare: &'a RefCell<Vec<Vec<u8>>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(&self.frame);
        self.spare.borrow_mut().push(self.frame);
        result
    }
}

/// Room for a frame that is written once the lock is let go.
pub(crate) struct TxToken<'a> {
    tx: &'a RefCell<Vec<Vec<u8>>>,
    spare: &'a RefCell<Vec<Vec<u8>>>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.spare.borrow_mut().pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let result = f(&mut buf);
        self.tx.borrow_mut().push(buf);
        result
    }
}
