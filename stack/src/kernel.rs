//! The kernel's TCP behind the same [`Conn`] / [`Listener`] / [`Network`] traits as
//! tapnet's, with Go's semantics, so an app (or the contract test suite) runs identically
//! on tapnet and on the kernel.
//!
//! [`Kernel`] is the [`Network`]: it dials and listens with the kernel's sockets and
//! hands out [`TcpStream`] and [`TcpListener`], which carry Go's full semantics:
//!
//! - deadlines are absolute [`Instant`]s that also apply, at once, to calls already
//!   blocked on any handle (moving a deadline while a call is blocked takes effect
//!   immediately); a deadline in the past fails calls before any I/O with `TimedOut`
//!   ("i/o timeout"), and a later future deadline makes the connection usable again;
//! - `write` blocks until its whole buffer is queued, and returns `Ok(n)` with the part
//!   queued when a deadline passes (or the connection fails) midway;
//! - [`TcpStream::close`] / [`TcpListener::close`] close for every handle: calls blocked
//!   on clones fail with "use of closed network connection", and so does every later call;
//! - every error names the operation and both endpoints ([`OpError`]), in Go's words
//!   (`read tcp 127.0.0.1:7->127.0.0.1:50000: i/o timeout`); the kernel's `EAGAIN` never
//!   leaks out;
//! - `TCP_NODELAY` is on for every connection, as in Go.
//!
//! Their inherent methods have the names and signatures of tapnet's
//! [`crate::TcpStream`] and [`crate::TcpListener`] (std-style per-call
//! `set_read_timeout`, `set_keepalive(Option<KeepAlive>)`, `set_linger`, buffer sizes,
//! `accept_timeout`, `incoming`, ...), so code using the concrete types can switch too.
//!
//! Underneath, the socket is non-blocking; a call that would block sleeps in `ppoll(2)`
//! on the socket and on a wake-up eventfd, with a timeout to the current deadline. The
//! eventfd is a one-shot latch per change of the shared state (deadlines, close), fired
//! and replaced by whoever changes it; the private `Shared` type explains why that is
//! race-free with any number of blocked calls.
//!
//! The module also implements [`Conn`] for [`std::net::TcpStream`] and [`Listener`] for
//! [`std::net::TcpListener`], best effort, for code that already holds std sockets. Their
//! limits:
//!
//! - a deadline becomes `SO_RCVTIMEO` / `SO_SNDTIMEO`, relative to the moment it is set
//!   (and, the kernel's timeouts being per call, each later call gets that much afresh);
//!   a call already blocked does not see a moved deadline;
//! - a deadline in the past sets the shortest timeout there is (1 µs; zero would mean
//!   "forever"), so calls that would block fail at once — but data already available is
//!   still returned, where Go would fail before any I/O;
//! - reads and writes are std's own `Read` / `Write`: a timeout surfaces as std's
//!   `WouldBlock` (`EAGAIN`), and those errors are not wrapped in [`OpError`] (the
//!   trait's own methods do translate and wrap theirs);
//! - `close` is `shutdown(Both)` plus drop, so calls blocked on clones wake with EOF or
//!   an error rather than "use of closed network connection"; a listener's `close`
//!   shuts the listening socket down, which wakes blocked `accept`s on Linux, and those
//!   report the closed error.
//!
//! Prefer [`Kernel`] and [`TcpStream`]: they are what the contract tests hold to Go's
//! semantics.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockProtocol, SockType, SockaddrStorage, setsockopt,
    sockopt,
};
use nix::sys::time::TimeSpec;

use crate::error::cause;
use crate::{Conn, KeepAlive, Listener, Network, OpError};

/// The kernel's TCP/IP stack, as a [`Network`]: dials and listens with real sockets and
/// hands out [`TcpStream`]s and [`TcpListener`]s with Go's semantics.
///
/// # Examples
/// ```
/// use stack::kernel::Kernel;
/// use stack::{Conn, Listener, Network};
/// use std::io::{Read, Write};
///
/// let listener = Kernel.listen("127.0.0.1:0".parse()?)?;
/// let mut client = Kernel.dial(listener.local_addr()?)?;
/// let (mut server, _) = listener.accept()?;
/// client.write_all(b"hi")?;
/// let mut buf = [0; 2];
/// server.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl Network for Kernel {
    type Conn = TcpStream;
    type Listener = TcpListener;

    fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(addr)
    }

    fn dial_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        TcpStream::connect_timeout(addr, timeout)
    }

    fn listen_backlog(&self, addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
        TcpListener::bind_backlog(addr, backlog)
    }
}

/// Which deadline a call obeys.
#[derive(Clone, Copy, Debug)]
enum Dir {
    /// Reads, and a listener's accepts.
    Read,
    /// Writes.
    Write,
}

/// What every handle on one socket shares: deadlines, the closed flag, and the wake-up
/// for calls blocked in `ppoll`.
///
/// # Wake-up design
///
/// A blocked call must notice, at once, a change made by another thread (a deadline
/// set or moved, a close, a read shutdown), and many calls — a reader, a writer, an
/// accept on each of several clones — may be blocked at the same time. A single shared
/// eventfd does not do this well: whoever drains it may starve another waiter that has
/// not looked yet, and one that is never drained stays readable and makes `ppoll` spin.
///
/// So the eventfd is a one-shot *latch* for one generation of the state:
///
/// - A caller about to block takes, under the state's lock, both its view of the state
///   (closed? which deadline?) and the current latch (created lazily if there is none),
///   then sleeps in `ppoll` on the socket and the latch, with a timeout to the deadline
///   it saw.
/// - Whoever changes the state does so under the same lock, and in the same critical
///   section *takes the latch out* of the state and writes it. The latch stays readable
///   forever (nobody reads it), so every call sleeping on it — and every call that took
///   it but has not entered `ppoll` yet — wakes up and goes round again; they all see
///   the new state and take the next latch, a fresh eventfd, made lazily by the first
///   of them that blocks again. The old eventfd is closed when the last waiter holding
///   it lets go (it is shared through an `Arc`).
///
/// Since a waiter reads the state and takes the latch in one critical section, and a
/// change updates the state and fires that very latch in one critical section, no
/// change can slip in between a waiter's look and its sleep: either the waiter sees the
/// change, or the change fires the latch it sleeps on. Nobody drains, so nobody starves;
/// a fired latch is never polled again, so nobody spins. The cost is one eventfd per
/// change that found a blocked call (changes with nobody blocked just take the lock), and
/// no generation counter is needed: the latch *is* the generation.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

