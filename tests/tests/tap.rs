//! tapnet on a real TAP, with the kernel as the peer, inside a private namespace.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use netdev::{Capture, PcapFile, Tap, TapOptions};
use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet,
    IpProtocol, Ipv4Packet,
};
use stack::{Stack, StackConfig};
use tapnet_tests::{
    KERNEL_ADDR, STACK_ADDR, TempDir, TestResult, check, in_netns, ip, kernel_ping, kernel_side_up,
    pcap_frames, root, run,
};

fn main() {
    tapnet_tests::main(vec![
        root(
            "kernel_ping_gets_replies_and_the_pcap_shows_them",
            ping_and_pcap,
        ),
        root(
            "a_ping_larger_than_the_mtu_is_reassembled_and_answered_in_fragments",
            large_ping,
        ),
        root(
            "kernel_connect_to_a_closed_port_is_refused",
            closed_port_refused,
        ),
        root("an_existing_tap_is_attached_and_its_mtu_read", existing_tap),
        root(
            "a_raw_peer_injects_an_arp_request_and_captures_the_reply",
            raw_peer_arp,
        ),
        root("the_mtu_option_overrides_the_interface", mtu_override),
        root(
            "a_tap_deleted_under_a_running_stack_does_no_harm",
            tap_deleted_underneath,
        ),
    ])
}

fn stack_config() -> StackConfig {
    StackConfig::new().with_addr(format!("{STACK_ADDR}/24").parse().unwrap())
}

