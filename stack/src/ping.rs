//! [`Pinger`]: ICMP echo requests from the stack, with round-trip times.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

use crate::{Blocked, Stack, Step};

/// What echo requests carry, repeated to their size.
const PATTERN: &[u8; 56] = b"tapnet ping: the quick brown fox jumps over the lazy dog";
/// Bytes of data in each echo request by default, as the kernel's `ping` sends.
pub const PING_SIZE: usize = 56;
/// The most data an echo request can carry: an IPv4 datagram of 65,535 bytes, less its
/// header and the ICMP header. Beyond the MTU it goes out in fragments.
pub const MAX_PING_SIZE: usize = 65_507;

/// Sends ICMP echo requests to one address and waits for the replies.
///
/// Each pinger has its own ICMP identifier, so several can run at once. The socket is
/// freed when the pinger is dropped.
pub struct Pinger {
    stack: Stack,
    socket: SocketHandle,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    /// The data of every request, which each reply must carry back.
    data: Vec<u8>,
}

impl Pinger {
    pub(crate) fn new(stack: Stack, dst: Ipv4Addr, size: usize) -> io::Result<Pinger> {
        if size > MAX_PING_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "ping {dst}: {size} bytes of data: at most {MAX_PING_SIZE} fit in an IPv4 \
                     datagram"
                ),
            ));
        }
        let data: Vec<u8> = PATTERN.iter().copied().cycle().take(size).collect();
        // Room for a few messages each way, late replies included.
        let room = 4 * (size + 8).max(256);
        let buffer =
            || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; room]);
        let ident = fastrand::u16(1..);
        let mut socket = icmp::Socket::new(buffer(), buffer());
        socket
            .bind(icmp::Endpoint::Ident(ident))
            .map_err(|e| io::Error::other(format!("ping {dst}: bind: {e}")))?;
        let socket = stack.shared().lock().sockets.add(socket);
        Ok(Pinger {
            stack,
            socket,
            dst,
            ident,
            seq: 0,
            data,
        })
    }

    /// Bytes of data each echo request carries (`ping -s`).
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// The address this pinger pings.
    pub fn dst(&self) -> Ipv4Addr {
        self.dst
    }

    /// The sequence number of the last request sent (0 before the first).
    pub fn seq(&self) -> u16 {
        self.seq
    }

    /// Sends the next echo request and waits up to `timeout` for its reply.
    ///
    /// # Errors
    /// `TimedOut` when no matching reply arrives in time (also the first ping to a
    /// host that never answers ARP); `NotConnected` when the stack has stopped.
    pub fn ping(&mut self, timeout: Duration) -> io::Result<Duration> {
        self.seq = self.seq.wrapping_add(1);
        let (dst, ident, seq) = (self.dst, self.ident, self.seq);
        let request = Icmpv4Repr::EchoRequest {
            ident,
            seq_no: seq,
            data: &self.data,
        };
        let sent_at = Instant::now();
        let deadline = sent_at + timeout;
        let shared = self.stack.shared();
        {
            let mut core = shared.lock();
            let socket = core.sockets.get_mut::<icmp::Socket>(self.socket);
            let buf = socket
                .send(request.buffer_len(), IpAddress::Ipv4(dst))
                .map_err(|e| io::Error::other(format!("ping {dst} seq {seq}: send: {e}")))?;
            request.emit(
                &mut Icmpv4Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            );
        }
        shared.wake();
        let data = &self.data;
        let result = shared.block_on(|core, waker| {
            let socket = core.sockets.get_mut::<icmp::Socket>(self.socket);
            while let Ok((payload, from)) = socket.recv() {
                if from == IpAddress::Ipv4(dst) && is_reply(payload, ident, seq, data) {
                    return Step::Done(Ok(sent_at.elapsed()));
                }
            }
            if Instant::now() >= deadline {
                return Step::Done(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("ping {dst} seq {seq}: no reply within {timeout:?}"),
                )));
            }
            socket.register_recv_waker(waker);
            Step::Wait(Some(deadline))
        });
        result.map_err(|why| match why {
            Blocked::Failed(e) => e,
            Blocked::Stopped => io::Error::new(
                io::ErrorKind::NotConnected,
                format!("ping {dst} seq {seq}: the stack has stopped"),
            ),
        })
    }
}

/// Whether `payload` is the reply to request `seq`, carrying its data back intact.
fn is_reply(payload: &[u8], ident: u16, seq: u16, data: &[u8]) -> bool {
    let Ok(packet) = Icmpv4Packet::new_checked(payload) else {
        return false;
    };
    matches!(
        Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default()),
        Ok(Icmpv4Repr::EchoReply { ident: i, seq_no: s, data: d })
            if i == ident && s == seq && d == data
    )
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stack.shared().lock().sockets.remove(self.socket);
    }
}