/// The mutable part of [`Shared`].
#[derive(Debug, Default)]
struct State {
    read_deadline: Option<Instant>,
    write_deadline: Option<Instant>,
    /// std-style per-call limits, turned into a deadline at the start of each call.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Set by `close` on any handle.
    closed: bool,
    /// Set by `shutdown(Read)`: reads return `Ok(0)` from then on.
    read_shut: bool,
    /// The current generation's latch, if a waiter has asked for one.
    latch: Option<Arc<EventFd>>,
}

impl State {
    fn deadline(&self, dir: Dir) -> Option<Instant> {
        match dir {
            Dir::Read => self.read_deadline,
            Dir::Write => self.write_deadline,
        }
    }

    /// The instant a call starting now must finish by, from the per-call timeout.
    fn call_limit(&self, dir: Dir) -> Option<Instant> {
        let timeout = match dir {
            Dir::Read => self.read_timeout,
            Dir::Write => self.write_timeout,
        };
        deadline_in(timeout)
    }

    /// The state changed: wake everyone blocked on the current generation.
    fn changed(&mut self) {
        if let Some(latch) = self.latch.take() {
            // Only fails if the counter would overflow, which one write cannot do.
            let _ = latch.write(1);
        }
    }
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails if closed; else returns the deadline that applies (the earlier of the
    /// handle's and `extra`), failing if it has passed.
    fn check(st: &State, dir: Dir, extra: Option<Instant>) -> io::Result<Option<Instant>> {
        if st.closed {
            return Err(cause::closed());
        }
        let deadline = match (st.deadline(dir), extra) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(cause::timeout());
        }
        Ok(deadline)
    }

    fn closed(&self) -> bool {
        self.lock().closed
    }

    /// Sleeps until `fd` is ready for `events`, the deadline passes, or the state
    /// changes; fails at once if closed or past the deadline. The caller then goes
    /// round its loop, re-checking everything.
    fn wait(
        &self,
        fd: BorrowedFd<'_>,
        events: PollFlags,
        dir: Dir,
        extra: Option<Instant>,
    ) -> io::Result<()> {
        let (latch, deadline) = {
            let mut st = self.lock();
            let deadline = Shared::check(&st, dir, extra)?;
            if matches!(dir, Dir::Read) && st.read_shut {
                // Shut down since the caller looked: let it go round and see.
                return Ok(());
            }
            let latch = match &st.latch {
                Some(latch) => latch.clone(),
                None => {
                    let latch = Arc::new(EventFd::from_value_and_flags(
                        0,
                        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
                    )?);
                    st.latch = Some(latch.clone());
                    latch
                }
            };
            (latch, deadline)
        };
        let timeout =
            deadline.map(|d| TimeSpec::from_duration(d.saturating_duration_since(Instant::now())));
        let mut fds = [
            PollFd::new(fd, events),
            PollFd::new(latch.as_fd(), PollFlags::POLLIN),
        ];
        match ppoll(&mut fds, timeout, None) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Updates the state and wakes every blocked call.
    fn update(&self, f: impl FnOnce(&mut State)) -> io::Result<()> {
        let mut st = self.lock();
        if st.closed {
            return Err(cause::closed());
        }
        f(&mut st);
        st.changed();
        Ok(())
    }

    /// Marks closed and wakes every blocked call; fails if it already was.
    fn close(&self) -> io::Result<()> {
        self.update(|st| st.closed = true)
    }
}

/// Puts a kernel error in Go's words where Go has its own, so messages read the same on
/// tapnet and on the kernel. `EAGAIN` can only mean a timeout here.
fn go_words(err: io::Error) -> io::Error {
    match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ECONNREFUSED) => cause::refused(),
        Some(Errno::ECONNRESET) => cause::reset(),
        Some(Errno::EPIPE) => cause::broken_pipe(),
        Some(Errno::ETIMEDOUT) => cause::gave_up(),
        Some(Errno::EAGAIN) => cause::timeout(),
        _ if err.kind() == ErrorKind::WouldBlock => cause::timeout(),
        _ => err,
    }
}

/// Wraps a dial error, as `dial tcp 10.0.0.1:80: connection refused`.
fn dial_error(addr: SocketAddr, err: io::Error) -> io::Error {
    OpError::wrap("dial", None, Some(addr), go_words(err))
}

/// Whole seconds, rounded up, at least `min`, at most `max` (for socket options in
/// seconds).
fn secs(d: Duration, min: u64, max: u64) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.clamp(min, max)
}

/// Rejects a zero timeout, as std does (zero would read as "no limit" to the kernel).
fn check_timeout(timeout: Option<Duration>) -> io::Result<()> {
    if timeout == Some(Duration::ZERO) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(())
}

/// A relative timeout as an absolute deadline from now (`None` stays `None`).
fn deadline_in(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| {
        let now = Instant::now();
        // Far enough to be "never" if the addition overflows.
        now.checked_add(t)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
    })
}

/// A kernel TCP connection with Go's semantics (see the [module docs](self)).
///
/// Clones made by [`TcpStream::try_clone`] share deadlines and the closed state, so one
/// thread can read while another writes and a third sets deadlines or closes.
/// Dropping the last handle closes the socket.
pub struct TcpStream {
    inner: std::net::TcpStream,
    shared: Arc<Shared>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("fd", &self.inner.as_raw_fd())
            .finish()
    }
}

