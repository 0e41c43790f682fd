//! TCP on the stack, with Go's semantics: [`TcpStream`], [`TcpListener`], [`Dialer`],
//! [`ListenConfig`], and the options and snapshots that go with them.
//!
//! Every blocking call follows one pattern ([`crate::Shared::block_on`]): under the
//! stack's lock, check the connection's record (closed? shut down? deadline passed?),
//! try the smoltcp socket, and if it would block, put the call's waker on the
//! connection's wait list and sleep. The driver wakes the list when the socket changes;
//! a handle wakes it when it moves a deadline or closes the connection, so the sleeping
//! call looks again at once.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::conn::{Conn, DEFAULT_BACKLOG, Listener, Network};
use crate::error::{OpError, cause};
use crate::table::{Opts, apply_keepalive, send_fin};
use crate::watch::{Tuple, Wire};
use crate::{Blocked, Core, Stack, Step};

/// Receive and send buffers are kept within these bounds. A window scale of 14 could
/// advertise 1 GiB (RFC 7323 §2.3); 64 MiB is far beyond what a lab link needs.
pub(crate) const MIN_BUFFER: usize = 1024;
pub(crate) const MAX_BUFFER: usize = 64 << 20;

/// TCP keepalive: after `idle` without a segment from the peer, send a probe; repeat
/// every `interval`; after `count` unanswered probes, the connection fails with
/// `TimedOut`. Shaped like socket2's `TcpKeepalive`; the defaults are Go's.
///
/// ```
/// use stack::KeepAlive;
/// use std::time::Duration;
/// const FAST: KeepAlive = KeepAlive::new()
///     .with_idle(Duration::from_secs(5))
///     .with_interval(Duration::from_secs(1))
///     .with_count(3);
/// assert_eq!(FAST.give_up_after(), Duration::from_secs(8));
/// assert_eq!(KeepAlive::default().idle(), Duration::from_secs(15));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    idle: Duration,
    interval: Duration,
    count: u32,
}

impl KeepAlive {
    /// Go's defaults: 15 s idle, 15 s interval, 9 probes.
    pub const fn new() -> KeepAlive {
        KeepAlive {
            idle: Duration::from_secs(15),
            interval: Duration::from_secs(15),
            count: 9,
        }
    }

    /// Quiet time before the first probe.
    pub const fn with_idle(self, idle: Duration) -> KeepAlive {
        KeepAlive { idle, ..self }
    }

    /// Time between probes.
    pub const fn with_interval(self, interval: Duration) -> KeepAlive {
        KeepAlive { interval, ..self }
    }

    /// Unanswered probes before giving up.
    pub const fn with_count(self, count: u32) -> KeepAlive {
        KeepAlive { count, ..self }
    }

    /// Quiet time before the first probe.
    pub const fn idle(&self) -> Duration {
        self.idle
    }

    /// Time between probes.
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// Unanswered probes before giving up.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// How long a silent peer has before the connection fails: idle + interval × count.
    pub const fn give_up_after(&self) -> Duration {
        self.idle
            .saturating_add(self.interval.saturating_mul(self.count))
    }

    pub(crate) fn validate(&self) -> io::Result<()> {
        if self.idle.is_zero() || self.interval.is_zero() || self.count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("keepalive {self:?}: idle, interval and count must all be above zero"),
            ));
        }
        Ok(())
    }
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::new()
    }
}

/// A TCP state, with its RFC 9293 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum State {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl State {
    /// The RFC's name: `ESTABLISHED`, `CLOSE-WAIT`, …
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Listen => "LISTEN",
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl From<tcp::State> for State {
    fn from(state: tcp::State) -> State {
        match state {
            tcp::State::Closed => State::Closed,
            tcp::State::Listen => State::Listen,
            tcp::State::SynSent => State::SynSent,
            tcp::State::SynReceived => State::SynReceived,
            tcp::State::Established => State::Established,
            tcp::State::FinWait1 => State::FinWait1,
            tcp::State::FinWait2 => State::FinWait2,
            tcp::State::CloseWait => State::CloseWait,
            tcp::State::Closing => State::Closing,
            tcp::State::LastAck => State::LastAck,
            tcp::State::TimeWait => State::TimeWait,
        }
    }
}

/// A snapshot of one connection, as [`TcpStream::info`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpInfo {
    /// The TCP state.
    pub state: State,
    /// How long it has been in that state.
    pub time_in_state: Duration,
    /// This end.
    pub local: SocketAddr,
    /// The other end.
    pub peer: SocketAddr,
    /// Bytes written and not yet acknowledged by the peer.
    pub send_queue: usize,
    /// Bytes received and not yet read by the application.
    pub recv_queue: usize,
    /// The receive buffer's size: the largest window this end can advertise.
    pub read_buffer: usize,
    /// The send buffer's size.
    pub write_buffer: usize,
    /// The receive window this end last advertised, in bytes (scaled).
    pub recv_window: u32,
    /// The window the peer last advertised, in bytes (scaled).
    pub peer_window: u32,
    /// Smoothed round-trip time, measured on the wire (RFC 6298), once there is a sample.
    pub rtt: Option<Duration>,
    /// The retransmission timeout RFC 6298 derives from those samples.
    pub rto: Option<Duration>,
    /// Segments sent again.
    pub retransmits: u64,
    /// Retransmissions started by a loss signal rather than a timeout: three duplicate
    /// ACKs (RFC 5681 §3.2), or SACK blocks showing the loss (RFC 6675; see `watch.rs`).
    pub fast_retransmits: u64,
    /// Keepalive probes sent.
    pub keepalive_probes: u64,
    /// Zero-window probes sent.
    pub zero_window_probes: u64,
    /// ACKs taken from segments dropped for lying outside the receive window (RFC 9293
    /// §3.10.7.4: a zero window still takes valid ACKs; see `watch.rs`).
    pub acks_salvaged: u64,
    /// Segments received.
    pub segments_in: u64,
    /// Segments sent.
    pub segments_out: u64,
    /// Keepalive settings.
    pub keepalive: Option<KeepAlive>,
    /// Linger setting.
    pub linger: Option<Duration>,
    /// Whether Nagle's algorithm is off.
    pub nodelay: bool,
}

