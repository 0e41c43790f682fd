//! IPv4 reassembly (RFC 791 §3.2; RFC 1122 §3.3.2 makes it a MUST for hosts), done by the
//! driver's watch before smoltcp sees a frame, so that a reassembled TCP segment meets the
//! same screens as any other (see `watch.rs`). smoltcp itself is built without it.
//!
//! Fragments are the classic way to slip past a filter or to pin a host's memory, so:
//!
//! - at most [`MAX_DATAGRAMS`] datagrams are in progress at once (a new one evicts the
//!   oldest), each of at most 65,535 bytes, and each is given up [`TIMEOUT`] after its
//!   first fragment (Linux's `ipfrag_time`);
//! - fragments that overlap discard their whole datagram (RFC 1858 §4's overlap attack;
//!   Linux does the same, as RFC 5722 asks of IPv6); an exact duplicate is ignored;
//! - a TCP fragment at offset 8 is dropped (RFC 1858 §4: it can only serve to rewrite
//!   the TCP flags of the first fragment);
//! - a fragment other than the last must carry a multiple of 8 bytes (RFC 791), and
//!   the IPv4 header checksum must be right.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet};

/// Datagrams reassembled at once, at most.
pub(crate) const MAX_DATAGRAMS: usize = 16;
/// How long a datagram may take to arrive whole, from its first fragment.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest IPv4 datagram.
const MAX_LEN: usize = 65_535;

/// Whether `frame` carries an IPv4 fragment (more to come, or not the first).
pub(crate) fn is_fragment(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    Ipv4Packet::new_checked(eth.payload()).is_ok_and(|ip| ip.more_frags() || ip.frag_offset() != 0)
}

/// The datagrams in progress.
#[derive(Default)]
pub(crate) struct Reassembly {
    datagrams: Vec<Datagram>,
}

/// (source, destination, protocol, identification): what names a datagram (RFC 791).
type Key = (Ipv4Addr, Ipv4Addr, IpProtocol, u16);

struct Datagram {
    key: Key,
    started: Instant,
    /// The Ethernet and IPv4 headers of the first fragment, once it arrived.
    headers: Option<Vec<u8>>,
    /// The payload so far, by offset.
    data: Vec<u8>,
    /// The byte ranges that arrived, sorted and disjoint.
    have: Vec<(usize, usize)>,
    /// The payload's length, once the last fragment told it.
    len: Option<usize>,
}

impl Reassembly {
    /// Takes the Ethernet frame of an IPv4 fragment; returns the frame of the whole
    /// datagram once its last missing fragment arrived. Anything malformed is dropped.
    pub(crate) fn fragment(&mut self, frame: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.datagrams
            .retain(|d| now.saturating_duration_since(d.started) < TIMEOUT);
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if !ip.verify_checksum() {
            return None;
        }
        let (offset, payload) = (usize::from(ip.frag_offset()), ip.payload());
        let end = offset + payload.len();
        let key = (ip.src_addr(), ip.dst_addr(), ip.next_header(), ip.ident());
        let malformed = (ip.more_frags() && (payload.is_empty() || payload.len() % 8 != 0))
            || (key.2 == IpProtocol::Tcp && offset == 8)
            || usize::from(ip.header_len()) + end > MAX_LEN;
        if malformed {
            log::debug!("dropped a malformed IPv4 fragment from {}", key.0);
            return None;
        }
        let at = match self.datagrams.iter().position(|d| d.key == key) {
            Some(at) => at,
            None => {
                if self.datagrams.len() == MAX_DATAGRAMS {
                    self.datagrams.remove(0); // The oldest.
                }
                self.datagrams.push(Datagram {
                    key,
                    started: now,
                    headers: None,
                    data: Vec::new(),
                    have: Vec::new(),
                    len: None,
                });
                self.datagrams.len() - 1
            }
        };
        let datagram = &mut self.datagrams[at];
        if datagram.have.contains(&(offset, end)) {
            return None; // An exact duplicate.
        }
        let overlaps = datagram.have.iter().any(|&(s, e)| offset < e && s < end);
        let past_end = datagram.len.is_some_and(|len| end > len)
            || (!ip.more_frags() && datagram.have.iter().any(|&(_, e)| e > end))
            || (!ip.more_frags() && datagram.len.is_some());
        if overlaps || past_end {
            log::debug!(
                "discarded an IPv4 datagram from {} with overlapping fragments",
                key.0
            );
            self.datagrams.remove(at);
            return None;
        }
        if datagram.data.len() < end {
            datagram.data.resize(end, 0);
        }
        datagram.data[offset..end].copy_from_slice(payload);
        let i = datagram.have.partition_point(|&(s, _)| s < offset);
        datagram.have.insert(i, (offset, end));
        if offset == 0 {
            let headers = frame.len() - eth.payload().len() + usize::from(ip.header_len());
            datagram.headers = Some(frame[..headers].to_vec());
        }
        if !ip.more_frags() {
            datagram.len = Some(end);
        }
        let whole = datagram.len.filter(|&len| {
            datagram.headers.is_some()
                && datagram.have.first().is_some_and(|&(s, _)| s == 0)
                && datagram.have.windows(2).all(|w| w[0].1 == w[1].0)
                && datagram.have.last().is_some_and(|&(_, e)| e == len)
        })?;
        let datagram = self.datagrams.remove(at);
        let mut out = datagram.headers?;
        let eth_len = frame.len() - eth.payload().len();
        let ip_len = out.len().checked_sub(eth_len)?;
        if ip_len + whole > MAX_LEN {
            return None; // The first fragment's header is longer than the last one's.
        }
        out.extend_from_slice(&datagram.data[..whole]);
        let mut ip = Ipv4Packet::new_unchecked(&mut out[eth_len..]);
        ip.set_total_len((ip_len + whole) as u16);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        ip.fill_checksum();
        Some(out)
    }