/// Kernel `ping` gets three replies; the pcap the run wrote shows ARP and ICMP both ways,
/// as smoltcp's parsers and as tshark read it.
fn ping_and_pcap() -> TestResult {
    let dir = TempDir::new("ping")?;
    let pcap = dir.join("ping.pcap");
    in_netns(|| {
        let tap = Tap::open("tap0", &TapOptions::default())?;
        kernel_side_up("tap0")?;
        let stack = Stack::new(Capture::new(tap, PcapFile::create(&pcap)?), stack_config())?;
        let out = kernel_ping(3, None)?;
        let text = String::from_utf8_lossy(&out.stdout);
        check!(
            out.status.success(),
            "ping failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        check!(text.contains("3 received"), "ping output: {text}");
        let counters = stack.counters();
        check!(
            counters.rx_frames >= 4 && counters.tx_frames >= 4,
            "counters: {counters}"
        );
        stack.stop();
        Ok(())
    })?;

    // Our own reading, with smoltcp's wire types.
    let (mut who_has, mut is_at, mut requests, mut replies) = (0, 0, 0, 0);
    for frame in pcap_frames(&pcap)? {
        let eth = EthernetFrame::new_checked(&frame[..]).map_err(|e| e.to_string())?;
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                match ArpPacket::new_checked(eth.payload()).map(|a| a.operation()) {
                    Ok(ArpOperation::Request) => who_has += 1,
                    Ok(ArpOperation::Reply) => is_at += 1,
                    _ => {}
                }
            }
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|e| e.to_string())?;
                if ip.next_header() == IpProtocol::Icmp {
                    match Icmpv4Packet::new_checked(ip.payload()).map(|i| i.msg_type()) {
                        Ok(Icmpv4Message::EchoRequest) => requests += 1,
                        Ok(Icmpv4Message::EchoReply) => replies += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    check!(
        who_has >= 1 && is_at >= 1,
        "ARP in pcap: {who_has} requests, {is_at} replies"
    );
    check!(
        requests == 3 && replies == 3,
        "ICMP in pcap: {requests} requests, {replies} replies"
    );

    // tshark's reading.
    let out = run(
        Command::new("tshark").args(["-r"]).arg(&pcap).args([
            "-T",
            "fields",
            "-e",
            "_ws.col.Protocol",
            "-e",
            "_ws.col.Info",
        ]),
        Duration::from_secs(60),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    check!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arp = text.lines().filter(|l| l.starts_with("ARP")).count();
    let echo_req = text
        .lines()
        .filter(|l| l.starts_with("ICMP") && l.contains("Echo (ping) request"))
        .count();
    let echo_rep = text
        .lines()
        .filter(|l| l.starts_with("ICMP") && l.contains("Echo (ping) reply"))
        .count();
    check!(
        arp >= 2 && echo_req == 3 && echo_rep == 3,
        "tshark read:\n{text}"
    );
    Ok(())
}

/// A ping of 4,000 bytes does not fit the link's 1,500: the kernel sends each request
/// in fragments, the stack reassembles it (RFC 1122 §3.3.2) and fragments its reply
/// (RFC 791 §2.3), as the pcap shows: three pieces each way, offsets in 8-byte units.
fn large_ping() -> TestResult {
    const SIZE: usize = 4000;
    let dir = TempDir::new("bigping")?;
    let pcap = dir.join("bigping.pcap");
    in_netns(|| {
        let tap = Tap::open("tap0", &TapOptions::default())?;
        kernel_side_up("tap0")?;
        let _stack = Stack::new(Capture::new(tap, PcapFile::create(&pcap)?), stack_config())?;
        let out = kernel_ping(2, Some(SIZE))?;
        let text = String::from_utf8_lossy(&out.stdout);
        check!(
            out.status.success() && text.contains("2 received"),
            "ping -s {SIZE}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        check!(
            text.contains(&format!("{} bytes from {STACK_ADDR}", SIZE + 8)),
            "the replies are not whole: {text}"
        );
        Ok(())
    })?;
    // Every fragment of the stack's, by datagram: (offset, more fragments, length).
    let mut ours: std::collections::BTreeMap<u16, Vec<(usize, bool, usize)>> = Default::default();
    let mut theirs = 0;
    for frame in pcap_frames(&pcap)? {
        let eth = EthernetFrame::new_checked(&frame[..]).map_err(|e| e.to_string())?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            continue;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|e| e.to_string())?;
        if !(ip.more_frags() || ip.frag_offset() != 0) {
            continue;
        }
        check!(frame.len() <= 1514, "a frame of {} bytes", frame.len());
        if ip.src_addr() == STACK_ADDR {
            check!(
                ip.verify_checksum(),
                "a fragment's header checksum is wrong"
            );
            let pieces = ours.entry(ip.ident()).or_default();
            pieces.push((
                ip.frag_offset() as usize,
                ip.more_frags(),
                ip.payload().len(),
            ));
        } else {
            theirs += 1;
        }
    }
    check!(theirs == 6, "the kernel sent {theirs} fragments, not 2 x 3");
    check!(
        ours.len() == 2,
        "the stack fragmented {} datagrams: {ours:?}",
        ours.len()
    );
    for pieces in ours.values_mut() {
        pieces.sort();
        let mut next = 0;
        for (i, &(offset, more, len)) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            check!(
                offset == next && more != last && (last || len % 8 == 0),
                "fragments do not tile the datagram: {pieces:?}"
            );
            next = offset + len;
        }
        // ICMP header (8) + the data.
        check!(next == 8 + SIZE, "reassembled {next} bytes: {pieces:?}");
    }
    Ok(())
}

/// A TCP SYN to a port nobody listens on is answered with RST: connect is refused.
fn closed_port_refused() -> TestResult {
    in_netns(|| {
        let tap = Tap::open("tap0", &TapOptions::default())?;
        kernel_side_up("tap0")?;
        let _stack = Stack::new(tap, stack_config())?;
        let addr = SocketAddr::from((STACK_ADDR, 9));
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("connect to {addr}: expected refused, got {other:?}").into()),
        }
    })
}