impl TcpStream {
    /// Connects to `addr`, waiting as long as the kernel's SYN retries allow.
    pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let inner = std::net::TcpStream::connect(addr).map_err(|e| dial_error(addr, e))?;
        TcpStream::setup(inner, Some(addr), true).map_err(|e| dial_error(addr, e))
    }

    /// Connects to `addr`, failing with `TimedOut` ("i/o timeout") after `timeout`. A
    /// zero timeout fails at once.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(dial_error(addr, cause::timeout()));
        }
        let inner = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
            // std's own timeout carries no OS error; the kernel's ETIMEDOUT (it gave up
            // retrying the SYN) does, and keeps its own words.
            if e.kind() == ErrorKind::TimedOut && e.raw_os_error().is_none() {
                dial_error(addr, cause::timeout())
            } else {
                dial_error(addr, e)
            }
        })?;
        TcpStream::setup(inner, Some(addr), true).map_err(|e| dial_error(addr, e))
    }

    /// Wraps a connected std stream: makes it non-blocking (which also affects every
    /// other descriptor on the same socket) and leaves `TCP_NODELAY` as it is.
    pub fn from_std(inner: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::setup(inner, None, false)
    }

    fn setup(
        inner: std::net::TcpStream,
        peer: Option<SocketAddr>,
        nodelay: bool,
    ) -> io::Result<TcpStream> {
        inner.set_nonblocking(true)?;
        if nodelay {
            inner.set_nodelay(true)?;
        }
        let local = inner.local_addr()?;
        let peer = match peer {
            Some(peer) => peer,
            None => inner.peer_addr()?,
        };
        Ok(TcpStream {
            inner,
            shared: Shared::new(),
            local,
            peer,
        })
    }

    fn wrap(&self, op: &'static str, err: io::Error) -> io::Error {
        OpError::wrap(op, Some(self.local), Some(self.peer), go_words(err))
    }

    /// This end's address (remembered, so it answers even after `close`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// The other end's address (remembered, so it answers even after `close` or a reset).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    /// Sets both deadlines (see [`Conn::set_deadline`]). `None` clears them.
    pub fn set_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.shared
            .update(|st| {
                st.read_deadline = at;
                st.write_deadline = at;
            })
            .map_err(|e| self.wrap("set", e))
    }

    /// Sets the read deadline (see [`Conn::set_deadline`]). `None` clears it.
    pub fn set_read_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.shared
            .update(|st| st.read_deadline = at)
            .map_err(|e| self.wrap("set", e))
    }

    /// Sets the write deadline (see [`Conn::set_deadline`]). `None` clears it.
    pub fn set_write_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.shared
            .update(|st| st.write_deadline = at)
            .map_err(|e| self.wrap("set", e))
    }

    /// std-style: each read waits at most `timeout` (`None`: no limit), counted from the
    /// start of that read. Combined with the read deadline, the earlier wins. As
    /// tapnet's [`crate::TcpStream::set_read_timeout`].
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout).map_err(|e| self.wrap("set", e))?;
        self.shared
            .update(|st| st.read_timeout = timeout)
            .map_err(|e| self.wrap("set", e))
    }

    /// std-style: each write waits at most `timeout` (`None`: no limit); see
    /// [`TcpStream::set_read_timeout`].
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout).map_err(|e| self.wrap("set", e))?;
        self.shared
            .update(|st| st.write_timeout = timeout)
            .map_err(|e| self.wrap("set", e))
    }

    /// The per-read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.option("get", |_| Ok(self.shared.lock().read_timeout))
    }

    /// The per-write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.option("get", |_| Ok(self.shared.lock().write_timeout))
    }

    /// Shuts down the read half (later reads return `Ok(0)`, at once, including reads
    /// already blocked), the write half (sends FIN), or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.shared
                .update(|st| st.read_shut = true)
                .map_err(|e| self.wrap("shutdown", e))?;
        } else if self.shared.closed() {
            return Err(self.wrap("shutdown", cause::closed()));
        }
        match self.inner.shutdown(how) {
            Ok(()) => Ok(()),
            // The peer already reset the connection: nothing left to shut down.
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(self.wrap("shutdown", e)),
        }
    }

    /// A second handle on the same connection, sharing deadlines and the closed state.
    /// Fails (op `dup`) once the connection is closed.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        if self.shared.closed() {
            return Err(self.wrap("dup", cause::closed()));
        }
        Ok(TcpStream {
            inner: self.inner.try_clone().map_err(|e| self.wrap("dup", e))?,
            shared: self.shared.clone(),
            local: self.local,
            peer: self.peer,
        })
    }

    /// Closes the connection for every handle: calls blocked on clones, and every later
    /// call on them, fail with "use of closed network connection". Fails the same way if
    /// it was already closed.
    ///
    /// When this is the only handle, it just closes the socket, as Go does (so the
    /// kernel's `close(2)` rules apply: a reset if unread data remains or if
    /// [`TcpStream::set_linger`] asked for `Some(ZERO)`). When clones remain, it also
    /// shuts the connection down (FIN) so the peer sees the close now; the socket itself
    /// is released when the last clone is dropped.
    pub fn close(self) -> io::Result<()> {
        self.shared.close().map_err(|e| self.wrap("close", e))?;
        if Arc::strong_count(&self.shared) > 1 {
            match self.inner.shutdown(Shutdown::Both) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => {}
                Err(e) => return Err(self.wrap("close", e)),
            }
        }
        Ok(())
    }

    /// Runs a socket option call, failing first if the connection is closed (as Go
    /// does); errors name `op` ("set" or "get").
    fn option<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&std::net::TcpStream) -> io::Result<T>,
    ) -> io::Result<T> {
        if self.shared.closed() {
            return Err(self.wrap(op, cause::closed()));
        }
        f(&self.inner).map_err(|e| self.wrap(op, e))
    }

    /// Turns Nagle's algorithm off (`true`, the default here as in Go) or on.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.option("set", |s| s.set_nodelay(nodelay))
    }

    /// Whether Nagle's algorithm is off.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.option("get", |s| s.nodelay())
    }

    /// Sets keepalive (`None`: off), at once, as tapnet's
    /// [`crate::TcpStream::set_keepalive`]. The kernel counts in whole seconds: `idle`
    /// and `interval` are rounded up (to at most 32767 s), and `count` is capped at 127.
    ///
    /// # Errors
    /// `InvalidInput` if `idle`, `interval` or `count` is zero.
    pub fn set_keepalive(&self, keepalive: Option<KeepAlive>) -> io::Result<()> {
        if let Some(ka) = keepalive {
            ka.validate().map_err(|e| self.wrap("set", e))?;
        }
        self.option("set", |s| {
            match keepalive {
                None => setsockopt(s, sockopt::KeepAlive, &false)?,
                Some(ka) => {
                    let idle = secs(ka.idle(), 1, 32767) as u32;
                    let interval = secs(ka.interval(), 1, 32767) as u32;
                    setsockopt(s, sockopt::TcpKeepIdle, &idle)?;
                    setsockopt(s, sockopt::TcpKeepInterval, &interval)?;
                    setsockopt(s, sockopt::TcpKeepCount, &ka.count().clamp(1, 127))?;
                    setsockopt(s, sockopt::KeepAlive, &true)?;
                }
            }
            Ok(())
        })
    }

    /// The keepalive settings, as the kernel holds them (in whole seconds).
    pub fn keepalive(&self) -> io::Result<Option<KeepAlive>> {
        self.option("get", |s| {
            if !socket::getsockopt(s, sockopt::KeepAlive)? {
                return Ok(None);
            }
            let idle = socket::getsockopt(s, sockopt::TcpKeepIdle)?;
            let interval = socket::getsockopt(s, sockopt::TcpKeepInterval)?;
            let count = socket::getsockopt(s, sockopt::TcpKeepCount)?;
            Ok(Some(
                KeepAlive::new()
                    .with_idle(Duration::from_secs(idle.into()))
                    .with_interval(Duration::from_secs(interval.into()))
                    .with_count(count),
            ))
        })
    }

    /// Sets `SO_LINGER`: `None` (the default) lets the final close return at once while
    /// the kernel sends what is queued in the background; `Some(ZERO)` makes the final
    /// close reset the connection and discard unsent data; `Some(t)` makes the final
    /// close wait up to `t` (whole seconds, rounded up) for queued data to be sent.
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        let value = libc::linger {
            l_onoff: i32::from(linger.is_some()),
            l_linger: linger.map_or(0, |t| secs(t, 0, i32::MAX as u64) as i32),
        };
        self.option("set", |s| Ok(setsockopt(s, sockopt::Linger, &value)?))
    }

    /// The linger setting, as the kernel holds it (in whole seconds).
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        self.option("get", |s| {
            let l = socket::getsockopt(s, sockopt::Linger)?;
            Ok((l.l_onoff != 0)
                .then(|| Duration::from_secs(l.l_linger.max(0).unsigned_abs().into())))
        })
    }

    /// Sets the receive buffer size (`SO_RCVBUF`). Linux doubles the value for its own
    /// bookkeeping and turns off receive buffer auto-tuning.
    pub fn set_read_buffer(&self, bytes: usize) -> io::Result<()> {
        self.option("set", |s| Ok(setsockopt(s, sockopt::RcvBuf, &bytes)?))
    }

    /// Sets the send buffer size (`SO_SNDBUF`). Linux doubles the value for its own
    /// bookkeeping and turns off send buffer auto-tuning.
    pub fn set_write_buffer(&self, bytes: usize) -> io::Result<()> {
        self.option("set", |s| Ok(setsockopt(s, sockopt::SndBuf, &bytes)?))
    }

    /// The receive buffer size as the kernel reports it (`SO_RCVBUF`, doubled on Linux).
    pub fn read_buffer(&self) -> io::Result<usize> {
        self.option("get", |s| Ok(socket::getsockopt(s, sockopt::RcvBuf)?))
    }

    /// The send buffer size as the kernel reports it (`SO_SNDBUF`, doubled on Linux).
    pub fn write_buffer(&self) -> io::Result<usize> {
        self.option("get", |s| Ok(socket::getsockopt(s, sockopt::SndBuf)?))
    }

    /// The underlying std stream. It is in non-blocking mode; don't change that while
    /// this handle is in use.
    pub fn as_std(&self) -> &std::net::TcpStream {
        &self.inner
    }

    /// This handle's std stream, leaving the shared deadlines behind. It stays in
    /// non-blocking mode, since that mode belongs to the socket and clones may still be
    /// using it; call `set_nonblocking(false)` if there are none.
    pub fn into_std(self) -> std::net::TcpStream {
        self.inner
    }

    fn read_inner(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut limit = None;
        let mut first = true;
        loop {
            {
                let st = self.shared.lock();
                if first {
                    limit = st.call_limit(Dir::Read);
                    first = false;
                }
                if st.closed {
                    return Err(cause::closed());
                }
                // As Go: an empty read succeeds without looking at the deadline.
                if st.read_shut || buf.is_empty() {
                    return Ok(0);
                }
                Shared::check(&st, Dir::Read, limit)?;
            }
            match (&self.inner).read(buf) {
                // An EOF racing with our own close is the close.
                Ok(0) if self.shared.closed() => return Err(cause::closed()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) if self.shared.closed() => return Err(cause::closed()),
                Err(e) => return Err(e),
            }
            self.shared
                .wait(self.inner.as_fd(), PollFlags::POLLIN, Dir::Read, limit)?;
        }
    }

    fn write_inner(&self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        // Once part of the buffer is queued, a failure reports that part; the next call
        // fails.
        let partial = |done: usize, err: io::Error| if done > 0 { Ok(done) } else { Err(err) };
        let mut limit = None;
        let mut first = true;
        loop {
            {
                let st = self.shared.lock();
                if first {
                    limit = st.call_limit(Dir::Write);
                    first = false;
                }
                if let Err(e) = Shared::check(&st, Dir::Write, limit) {
                    return partial(done, e);
                }
            }
            if done == buf.len() {
                return Ok(done);
            }
            match (&self.inner).write(&buf[done..]) {
                Ok(0) => {}
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) if self.shared.closed() => return partial(done, cause::closed()),
                Err(e) => return partial(done, e),
            }
            if let Err(e) =
                self.shared
                    .wait(self.inner.as_fd(), PollFlags::POLLOUT, Dir::Write, limit)
            {
                return partial(done, e);
            }
        }
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf).map_err(|e| self.wrap("read", e))
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_inner(buf).map_err(|e| self.wrap("write", e))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

    fn try_clone(&self) -> io::Result<TcpStream> {
        TcpStream::try_clone(self)
    }

    fn close(self) -> io::Result<()> {
        TcpStream::close(self)
    }
}