impl TcpInfo {
    /// A connection in TIME-WAIT whose socket is already freed (the stack keeps only its
    /// numbers): no buffers, no queues, nothing more to count.
    pub(crate) fn time_wait(local: SocketAddr, peer: SocketAddr, age: Duration) -> TcpInfo {
        TcpInfo {
            state: State::TimeWait,
            time_in_state: age,
            local,
            peer,
            send_queue: 0,
            recv_queue: 0,
            read_buffer: 0,
            write_buffer: 0,
            recv_window: 0,
            peer_window: 0,
            rtt: None,
            rto: None,
            retransmits: 0,
            fast_retransmits: 0,
            keepalive_probes: 0,
            zero_window_probes: 0,
            acks_salvaged: 0,
            segments_in: 0,
            segments_out: 0,
            keepalive: None,
            linger: None,
            nodelay: false,
        }
    }

    /// A half-open connection still inside its listener (SYN-RECEIVED): the options it
    /// will be accepted with, and what the watch saw of it.
    pub(crate) fn half_open(
        (local, peer): Tuple,
        age: Duration,
        opts: Opts,
        wire: Option<&Wire>,
    ) -> TcpInfo {
        TcpInfo {
            state: State::SynReceived,
            read_buffer: opts.read_buffer,
            write_buffer: opts.write_buffer,
            recv_window: wire.map_or(0, |w| w.our_window),
            peer_window: wire.map_or(0, |w| w.peer_window),
            retransmits: wire.map_or(0, |w| w.retransmits),
            segments_in: wire.map_or(0, |w| w.segs_in),
            segments_out: wire.map_or(0, |w| w.segs_out),
            keepalive: opts.keepalive,
            nodelay: opts.nodelay,
            ..TcpInfo::time_wait(SocketAddr::V4(local), SocketAddr::V4(peer), age)
        }
    }
}

/// The per-connection defaults a [`Stack`] starts from.
fn default_opts(stack: &Stack) -> Opts {
    let config = stack.config();
    Opts {
        read_buffer: config.read_buffer,
        write_buffer: config.write_buffer,
        keepalive: config.keepalive,
        linger: None,
        nodelay: true,
    }
}

fn check_buffer(n: usize) -> io::Result<usize> {
    if (MIN_BUFFER..=MAX_BUFFER).contains(&n) {
        Ok(n)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("buffer size {n} is outside {MIN_BUFFER}..={MAX_BUFFER} bytes"),
        ))
    }
}

fn v4_only(op: &'static str, addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(addr) => Ok(addr),
        SocketAddr::V6(_) => Err(OpError::wrap(
            op,
            None,
            Some(addr),
            io::Error::new(io::ErrorKind::Unsupported, "tapnet speaks IPv4 only"),
        )),
    }
}

fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Dials connections with options set before the handshake, as Go's `net.Dialer`.
///
/// ```
/// use netdev::{WireOptions, wire};
/// use stack::{Stack, StackConfig};
/// use std::time::Duration;
///
/// let (a, b) = wire(&WireOptions::default())?;
/// let client = Stack::new(a, StackConfig::new().with_addr("10.0.0.1/24".parse()?))?;
/// let server = Stack::new(b, StackConfig::new().with_addr("10.0.0.2/24".parse()?))?;
/// let listener = server.listen("0.0.0.0:80".parse()?)?;
/// let conn = client
///     .dialer()
///     .timeout(Duration::from_secs(3))
///     .read_buffer(1 << 20)
///     .dial("10.0.0.2:80".parse()?)?;
/// assert_eq!(conn.read_buffer()?, 1 << 20);
/// let (_accepted, peer) = listener.accept()?;
/// assert_eq!(peer, conn.local_addr()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Dialer {
    stack: Stack,
    opts: Opts,
    timeout: Option<Duration>,
    local: Option<SocketAddrV4>,
}

impl Dialer {
    pub(crate) fn new(stack: Stack) -> Dialer {
        Dialer {
            opts: default_opts(&stack),
            stack,
            timeout: None,
            local: None,
        }
    }

