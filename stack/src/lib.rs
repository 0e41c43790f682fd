//! The stack: a smoltcp [`Interface`] on a [`netdev::Link`], driven by one thread.
//!
//! A [`Stack`] is a cheap, cloneable handle. Behind it, one driver thread (see
//! [`driver`](crate::driver), readable top to bottom) owns the device and runs the loop:
//! wait for the device, a wake-up from a handle, or smoltcp's next timer; drain every
//! ready frame; poll; flush. The interface and the socket set sit in a [`Mutex`] that the
//! driver holds only while it polls, so handles on other threads can read and write
//! socket buffers in between and then wake the driver.
//!
//! From the first version the stack answers ARP and ICMP echo (so the kernel's `ping`
//! works), resets TCP SYNs to ports nobody listens on, counts frames, bytes, drops and
//! device errors ([`Stack::counters`]), and pings others ([`Stack::pinger`]).
//! Stopping the stack, or dropping its last handle, stops the driver and releases the
//! device.

mod config;
mod conn;
mod driver;
mod error;
pub mod kernel;
mod ping;
mod reassembly;
mod sockets;
mod staged;
mod table;
mod tcp;
mod time_wait;
mod trace;
mod wait;
mod watch;

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::Instant;

use netdev::{CounterSnapshot, Counters, Link};
use nix::sys::eventfd::{EfdFlags, EventFd};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{HardwareAddress, IpCidr};

pub use config::{Ipv4Net, Mac, StackConfig};
pub use conn::{Conn, DEFAULT_BACKLOG, Listener, Network};
pub use error::OpError;
pub use ping::{MAX_PING_SIZE, PING_SIZE, Pinger};
pub use sockets::SocketEntry;
pub use tcp::{Dialer, Incoming, KeepAlive, ListenConfig, State, TcpInfo, TcpListener, TcpStream};
pub use trace::Trace;

use table::Tcp;
use wait::Waiter;

/// A handle to a running stack. Clones share the stack; the last one dropped stops it.
///
/// # Examples
/// Two stacks on an in-memory wire, one pinging the other:
/// ```
/// use netdev::{WireOptions, wire};
/// use stack::{Stack, StackConfig};
/// use std::time::Duration;
///
/// let (a, b) = wire(&WireOptions::default())?;
/// let alice = Stack::new(a, StackConfig::new().with_addr("10.0.0.1/24".parse()?))?;
/// let _bob = Stack::new(b, StackConfig::new().with_addr("10.0.0.2/24".parse()?))?;
/// let rtt = alice.pinger("10.0.0.2".parse()?)?.ping(Duration::from_secs(2))?;
/// assert!(rtt < Duration::from_secs(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Stack {
    handle: Arc<Handle>,
}

/// Owns the driver thread: dropping it (with the last [`Stack`]) stops the driver.
struct Handle {
    shared: Arc<Shared>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

/// What the driver thread and every handle share.
pub(crate) struct Shared {
    core: Mutex<Core>,
    /// Readable when a handle has asked the driver to run a pass.
    wake: EventFd,
    /// Set while a wake-up is pending, so a burst of calls writes the eventfd once.
    wake_pending: AtomicBool,
    /// Set when the stack is asked to stop, and by the driver when it exits for any reason.
    stopped: AtomicBool,
    counters: Arc<Counters>,
    config: StackConfig,
    mac: Mac,
    epoch: Instant,
}

/// The state the driver polls: smoltcp's interface and sockets, plus the wakers of calls
/// blocked on the stack, woken all at once if the stack stops.
pub(crate) struct Core {
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    blocked: HashMap<u64, Waker>,
    next_blocked: u64,
    pub(crate) tcp: Tcp,
}

impl Stack {
    /// Brings a stack up on `device` and starts its driver thread.
    ///
    /// # Errors
    /// `InvalidInput` if the config has no address, or a gateway outside every address's
    /// prefix; otherwise whatever the kernel says when the wake-up eventfd or the thread
    /// cannot be made.
    pub fn new<D: Link + 'static>(mut device: D, config: StackConfig) -> io::Result<Stack> {
        validate(&config)?;
        let mac = config.mac.unwrap_or_else(Mac::random);
        let epoch = Instant::now();
        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac.ethernet()));
        iface_config.random_seed = fastrand::u64(..);
        let mut iface = Interface::new(iface_config, &mut device, driver::now(epoch));
        iface.update_ip_addrs(|addrs| {
            for net in &config.addrs {
                // validate() keeps the count within smoltcp's limit, so this cannot fail.
                let _ = addrs.push(IpCidr::Ipv4(net.cidr()));
            }
        });
        if let Some(gateway) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gateway)
                .map_err(|_| io::Error::other("the route table is full"))?;
        }
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                iface,
                sockets: SocketSet::new(Vec::new()),
                blocked: HashMap::new(),
                next_blocked: 0,
                tcp: Tcp::new(&config),
            }),
            wake: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            wake_pending: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            counters: device.counters().clone(),
            config,
            mac,
            epoch,
        });
        let driver = std::thread::Builder::new()
            .name("tapnet-driver".into())
            .spawn({
                let shared = shared.clone();
                move || driver::run(shared, device)
            })?;
        log::info!(
            "stack up: {} {}",
            mac,
            shared
                .config
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(Stack {
            handle: Arc::new(Handle {
                shared,
                driver: Mutex::new(Some(driver)),
            }),
        })
    }

    /// The stack's Ethernet address (the configured one, or the random one it chose).
    pub fn mac(&self) -> Mac {
        self.handle.shared.mac
    }

    /// The config the stack was built with.
    pub fn config(&self) -> &StackConfig {
        &self.handle.shared.config
    }

    /// The device's counters: frames and bytes in and out, drops and errors.
    pub fn counters(&self) -> CounterSnapshot {
        self.handle.shared.counters.snapshot()
    }

    /// Whether the driver is still running.
    pub fn is_running(&self) -> bool {
        !self.handle.shared.stopped.load(Ordering::Acquire)
    }

    /// Blocks until the driver has ended: a [`Stack::stop`] from any handle, or its death
    /// (a panic, logged). A program whose work is only the stack's own (answering ARP
    /// and ping) waits here to learn that it has none left.
    pub fn wait_stopped(&self) {
        let stopped = self.shared().block_on(|_, _| Step::<()>::Wait(None));
        debug_assert!(matches!(stopped, Err(Blocked::Stopped)));
    }

    /// Stops the driver and releases the device. Calls blocked on the stack return an
    /// error. Idempotent; also what dropping the last handle does.
    pub fn stop(&self) {
        self.handle.stop();
    }

    /// A [`Pinger`] that sends ICMP echo requests to `dst`, each with [`PING_SIZE`]
    /// bytes of data.
    pub fn pinger(&self, dst: Ipv4Addr) -> io::Result<Pinger> {
        Pinger::new(self.clone(), dst, PING_SIZE)
    }

    /// A [`Pinger`] whose requests carry `size` bytes of data (`ping -s`): beyond the
    /// MTU they go out in fragments, as do the replies.
    ///
    /// # Errors
    /// `InvalidInput` when `size` is over [`MAX_PING_SIZE`].
    pub fn pinger_with_size(&self, dst: Ipv4Addr, size: usize) -> io::Result<Pinger> {
        Pinger::new(self.clone(), dst, size)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }
}

