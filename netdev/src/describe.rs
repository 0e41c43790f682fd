//! [`describe`]: one readable line for an Ethernet frame, as tcpdump would print it;
//! [`arp_of`]: the fields of an ARP frame that matter to a host.
//!
//! Used by `tapnet demo` to show each frame that crosses the wire, and by anyone who
//! wants to log frames. Parsing uses smoltcp's `wire` types and never panics: a frame it
//! cannot parse is described as malformed, with the reason.

use std::fmt;
use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet,
    IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket,
};

/// Describes `frame` in one line, without allocating. For example:
///
/// ```
/// use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame,
///     EthernetProtocol, Ipv4Address};
///
/// let mut buf = [0u8; 42];
/// let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
/// eth.set_dst_addr(EthernetAddress::BROADCAST);
/// eth.set_src_addr(EthernetAddress([2, 0, 0, 0, 0, 1]));
/// eth.set_ethertype(EthernetProtocol::Arp);
/// ArpRepr::EthernetIpv4 {
///     operation: ArpOperation::Request,
///     source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
///     source_protocol_addr: Ipv4Address::new(10, 0, 0, 1),
///     target_hardware_addr: EthernetAddress([0; 6]),
///     target_protocol_addr: Ipv4Address::new(10, 0, 0, 2),
/// }
/// .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
/// assert_eq!(netdev::describe(&buf).to_string(), "ARP who-has 10.0.0.2 tell 10.0.0.1");
/// ```
pub fn describe(frame: &[u8]) -> Describe<'_> {
    Describe(frame)
}

/// The [`fmt::Display`] returned by [`describe`].
pub struct Describe<'a>(&'a [u8]);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(eth) = EthernetFrame::new_checked(self.0) else {
            return write!(
                f,
                "malformed frame ({} bytes): truncated Ethernet header",
                self.0.len()
            );
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => arp(f, eth.payload()),
            EthernetProtocol::Ipv4 => ipv4(f, eth.payload()),
            EthernetProtocol::Ipv6 => write!(f, "IPv6 ({} bytes)", eth.payload().len()),
            other => write!(f, "ethertype {other} ({} bytes)", eth.payload().len()),
        }
    }
}

/// An Ethernet/IPv4 ARP packet's (operation, sender address, target address), if
/// `frame` is a well-formed one.
pub fn arp_of(frame: &[u8]) -> Option<(ArpOperation, Ipv4Addr, Ipv4Addr)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => Some((operation, source_protocol_addr, target_protocol_addr)),
        _ => None,
    }
}

fn ip4(bytes: &[u8]) -> Ipv4Address {
    match <[u8; 4]>::try_from(bytes) {
        Ok(octets) => Ipv4Address::from(octets),
        Err(_) => Ipv4Address::UNSPECIFIED,
    }
}

fn arp(f: &mut fmt::Formatter<'_>, payload: &[u8]) -> fmt::Result {
    let Ok(p) = ArpPacket::new_checked(payload) else {
        return write!(f, "malformed ARP ({} bytes)", payload.len());
    };
    let (sender, target) = (ip4(p.source_protocol_addr()), ip4(p.target_protocol_addr()));
    match p.operation() {
        ArpOperation::Request => write!(f, "ARP who-has {target} tell {sender}"),
        ArpOperation::Reply => {
            let mac = p.source_hardware_addr();
            write!(f, "ARP reply {sender} is-at ")?;
            for (i, b) in mac.iter().enumerate() {
                write!(f, "{}{b:02x}", if i == 0 { "" } else { ":" })?;
            }
            Ok(())
        }
        ArpOperation::Unknown(op) => write!(f, "ARP operation {op} {sender} > {target}"),
    }
}

fn ipv4(f: &mut fmt::Formatter<'_>, payload: &[u8]) -> fmt::Result {
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return write!(f, "malformed IPv4 ({} bytes)", payload.len());
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.frag_offset() != 0 || ip.more_frags() {
        // Which datagram (its identification), where in it, and whether more follow.
        return write!(
            f,
            "IPv4 fragment {src} > {dst} {} id {} offset {} ({} bytes){}",
            ip.next_header(),
            ip.ident(),
            ip.frag_offset(),
            ip.payload().len(),
            if ip.more_frags() {
                ", more follow"
            } else {
                ", the last"
            }
        );
    }
    let body = ip.payload();
    match ip.next_header() {
        IpProtocol::Icmp => icmp(f, src, dst, body),
        IpProtocol::Tcp => tcp(f, src, dst, body),
        IpProtocol::Udp => match UdpPacket::new_checked(body) {
            Ok(u) => write!(
                f,
                "UDP {src}:{} > {dst}:{} len {}",
                u.src_port(),
                u.dst_port(),
                u.payload().len()
            ),
            Err(_) => write!(f, "malformed UDP {src} > {dst}"),
        },
        other => write!(f, "IPv4 {src} > {dst} {other} ({} bytes)", body.len()),
    }
}