    /// Gives up on the handshake after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Dialer {
        self.timeout = Some(timeout);
        self
    }

    /// The receive buffer, which is the largest window the connection advertises.
    pub fn read_buffer(mut self, bytes: usize) -> Dialer {
        self.opts.read_buffer = bytes;
        self
    }

    /// The send buffer.
    pub fn write_buffer(mut self, bytes: usize) -> Dialer {
        self.opts.write_buffer = bytes;
        self
    }

    /// Keepalive for the connection (`None`: off).
    pub fn keepalive(mut self, keepalive: Option<KeepAlive>) -> Dialer {
        self.opts.keepalive = keepalive;
        self
    }

    /// Nagle's algorithm off (`true`, the default) or on.
    pub fn nodelay(mut self, nodelay: bool) -> Dialer {
        self.opts.nodelay = nodelay;
        self
    }

    /// Linger on close (see [`TcpStream::set_linger`]).
    pub fn linger(mut self, linger: Option<Duration>) -> Dialer {
        self.opts.linger = linger;
        self
    }

    /// The local address to dial from (port 0: an ephemeral port).
    pub fn local_addr(mut self, addr: SocketAddrV4) -> Dialer {
        self.local = Some(addr);
        self
    }

    /// Connects to `addr` and waits for the handshake.
    ///
    /// # Errors
    /// `ConnectionRefused` when the peer answers with RST; `TimedOut` after the timeout,
    /// or when smoltcp gives up retrying the SYN (after the keepalive's give-up time);
    /// `NetworkUnreachable` without a route; `AddrInUse` when no port is free;
    /// `QuotaExceeded` when the stack holds [`crate::StackConfig::max_sockets`] sockets
    /// and none of them is a TIME-WAIT it can recycle.
    pub fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let remote = v4_only("dial", addr)?;
        let fail = |local: Option<SocketAddrV4>, e| {
            OpError::wrap("dial", local.map(SocketAddr::V4), Some(addr), e)
        };
        check_buffer(self.opts.read_buffer).map_err(|e| fail(None, e))?;
        check_buffer(self.opts.write_buffer).map_err(|e| fail(None, e))?;
        if let Some(ka) = self.opts.keepalive {
            ka.validate().map_err(|e| fail(None, e))?;
        }
        if remote.ip().is_unspecified() || remote.port() == 0 || remote.ip().is_broadcast() {
            return Err(fail(
                None,
                io::Error::new(io::ErrorKind::InvalidInput, "not a connectable address"),
            ));
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let shared = self.stack.shared();
        let (handle, local) = {
            let mut core = shared.lock();
            let local_ip = match self
                .local
                .map(|l| *l.ip())
                .filter(|ip| !ip.is_unspecified())
            {
                Some(ip) => ip,
                None => self.stack.source_for(*remote.ip()).ok_or_else(|| {
                    fail(
                        None,
                        io::Error::new(io::ErrorKind::NetworkUnreachable, "network is unreachable"),
                    )
                })?,
            };
            let port = match self.local.map(|l| l.port()).filter(|p| *p != 0) {
                Some(port) => port,
                None => core.tcp.ephemeral_port(local_ip, remote).ok_or_else(|| {
                    fail(
                        None,
                        io::Error::new(io::ErrorKind::AddrInUse, "no free ephemeral port"),
                    )
                })?,
            };
            let local = SocketAddrV4::new(local_ip, port);
            if core.tcp.by_tuple.contains_key(&(local, remote)) {
                return Err(fail(
                    Some(local),
                    io::Error::new(io::ErrorKind::AddrInUse, "address already in use"),
                ));
            }
            let core = &mut *core;
            if !core.tcp.has_room() {
                return Err(fail(
                    Some(local),
                    io::Error::new(
                        io::ErrorKind::QuotaExceeded,
                        format!("socket limit of {} reached", core.tcp.max_sockets()),
                    ),
                ));
            }
            let mut socket = self.opts.socket();
            socket
                .connect(core.iface.context(), remote, local)
                .map_err(|e| {
                    fail(
                        Some(local),
                        io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
                    )
                })?;
            let handle = core.sockets.add(socket);
            core.tcp.add_conn(
                handle,
                (local, remote),
                self.opts,
                State::SynSent,
                Instant::now(),
            );
            (handle, local)
        };
        shared.wake();
        let result = shared.block_on(|core, waker| {
            let Core { sockets, tcp, .. } = core;
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {}
                tcp::State::Closed => {
                    let refused = tcp
                        .watch
                        .borrow()
                        .get(&(local, remote))
                        .is_some_and(|w| w.rst_rx);
                    return Step::Done(Err(if refused {
                        cause::refused()
                    } else {
                        cause::gave_up()
                    }));
                }
                _ => return Step::Done(Ok(())),
            }
            if passed(deadline) {
                return Step::Done(Err(cause::timeout()));
            }
            if let Some(meta) = tcp.conns.get(&handle) {
                meta.tx.add(waker);
                socket.register_send_waker(&meta.tx_waker);
            }
            Step::Wait(deadline)
        });
        match result {
            Ok(()) => Ok(TcpStream::new(self.stack.clone(), handle, local, remote)),
            Err(why) => {
                // Forget the attempt without a word on the wire, as a kernel does.
                let mut core = shared.lock();
                let Core { sockets, tcp, .. } = &mut *core;
                tcp.remove_conn(handle, sockets);
                Err(fail(Some(local), blocked_error(why)))
            }
        }
    }
}

fn blocked_error(why: Blocked) -> io::Error {
    match why {
        Blocked::Failed(e) => e,
        Blocked::Stopped => cause::stopped(),
    }
}

/// Listens with options set before any connection arrives, as Go's `net.ListenConfig`.
#[derive(Clone)]
pub struct ListenConfig {
    stack: Stack,
    opts: Opts,
    backlog: usize,
}

impl ListenConfig {
    pub(crate) fn new(stack: Stack) -> ListenConfig {
        ListenConfig {
            opts: default_opts(&stack),
            stack,
            backlog: DEFAULT_BACKLOG,
        }
    }

    /// Connections that completed their handshake and wait for `accept`, at most.
    pub fn backlog(mut self, backlog: usize) -> ListenConfig {
        self.backlog = backlog;
        self
    }

    /// The receive buffer of each accepted connection (its largest window).
    pub fn read_buffer(mut self, bytes: usize) -> ListenConfig {
        self.opts.read_buffer = bytes;
        self
    }

    /// The send buffer of each accepted connection.
    pub fn write_buffer(mut self, bytes: usize) -> ListenConfig {
        self.opts.write_buffer = bytes;
        self
    }

    /// Keepalive for each accepted connection.
    pub fn keepalive(mut self, keepalive: Option<KeepAlive>) -> ListenConfig {
        self.opts.keepalive = keepalive;
        self
    }

    /// Nagle off (`true`, the default) or on, for each accepted connection.
    pub fn nodelay(mut self, nodelay: bool) -> ListenConfig {
        self.opts.nodelay = nodelay;
        self
    }

    /// Linger for each accepted connection.
    pub fn linger(mut self, linger: Option<Duration>) -> ListenConfig {
        self.opts.linger = linger;
        self
    }

