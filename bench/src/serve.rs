//! The services a system under test offers the peer, written once against tapnet's
//! [`Listener`] / [`Conn`] traits, so tapnet's Conn API and the kernel's sockets run the
//! very same server code:
//!
//! - **sink** (port [`SINK`]): reads until EOF, then writes the byte count (8 bytes,
//!   big-endian) and closes. The peer times kernel → X, and checks that every byte
//!   arrived.
//! - **source** (port [`SOURCE`]): writes until the peer goes away. The peer times
//!   X → kernel.
//! - **echo** (port [`ECHO`]): writes back whatever it reads, until EOF, then closes.
//!   Round trips, and connections per second.
//!
//! One thread per service, one connection at a time (the peer is serial), reading and
//! writing in [`CHUNK`]-sized pieces. Every connection gets a deadline, so no call blocks
//! forever. Dropping [`Services`] closes the listeners, which wakes the blocked accepts,
//! and waits (bounded) for the threads.
//!
//! The raw smoltcp baseline (`raw.rs`) offers the same three services from its own poll
//! loop, without these traits.

use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stack::{Conn, Listener};

use crate::BoxError;
use crate::netns::{Netns, Worker};

/// The sink's port.
pub const SINK: u16 = 5001;
/// The source's port.
pub const SOURCE: u16 = 5002;
/// The echo's port.
pub const ECHO: u16 = 5003;
/// Bytes per application read or write, on both sides (as iperf3's default).
pub const CHUNK: usize = 128 << 10;
/// How long stopping may wait for a service thread.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Reads to EOF, answers with the byte count.
    Sink,
    /// Writes until the peer leaves.
    Source,
    /// Echoes until EOF.
    Echo,
}

impl Service {
    /// The port the peer finds it on.
    pub fn port(self) -> u16 {
        match self {
            Service::Sink => SINK,
            Service::Source => SOURCE,
            Service::Echo => ECHO,
        }
    }
}

/// Running service threads; dropping this stops them.
pub struct Services {
    stopping: Arc<AtomicBool>,
    closers: Vec<Box<dyn FnOnce() -> io::Result<()> + Send>>,
    workers: Vec<Worker<()>>,
}

impl Services {
    /// Serves each listener on a thread of its own inside `ns`. Each connection may last
    /// at most `conn_limit`.
    pub fn start<L: Listener + 'static>(
        ns: &Netns,
        listeners: Vec<(Service, L)>,
        conn_limit: Duration,
    ) -> Result<Services, BoxError> {
        let mut services = Services {
            stopping: Arc::new(AtomicBool::new(false)),
            closers: Vec::new(),
            workers: Vec::new(),
        };
        for (service, listener) in listeners {
            let closer = listener.try_clone()?;
            services
                .closers
                .push(Box::new(move || Listener::close(closer)));
            let stopping = services.stopping.clone();
            let what = format!("{service:?}").to_lowercase();
            services.workers.push(ns.spawn(&what, move || {
                accept_loop(listener, service, conn_limit, &stopping)
            })?);
        }
        Ok(services)
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        for close in self.closers.drain(..) {
            if let Err(e) = close() {
                eprintln!("bench: warning: closing a listener: {e}");
            }
        }
        for worker in self.workers.drain(..) {
            if let Err(e) = worker.join(STOP_LIMIT) {
                eprintln!("bench: warning: stopping a service: {e}");
            }
        }
    }
}

/// Accepts and serves connections, one at a time, until the listener is closed.
fn accept_loop<L: Listener>(
    listener: L,
    service: Service,
    conn_limit: Duration,
    stopping: &AtomicBool,
) -> Result<(), BoxError> {
    let mut buf = vec![0x5a; CHUNK];
    loop {
        let conn = match listener.accept() {
            Ok((conn, peer)) => {
                log::debug!("{service:?}: accepted {peer}");
                conn
            }
            Err(_) if stopping.load(Ordering::Acquire) => return Ok(()),
            Err(e) => {
                // Not ours to fix (a connection aborted before accept, say); the peer
                // reports what it saw. The pause keeps a broken listener from spinning.
                log::warn!("{service:?}: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        match serve(conn, service, conn_limit, &mut buf) {
            Ok(()) => log::debug!("{service:?}: done"),
            // The source's peer leaves by closing mid-stream: that is how it ends.
            Err(_) if service == Service::Source => {}
            Err(e) => log::warn!("{service:?}: {e}"),
        }
    }
}

/// Serves one connection.
fn serve<C: Conn>(
    mut conn: C,
    service: Service,
    limit: Duration,
    buf: &mut [u8],
) -> io::Result<()> {
    conn.set_deadline(Some(Instant::now() + limit))?;
    match service {
        Service::Sink => {
            let mut total = 0u64;
            loop {
                match conn.read(buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            conn.write_all(&total.to_be_bytes())?;
        }
        Service::Source => loop {
            conn.write_all(buf)?;
        },
        Service::Echo => loop {
            match conn.read(buf)? {
                0 => break,
                n => conn.write_all(&buf[..n])?,
            }
        },
    }
    match conn.close() {
        Err(e) if e.kind() != ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}
