//! System under test 2, the baseline: smoltcp by hand, with no Conn layer.
//!
//! One thread owns everything: the [`netdev::Tap`] (the same device type tapnet runs
//! on), one smoltcp [`Interface`] and a [`SocketSet`] of `tcp::Socket`s. Its loop, top to
//! bottom:
//!
//! 1. `iface.poll`: take in every ready frame, transmit whatever the sockets have;
//! 2. serve the sockets right there in the loop: the sink, source and echo of `serve.rs`,
//!    byte for byte the same protocol;
//! 3. sleep in `ppoll` on the TAP's descriptor for smoltcp's `poll_delay`, to the
//!    microsecond (zero when a socket has more to send, so the loop goes round at once).
//!
//! The sockets get the same buffer sizes as tapnet's connections and Nagle off, as
//! tapnet's default; the application copies are kept too (data is received into and sent
//! from a [`CHUNK`]-sized buffer, as an application's `read`/`write` would). What is
//! missing, on purpose, is everything tapnet adds on top: the lock shared with handles,
//! wakers and blocked threads, the driver's wake-ups, the per-connection bookkeeping.
//! The difference between the two is the cost of that layer.
//!
//! Sockets are reused: each service keeps [`ARMED`] sockets in LISTEN; one that has
//! finished (CLOSED) listens again.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netdev::{Counters, Link, Tap};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Cidr};

use crate::netns::{self, Netns, PREFIX_LEN, TAP_STACK, Worker};
use crate::serve::{CHUNK, Service};
use crate::{BoxError, Settings, Subject};

/// Sockets kept listening per service, so a SYN always finds one.
const ARMED: usize = 2;
/// The longest the loop sleeps without looking at its stop flag.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How long stopping may wait for the loop.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The raw loop, up and serving. Dropping it stops the loop (which closes the TAP), then
/// deletes the namespace.
pub struct Raw {
    stop: Arc<AtomicBool>,
    worker: Option<Worker<()>>,
    counters: Arc<Counters>,
    ns: Netns,
}

/// Starts the loop on a fresh TAP.
pub fn start(settings: &Settings) -> Result<Raw, BoxError> {
    let ns = Netns::create("raw")?;
    let tap = netns::open_tap(&ns)?;
    let counters = tap.counters().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let buffer = settings.buffer;
    let worker = ns.spawn("raw-smoltcp", {
        let stop = stop.clone();
        move || run(tap, buffer, &stop)
    })?;
    Ok(Raw {
        stop,
        worker: Some(worker),
        counters,
        ns,
    })
}

impl Subject for Raw {
    fn peer(&self) -> &Netns {
        &self.ns
    }

    fn addr(&self) -> Ipv4Addr {
        TAP_STACK
    }

    fn notes(&self) -> Option<String> {
        Some(format!("TAP counters: {}", self.counters.snapshot()))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(worker) = self.worker.take()
            && let Err(e) = worker.join(STOP_LIMIT)
        {
            eprintln!("bench: warning: stopping raw smoltcp: {e}");
        }
    }
}

/// One socket and what it is serving.
struct Slot {
    handle: SocketHandle,
    service: Service,
    /// Bytes the sink has taken in on this connection.
    received: u64,
}