    /// Starts listening on `addr` (`0.0.0.0` for every address; port 0 picks one).
    ///
    /// # Errors
    /// `AddrInUse` if another listener holds the address; `AddrNotAvailable` if the
    /// address is not the stack's; `InvalidInput` for a backlog of 0 or bad buffer sizes.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let want = v4_only("listen", addr)?;
        let fail = |e| OpError::wrap("listen", None, Some(addr), e);
        check_buffer(self.opts.read_buffer).map_err(fail)?;
        check_buffer(self.opts.write_buffer).map_err(fail)?;
        if let Some(ka) = self.opts.keepalive {
            ka.validate().map_err(fail)?;
        }
        if self.backlog == 0 {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a backlog of 0 accepts nothing",
            )));
        }
        let ip = *want.ip();
        if !ip.is_unspecified() && !self.stack.config().addrs.iter().any(|n| n.addr == ip) {
            return Err(fail(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "bind: cannot assign requested address",
            )));
        }
        let shared = self.stack.shared();
        let mut core = shared.lock();
        // A listener on a stack that no longer runs would accept nothing, ever.
        if shared.is_stopped() {
            return Err(fail(cause::stopped()));
        }
        let Core { sockets, tcp, .. } = &mut *core;
        let port = match want.port() {
            0 => tcp
                .listen_port(ip)
                .ok_or_else(|| fail(io::Error::new(io::ErrorKind::AddrInUse, "no free port")))?,
            port => port,
        };
        let bound = SocketAddrV4::new(ip, port);
        if tcp.listen_conflict(bound) {
            return Err(fail(io::Error::new(
                io::ErrorKind::AddrInUse,
                "bind: address already in use",
            )));
        }
        let id = tcp.add_listener(bound, self.backlog, self.opts, sockets, Instant::now());
        drop(core);
        log::debug!("listening on {bound} (backlog {})", self.backlog);
        Ok(TcpListener {
            inner: Arc::new(ListenerInner {
                stack: self.stack.clone(),
                id,
                addr: SocketAddr::V4(bound),
            }),
        })
    }
}

/// A TCP connection on a tapnet stack.
///
/// Clones made by [`TcpStream::try_clone`] share the connection; one thread may read
/// while another writes (`Read` and `Write` are implemented for `&TcpStream` too).
/// [`TcpStream::close`] closes it for every clone and reports problems; dropping the
/// last clone closes it the same way, silently.
pub struct TcpStream {
    inner: Arc<StreamInner>,
}

struct StreamInner {
    stack: Stack,
    handle: SocketHandle,
    local: SocketAddrV4,
    peer: SocketAddrV4,
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        // Dropping closes as close() does; there is no one to report to.
        let _ = self.close();
        // Only now does no handle hold the connection: from here the driver may free its
        // socket, and smoltcp may give the socket's handle to a new connection. (Were it
        // freed at close(), a clone, or this very drop, would find the handle taken by
        // a stranger, and close or read that connection instead.)
        let shared = self.stack.shared();
        shared.lock().tcp.orphan(self.handle, Instant::now());
        shared.wake();
    }
}

/// Which deadlines a setter changes.
#[derive(Clone, Copy)]
enum Side {
    Read,
    Write,
    Both,
}

impl TcpStream {
    fn new(
        stack: Stack,
        handle: SocketHandle,
        local: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> TcpStream {
        TcpStream {
            inner: Arc::new(StreamInner {
                stack,
                handle,
                local,
                peer,
            }),
        }
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.inner.local))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.inner.peer))
    }

    /// Sets the read and write deadlines (see [`Conn::set_deadline`]).
    pub fn set_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.inner.set_deadline(Side::Both, at)
    }

    /// Sets the read deadline: an absolute time after which reads fail with "i/o
    /// timeout", including a read already blocked.
    pub fn set_read_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.inner.set_deadline(Side::Read, at)
    }

    /// Sets the write deadline; a write that passes it reports how much it queued.
    pub fn set_write_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.inner.set_deadline(Side::Write, at)
    }

    /// std-style: each read waits at most `timeout` (`None`: no limit). Combined with a
    /// deadline, the earlier wins.
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_timeout(Side::Read, timeout)
    }

    /// std-style: each write waits at most `timeout` (`None`: no limit).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_timeout(Side::Write, timeout)
    }

    /// The per-read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.inner.with_meta("get", |m| Ok(m.read_timeout))
    }

    /// The per-write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.inner.with_meta("get", |m| Ok(m.write_timeout))
    }

    /// Shuts down reading, writing (sends FIN once the queued data is out), or both.
    /// After `Read`, reads return 0 and data that arrives is discarded.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// A second handle on this connection.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream {
            inner: self.inner.clone(),
        })
    }

    /// Closes the connection, for every clone, as [`TcpStream::set_linger`] says, and
    /// reports what went wrong: a second close, or data a bounded linger could not
    /// deliver.
    pub fn close(self) -> io::Result<()> {
        self.inner.close()
    }

    /// Sets keepalive (`None`: off). Takes effect at once.
    pub fn set_keepalive(&self, keepalive: Option<KeepAlive>) -> io::Result<()> {
        if let Some(ka) = keepalive {
            ka.validate().map_err(|e| self.inner.err("set", e))?;
        }
        let inner = &self.inner;
        inner.with_core("set", |core| {
            let meta = core
                .tcp
                .conns
                .get_mut(&inner.handle)
                .ok_or_else(cause::closed)?;
            meta.opts.keepalive = keepalive;
            apply_keepalive(core.sockets.get_mut::<tcp::Socket>(inner.handle), keepalive);
            if let Some(ka) = keepalive {
                core.tcp
                    .schedule_keepalive(Instant::now() + ka.idle().min(ka.interval()));
            }
            Ok(())
        })?;
        self.inner.stack.shared().wake();
        Ok(())
    }

    /// The keepalive settings.
    pub fn keepalive(&self) -> io::Result<Option<KeepAlive>> {
        self.inner.with_meta("get", |m| Ok(m.opts.keepalive))
    }

    /// What close does with unsent data:
    /// - `None` (the default): close returns at once; the stack delivers the rest and
    ///   the FIN in the background.
    /// - `Some(Duration::ZERO)`: close sends RST and discards unsent data.
    /// - `Some(d)`: close waits until everything is acknowledged, up to `d`; past that
    ///   it sends RST and returns an error saying the data was not delivered.
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        self.inner.with_meta("set", |m| {
            m.opts.linger = linger;
            Ok(())
        })
    }

    /// The linger setting.
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        self.inner.with_meta("get", |m| Ok(m.opts.linger))
    }

    /// Turns Nagle's algorithm off (`true`, the default, as Go) or on.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        let inner = &self.inner;
        inner.with_core("set", |core| {
            let meta = core
                .tcp
                .conns
                .get_mut(&inner.handle)
                .ok_or_else(cause::closed)?;
            meta.opts.nodelay = nodelay;
            core.sockets
                .get_mut::<tcp::Socket>(inner.handle)
                .set_nagle_enabled(!nodelay);
            Ok(())
        })
    }

    /// Whether Nagle's algorithm is off.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.with_meta("get", |m| Ok(m.opts.nodelay))
    }

    /// The receive buffer's size, which is the largest window this end advertises.
    pub fn read_buffer(&self) -> io::Result<usize> {
        self.inner.with_meta("get", |m| Ok(m.opts.read_buffer))
    }

    /// The send buffer's size.
    pub fn write_buffer(&self) -> io::Result<usize> {
        self.inner.with_meta("get", |m| Ok(m.opts.write_buffer))
    }

    /// Resizing the receive buffer of a connection: smoltcp's buffers and the window
    /// scale (fixed by the SYN, RFC 7323 §2.2) cannot change once the handshake has
    /// begun, so a connection keeps the size it was made with. Setting the size it has
    /// succeeds; any other fails with `Unsupported`, and nothing changes. Set sizes on the
    /// [`Dialer`], [`ListenConfig`] or [`TcpListener`] instead.
    pub fn set_read_buffer(&self, bytes: usize) -> io::Result<()> {
        self.inner
            .with_meta("set", |m| fixed_size("read", m.opts.read_buffer, bytes))
    }

    /// As [`TcpStream::set_read_buffer`], for the send buffer.
    pub fn set_write_buffer(&self, bytes: usize) -> io::Result<()> {
        self.inner
            .with_meta("set", |m| fixed_size("write", m.opts.write_buffer, bytes))
    }

    /// The TCP state.
    pub fn state(&self) -> State {
        self.info().map_or(State::Closed, |i| i.state)
    }

    /// A snapshot: state, queues, windows, RTT, retransmissions, options.
    pub fn info(&self) -> io::Result<TcpInfo> {
        let inner = &self.inner;
        inner.with_core("info", |core| {
            conn_info(core, inner.handle, Instant::now()).ok_or_else(cause::closed)
        })
    }
}

