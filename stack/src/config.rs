//! [`StackConfig`]: who the stack is on its link.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

use crate::{KeepAlive, Trace};

/// How a [`crate::Stack`] presents itself on its link.
///
/// # Examples
/// ```
/// use stack::{Ipv4Net, StackConfig};
/// let config = StackConfig::new()
///     .with_addr("10.0.0.2/24".parse::<Ipv4Net>()?)
///     .with_gateway("10.0.0.1".parse()?);
/// assert_eq!(config.addrs.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    /// The Ethernet address. `None` picks a random, locally administered one.
    pub mac: Option<Mac>,
    /// IPv4 addresses with their prefix lengths. The first is the one the stack
    /// sources from by default.
    pub addrs: Vec<Ipv4Net>,
    /// Where packets for addresses outside every prefix go.
    pub gateway: Option<Ipv4Addr>,
    /// Each TCP connection's receive buffer, which is the largest window it advertises
    /// (with window scaling beyond 64 KiB). Dialers and listeners may override it.
    pub read_buffer: usize,
    /// Each TCP connection's send buffer.
    pub write_buffer: usize,
    /// Keepalive for new connections (Go's default: on, 15 s / 15 s / 9).
    pub keepalive: Option<KeepAlive>,
    /// How long a connection may sit in CLOSE-WAIT (the peer closed, the application
    /// has not) before the stack logs a warning naming it.
    pub close_wait_warning: Duration,
    /// How long a connection without keepalive waits for a silent peer to acknowledge
    /// outstanding data before it fails with `TimedOut` (Linux gives up after about
    /// 15 minutes of retransmissions). Idle connections without keepalive never expire.
    pub retransmit_give_up: Duration,
    /// Where to write a line per TCP segment and per state change ([`Trace`]); `None`
    /// (the default) traces nothing.
    pub trace: Option<Trace>,
    /// The most TCP sockets the stack holds at once: connections (orphans included) and
    /// each listener's sockets (up to two armed in LISTEN, plus the
    /// half-open ones in SYN-RECEIVED). At the limit a dial fails with `QuotaExceeded`,
    /// and a listener whose armed sockets are used up drops SYNs unanswered, so clients
    /// retry; established connections carry on. A closed connection's TIME-WAIT holds
    /// no socket, so it does not count. Default 4096.
    pub max_sockets: usize,
}

/// [`StackConfig::max_sockets`]'s default. With the default 256 KiB buffers each way,
/// that many connections may hold up to 2 GiB of buffers.
pub(crate) const DEFAULT_MAX_SOCKETS: usize = 4096;

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            mac: None,
            addrs: Vec::new(),
            gateway: None,
            read_buffer: 256 << 10,
            write_buffer: 256 << 10,
            keepalive: Some(KeepAlive::new()),
            close_wait_warning: Duration::from_secs(30),
            retransmit_give_up: Duration::from_secs(15 * 60),
            trace: None,
            max_sockets: DEFAULT_MAX_SOCKETS,
        }
    }
}

impl StackConfig {
    /// A config with a random MAC, no addresses, no gateway, and the TCP defaults:
    /// 256 KiB buffers, Go's keepalive, a CLOSE-WAIT warning after 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the default receive and send buffer sizes of TCP connections.
    pub fn with_buffers(mut self, read: usize, write: usize) -> Self {
        self.read_buffer = read;
        self.write_buffer = write;
        self
    }

    /// Sets the default keepalive of TCP connections.
    pub fn with_keepalive(mut self, keepalive: Option<KeepAlive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Traces every TCP segment and state change to `trace`.
    pub fn with_trace(mut self, trace: Trace) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Sets how long unacknowledged data may wait on a silent peer (without keepalive).
    pub fn with_retransmit_give_up(mut self, after: Duration) -> Self {
        self.retransmit_give_up = after;
        self
    }

    /// Sets the most TCP sockets the stack holds at once (see
    /// [`StackConfig::max_sockets`]).
    ///
    /// ```
    /// use stack::StackConfig;
    /// assert_eq!(StackConfig::new().with_max_sockets(64).max_sockets, 64);
    /// assert_eq!(StackConfig::new().max_sockets, 4096);
    /// ```
    pub fn with_max_sockets(mut self, max: usize) -> Self {
        self.max_sockets = max;
        self
    }

    /// Sets how long CLOSE-WAIT may last before the stack warns.
    pub fn with_close_wait_warning(mut self, after: Duration) -> Self {
        self.close_wait_warning = after;
        self
    }

    /// Adds an address.
    pub fn with_addr(mut self, addr: Ipv4Net) -> Self {
        self.addrs.push(addr);
        self
    }

    /// Sets the default gateway.
    pub fn with_gateway(mut self, gateway: Ipv4Addr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Sets the Ethernet address.
    pub fn with_mac(mut self, mac: Mac) -> Self {
        self.mac = Some(mac);
        self
    }
}

/// An IPv4 address with a prefix length, written `10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Net {
    pub(crate) fn cidr(self) -> Ipv4Cidr {
        Ipv4Cidr::new(self.addr, self.prefix)
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr().contains_addr(&ip)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX, for example 10.0.0.2/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix {prefix:?} is not a number from 0 to 32"))?;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
            return Err(format!("{addr} cannot be a host address"));
        }
        Ok(Ipv4Net { addr, prefix })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random unicast, locally administered address (`x2:..`, `x6:..`, `xa:..`, `xe:..`).
    pub fn random() -> Mac {
        let mut bytes = [0u8; 6];
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
        bytes[0] = (bytes[0] & 0xfc) | 0x02;
        Mac(bytes)
    }

    pub(crate) fn ethernet(self) -> EthernetAddress {
        EthernetAddress(self.0)
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address like 02:00:00:00:00:01");
        let mut bytes = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if bytes[0] & 1 == 1 {
            return Err(format!(
                "{s} is a multicast address; a host needs a unicast one"
            ));
        }
        Ok(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_explain() {
        let net: Ipv4Net = "10.0.0.2/24".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.2/24");
        assert!(net.contains(Ipv4Addr::new(10, 0, 0, 200)));
        assert!(!net.contains(Ipv4Addr::new(10, 0, 1, 1)));
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "10.0.0/24",
            "x/1",
            "0.0.0.0/8",
            "224.0.0.1/4",
            "",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn macs_round_trip_and_random_ones_are_local_unicast() {
        let mac: Mac = "02:00:5e:10:00:ff".parse().unwrap();
        assert_eq!(mac.to_string(), "02:00:5e:10:00:ff");
        for bad in [
            "01:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} parsed");
        }
        for _ in 0..100 {
            let m = Mac::random();
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
        }
    }
}