    /// Datagrams in progress.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.datagrams.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{EthernetAddress, EthernetRepr, Ipv4Repr};

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// An Ethernet frame holding one IPv4 datagram from `src` to `dst` with `payload`
    /// (identification 0x1234); `payload` is written by `fill` into a buffer of `len`
    /// bytes, given the addresses (a TCP checksum needs them).
    pub(crate) fn ipv4_frame(
        (src, dst): (Ipv4Addr, Ipv4Addr),
        protocol: IpProtocol,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: protocol,
            payload_len: len,
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0; eth.buffer_len() + ip.buffer_len() + len];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        packet.set_ident(0x1234);
        fill(packet.payload_mut());
        packet.fill_checksum();
        buf
    }

    /// A whole datagram of `payload` as a frame.
    fn datagram(protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
        ipv4_frame((SRC, DST), protocol, payload.len(), |p| {
            p.copy_from_slice(payload)
        })
    }

    /// The fragment of `whole` holding its payload bytes `range`.
    fn piece(whole: &[u8], range: std::ops::Range<usize>, more: bool) -> Vec<u8> {
        let mut out = whole[..34].to_vec();
        out.extend_from_slice(&whole[34 + range.start..34 + range.end]);
        let mut ip = Ipv4Packet::new_unchecked(&mut out[14..]);
        ip.set_total_len((20 + range.len()) as u16);
        ip.set_more_frags(more);
        ip.set_frag_offset(range.start as u16);
        ip.fill_checksum();
        out
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7) as u8).collect()
    }

    #[test]
    fn fragments_in_any_order_make_the_datagram_again() {
        let whole = datagram(IpProtocol::Udp, &payload(100));
        let now = Instant::now();
        let mut r = Reassembly::default();
        assert!(is_fragment(&piece(&whole, 0..40, true)));
        assert!(!is_fragment(&whole));
        assert!(r.fragment(&piece(&whole, 80..100, false), now).is_none());
        assert!(r.fragment(&piece(&whole, 0..40, true), now).is_none());
        // An exact duplicate changes nothing.
        assert!(r.fragment(&piece(&whole, 0..40, true), now).is_none());
        let again = r
            .fragment(&piece(&whole, 40..80, true), now)
            .expect("whole");
        assert_eq!(again, whole);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn overlapping_fragments_discard_the_datagram() {
        let whole = datagram(IpProtocol::Tcp, &payload(96));
        let now = Instant::now();
        let mut r = Reassembly::default();
        assert!(r.fragment(&piece(&whole, 0..48, true), now).is_none());
        // 40..96 rewrites bytes 40..48: the datagram is gone...
        assert!(r.fragment(&piece(&whole, 40..96, false), now).is_none());
        assert_eq!(r.pending(), 0);
        // ...so the honest rest alone completes nothing.
        assert!(r.fragment(&piece(&whole, 48..96, false), now).is_none());
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn tcp_at_offset_8_odd_lengths_and_bad_checksums_are_dropped() {
        let whole = datagram(IpProtocol::Tcp, &payload(64));
        let now = Instant::now();
        let mut r = Reassembly::default();
        assert!(r.fragment(&piece(&whole, 8..64, false), now).is_none());
        assert!(r.fragment(&piece(&whole, 0..12, true), now).is_none());
        let mut damaged = piece(&whole, 0..16, true);
        damaged[14 + 8] ^= 0xff; // The TTL, under the header checksum.
        assert!(r.fragment(&damaged, now).is_none());
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn unfinished_datagrams_are_bounded_in_number_and_time() {
        let now = Instant::now();
        let mut r = Reassembly::default();
        for ident in 0..(MAX_DATAGRAMS as u16 + 5) {
            let mut first = piece(&datagram(IpProtocol::Udp, &payload(64)), 0..32, true);
            let mut ip = Ipv4Packet::new_unchecked(&mut first[14..]);
            ip.set_ident(ident);
            ip.fill_checksum();
            assert!(r.fragment(&first, now).is_none());
        }
        assert_eq!(r.pending(), MAX_DATAGRAMS);
        // Any fragment, once the time is up, finds the old ones gone.
        let whole = datagram(IpProtocol::Udp, &payload(64));
        assert!(
            r.fragment(&piece(&whole, 0..32, true), now + TIMEOUT)
                .is_none()
        );
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn a_datagram_past_65535_bytes_is_dropped() {
        let whole = datagram(IpProtocol::Udp, &payload(64));
        let mut last = piece(&whole, 0..64, false);
        let mut ip = Ipv4Packet::new_unchecked(&mut last[14..]);
        ip.set_frag_offset(65_528 - 8);
        ip.fill_checksum();
        let mut r = Reassembly::default();
        assert!(r.fragment(&last, Instant::now()).is_none());
        assert_eq!(r.pending(), 0);
    }
}