/// The snapshot of connection `handle` as of `now`, if the stack still holds it: what
/// [`TcpStream::info`] returns, and what [`Stack::sockets`] lists for each connection.
pub(crate) fn conn_info(core: &Core, handle: SocketHandle, now: Instant) -> Option<TcpInfo> {
    let meta = core.tcp.conns.get(&handle)?;
    let socket = core.sockets.get::<tcp::Socket>(handle);
    let state = State::from(socket.state());
    let watch = core.tcp.watch.borrow();
    let wire = watch.get(&meta.tuple);
    // A change the driver has not noted yet happened just now.
    let since = if state == meta.state { meta.since } else { now };
    Some(TcpInfo {
        state,
        time_in_state: now.saturating_duration_since(since),
        local: SocketAddr::V4(meta.tuple.0),
        peer: SocketAddr::V4(meta.tuple.1),
        send_queue: socket.send_queue(),
        recv_queue: socket.recv_queue() + meta.ahead.len(),
        read_buffer: meta.opts.read_buffer,
        write_buffer: meta.opts.write_buffer,
        recv_window: wire.map_or(0, |w| w.our_window),
        peer_window: wire.map_or(0, |w| w.peer_window),
        rtt: wire.and_then(|w| w.srtt),
        rto: wire.and_then(|w| w.rto()),
        retransmits: wire.map_or(0, |w| w.retransmits),
        fast_retransmits: wire.map_or(0, |w| w.fast_retransmits),
        keepalive_probes: wire.map_or(0, |w| w.probes),
        zero_window_probes: wire.map_or(0, |w| w.zero_window_probes),
        acks_salvaged: wire.map_or(0, |w| w.acks_salvaged),
        segments_in: wire.map_or(0, |w| w.segs_in),
        segments_out: wire.map_or(0, |w| w.segs_out),
        keepalive: meta.opts.keepalive,
        linger: meta.opts.linger,
        nodelay: meta.opts.nodelay,
    })
}

fn fixed_size(which: &str, has: usize, want: usize) -> io::Result<()> {
    if has == want {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the {which} buffer of a connection is fixed at {has} bytes once the \
                 handshake has begun; set it on the dialer or listener"
            ),
        ))
    }
}

impl StreamInner {
    fn err(&self, op: &'static str, e: io::Error) -> io::Error {
        OpError::wrap(
            op,
            Some(SocketAddr::V4(self.local)),
            Some(SocketAddr::V4(self.peer)),
            e,
        )
    }

