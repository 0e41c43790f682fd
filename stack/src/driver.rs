//! The driver loop: the one thread that moves frames between the device and smoltcp.
//!
//! Each pass, from top to bottom:
//!
//! 1. **Wait** for whichever comes first: the device's descriptor is readable, a handle
//!    wrote the wake-up eventfd, or the next deadline arrives. The deadline is the
//!    earlier of smoltcp's `poll_at` (a retransmission, a delayed ACK, a keepalive)
//!    and the device's own `poll_at` (a frame held back by an impairment). `ppoll` takes
//!    it in nanoseconds: smoltcp's own `phy::wait` rounds sub-millisecond waits down to
//!    zero and spins.
//! 2. **Drain** ready frames from the device, in batches so a flood cannot starve the
//!    egress half, then take the lock and let the interface process them. Data for a
//!    read that is blocked waiting goes straight to it (`Tcp::hand_off`), so the ACKs
//!    of step 3 advertise the space it leaves.
//! 3. **Poll**: let every socket transmit what it has, until none has more.
//! 4. **Send** what smoltcp wrote, once the lock is let go, and **flush** the device (a
//!    capture file, for one), then go back to 1.
//!
//! The device's system calls happen outside the lock (see [`crate::staged`]), so a
//! handle waiting to read or write waits only for smoltcp's own work.
//!
//! No fixed sleeps and no spinning: with nothing to do, the thread sleeps in `ppoll`
//! until a frame, a call or a timer needs it.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use netdev::Link;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;
use smoltcp::iface::{PollIngressSingleResult, PollResult};

use crate::Shared;
use crate::staged::Stage;
use crate::wait::Deferred;
use crate::watch::Watched;

/// Frames taken in per pass before egress gets a turn.
const INGRESS_BATCH: usize = 256;

/// smoltcp's clock: microseconds since the stack started, from the monotonic clock.
pub(crate) fn now(epoch: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64)
}

/// Runs the loop until the stack is stopped, then releases the device.
pub(crate) fn run<D: Link>(shared: Arc<Shared>, mut device: D) {
    // However the loop ends, even by a panic, blocked calls must learn of it.
    let _exit = ExitGuard(&shared);
    let caps = device.capabilities();
    let mut stage = Stage::default();
    while !shared.stopped.load(Ordering::Acquire) {
        // A wake-up that arrives from here on asks for another pass.
        shared.wake_pending.store(false, Ordering::Release);
        let now = now(shared.epoch);
        device.service(now);

        // 2. Drain ready frames, before taking the lock.
        let taken = stage.read_from(&mut device, now, INGRESS_BATCH);

        let deferred = Deferred::start();
        let iface_at = {
            let mut core = shared.lock();
            let core = &mut *core;
            let wall = Instant::now();
            core.iface.poll_maintenance(now);
            core.tcp.before_ingress(&mut core.sockets);
            // Losses the watch's timer finds (RACK-TLP) go to smoltcp ahead of any frame.
            core.tcp.watch.get_mut().recheck_losses(wall);
            // Each frame is seen by the TCP watch on its way in.
            loop {
                let mut watched = Watched {
                    device: stage.device(&caps),
                    watch: &core.tcp.watch,
                    now: wall,
                };
                if core
                    .iface
                    .poll_ingress_single(now, &mut watched, &mut core.sockets)
                    == PollIngressSingleResult::None
                {
                    break;
                }
                // A SYN or handshake ACK reached a listener: re-arm it before the next
                // frame, so a listening port never resets a SYN it has room for.
                if std::mem::take(&mut core.tcp.watch.borrow_mut().rearm) {
                    core.tcp.rearm(&mut core.sockets, wall);
                }
            }
            // What the watch answers itself (a FIN in TIME-WAIT) goes out with the rest.
            stage
                .tx
                .get_mut()
                .extend(core.tcp.watch.get_mut().take_replies());
            // Data for reads that wait for it goes to them now, so the window of this
            // pass's ACKs already counts it as read.
            core.tcp.hand_off(&mut core.sockets);

            // 3. Poll: transmit until no socket has more to send.
            core.tcp.before_egress(&mut core.sockets, wall);
            let mut watched = Watched {
                device: stage.device(&caps),
                watch: &core.tcp.watch,
                now: wall,
            };
            while core.iface.poll_egress(now, &mut watched, &mut core.sockets)
                == PollResult::SocketStateChanged
            {}
            if std::mem::take(&mut core.tcp.watch.get_mut().rearm) {
                core.tcp.rearm(&mut core.sockets, wall);
            }
            let tcp_at = core.tcp.after_poll(&mut core.sockets, Instant::now());

            let iface_at = core.iface.poll_at(now, &core.sockets);
            let tcp_at = tcp_at.map(|at| {
                let ahead = at.saturating_duration_since(wall);
                now + smoltcp::time::Duration::from_micros(ahead.as_micros() as u64)
            });
            match (iface_at, tcp_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };

        // Blocked calls that this pass let go on wake now, with the lock free.
        deferred.wake();

        // 4. Send what smoltcp wrote, after letting the lock go, and flush.
        let refused = stage.write_to(&mut device, now);
        if refused > 0 {
            log::debug!("the device refused {refused} frames");
        }
        device.flush();

        // 1. Wait (for the next pass), until the earlier of the two deadlines.
        let deadline = match (iface_at, device.poll_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = if taken == INGRESS_BATCH {
            Some(Duration::ZERO)
        } else {
            deadline.map(|at| until(at, shared.epoch))
        };
        wait(&shared, &device, timeout);
    }
    log::debug!("driver stopped");
}

/// Time left until `at`, zero if it has passed. (smoltcp's `Instant - Instant` is an
/// absolute difference, so compare first.)
fn until(at: smoltcp::time::Instant, epoch: Instant) -> Duration {
    let now = now(epoch);
    if at <= now {
        Duration::ZERO
    } else {
        Duration::from_micros((at - now).total_micros())
    }
}

/// Sleeps in `ppoll` on the device and the wake-up eventfd, for at most `timeout`.
fn wait<D: Link>(shared: &Shared, device: &D, timeout: Option<Duration>) {
    if timeout == Some(Duration::ZERO) {
        return;
    }
    let mut fds = [
        PollFd::new(shared.wake.as_fd(), PollFlags::POLLIN),
        PollFd::new(device.as_fd(), PollFlags::POLLIN),
    ];
    // A broken device (a TAP deleted under us) reports an error to every poll, asked or
    // not; leave it out of the wait rather than spin, and keep serving timers and calls.
    let watched = if device.is_broken() { 1 } else { 2 };
    let timespec = timeout.map(TimeSpec::from_duration);
    match ppoll(&mut fds[..watched], timespec, None) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => log::error!("driver: ppoll: {e}"),
    }
    if fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLIN))
    {
        // Reset the counter; the pending flag was cleared at the top of the pass.
        let _ = shared.wake.read();
    }
}

/// Marks the stack stopped and wakes every blocked call when the driver exits.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        if std::thread::panicking() {
            log::error!("the stack's driver panicked; every call on it now fails");
        }
        let mut core = self.0.lock();
        for (_, waker) in core.blocked.drain() {
            waker.wake();
        }
    }
}