fn icmp(
    f: &mut fmt::Formatter<'_>,
    src: Ipv4Address,
    dst: Ipv4Address,
    body: &[u8],
) -> fmt::Result {
    let Ok(p) = Icmpv4Packet::new_checked(body) else {
        return write!(f, "malformed ICMP {src} > {dst}");
    };
    match p.msg_type() {
        kind @ (Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply) => {
            let what = if kind == Icmpv4Message::EchoRequest {
                "request"
            } else {
                "reply"
            };
            write!(
                f,
                "ICMP echo {what} {src} > {dst} id {} seq {} len {}",
                p.echo_ident(),
                p.echo_seq_no(),
                body.len().saturating_sub(8)
            )
        }
        other => write!(f, "ICMP {other} {src} > {dst}"),
    }
}

fn tcp(f: &mut fmt::Formatter<'_>, src: Ipv4Address, dst: Ipv4Address, body: &[u8]) -> fmt::Result {
    let Ok(p) = TcpPacket::new_checked(body) else {
        return write!(f, "malformed TCP {src} > {dst}");
    };
    write!(f, "TCP {src}:{} > {dst}:{} [", p.src_port(), p.dst_port())?;
    for (set, flag) in [
        (p.syn(), "S"),
        (p.fin(), "F"),
        (p.rst(), "R"),
        (p.psh(), "P"),
        (p.ack(), "."),
    ] {
        if set {
            f.write_str(flag)?;
        }
    }
    write!(f, "] seq {}", p.seq_number().0 as u32)?;
    if p.ack() {
        write!(f, " ack {}", p.ack_number().0 as u32)?;
    }
    write!(f, " win {} len {}", p.window_len(), p.payload().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_of_reads_the_operation_and_both_addresses_and_nothing_else() {
        use smoltcp::wire::EthernetAddress;
        let mut frame = vec![0u8; 42];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_ethertype(EthernetProtocol::Arp);
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            source_protocol_addr: Ipv4Addr::new(10, 0, 0, 1),
            target_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            target_protocol_addr: Ipv4Addr::new(10, 0, 0, 2),
        }
        .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        assert_eq!(
            arp_of(&frame),
            Some((
                ArpOperation::Reply,
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2)
            ))
        );
        assert_eq!(arp_of(&frame[..30]), None);
        let mut ip = frame.clone();
        EthernetFrame::new_unchecked(&mut ip[..]).set_ethertype(EthernetProtocol::Ipv4);
        assert_eq!(arp_of(&ip), None);
    }

    #[test]
    fn a_tcp_syn_reads_like_tcpdump() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetAddress, IpAddress, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber,
        };
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 9,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 64240,
            window_scale: None,
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_src_addr(EthernetAddress([2, 0, 0, 0, 0, 1]));
        eth.set_dst_addr(EthernetAddress([2, 0, 0, 0, 0, 2]));
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let caps = ChecksumCapabilities::default();
        let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut packet, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &caps,
        );
        assert_eq!(
            describe(&buf).to_string(),
            "TCP 10.0.0.1:40000 > 10.0.0.2:9 [S] seq 1000 win 64240 len 0"
        );
    }

    #[test]
    fn hostile_frames_are_described_not_panicked_on() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in 0..200 {
            let mut frame: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if len >= 14 {
                // Half IPv4, half ARP, so the inner parsers see garbage too.
                frame[12..14].copy_from_slice(if len % 2 == 0 { &[8, 0] } else { &[8, 6] });
            }
            let line = describe(&frame).to_string();
            assert!(!line.is_empty());
        }
        assert_eq!(
            describe(&[1, 2, 3]).to_string(),
            "malformed frame (3 bytes): truncated Ethernet header"
        );
    }
}