    fn with_core<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Core) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut core = self.stack.shared().lock();
        f(&mut core).map_err(|e| self.err(op, e))
    }

    /// Runs `f` on the connection's record, if the connection is still open.
    fn with_meta<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut crate::table::ConnMeta) -> io::Result<T>,
    ) -> io::Result<T> {
        self.with_core(op, |core| match core.tcp.conns.get_mut(&self.handle) {
            Some(meta) if !meta.closed => f(meta),
            _ => Err(cause::closed()),
        })
    }

    fn set_deadline(&self, side: Side, at: Option<Instant>) -> io::Result<()> {
        self.with_meta("set", |meta| {
            if matches!(side, Side::Read | Side::Both) {
                meta.read_deadline = at;
            }
            if matches!(side, Side::Write | Side::Both) {
                meta.write_deadline = at;
            }
            // Calls already blocked look at the new deadline now.
            meta.wake_all();
            Ok(())
        })
    }

    fn set_timeout(&self, side: Side, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(self.err(
                "set",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot set a 0 duration timeout",
                ),
            ));
        }
        self.with_meta("set", |meta| {
            match side {
                Side::Read => meta.read_timeout = timeout,
                Side::Write => meta.write_timeout = timeout,
                Side::Both => unreachable!("timeouts are set one side at a time"),
            }
            Ok(())
        })
    }

    fn blocked(&self, op: &'static str, why: Blocked) -> io::Error {
        self.err(op, blocked_error(why))
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let handle = self.handle;
        let shared = self.stack.shared();
        let mut call_deadline = None;
        let mut first = true;
        shared
            .block_on(|core, waker| {
                let Core { sockets, tcp, .. } = core;
                let Some(meta) = tcp.conns.get_mut(&handle).filter(|m| !m.closed) else {
                    return Step::Done(Err(cause::closed()));
                };
                if meta.read_shut {
                    return Step::Done(Ok(0));
                }
                if first {
                    first = false;
                    call_deadline = meta.read_timeout.map(|t| Instant::now() + t);
                }
                let deadline = earliest(meta.read_deadline, call_deadline);
                if passed(deadline) {
                    meta.ahead.want = 0;
                    return Step::Done(Err(cause::timeout()));
                }
                if buf.is_empty() {
                    return Step::Done(Ok(0));
                }
                // What the driver already took out for a blocked read comes first.
                if meta.ahead.len() > 0 {
                    meta.ahead.want = 0;
                    return Step::Done(Ok(meta.ahead.take(buf)));
                }
                let socket = sockets.get_mut::<tcp::Socket>(handle);
                // A buffer that was at least half full had a window small enough that
                // the read may need a window update (smoltcp sends one when the window
                // doubles); otherwise the ACKs the driver sends anyway carry the window.
                let was_full = socket.recv_queue() >= socket.recv_capacity() / 2;
                if socket.can_recv()
                    && let Ok(n) = socket.recv_slice(buf)
                    && n > 0
                {
                    if was_full {
                        shared.wake();
                    }
                    meta.ahead.want = 0;
                    return Step::Done(Ok(n));
                }
                match socket.state() {
                    tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait => return Step::Done(Ok(0)),
                    tcp::State::Closed => {
                        let watch = tcp.watch.borrow();
                        let wire = watch.get(&meta.tuple);
                        // The peer's FIN came first: the stream ended cleanly, whatever
                        // followed (a stray RST in TIME-WAIT, RFC 1337).
                        return Step::Done(if meta.aborted || wire.is_some_and(|w| w.fin_rx) {
                            Ok(0)
                        } else if wire.is_some_and(|w| w.rst_rx) {
                            Err(cause::reset())
                        } else {
                            Err(cause::gave_up())
                        });
                    }
                    _ => {}
                }
                meta.rx.add(waker);
                socket.register_recv_waker(&meta.rx_waker);
                // The driver hands what arrives straight to this read (Tcp::hand_off).
                let want = buf.len().min(meta.opts.read_buffer);
                tcp.await_data(handle, want);
                Step::Wait(deadline)
            })
            .map_err(|why| self.blocked("read", why))
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let handle = self.handle;
        let shared = self.stack.shared();
        let mut written = 0;
        let mut call_deadline = None;
        // Names this call for the driver's hand-off (Tcp::await_room); 0 until the first
        // attempt.
        let mut call = 0;
        let result = shared.block_on(|core, waker| {
            let Core { sockets, tcp, .. } = core;
            let step = (|| {
                let Some(meta) = tcp.conns.get_mut(&handle) else {
                    return Step::Done(Err(cause::closed()));
                };
                // What the driver queued for this call since it last looked.
                if meta.behind.owned_by(call) {
                    let (n, done) = meta.behind.take_queued();
                    written += n;
                    if done {
                        meta.behind.release();
                    }
                }
                if meta.closed {
                    return Step::Done(Err(cause::closed()));
                }
                if meta.write_shut {
                    return Step::Done(Err(cause::broken_pipe()));
                }
                if call == 0 {
                    call_deadline = meta.write_timeout.map(|t| Instant::now() + t);
                    call = tcp.new_call();
                }
                let meta = tcp.conns.get_mut(&handle).expect("looked up above");
                let deadline = earliest(meta.write_deadline, call_deadline);
                if passed(deadline) {
                    return Step::Done(Err(cause::timeout()));
                }
                let socket = sockets.get_mut::<tcp::Socket>(handle);
                let with_driver = meta.behind.owned_by(call);
                match socket.state() {
                    tcp::State::SynSent | tcp::State::SynReceived => {}
                    tcp::State::Established | tcp::State::CloseWait if !with_driver => {
                        // With data in flight, its ACKs run the driver, which sends what
                        // is queued, as Nagle's algorithm would wait for them anyway
                        // (RFC 896); a quiet connection, or one with Nagle off, must
                        // send now.
                        let quiet = socket.send_queue() == 0 || !socket.nagle_enabled();
                        if let Ok(n) = socket.send_slice(&buf[written..])
                            && n > 0
                        {
                            written += n;
                            if quiet {
                                shared.wake();
                            }
                        }
                    }
                    tcp::State::Established | tcp::State::CloseWait => {}
                    tcp::State::Closed => {
                        let watch = tcp.watch.borrow();
                        let reset = watch.get(&meta.tuple).is_some_and(|w| w.rst_rx);
                        return Step::Done(Err(if reset || meta.aborted {
                            cause::broken_pipe()
                        } else {
                            cause::gave_up()
                        }));
                    }
                    _ => return Step::Done(Err(cause::broken_pipe())),
                }
                if written == buf.len() {
                    return Step::Done(Ok(written));
                }
                meta.tx.add(waker);
                let handed = with_driver
                    || socket.may_send() && tcp.await_room(handle, call, &buf[written..]);
                let meta = tcp.conns.get_mut(&handle).expect("looked up above");
                if handed {
                    // The driver queues the rest as ACKs make room, and wakes this call
                    // when it is all queued. smoltcp's wake for each ACK is not needed;
                    // its wake for a change of state (a reset, a give-up) is, and comes
                    // through the receive side's waker, which also fires on state changes.
                    meta.rx.add(waker);
                    socket.register_recv_waker(&meta.rx_waker);
                } else {
                    socket.register_send_waker(&meta.tx_waker);
                }
                Step::Wait(deadline)
            })();
            if let Step::Done(_) = step
                && let Some(meta) = tcp.conns.get_mut(&handle)
                && meta.behind.owned_by(call)
            {
                // Finished, well or not: what the driver has not queued stays unwritten.
                meta.behind.release();
            }
            step
        });
        match result {
            Ok(n) => Ok(n),
            // Part of the buffer is queued: that part is the answer; the next call fails.
            Err(_) if written > 0 => Ok(written),
            Err(why) => Err(self.blocked("write", why)),
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let handle = self.handle;
        self.with_core("shutdown", |core| {
            let Core { sockets, tcp, .. } = core;
            let meta = tcp
                .conns
                .get_mut(&handle)
                .filter(|m| !m.closed)
                .ok_or_else(cause::closed)?;
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            if matches!(how, Shutdown::Read | Shutdown::Both) {
                meta.read_shut = true;
                meta.ahead.discard();
                let _ = socket.recv(|data| (data.len(), ()));
            }
            if matches!(how, Shutdown::Write | Shutdown::Both) {
                meta.write_shut = true;
                send_fin(socket, meta);
            }
            meta.wake_all();
            Ok(())
        })?;
        self.stack.shared().wake();
        Ok(())
    }

    /// Closes for every handle, as the linger setting says.
    fn close(&self) -> io::Result<()> {
        let handle = self.handle;
        let shared = self.stack.shared();
        let linger = self.with_core("close", |core| {
            let Core { sockets, tcp, .. } = core;
            let meta = tcp
                .conns
                .get_mut(&handle)
                .filter(|m| !m.closed)
                .ok_or_else(cause::closed)?;
            meta.closed = true;
            meta.wake_all();
            let linger = meta.opts.linger;
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            // Unread data, or linger 0: reset (RFC 9293 §3.10.4 ABORT; RFC 2525 §2.17).
            let unread = socket.recv_queue() + meta.ahead.len();
            let abort = linger == Some(Duration::ZERO) || unread > 0;
            if abort {
                socket.abort();
                meta.aborted = true;
            } else {
                send_fin(socket, meta);
            }
            if abort || linger.is_none() {
                return Ok(None);
            }
            Ok(linger)
        })?;
        shared.wake();
        let Some(linger) = linger else {
            return Ok(());
        };
        // A bounded linger: wait for every byte and the FIN to be acknowledged.
        let deadline = Instant::now() + linger;
        let result = shared.block_on(|core, waker| {
            let Core { sockets, tcp, .. } = core;
            let Some(meta) = tcp.conns.get(&handle) else {
                return Step::Done(Ok(()));
            };
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::FinWait2 | tcp::State::TimeWait => return Step::Done(Ok(())),
                tcp::State::Closed => {
                    let reset = tcp
                        .watch
                        .borrow()
                        .get(&meta.tuple)
                        .is_some_and(|w| w.rst_rx);
                    return Step::Done(if reset { Err(cause::reset()) } else { Ok(()) });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let unacked = socket.send_queue();
                socket.abort();
                return Step::Done(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "linger of {linger:?} expired with {unacked} bytes not acknowledged; \
                         the connection was reset and the data was not delivered"
                    ),
                )));
            }
            meta.tx.add(waker);
            socket.register_send_waker(&meta.tx_waker);
            Step::Wait(Some(deadline))
        });
        let mut core = shared.lock();
        if result.is_err()
            && let Some(meta) = core.tcp.conns.get_mut(&handle)
        {
            meta.aborted = true;
        }
        drop(core);
        shared.wake();
        result.map_err(|why| self.blocked("close", why))
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    /// Data is handed to the stack as it is written; there is nothing to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.inner.local)
            .field("peer", &self.inner.peer)
            .finish()
    }
}

