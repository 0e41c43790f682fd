//! The `Conn` / `Listener` / `Network` traits: Go's `net.Conn` and `net.Listener` in
//! Rust form, implemented by tapnet's TCP ([`crate::TcpStream`], [`crate::TcpListener`],
//! [`crate::Stack`]) and by the kernel's ([`crate::kernel`]), so an app is written once
//! and runs on either.
//!
//! The shape is Rust's (`Read`/`Write`, `SocketAddr`, `io::Result`, setters on `&self`);
//! the semantics are Go's: deadlines are absolute instants that also apply to calls
//! already blocked, a closed connection fails every later call, and every error names
//! the operation and both endpoints (see [`crate::OpError`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

/// A stream connection, as Go's `net.Conn`.
///
/// `Read` returns `Ok(0)` at end of stream (the peer's FIN), which is not an error.
/// `Write` blocks until all of its buffer is queued; if a deadline passes after part of
/// it was queued, it returns `Ok(n)` with that part, and the next call fails.
pub trait Conn: Read + Write + Send {
    /// This end's address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The other end's address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// Sets both the read and the write deadline. `None` clears them.
    ///
    /// A deadline is an absolute time after which calls fail with `TimedOut`
    /// ("i/o timeout") instead of blocking. It applies to calls already blocked, at once,
    /// as well as to later ones. A deadline in the past fails calls before any I/O;
    /// setting a future one makes the connection usable again.
    fn set_deadline(&self, at: Option<Instant>) -> io::Result<()>;
    /// Sets the deadline for reads only (see [`Conn::set_deadline`]).
    fn set_read_deadline(&self, at: Option<Instant>) -> io::Result<()>;
    /// Sets the deadline for writes only (see [`Conn::set_deadline`]).
    fn set_write_deadline(&self, at: Option<Instant>) -> io::Result<()>;
    /// Shuts down the read half, the write half (sends FIN), or both.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// A second handle on the same connection, for use from another thread.
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Closes the connection for every handle and reports what went wrong, if anything.
    /// Calls blocked on other handles fail with "use of closed network connection".
    fn close(self) -> io::Result<()>
    where
        Self: Sized;
}

/// A stream listener, as Go's `net.Listener`.
pub trait Listener: Send {
    /// The connections it accepts.
    type Conn: Conn + 'static;
    /// Waits for the next connection, in arrival order, and returns it with the peer's
    /// address. Fails once the listener is closed, including while blocked.
    fn accept(&self) -> io::Result<(Self::Conn, SocketAddr)>;
    /// The address it listens on (with the real port when it was asked for port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// A second handle on the same listener, for use from another thread.
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Stops listening, for every handle: blocked and later accepts fail. Connections
    /// already accepted stay open.
    fn close(self) -> io::Result<()>
    where
        Self: Sized;
}

/// Somewhere to dial and listen: a tapnet [`crate::Stack`] or the kernel
/// ([`crate::kernel::Kernel`]).
pub trait Network: Clone + Send + Sync + 'static {
    /// The connections it makes.
    type Conn: Conn + 'static;
    /// Its listeners.
    type Listener: Listener<Conn = Self::Conn> + 'static;
    /// Connects to `addr`, waiting as long as the stack's own retry limits allow.
    fn dial(&self, addr: SocketAddr) -> io::Result<Self::Conn>;
    /// Connects to `addr`, failing with `TimedOut` after `timeout`.
    fn dial_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Conn>;
    /// Listens on `addr` with the default backlog (128). Port 0 picks a free port.
    fn listen(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        self.listen_backlog(addr, DEFAULT_BACKLOG)
    }
    /// Listens on `addr` holding at most `backlog` connections that completed their
    /// handshake and wait for `accept`.
    fn listen_backlog(&self, addr: SocketAddr, backlog: usize) -> io::Result<Self::Listener>;
}

/// The listen backlog used when none is given, as Linux's `somaxconn` default.
pub const DEFAULT_BACKLOG: usize = 128;