/// A kernel TCP listener with Go's semantics: `accept` honours a deadline (also when
/// already blocked), and [`TcpListener::close`] makes blocked and later accepts on every
/// handle fail with "use of closed network connection". Accepted connections are
/// [`TcpStream`]s with `TCP_NODELAY` on.
pub struct TcpListener {
    inner: std::net::TcpListener,
    shared: Arc<Shared>,
    local: SocketAddr,
    /// The backlog asked for, if this module made the listener.
    backlog: Option<usize>,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.local)
            .field("fd", &self.inner.as_raw_fd())
            .finish()
    }
}

impl TcpListener {
    /// Listens on `addr` with the default backlog ([`crate::DEFAULT_BACKLOG`]).
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind_backlog(addr, crate::DEFAULT_BACKLOG)
    }

    /// Listens on `addr` with room for `backlog` connections waiting for `accept`
    /// (clamped to the kernel's `SOMAXCONN`), with `SO_REUSEADDR` on, as Go does.
    pub fn bind_backlog(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
        let listen = || -> nix::Result<OwnedFd> {
            let family = match addr {
                SocketAddr::V4(_) => AddressFamily::Inet,
                SocketAddr::V6(_) => AddressFamily::Inet6,
            };
            let fd = socket::socket(
                family,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                SockProtocol::Tcp,
            )?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
            let max = usize::try_from(i32::from(Backlog::MAXCONN)).unwrap_or(0);
            let backlog = i32::try_from(backlog.min(max)).unwrap_or(0);
            socket::listen(&fd, Backlog::new(backlog)?)?;
            Ok(fd)
        };
        let fd = listen().map_err(|e| OpError::wrap("listen", None, Some(addr), e.into()))?;
        let mut listener = TcpListener::from_std(std::net::TcpListener::from(fd))
            .map_err(|e| OpError::wrap("listen", None, Some(addr), e))?;
        listener.backlog = Some(backlog);
        Ok(listener)
    }

    /// Wraps a listening std listener, making it non-blocking (which also affects every
    /// other descriptor on the same socket).
    pub fn from_std(inner: std::net::TcpListener) -> io::Result<TcpListener> {
        inner.set_nonblocking(true)?;
        let local = inner.local_addr()?;
        Ok(TcpListener {
            inner,
            shared: Shared::new(),
            local,
            backlog: None,
        })
    }

    fn wrap(&self, op: &'static str, err: io::Error) -> io::Error {
        OpError::wrap(op, None, Some(self.local), go_words(err))
    }

    /// Waits for the next connection until the deadline, if any.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept_until(None)
    }

    /// Waits for the next connection for at most `timeout` (or until the listener's
    /// deadline, if that comes first), then fails with `TimedOut` ("i/o timeout").
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept_until(deadline_in(Some(timeout)))
    }

    fn accept_until(&self, extra: Option<Instant>) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept_inner(extra).map_err(|e| self.wrap("accept", e))
    }

    fn accept_inner(&self, extra: Option<Instant>) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            Shared::check(&self.shared.lock(), Dir::Read, extra)?;
            match self.inner.accept() {
                Ok((stream, peer)) => {
                    return Ok((TcpStream::setup(stream, Some(peer), true)?, peer));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Interrupted, or a connection reset before we got to it: next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(_) if self.shared.closed() => return Err(cause::closed()),
                Err(e) => return Err(e),
            }
            self.shared
                .wait(self.inner.as_fd(), PollFlags::POLLIN, Dir::Read, extra)?;
        }
    }

    /// Sets the deadline for accepts, including ones already blocked. `None` clears it.
    pub fn set_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        self.shared
            .update(|st| st.read_deadline = at)
            .map_err(|e| self.wrap("set", e))
    }

    /// An endless iterator over accepted connections, as std's and tapnet's: each item
    /// is what [`TcpListener::accept`] returned, errors included (once the listener is
    /// closed, every item is the closed error, so stop at the first error you can't
    /// handle).
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address it listens on (with the real port when it was asked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// The backlog it was made with (as asked; the kernel caps it at `somaxconn`).
    /// `Unsupported` for a listener made by [`TcpListener::from_std`].
    pub fn backlog(&self) -> io::Result<usize> {
        self.option("get", |_| {
            self.backlog.ok_or_else(|| {
                io::Error::new(
                    ErrorKind::Unsupported,
                    "backlog of a listener made elsewhere",
                )
            })
        })
    }

    /// The receive buffer (`SO_RCVBUF`) of connections accepted from now on: the kernel
    /// copies the listener's to each. Linux doubles the value for its own bookkeeping.
    pub fn set_read_buffer(&self, bytes: usize) -> io::Result<()> {
        self.option("set", |l| Ok(setsockopt(l, sockopt::RcvBuf, &bytes)?))
    }

    /// The send buffer (`SO_SNDBUF`) of connections accepted from now on.
    pub fn set_write_buffer(&self, bytes: usize) -> io::Result<()> {
        self.option("set", |l| Ok(setsockopt(l, sockopt::SndBuf, &bytes)?))
    }

    /// Runs a socket option call, failing first if the listener is closed.
    fn option<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&std::net::TcpListener) -> io::Result<T>,
    ) -> io::Result<T> {
        if self.shared.closed() {
            return Err(self.wrap(op, cause::closed()));
        }
        f(&self.inner).map_err(|e| self.wrap(op, e))
    }

    /// A second handle on the same listener, sharing its deadline and closed state.
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        if self.shared.closed() {
            return Err(self.wrap("dup", cause::closed()));
        }
        Ok(TcpListener {
            inner: self.inner.try_clone().map_err(|e| self.wrap("dup", e))?,
            shared: self.shared.clone(),
            local: self.local,
            backlog: self.backlog,
        })
    }

    /// Stops listening, for every handle: blocked and later accepts fail with "use of
    /// closed network connection". Connections already accepted stay open. Fails the same
    /// way if it was already closed.
    pub fn close(self) -> io::Result<()> {
        self.shared.close().map_err(|e| self.wrap("close", e))?;
        // Stop listening now, even if clones keep the descriptor open.
        match socket::shutdown(self.inner.as_raw_fd(), socket::Shutdown::Both) {
            Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(self.wrap("close", e.into())),
        }
    }

    /// The underlying std listener. It is in non-blocking mode.
    pub fn as_std(&self) -> &std::net::TcpListener {
        &self.inner
    }

    /// This handle's std listener, in non-blocking mode (see [`TcpStream::into_std`]).
    pub fn into_std(self) -> std::net::TcpListener {
        self.inner
    }
}

