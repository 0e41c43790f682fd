//! A raw peer on a TAP's kernel side: sends hand-made Ethernet frames into the TAP (the
//! stack reads them as if they came off the link) and captures what the stack sends, so a
//! test can play any peer, hostile or flooding, without the kernel's TCP in the way.
//!
//! It is an `AF_PACKET` socket bound to the TAP's kernel end (through `pnet_datalink`),
//! so it sees every frame that crosses the TAP, both ways; [`RawPeer::recv`] keeps only
//! those the stack sent. Use it inside the test's own namespace, on its own TAP.

use std::io;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender, NetworkInterface};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// The raw peer on one interface.
pub struct RawPeer {
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    /// The stack's MAC, once learned from a frame it sent; frames from it are "received".
    stack_mac: Option<[u8; 6]>,
    /// The MAC of the kernel's side of the TAP: frames from it are the kernel's, not ours.
    kernel_mac: [u8; 6],
}

/// How long one `recv` call blocks at most before it looks at its deadline again.
const POLL: Duration = Duration::from_millis(20);

impl RawPeer {
    /// Opens the peer on the interface `name` (the TAP's kernel side), which must be up.
    pub fn open(name: &str) -> io::Result<RawPeer> {
        let interface: NetworkInterface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {name}")))?;
        let kernel_mac = interface.mac.map(|m| m.octets()).unwrap_or_default();
        let config = Config {
            read_timeout: Some(POLL),
            write_buffer_size: 1 << 16,
            read_buffer_size: 1 << 16,
            ..Config::default()
        };
        match pnet_datalink::channel(&interface, config)? {
            Channel::Ethernet(tx, rx) => Ok(RawPeer {
                tx,
                rx,
                stack_mac: None,
                kernel_mac,
            }),
            _ => Err(io::Error::other("not an Ethernet channel")),
        }
    }

    /// The MAC of the TAP's kernel side, to use as the source of crafted frames that
    /// should look like the kernel's.
    pub fn kernel_mac(&self) -> [u8; 6] {
        self.kernel_mac
    }

    /// Sends one frame into the TAP, towards the stack.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.tx.send_to(frame, None) {
            Some(result) => result,
            None => Err(io::Error::other("the send buffer is too small")),
        }
    }

    /// The next frame the stack sent (not the kernel's own, not our injections), waiting
    /// up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.recv_matching(timeout, |_| true)
    }

    /// The next frame the stack sent that `want` accepts, waiting up to `timeout`; frames
    /// it rejects are dropped.
    pub fn recv_matching(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let frame = match self.rx.next() {
                Ok(frame) => frame,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) => return Err(e),
            };
            if frame.len() < 14 {
                continue;
            }
            let src: [u8; 6] = frame[6..12].try_into().unwrap_or_default();
            if src == self.kernel_mac || self.stack_mac.is_some_and(|m| m != src) {
                continue;
            }
            if want(frame) {
                self.stack_mac.get_or_insert(src);
                return Ok(Some(frame.to_vec()));
            }
        }
        Ok(None)
    }
}

/// A SYN from `src` (at the MAC `src_mac`) to `dst` (at `dst_mac`) as Linux opens: MSS
/// 1460, window scale 7, SACK permitted; sequence number 0, checksums filled.
pub fn syn(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(0),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: true,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let (eth_len, ip_len) = (eth.buffer_len(), ip.buffer_len());
    let mut frame = vec![0u8; eth_len + ip_len + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    eth.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[eth_len..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut frame[eth_len + ip_len..]),
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        &caps,
    );
    frame
}