impl Conn for TcpStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }
    fn set_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        TcpStream::set_deadline(self, at)
    }
    fn set_read_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        TcpStream::set_read_deadline(self, at)
    }
    fn set_write_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        TcpStream::set_write_deadline(self, at)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn close(self) -> io::Result<()> {
        TcpStream::close(self)
    }
}

/// A TCP listener on a tapnet stack, with a real backlog.
///
/// Clones share it; [`TcpListener::close`] (or dropping the last clone) stops it and
/// wakes blocked accepts. Connections already accepted stay open.
pub struct TcpListener {
    inner: Arc<ListenerInner>,
}

struct ListenerInner {
    stack: Stack,
    id: u64,
    addr: SocketAddr,
}

impl Drop for ListenerInner {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl ListenerInner {
    fn err(&self, op: &'static str, e: io::Error) -> io::Error {
        OpError::wrap(op, None, Some(self.addr), e)
    }

    fn close(&self) -> io::Result<()> {
        let shared = self.stack.shared();
        let mut core = shared.lock();
        let Core { sockets, tcp, .. } = &mut *core;
        if !tcp.listeners.contains_key(&self.id) {
            return Err(self.err("close", cause::closed()));
        }
        tcp.remove_listener(self.id, sockets, Instant::now());
        drop(core);
        shared.wake();
        Ok(())
    }

    fn with_listener<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut crate::table::ListenerMeta) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut core = self.stack.shared().lock();
        match core.tcp.listeners.get_mut(&self.id) {
            Some(listener) => f(listener).map_err(|e| self.err(op, e)),
            None => Err(self.err(op, cause::closed())),
        }
    }
}