/// The iterator from [`TcpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(stream, _)| stream))
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

    fn try_clone(&self) -> io::Result<TcpListener> {
        TcpListener::try_clone(self)
    }

    fn close(self) -> io::Result<()> {
        TcpListener::close(self)
    }
}

/// A deadline as a std socket timeout, relative to now: `None` stays `None`, and a
/// deadline already past becomes the shortest timeout there is, since zero would mean
/// "forever".
fn std_timeout(at: Option<Instant>) -> Option<Duration> {
    at.map(|at| {
        at.saturating_duration_since(Instant::now())
            .max(Duration::from_micros(1))
    })
}

/// Best effort, with the limits in the [module docs](self): deadlines become
/// `SO_RCVTIMEO` / `SO_SNDTIMEO` relative to when they are set, reads and writes are
/// std's own, `close` is shutdown plus drop.
impl Conn for std::net::TcpStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        std::net::TcpStream::local_addr(self)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        std::net::TcpStream::peer_addr(self)
    }

    fn set_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        Conn::set_read_deadline(self, at)?;
        Conn::set_write_deadline(self, at)
    }

    fn set_read_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, std_timeout(at))
            .map_err(|e| std_wrap(self, "set", e))
    }

    fn set_write_deadline(&self, at: Option<Instant>) -> io::Result<()> {
        std::net::TcpStream::set_write_timeout(self, std_timeout(at))
            .map_err(|e| std_wrap(self, "set", e))
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        std::net::TcpStream::shutdown(self, how).map_err(|e| std_wrap(self, "shutdown", e))
    }

    fn try_clone(&self) -> io::Result<std::net::TcpStream> {
        std::net::TcpStream::try_clone(self).map_err(|e| std_wrap(self, "dup", e))
    }

    fn close(self) -> io::Result<()> {
        match std::net::TcpStream::shutdown(&self, Shutdown::Both) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(std_wrap(&self, "close", e)),
        }
    }
}