/// The harness's raw peer: a hand-made ARP request from an address the kernel does not
/// hold goes into the TAP, and the stack's reply to it comes back to the peer.
fn raw_peer_arp() -> TestResult {
    use smoltcp::wire::{ArpRepr, EthernetAddress, EthernetRepr, Ipv4Address};
    in_netns(|| {
        let tap = Tap::open("tap0", &TapOptions::default())?;
        kernel_side_up("tap0")?;
        let _stack = Stack::new(tap, stack_config())?;
        let mut peer = tapnet_tests::raw::RawPeer::open("tap0")?;
        let me = EthernetAddress([0x02, 0xaa, 0, 0, 0, 7]);
        let asker = Ipv4Address::new(10, 0, 0, 7);
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: me,
            source_protocol_addr: asker,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: STACK_ADDR,
        };
        let eth = EthernetRepr {
            src_addr: me,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut frame = vec![0u8; eth.buffer_len() + arp.buffer_len()];
        let mut packet = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut packet);
        arp.emit(&mut ArpPacket::new_unchecked(packet.payload_mut()));
        peer.send(&frame)?;
        let reply = peer.recv_matching(Duration::from_secs(5), |f| {
            EthernetFrame::new_checked(f).is_ok_and(|e| e.dst_addr() == me)
        })?;
        let reply = reply.ok_or("no ARP reply to the raw peer within 5 s")?;
        let eth = EthernetFrame::new_checked(&reply[..])?;
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload())?)?;
        check!(
            matches!(arp, ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } if source_protocol_addr == STACK_ADDR && target_protocol_addr == asker),
            "not the reply expected: {arp:?}"
        );
        Ok(())
    })
}

/// A TAP made with `ip tuntap add` beforehand is attached to, not recreated, and its MTU
/// is the interface's.
fn existing_tap() -> TestResult {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "labtap", "mode", "tap"])?;
        ip(&["link", "set", "labtap", "mtu", "1400"])?;
        let tap = Tap::open("labtap", &TapOptions::default())?;
        check!(tap.name() == "labtap", "name {}", tap.name());
        check!(tap.mtu() == 1400, "MTU {} instead of 1400", tap.mtu());
        kernel_side_up("labtap")?;
        let _stack = Stack::new(tap, stack_config())?;
        let out = kernel_ping(1, None)?;
        check!(
            out.status.success(),
            "ping through the attached TAP: {:?}",
            out
        );
        // A second open of a TAP someone holds is refused with a clear message.
        let held = Tap::open("labtap", &TapOptions::default());
        check!(held.is_err(), "a second open of a busy TAP succeeded");
        Ok(())
    })
}

/// `--mtu` wins over the interface's MTU, and a silly one is refused.
fn mtu_override() -> TestResult {
    in_netns(|| {
        let tap = Tap::open("tap0", &TapOptions { mtu: Some(1280) })?;
        check!(tap.mtu() == 1280, "MTU {}", tap.mtu());
        drop(tap);
        let err = Tap::open("tap1", &TapOptions { mtu: Some(10) }).err();
        check!(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains("out of range")),
            "MTU 10 gave {err:?}"
        );
        Ok(())
    })
}

/// The TAP is deleted under a running stack: no panic, no spin, and stop still works.
fn tap_deleted_underneath() -> TestResult {
    in_netns(|| {
        let tap = Tap::open("tap0", &TapOptions::default())?;
        kernel_side_up("tap0")?;
        let stack = Stack::new(tap, stack_config())?;
        ip(&["link", "del", "tap0"])?;
        // The stack keeps running (a lab may recreate the link) and keeps answering calls.
        std::thread::sleep(Duration::from_millis(200));
        check!(
            stack.is_running(),
            "the driver died when its TAP was deleted"
        );
        let err = stack
            .pinger(KERNEL_ADDR)?
            .ping(Duration::from_millis(200))
            .err();
        check!(err.is_some(), "a ping over a deleted TAP succeeded");
        // A driver that kept reading the dead descriptor would count thousands of errors.
        let errors = stack.counters().errors;
        check!(
            errors < 10,
            "{errors} device errors: the driver spins on the dead TAP"
        );
        let start = std::time::Instant::now();
        stack.stop();
        check!(
            start.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            start.elapsed()
        );
        Ok(())
    })
}