impl TcpListener {
    /// Waits for the next connection, in arrival order. Fails once the listener is
    /// closed (also while blocked) or its deadline passes.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept_until(None)
    }

    /// As [`TcpListener::accept`], failing with `TimedOut` after `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept_until(Some(Instant::now() + timeout))
    }

    fn accept_until(&self, until: Option<Instant>) -> io::Result<(TcpStream, SocketAddr)> {
        let inner = &self.inner;
        let shared = inner.stack.shared();
        let handle = shared
            .block_on(|core, waker| {
                let Core { sockets, tcp, .. } = core;
                let Some(listener) = tcp.listeners.get_mut(&inner.id) else {
                    return Step::Done(Err(cause::closed()));
                };
                let deadline = earliest(listener.deadline, until);
                if passed(deadline) {
                    return Step::Done(Err(cause::timeout()));
                }
                if let Some(handle) = listener.ready.pop_front() {
                    // Room in the backlog again.
                    tcp.rearm(sockets, Instant::now());
                    return Step::Done(Ok(handle));
                }
                listener.waiters.add(waker);
                Step::Wait(deadline)
            })
            .map_err(|why| inner.err("accept", blocked_error(why)))?;
        let tuple = {
            let core = shared.lock();
            core.tcp.conns.get(&handle).map(|m| m.tuple)
        };
        let Some((local, peer)) = tuple else {
            return Err(inner.err("accept", cause::closed()));
        };
        Ok((
            TcpStream::new(inner.stack.clone(), handle, local, peer),
            SocketAddr::V4(peer),
        ))
    }

    /// Sets a deadline for accepts, pending ones included (`None`: none).
    pub fn set_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.inner.with_listener("set", |l| {
            l.deadline = at;
            l.waiters.wake_all();
            Ok(())
        })
    }

    /// An endless iterator over accepted connections.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.addr)
    }

    /// The backlog it was made with.
    pub fn backlog(&self) -> io::Result<usize> {
        self.inner.with_listener("get", |l| Ok(l.backlog))
    }

    /// SYNs dropped so far because the backlog was full.
    pub fn dropped_syns(&self) -> io::Result<u64> {
        let core = self.inner.stack.shared().lock();
        let Some(listener) = core.tcp.listeners.get(&self.inner.id) else {
            return Err(self.inner.err("get", cause::closed()));
        };
        let watch = core.tcp.watch.borrow();
        Ok(watch
            .gate(*listener.addr.ip(), listener.addr.port())
            .map_or(0, |g| g.dropped))
    }

    /// The receive buffer of connections accepted from now on.
    pub fn set_read_buffer(&self, bytes: usize) -> io::Result<()> {
        self.set_opts(|o| {
            o.read_buffer = check_buffer(bytes)?;
            Ok(())
        })
    }

    /// The send buffer of connections accepted from now on.
    pub fn set_write_buffer(&self, bytes: usize) -> io::Result<()> {
        self.set_opts(|o| {
            o.write_buffer = check_buffer(bytes)?;
            Ok(())
        })
    }

    fn set_opts(&self, f: impl FnOnce(&mut Opts) -> io::Result<()>) -> io::Result<()> {
        let inner = &self.inner;
        let mut core = inner.stack.shared().lock();
        let Core { sockets, tcp, .. } = &mut *core;
        let Some(listener) = tcp.listeners.get_mut(&inner.id) else {
            return Err(inner.err("set", cause::closed()));
        };
        f(&mut listener.opts).map_err(|e| inner.err("set", e))?;
        tcp.refresh_listener(inner.id, sockets, Instant::now());
        Ok(())
    }

    /// A second handle on this listener.
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        Ok(TcpListener {
            inner: self.inner.clone(),
        })
    }

    /// Stops listening, for every handle.
    pub fn close(self) -> io::Result<()> {
        self.inner.close()
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

/// The iterator [`TcpListener::incoming`] returns.
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.listener.accept().map(|(conn, _)| conn))
    }
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
    fn try_clone(&self) -> io::Result<Self> {
        TcpListener::try_clone(self)
    }
    fn close(self) -> io::Result<()> {
        TcpListener::close(self)
    }
}

impl Stack {
    /// Connects to `addr` with the stack's defaults.
    pub fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.dialer().dial(addr)
    }

    /// Connects to `addr`, giving up after `timeout`.
    pub fn dial_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.dialer().timeout(timeout).dial(addr)
    }

    /// A [`Dialer`], for options set before the handshake.
    pub fn dialer(&self) -> Dialer {
        Dialer::new(self.clone())
    }

    /// Listens on `addr` with the default backlog (128).
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.listen_config().listen(addr)
    }

    /// Listens on `addr` with `backlog`.
    pub fn listen_backlog(&self, addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
        self.listen_config().backlog(backlog).listen(addr)
    }

    /// A [`ListenConfig`], for options set before connections arrive.
    pub fn listen_config(&self) -> ListenConfig {
        ListenConfig::new(self.clone())
    }

    /// TCP sockets the stack holds: connections (TIME-WAIT included) and listeners'
    /// armed and half-open sockets. Back at its baseline once everything is closed.
    pub fn tcp_socket_count(&self) -> usize {
        let core = self.shared().lock();
        core.sockets
            .iter()
            .filter(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(_)))
            .count()
    }

    /// Waits, at most `limit`, until no connection has data or a FIN the peer has not
    /// acknowledged (a handshake under way holds nothing to deliver). A process about to stop its stack calls
    /// this first: the kernel delivers what a closed socket queued after its process is
    /// gone, but a userspace stack ends with its process. Returns whether it settled.
    pub fn settle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let busy = {
                let core = self.shared().lock();
                core.sockets.iter().any(|(_, socket)| match socket {
                    smoltcp::socket::Socket::Tcp(tcp) => {
                        tcp.send_queue() > 0
                            || matches!(
                                tcp.state(),
                                tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck
                            )
                    }
                    _ => false,
                })
            };
            if !busy {
                return true;
            }
            if Instant::now() >= deadline || self.shared().is_stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The address the stack sends from to reach `dst`: the first address whose network
    /// holds it, else (with a gateway) the first address.
    pub(crate) fn source_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let config = self.config();
        config
            .addrs
            .iter()
            .find(|net| net.contains(dst))
            .or_else(|| config.gateway.and(config.addrs.first()))
            .map(|net| net.addr)
    }
}

impl Network for Stack {
    type Conn = TcpStream;
    type Listener = TcpListener;
    fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        Stack::dial(self, addr)
    }
    fn dial_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        Stack::dial_timeout(self, addr, timeout)
    }
    fn listen_backlog(&self, addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
        Stack::listen_backlog(self, addr, backlog)
    }
}