impl Handle {
    fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.wake();
        let driver = self.driver.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(driver) = driver {
            if driver.thread().id() == std::thread::current().id() {
                return; // Dropped from the driver itself: it is already on its way out.
            }
            if driver.join().is_err() {
                log::error!("the stack's driver thread panicked");
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    /// Asks the driver for a pass. Cheap when a wake-up is already pending.
    pub(crate) fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A full counter (never, in practice) still leaves the fd readable.
            let _ = self.wake.write(1);
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves smoltcp's state as it was at that point,
        // which is still consistent enough to report errors from.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Runs `attempt` under the lock until it is [`Step::Done`], sleeping in between
    /// until the driver (or another handle) wakes the waker that `attempt` registered,
    /// the instant in [`Step::Wait`] passes, or the stack stops. `attempt` checks its own
    /// deadline each time, so a deadline moved while the call sleeps counts at once: the
    /// mover wakes the call. `attempt` must register the waker with everything whose
    /// change could let it finish. It does not wake the driver: a caller that changed
    /// socket state (queued data, freed buffer space) calls [`Shared::wake`] itself.
    pub(crate) fn block_on<T>(
        &self,
        mut attempt: impl FnMut(&mut Core, &Waker) -> Step<T>,
    ) -> Result<T, Blocked> {
        let waiter = Waiter::new();
        let mut key = None;
        let result = loop {
            let mut core = self.lock();
            if self.is_stopped() {
                break Err(Blocked::Stopped);
            }
            let until = match attempt(&mut core, waiter.waker()) {
                Step::Done(result) => break result.map_err(Blocked::Failed),
                Step::Wait(until) => until,
            };
            if key.is_none() {
                // Known to the driver's exit, which wakes every blocked call.
                core.next_blocked += 1;
                let id = core.next_blocked;
                core.blocked.insert(id, waiter.waker().clone());
                key = Some(id);
            }
            drop(core);
            // Woken or timed out, the attempt decides what it means.
            waiter.wait(until);
        };
        if let Some(id) = key {
            self.lock().blocked.remove(&id);
        }
        result
    }
}

/// What one attempt of a blocking call came to.
pub(crate) enum Step<T> {
    /// Finished, well or badly.
    Done(io::Result<T>),
    /// Would block: sleep until woken, or until this instant if there is one.
    Wait(Option<Instant>),
}

/// Why [`Shared::block_on`] gave up.
#[derive(Debug)]
pub(crate) enum Blocked {
    /// The attempt itself failed.
    Failed(io::Error),
    /// The stack stopped.
    Stopped,
}

fn validate(config: &StackConfig) -> io::Result<()> {
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if config.addrs.is_empty() {
        return invalid("a stack needs at least one address, such as 10.0.0.2/24".into());
    }
    if config.addrs.len() > 8 {
        return invalid(format!(
            "{} addresses given; at most 8 fit",
            config.addrs.len()
        ));
    }
    if let Some(gw) = config.gateway
        && !config.addrs.iter().any(|net| net.contains(gw))
    {
        return invalid(format!(
            "gateway {gw} is not on any of the stack's networks"
        ));
    }
    for (what, size) in [("read", config.read_buffer), ("write", config.write_buffer)] {
        if !(tcp::MIN_BUFFER..=tcp::MAX_BUFFER).contains(&size) {
            return invalid(format!(
                "{what} buffer of {size} bytes is outside {}..={}",
                tcp::MIN_BUFFER,
                tcp::MAX_BUFFER
            ));
        }
    }
    if let Some(ka) = config.keepalive {
        ka.validate()?;
    }
    Ok(())
}