/// Wraps an error from a std stream, naming whichever endpoints it still knows.
fn std_wrap(stream: &std::net::TcpStream, op: &'static str, err: io::Error) -> io::Error {
    OpError::wrap(
        op,
        stream.local_addr().ok(),
        stream.peer_addr().ok(),
        go_words(err),
    )
}

/// Best effort, with the limits in the [module docs](self): accepted streams get
/// `TCP_NODELAY`, `close` shuts the listening socket down (waking accepts blocked on
/// clones, which then fail with the closed error) and drops it.
impl Listener for std::net::TcpListener {
    type Conn = std::net::TcpStream;

    fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        let wrap = |e: io::Error| {
            // A listening socket that was shut down answers EINVAL: it was closed.
            let e = if e.raw_os_error() == Some(libc::EINVAL) {
                cause::closed()
            } else {
                go_words(e)
            };
            OpError::wrap(
                "accept",
                None,
                std::net::TcpListener::local_addr(self).ok(),
                e,
            )
        };
        let (stream, peer) = std::net::TcpListener::accept(self).map_err(wrap)?;
        stream.set_nodelay(true).map_err(wrap)?;
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        std::net::TcpListener::local_addr(self)
    }

    fn try_clone(&self) -> io::Result<std::net::TcpListener> {
        std::net::TcpListener::try_clone(self)
    }

    fn close(self) -> io::Result<()> {
        match socket::shutdown(self.as_raw_fd(), socket::Shutdown::Both) {
            Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(OpError::wrap(
                "close",
                None,
                std::net::TcpListener::local_addr(&self).ok(),
                e.into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    const LOOPBACK: &str = "127.0.0.1:0";

    /// A connected pair on loopback: (client, server).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = Kernel.listen(LOOPBACK.parse().unwrap()).unwrap();
        let client = Kernel
            .dial_timeout(listener.local_addr().unwrap(), Duration::from_secs(5))
            .unwrap();
        let (server, _) = listener.accept_timeout(Duration::from_secs(5)).unwrap();
        (client, server)
    }

    /// Runs `f` on another thread and returns its result, or panics after `limit`.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).expect("took too long")
    }

    fn assert_timeout(err: &io::Error) {
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().ends_with(": i/o timeout"), "{err}");
    }

    fn assert_closed(err: &io::Error) {
        assert_eq!(err.kind(), ErrorKind::NotConnected, "{err}");
        assert!(
            err.to_string()
                .ends_with(": use of closed network connection"),
            "{err}"
        );
    }

    #[test]
    fn dial_and_echo() {
        let listener = Kernel.listen(LOOPBACK.parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept_timeout(Duration::from_secs(5)).unwrap();
            conn.set_deadline(Some(Instant::now() + Duration::from_secs(5)))
                .unwrap();
            assert!(conn.nodelay().unwrap());
            let mut buf = [0; 1024];
            loop {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n]).unwrap();
            }
            conn.close().unwrap();
        });
        let mut conn = Kernel.dial(addr).unwrap();
        assert!(conn.nodelay().unwrap());
        assert_eq!(conn.peer_addr().unwrap(), addr);
        conn.set_deadline(Some(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        let msg = b"hello, kernel";
        conn.write_all(msg).unwrap();
        let mut got = [0; 13];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(&got, msg);
        conn.shutdown(Shutdown::Write).unwrap();
        assert_eq!(conn.read(&mut got).unwrap(), 0, "EOF after the echo");
        server.join().unwrap();
        conn.close().unwrap();
    }

    #[test]
    fn past_deadline_fails_before_io() {
        let (mut client, mut server) = pair();
        server.write_all(b"data waiting").unwrap();
        thread::sleep(Duration::from_millis(20));
        client
            .set_deadline(Some(Instant::now() - Duration::from_millis(1)))
            .unwrap();
        let mut buf = [0; 16];
        assert_timeout(&client.read(&mut buf).unwrap_err());
        assert_timeout(&client.write(b"x").unwrap_err());
        // Nothing was consumed or sent.
        client.set_deadline(None).unwrap();
        let n = client.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"data waiting");
        server
            .set_read_deadline(Some(Instant::now() + Duration::from_millis(50)))
            .unwrap();
        assert_timeout(&server.read(&mut buf).unwrap_err());
    }

    #[test]
    fn error_text_names_both_ends() {
        let (client, _server) = pair();
        client
            .set_read_deadline(Some(Instant::now() - Duration::from_secs(1)))
            .unwrap();
        let err = (&client).read(&mut [0; 4]).unwrap_err();
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(
            err.to_string(),
            format!("read tcp {local}->{peer}: i/o timeout")
        );
        assert!(err.to_string().starts_with("read tcp 127.0.0.1:"));
        let op = err.get_ref().unwrap().downcast_ref::<OpError>().unwrap();
        assert_eq!(op.op, "read");
    }

    #[test]
    fn deadline_set_while_blocked_wakes_the_read() {
        let (client, _server) = pair();
        let reader = client.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send((&reader).read(&mut [0; 4]));
        });
        // Let it block, with no deadline.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        let set = Instant::now();
        client
            .set_read_deadline(Some(Instant::now() - Duration::from_secs(1)))
            .unwrap();
        let res = rx.recv_timeout(Duration::from_secs(5)).expect("not woken");
        let woke = set.elapsed();
        assert_timeout(&res.unwrap_err());
        assert!(woke < Duration::from_millis(50), "woken after {woke:?}");
    }

    #[test]
    fn deadline_moved_later_while_blocked_does_not_fire_early() {
        let (client, _server) = pair();
        let start = Instant::now();
        client
            .set_read_deadline(Some(start + Duration::from_millis(100)))
            .unwrap();
        let reader = client.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(((&reader).read(&mut [0; 4]), Instant::now()));
        });
        thread::sleep(Duration::from_millis(30));
        client
            .set_read_deadline(Some(start + Duration::from_millis(400)))
            .unwrap();
        let (res, at) = rx.recv_timeout(Duration::from_secs(5)).expect("stuck");
        assert_timeout(&res.unwrap_err());
        let took = at - start;
        assert!(took >= Duration::from_millis(400), "fired early: {took:?}");
        assert!(took < Duration::from_secs(2), "fired late: {took:?}");
    }

    #[test]
    fn deadline_moved_earlier_while_blocked_fires_then() {
        let (client, _server) = pair();
        let start = Instant::now();
        client
            .set_read_deadline(Some(start + Duration::from_secs(10)))
            .unwrap();
        let reader = client.try_clone().unwrap();
        let res = within(Duration::from_secs(5), move || {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let _ = tx.send((&reader).read(&mut [0; 4]));
            });
            thread::sleep(Duration::from_millis(30));
            client
                .set_read_deadline(Some(start + Duration::from_millis(150)))
                .unwrap();
            rx.recv_timeout(Duration::from_secs(4)).expect("stuck")
        });
        assert_timeout(&res.unwrap_err());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn read_timeout_is_per_call() {
        let (client, mut server) = pair();
        let err = client.set_read_timeout(Some(Duration::ZERO)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        client
            .set_read_timeout(Some(Duration::from_millis(80)))
            .unwrap();
        assert_eq!(
            client.read_timeout().unwrap(),
            Some(Duration::from_millis(80))
        );
        // Each read gets its own 80 ms: two in a row take about 160 ms.
        let start = Instant::now();
        assert_timeout(&(&client).read(&mut [0; 4]).unwrap_err());
        assert!(start.elapsed() >= Duration::from_millis(80));
        assert_timeout(&(&client).read(&mut [0; 4]).unwrap_err());
        assert!(start.elapsed() >= Duration::from_millis(160));
        // The earlier of timeout and deadline wins.
        client
            .set_read_deadline(Some(Instant::now() + Duration::from_millis(10)))
            .unwrap();
        let start = Instant::now();
        assert_timeout(&(&client).read(&mut [0; 4]).unwrap_err());
        assert!(start.elapsed() < Duration::from_millis(80));
        client.set_read_deadline(None).unwrap();
        server.write_all(b"ok").unwrap();
        let mut buf = [0; 4];
        assert_eq!((&client).read(&mut buf).unwrap(), 2);
        client.set_read_timeout(None).unwrap();
        client
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(
            client.write_timeout().unwrap(),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn future_deadline_after_expiry_works_again() {
        let (mut client, mut server) = pair();
        client
            .set_read_deadline(Some(Instant::now() + Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0; 4];
        assert_timeout(&client.read(&mut buf).unwrap_err());
        assert_timeout(&client.read(&mut buf).unwrap_err());
        client
            .set_read_deadline(Some(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        server.write_all(b"ok").unwrap();
        let n = client.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ok");
    }

    #[test]
    fn concurrent_reader_writer_and_deadline_setter() {
        let (client, server) = pair();
        let reader = client.try_clone().unwrap();
        let writer = client.try_clone().unwrap();
        // Peer: not reading, not writing, so both sides block.
        writer.set_write_buffer(4096).unwrap();
        server.set_read_buffer(4096).unwrap();
        let read = thread::spawn(move || (&reader).read(&mut [0; 4]));
        let write = thread::spawn(move || (&writer).write(&vec![0; 8 << 20]));
        thread::sleep(Duration::from_millis(50));
        let set = Instant::now();
        client
            .set_deadline(Some(Instant::now() - Duration::from_millis(1)))
            .unwrap();
        let r = within(Duration::from_secs(5), move || read.join().unwrap());
        let w = within(Duration::from_secs(5), move || write.join().unwrap());
        assert!(set.elapsed() < Duration::from_secs(1));
        assert_timeout(&r.unwrap_err());
        let n = w.unwrap();
        assert!(n > 0 && n < 8 << 20, "{n}");
        drop(server);
    }

    #[test]
    fn close_wakes_a_blocked_read() {
        let (client, _server) = pair();
        let reader = client.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let first = (&reader).read(&mut [0; 4]);
            let again = (&reader).read(&mut [0; 4]);
            let write = (&reader).write(b"x");
            let _ = tx.send((first, again, write));
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        client.close().unwrap();
        let (first, again, write) = rx.recv_timeout(Duration::from_secs(5)).expect("not woken");
        let err = first.unwrap_err();
        assert_closed(&err);
        assert!(err.to_string().starts_with("read tcp 127.0.0.1:"), "{err}");
        assert_closed(&again.unwrap_err());
        let err = write.unwrap_err();
        assert_closed(&err);
        assert!(err.to_string().starts_with("write tcp "), "{err}");
    }

    #[test]
    fn use_after_close_fails() {
        let (client, _server) = pair();
        let other = client.try_clone().unwrap();
        client.close().unwrap();
        assert_closed(&(&other).read(&mut [0; 4]).unwrap_err());
        assert_closed(&other.set_deadline(None).unwrap_err());
        assert_closed(&other.shutdown(Shutdown::Write).unwrap_err());
        assert_closed(&other.set_nodelay(true).unwrap_err());
        assert_closed(&other.try_clone().unwrap_err());
        assert!(other.local_addr().is_ok() && other.peer_addr().is_ok());
        let err = other.close().unwrap_err();
        assert_closed(&err);
        assert!(err.to_string().starts_with("close tcp "), "{err}");
    }

    #[test]
    fn peer_sees_eof_after_close() {
        let (client, mut server) = pair();
        client.close().unwrap();
        server
            .set_read_deadline(Some(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        assert_eq!(server.read(&mut [0; 4]).unwrap(), 0);
    }

    #[test]
    fn shutdown_read_makes_reads_return_eof() {
        let (client, mut server) = pair();
        let reader = client.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send((&reader).read(&mut [0; 4]));
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        client.shutdown(Shutdown::Read).unwrap();
        let res = rx.recv_timeout(Duration::from_secs(5)).expect("not woken");
        assert_eq!(res.unwrap(), 0);
        server.write_all(b"late").unwrap();
        assert_eq!((&client).read(&mut [0; 4]).unwrap(), 0);
    }

    #[test]
    fn partial_write_on_timeout() {
        let (client, server) = pair();
        client.set_write_buffer(4096).unwrap();
        server.set_read_buffer(4096).unwrap();
        let len = 8 << 20;
        client
            .set_write_deadline(Some(Instant::now() + Duration::from_millis(200)))
            .unwrap();
        let started = Instant::now();
        let n = (&client).write(&vec![7; len]).unwrap();
        assert!(n > 0 && n < len, "wrote {n} of {len}");
        assert!(started.elapsed() >= Duration::from_millis(190));
        // The next call fails.
        assert_timeout(&(&client).write(b"more").unwrap_err());
        drop(server);
    }

    #[test]
    fn listener_deadline_and_close() {
        let listener = Kernel.listen(LOOPBACK.parse().unwrap()).unwrap();
        let start = Instant::now();
        let err = listener
            .accept_timeout(Duration::from_millis(50))
            .unwrap_err();
        assert_timeout(&err);
        assert!(start.elapsed() >= Duration::from_millis(50));
        let addr = listener.local_addr().unwrap();
        assert_eq!(err.to_string(), format!("accept tcp {addr}: i/o timeout"));

        listener
            .set_deadline(Some(Instant::now() - Duration::from_secs(1)))
            .unwrap();
        assert_timeout(&listener.accept().unwrap_err());
        listener.set_deadline(None).unwrap();

        let acceptor = listener.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(acceptor.accept().map(|_| ()));
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        listener.close().unwrap();
        let res = rx.recv_timeout(Duration::from_secs(5)).expect("not woken");
        let err = res.unwrap_err();
        assert_closed(&err);
        assert!(
            err.to_string().starts_with("accept tcp 127.0.0.1:"),
            "{err}"
        );
    }

    #[test]
    fn incoming_until_closed() {
        let listener = Kernel.listen(LOOPBACK.parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = listener.try_clone().unwrap();
        let count = thread::spawn(move || handle.incoming().map_while(Result::ok).count());
        let a = Kernel.dial(addr).unwrap();
        let b = Kernel.dial(addr).unwrap();
        thread::sleep(Duration::from_millis(50));
        listener.close().unwrap();
        assert_eq!(
            within(Duration::from_secs(5), move || count.join().unwrap()),
            2
        );
        drop((a, b));
    }

    #[test]
    fn dial_refused() {
        let addr = {
            let l = std::net::TcpListener::bind(LOOPBACK).unwrap();
            l.local_addr().unwrap()
        };
        let err = Kernel.dial(addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().starts_with("dial tcp 127.0.0.1:"), "{err}");
        assert_eq!(
            err.to_string(),
            format!("dial tcp {addr}: connection refused")
        );
        let err = Kernel
            .dial_timeout(addr, Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }

    #[test]
    fn dial_zero_timeout_is_an_io_timeout() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let err = Kernel.dial_timeout(addr, Duration::ZERO).unwrap_err();
        assert_timeout(&err);
        assert_eq!(err.to_string(), "dial tcp 127.0.0.1:9: i/o timeout");
    }

    #[test]
    fn socket_options() {
        let (client, _server) = pair();
        client.set_nodelay(false).unwrap();
        assert!(!client.nodelay().unwrap());
        let ka = KeepAlive::new()
            .with_idle(Duration::from_secs(30))
            .with_interval(Duration::from_millis(1500))
            .with_count(4);
        client.set_keepalive(Some(ka)).unwrap();
        let got = client.keepalive().unwrap().unwrap();
        assert_eq!(got, ka.with_interval(Duration::from_secs(2)));
        client.set_keepalive(None).unwrap();
        assert_eq!(client.keepalive().unwrap(), None);
        let err = client.set_keepalive(Some(ka.with_count(0))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        client.set_linger(Some(Duration::ZERO)).unwrap();
        assert_eq!(client.linger().unwrap(), Some(Duration::ZERO));
        client
            .set_linger(Some(Duration::from_millis(1500)))
            .unwrap();
        assert_eq!(client.linger().unwrap(), Some(Duration::from_secs(2)));
        client.set_linger(None).unwrap();
        assert_eq!(client.linger().unwrap(), None);
        client.set_read_buffer(64 << 10).unwrap();
        assert!(client.read_buffer().unwrap() >= 64 << 10);
        client.set_write_buffer(64 << 10).unwrap();
        assert!(client.write_buffer().unwrap() >= 64 << 10);
        assert!(client.as_std().local_addr().is_ok());
        let std = client.into_std();
        assert!(std.peer_addr().is_ok());
    }

    #[test]
    fn listen_backlog_and_reuse() {
        let l = Kernel.listen_backlog(LOOPBACK.parse().unwrap(), 1).unwrap();
        assert_eq!(l.backlog().unwrap(), 1);
        l.set_read_buffer(32 << 10).unwrap();
        l.set_write_buffer(32 << 10).unwrap();
        let addr = l.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let err = std::net::TcpListener::bind(addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        let err = Kernel.listen(addr).unwrap_err();
        assert!(
            err.to_string().starts_with("listen tcp 127.0.0.1:"),
            "{err}"
        );
    }

    #[test]
    fn std_conn_best_effort() {
        let listener = std::net::TcpListener::bind(LOOPBACK).unwrap();
        let addr = Listener::local_addr(&listener).unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = Listener::accept(&listener).unwrap();
        assert!(server.nodelay().unwrap());
        // A past deadline: calls that would block fail at once.
        Conn::set_deadline(&client, Some(Instant::now() - Duration::from_secs(1))).unwrap();
        let start = Instant::now();
        let err = client.read(&mut [0; 4]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock, "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
        Conn::set_deadline(&client, None).unwrap();
        Conn::close(server).unwrap();
        Conn::set_read_deadline(&client, Some(Instant::now() + Duration::from_secs(5))).unwrap();
        assert_eq!(client.read(&mut [0; 4]).unwrap(), 0);

        // Closing a listener wakes an accept blocked on a clone.
        let acceptor = Listener::try_clone(&listener).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(Listener::accept(&acceptor).map(|_| ()));
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        Listener::close(listener).unwrap();
        let err = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("not woken")
            .unwrap_err();
        assert_closed(&err);
    }
}
