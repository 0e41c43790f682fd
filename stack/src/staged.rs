//! Frames carried across the stack's lock: the driver reads a batch of frames from the
//! device before taking the lock, lets smoltcp process them under it through a
//! [`Staged`] device, and writes what smoltcp sent after letting the lock go. So no
//! system call happens while handles wait for the lock; under it there are only
//! smoltcp's work and a copy of each frame.

use std::cell::RefCell;
use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, Icmpv4Packet, IpProtocol, Ipv4Packet, checksum};

use crate::reassembly;

/// The frames of one pass, and spare buffers to reuse, so a pass allocates nothing once
/// warm.
#[derive(Default)]
pub(crate) struct Stage {
    /// Read from the device, waiting for smoltcp.
    pub(crate) rx: VecDeque<Vec<u8>>,
    /// Written by smoltcp, waiting for the device.
    pub(crate) tx: RefCell<Vec<Vec<u8>>>,
    spare: RefCell<Vec<Vec<u8>>>,
    /// Fragments of an ICMP datagram smoltcp is sending, held until its last one
    /// ([`mend_icmp_fragments`]).
    icmp_fragments: Vec<Vec<u8>>,
}

/// The most fragments one datagram takes: 65,535 bytes in pieces of at least 576's worth.
const MAX_FRAGMENTS: usize = 128;

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
        mend_icmp_fragments(self.tx.get_mut(), &mut self.icmp_fragments);
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

/// smoltcp (0.14) computes the checksum of an ICMP message it sends in fragments over its
/// whole fragmentation buffer, so bytes an earlier, longer datagram left there count too:
/// a ping reply after a longer one went out with a wrong checksum, and was dropped. The
/// fragments of an ICMP datagram are held here until its last one has been written, then
/// the checksum (RFC 792) is computed again over the message and set in the first.
/// Other frames go on at once.
fn mend_icmp_fragments(tx: &mut Vec<Vec<u8>>, held: &mut Vec<Vec<u8>>) {
    if !tx.iter().any(|frame| icmp_fragment(frame).is_some()) {
        return;
    }
    let mut out = Vec::with_capacity(tx.len());
    for frame in tx.drain(..) {
        let Some(last) = icmp_fragment(&frame) else {
            out.push(frame);
            continue;
        };
        held.push(frame);
        if last || held.len() >= MAX_FRAGMENTS {
            if last {
                set_icmp_checksum(held);
            }
            out.append(held);
        }
    }
    *tx = out;
}

/// Whether `frame` is a fragment of an IPv4 datagram carrying ICMP, and if so whether it
/// is the last (More Fragments clear).
fn icmp_fragment(frame: &[u8]) -> Option<bool> {
    if !reassembly::is_fragment(frame) {
        return None;
    }
    let ip = Ipv4Packet::new_checked(EthernetFrame::new_checked(frame).ok()?.payload()).ok()?;
    (ip.next_header() == IpProtocol::Icmp).then_some(!ip.more_frags())
}

/// Sets the ICMP checksum in the first of `fragments`, computed over all of them: the
/// fragments of one datagram, in order. Left as they are unless they tile it from 0.
fn set_icmp_checksum(fragments: &mut [Vec<u8>]) {
    let eth_len = EthernetFrame::<&[u8]>::header_len();
    let (mut next, mut ident) = (0, None);
    for frame in fragments.iter() {
        let Some(ip) = frame
            .get(eth_len..)
            .and_then(|ip| Ipv4Packet::new_checked(ip).ok())
        else {
            return;
        };
        if usize::from(ip.frag_offset()) != next || *ident.get_or_insert(ip.ident()) != ip.ident() {
            return; // Not the pieces of one datagram, in order.
        }
        next += ip.payload().len();
    }
    let Some(first) = fragments.first_mut() else {
        return;
    };
    let mut ip = Ipv4Packet::new_unchecked(&mut first[eth_len..]);
    if ip.payload_mut().len() < 8 {
        return;
    }
    // The sum is of the message with its checksum field zero. Every piece but the last
    // is a multiple of 8 bytes, so the pieces' sums combine as the whole's.
    Icmpv4Packet::new_unchecked(ip.payload_mut()).set_checksum(0);
    let sums: Vec<u16> = fragments
        .iter()
        .map(|frame| checksum::data(Ipv4Packet::new_unchecked(&frame[eth_len..]).payload()))
        .collect();
    let mut ip = Ipv4Packet::new_unchecked(&mut fragments[0][eth_len..]);
    Icmpv4Packet::new_unchecked(ip.payload_mut()).set_checksum(!checksum::combine(&sums));
}