/// The loop: poll, serve, sleep; until `stop`.
fn run(mut tap: Tap, buffer: usize, stop: &AtomicBool) -> Result<(), BoxError> {
    // A second descriptor for the same TAP, to wait on while the device is borrowed.
    let fd = Link::as_fd(&tap).try_clone_to_owned()?;
    let epoch = Instant::now();
    let now = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);

    let mut mac = [0u8; 6];
    mac.iter_mut().for_each(|b| *b = fastrand::u8(..));
    mac[0] = (mac[0] & 0xfc) | 0x02; // unicast, locally administered
    let mut config = Config::new(EthernetAddress(mac).into());
    config.random_seed = fastrand::u64(..);
    let mut iface = Interface::new(config, &mut tap, now());
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::Ipv4(Ipv4Cidr::new(TAP_STACK, PREFIX_LEN)))
            .expect("one address fits");
    });

    let mut sockets = SocketSet::new(Vec::new());
    let mut slots = Vec::new();
    let mut scratch = vec![0u8; CHUNK];
    let pattern = vec![0x5au8; CHUNK];
    while !stop.load(Ordering::Acquire) {
        iface.poll(now(), &mut tap, &mut sockets);
        serve(&mut sockets, &mut slots, &mut scratch, &pattern);
        arm(&mut sockets, &mut slots, buffer);

        let delay = iface
            .poll_delay(now(), &sockets)
            .map_or(MAX_SLEEP, |d| Duration::from_micros(d.total_micros()))
            .min(MAX_SLEEP);
        if !delay.is_zero() {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match ppoll(&mut fds, Some(TimeSpec::from_duration(delay)), None) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(format!("ppoll: {e}").into()),
            }
        }
    }
    Ok(())
}

/// Step 2: every connected socket does its service's part.
fn serve(sockets: &mut SocketSet, slots: &mut [Slot], scratch: &mut [u8], pattern: &[u8]) {
    for slot in slots.iter_mut() {
        let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
        match slot.service {
            Service::Sink => {
                while socket.can_recv() {
                    match socket.recv_slice(scratch) {
                        Ok(n) if n > 0 => slot.received += n as u64,
                        _ => break,
                    }
                }
                // EOF with everything read: answer with the count and close.
                if socket.state() == tcp::State::CloseWait && !socket.can_recv() {
                    let _ = socket.send_slice(&slot.received.to_be_bytes());
                    socket.close();
                }
            }
            Service::Source => {
                if socket.state() == tcp::State::Established {
                    while socket.can_send() {
                        match socket.send_slice(pattern) {
                            Ok(n) if n > 0 => {}
                            _ => break,
                        }
                    }
                }
                // The peer leaves with a reset (to CLOSED) or a FIN.
                if socket.state() == tcp::State::CloseWait {
                    socket.close();
                }
            }
            Service::Echo => {
                while socket.can_recv() {
                    let room = socket.send_capacity() - socket.send_queue();
                    if room == 0 {
                        break;
                    }
                    let take = room.min(scratch.len());
                    match socket.recv_slice(&mut scratch[..take]) {
                        Ok(n) if n > 0 => {
                            // Fits: there was room for `take` bytes.
                            let _ = socket.send_slice(&scratch[..n]);
                        }
                        _ => break,
                    }
                }
                if socket.state() == tcp::State::CloseWait && !socket.can_recv() {
                    socket.close();
                }
            }
        }
    }
}

/// Keeps [`ARMED`] sockets listening per service: a finished (CLOSED) socket listens
/// again; new ones are made only when none is free.
fn arm(sockets: &mut SocketSet<'static>, slots: &mut Vec<Slot>, buffer: usize) {
    for service in [Service::Sink, Service::Source, Service::Echo] {
        let state =
            |sockets: &SocketSet, slot: &Slot| sockets.get::<tcp::Socket>(slot.handle).state();
        let listening = slots
            .iter()
            .filter(|s| s.service == service && state(sockets, s) == tcp::State::Listen)
            .count();
        for _ in listening..ARMED {
            let free = slots
                .iter()
                .position(|s| s.service == service && state(sockets, s) == tcp::State::Closed);
            let index = free.unwrap_or_else(|| {
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; buffer]),
                    tcp::SocketBuffer::new(vec![0; buffer]),
                );
                socket.set_nagle_enabled(false);
                slots.push(Slot {
                    handle: sockets.add(socket),
                    service,
                    received: 0,
                });
                slots.len() - 1
            });
            let slot = &mut slots[index];
            slot.received = 0;
            sockets
                .get_mut::<tcp::Socket>(slot.handle)
                .listen(service.port())
                .expect("a closed socket listens on a non-zero port");
        }
    }
}
