//! A raw peer on a TAP's kernel side: sends hand-made Ethernet frames into the TAP (the
//! stack reads them as if they came off the link) and captures what the stack sends, so a
//! test can play any peer, hostile or flooding, without the kernel's TCP in the way.
//!
//! It is an `AF_PACKET` socket bound to the TAP's kernel end (through `pnet_datalink`),
//! so it sees every frame that crosses the TAP, both ways; [`RawPeer::recv`] keeps only
//! those the stack sent. Use it inside the test's own namespace, on its own TAP.

use std::io;
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender, NetworkInterface};

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
