//! A peer that vanishes, and a stack whose own driver dies: every call blocked on a
//! connection or listener must come back with an error, within the bound that the
//! situation sets, and nothing may hang.
//!
//! - **A kernel peer killed mid-transfer.** The peer is a separate process (this very
//!   test binary, re-run as a peer: see [`peer`]) on the kernel side of a TAP, SIGKILLed
//!   while it receives from, or sends to, a stack connection. Its kernel resets the
//!   connection (at once if it held unread data, or at our next segment), so the blocked
//!   calls fail within a round trip: the tests allow 1 s.
//! - **A peer that goes silent.** The stack's side of the link drops everything, both
//!   ways ([`netdev::ImpairControl`], loss 100%), as if the peer's host were unplugged:
//!   no RST ever comes. Blocked calls fail with `TimedOut` when keepalive gives up
//!   (idle + interval × count after the peer's last segment), or, without keepalive,
//!   when retransmission gives up (`StackConfig::with_retransmit_give_up`), and not
//!   much earlier.
//! - **The TAP link set down** (`ip link set tap0 down`) mid-transfer: the same bound;
//!   set up again, the stack serves a new connection.
//! - **Driver death.** `Stack::stop`, or a device that panics inside the driver thread,
//!   while reads, writes, an accept, a dial and a lingering close are blocked on several
//!   handles and threads: every one fails within 1 s, later calls fail at once, and the
//!   panic stays in the driver thread.
//!
//! Each scenario prints its figures (`vanish: ...` lines): how long each blocked call
//! took to fail after the event.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use netdev::{
    Counters, Device, Impair, ImpairConfig, ImpairControl, Impairment, Link, Tap, TapOptions,
    WireOptions, wire,
};
use smoltcp::phy::DeviceCapabilities;
use stack::{KeepAlive, Stack, StackConfig, State, TcpListener, TcpStream};
use tapnet_tests::{
    Failed, STACK_ADDR, TestResult, check, eventually, in_netns, ip, kernel_side_up, plain, root,
};

fn main() {
    if let Some(role) = std::env::var_os(peer::ROLE) {
        peer::run(&role.to_string_lossy());
    }
    tapnet_tests::main(vec![
        root(
            "tap::killed_receiver_resets_blocked_write_and_read",
            killed_receiver,
        ),
        root(
            "tap::killed_sender_with_unread_data_resets_blocked_read",
            killed_sender_reset,
        ),
        root(
            "tap::killed_sender_ends_the_stream_then_writes_break",
            killed_sender_eof,
        ),
        root(
            "tap::silent_peer_fails_blocked_calls_at_keepalive_bound",
            silent_receiver_keepalive,
        ),
        root(
            "tap::silent_sender_fails_blocked_read_at_keepalive_bound",
            silent_sender_keepalive,
        ),
        root(
            "tap::silent_peer_without_keepalive_fails_at_retransmit_give_up",
            silent_receiver_give_up,
        ),
        root(
            "tap::link_down_mid_transfer_fails_calls_then_up_serves_again",
            link_down,
        ),
        plain(
            "wire::stop_fails_every_blocked_call_promptly",
            stop_with_blocked_calls,
        ),
        plain(
            "wire::driver_panic_fails_every_blocked_call_promptly",
            driver_panic,
        ),
        plain("wire::listen_after_stop_fails", listen_after_stop),
    ])
}

// ---------------------------------------------------------------- bounds

/// A reset from the kernel arrives within a round trip on a TAP; calls blocked on the
/// connection must fail within this.
const PROMPT: Duration = Duration::from_secs(1);

/// Keepalive for the silent-peer cases: probes after 1 s of silence, then every 0.5 s;
/// after 3 unanswered, the connection fails: 2.5 s after the peer's last segment.
const KEEPALIVE: KeepAlive = KeepAlive::new()
    .with_idle(Duration::from_secs(1))
    .with_interval(Duration::from_millis(500))
    .with_count(3);

/// How long unacknowledged data waits on a silent peer, without keepalive.
const GIVE_UP: Duration = Duration::from_secs(2);

/// Slack after a give-up bound: the driver's timer, a thread waking on a busy 2-core
/// machine. Before it, a call may fail at most this much early, since the peer's last
/// segment came at most a moment before the cut.
const LATE: Duration = Duration::from_secs(1);
const EARLY: Duration = Duration::from_millis(200);

/// Bytes moved before the peer vanishes: the transfer is well under way.
const MID_TRANSFER: u64 = 1 << 20;

/// Buffers of the stack's connections: small, so that writes block often.
const BUFFER: usize = 64 << 10;

// ---------------------------------------------------------------- the peer process

/// The kernel peer: this test binary run again with [`peer::ROLE`] set, in the test's
/// namespace (a child process inherits its parent thread's namespace). Being a process
/// of its own, it can be SIGKILLed, and its kernel then closes its socket as for any
/// process that dies.
mod peer {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    /// The environment variable that names the role: `sink ADDR` reads and discards,
    /// `source ADDR` writes without end (and reads nothing).
    pub const ROLE: &str = "TAPNET_VANISH_PEER";

    /// Runs the role and exits; never returns to the test harness.
    pub fn run(role: &str) -> ! {
        let code = match role.split_once(' ') {
            Some((what, addr)) => match addr.parse::<SocketAddr>() {
                Ok(addr) => serve(what, addr),
                Err(e) => {
                    eprintln!("peer: {addr:?}: {e}");
                    2
                }
            },
            None => {
                eprintln!("peer: {role:?} is not ROLE ADDR");
                2
            }
        };
        std::process::exit(code)
    }

    fn serve(what: &str, addr: SocketAddr) -> i32 {
        // The test listens before it spawns us; retry briefly all the same.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(conn) => break conn,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("peer: connect {addr}: {e}");
                    return 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut buf = vec![0u8; 64 << 10];
        match what {
            "sink" => while matches!(conn.read(&mut buf), Ok(n) if n > 0) {},
            "source" => {
                buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
                while conn.write_all(&buf).is_ok() {}
            }
            _ => {
                eprintln!("peer: unknown role {what:?}");
                return 2;
            }
        }
        0
    }
}

/// A running peer process, killed and reaped on drop whatever happens.
struct Peer(Child);

impl Peer {
    fn spawn(role: &str, addr: SocketAddr) -> Result<Peer, Failed> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let child = Command::new(exe)
            .env(peer::ROLE, format!("{role} {addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn the {role} peer: {e}"))?;
        Ok(Peer(child))
    }

    /// SIGKILL, and wait until the process is gone (its sockets closed by its kernel).
    fn kill(&mut self) -> TestResult {
        self.0.kill().map_err(|e| format!("kill the peer: {e}"))?;
        self.0.wait().map_err(|e| format!("reap the peer: {e}"))?;
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- blocked calls

/// How one call running on its own thread ended, and when.
struct Ended {
    what: &'static str,
    at: Instant,
    result: io::Result<u64>,
}

/// Calls on threads of their own, each reporting when it ends. A call that never ends
/// leaves its thread behind; the test fails naming it, and the process exits anyway.
struct Calls {
    tx: Sender<Ended>,
    rx: Receiver<Ended>,
    names: Vec<&'static str>,
}

impl Calls {
    fn new() -> Calls {
        let (tx, rx) = mpsc::channel();
        Calls {
            tx,
            rx,
            names: Vec::new(),
        }
    }

    fn spawn(&mut self, what: &'static str, f: impl FnOnce() -> io::Result<u64> + Send + 'static) {
        let tx = self.tx.clone();
        self.names.push(what);
        std::thread::spawn(move || {
            // A panic in the application's thread is a failure of its own, not a hang.
            let result = catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(io::Error::other("PANICKED in the calling thread")));
            let _ = tx.send(Ended {
                what,
                at: Instant::now(),
                result,
            });
        });
    }

    /// Fails if any call has already ended: they are meant to be blocked.
    fn all_blocked(&self) -> TestResult {
        match self.rx.try_recv() {
            Ok(ended) => {
                Err(format!("{} ended before the event: {:?}", ended.what, ended.result).into())
            }
            Err(_) => Ok(()),
        }
    }

    /// Waits at most `limit` for every call to end; fails naming those that did not.
    fn all_ended(self, limit: Duration) -> Result<Vec<Ended>, Failed> {
        let deadline = Instant::now() + limit;
        let mut ended = Vec::new();
        while ended.len() < self.names.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => ended.push(e),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let hung: Vec<_> = self
                        .names
                        .iter()
                        .filter(|n| !ended.iter().any(|e: &Ended| e.what == **n))
                        .collect();
                    return Err(format!("still blocked after {limit:?}: {hung:?}").into());
                }
            }
        }
        Ok(ended)
    }
}

/// Checks that `ended` failed with one of `kinds` between `from` and `to` after `t0`,
/// and prints the figure.
fn failed_within(
    case: &str,
    ended: &Ended,
    t0: Instant,
    from: Duration,
    to: Duration,
    kinds: &[ErrorKind],
) -> TestResult {
    let took = ended.at.saturating_duration_since(t0);
    let err = match &ended.result {
        Err(e) => e,
        Ok(n) => return Err(format!("{case}: {} ended well ({n} bytes)", ended.what).into()),
    };
    println!(
        "vanish: {case}: {} failed after {took:?}: {:?}: {err}",
        ended.what,
        err.kind()
    );
    check!(
        kinds.contains(&err.kind()),
        "{case}: {} failed with {:?} ({err}); expected one of {kinds:?}",
        ended.what,
        err.kind()
    );
    check!(
        took >= from && took <= to,
        "{case}: {} failed after {took:?}, outside {from:?}..={to:?}",
        ended.what
    );
    Ok(())
}

/// Writes until an error; `moved` counts the bytes.
fn write_until_error(conn: TcpStream, moved: Arc<AtomicU64>) -> io::Result<u64> {
    let chunk = vec![0x5a; 16 << 10];
    loop {
        let n = (&conn).write(&chunk)?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Reads until the end of the stream (`Ok` with the count) or an error.
fn read_until_end(conn: TcpStream, moved: Arc<AtomicU64>) -> io::Result<u64> {
    let mut buf = vec![0; 64 << 10];
    loop {
        match (&conn).read(&mut buf)? {
            0 => return Ok(moved.load(Ordering::Relaxed)),
            n => moved.fetch_add(n as u64, Ordering::Relaxed),
        };
    }
}

fn wait_moved(moved: &AtomicU64, what: &str) -> TestResult {
    eventually(Duration::from_secs(20), what, || {
        moved.load(Ordering::Relaxed) >= MID_TRANSFER
    })
}

// ---------------------------------------------------------------- the TAP cases

/// The stack on tap0 behind an impairment device that starts clear; call inside
/// `in_netns`.
fn tap_stack(config: StackConfig) -> Result<(Stack, ImpairControl), Failed> {
    let tap = Tap::open("tap0", &TapOptions::default())?;
    kernel_side_up("tap0")?;
    let impair = Impair::new(tap, ImpairConfig::default())?;
    let control = impair.control();
    let config = config
        .with_addr(format!("{STACK_ADDR}/24").parse()?)
        .with_buffers(BUFFER, BUFFER);
    Ok((Stack::new(impair, config)?, control))
}

const PORT: u16 = 7000;

/// Listens, starts a peer in `role`, and accepts its connection.
fn peer_connection(stack: &Stack, role: &str) -> Result<(TcpListener, TcpStream, Peer), Failed> {
    let listener = stack.listen(SocketAddr::from((STACK_ADDR, PORT)))?;
    let peer = Peer::spawn(role, SocketAddr::from((STACK_ADDR, PORT)))?;
    let (conn, _) = listener.accept_timeout(Duration::from_secs(15))?;
    Ok((listener, conn, peer))
}

/// A transfer from the stack to the peer: a writer and a reader blocked on one
/// connection, both running when `event` strikes; returns how they ended and when the
/// event began.
fn stack_to_peer(
    stack: &Stack,
    event: impl FnOnce(&mut Peer) -> TestResult,
    limit: Duration,
) -> Result<(Instant, Vec<Ended>, TcpStream), Failed> {
    let (_listener, conn, mut peer) = peer_connection(stack, "sink")?;
    let moved = Arc::new(AtomicU64::new(0));
    let mut calls = Calls::new();
    calls.spawn("write", {
        let (conn, moved) = (conn.try_clone()?, moved.clone());
        move || write_until_error(conn, moved)
    });
    calls.spawn("read", {
        let conn = conn.try_clone()?;
        move || read_until_end(conn, Arc::default())
    });
    wait_moved(&moved, "1 MiB written to the peer")?;
    calls.all_blocked()?;
    let t0 = Instant::now();
    event(&mut peer)?;
    let ended = calls.all_ended(limit)?;
    println!(
        "vanish: {} bytes written before the end",
        moved.load(Ordering::Relaxed)
    );
    Ok((t0, ended, conn))
}

/// The peer reads a transfer from the stack and is killed: its kernel resets the
/// connection, the blocked write fails with `BrokenPipe` and the blocked read with
/// `ConnectionReset` (or, when the kernel's FIN came first, ends the stream), within
/// [`PROMPT`]. The connection's socket is freed once it is dropped.
fn killed_receiver() -> TestResult {
    in_netns(|| {
        let (stack, _) = tap_stack(StackConfig::new())?;
        let baseline = stack.tcp_socket_count();
        let (t0, ended, conn) = stack_to_peer(&stack, |peer| peer.kill(), PROMPT * 5)?;
        let case = "killed receiver";
        for e in &ended {
            match (e.what, &e.result) {
                // The peer's FIN, sent as its socket closed with nothing unread, ended the
                // stream before the reset: a clean end, promptly.
                ("read", Ok(_)) => {
                    let took = e.at.saturating_duration_since(t0);
                    println!("vanish: {case}: read ended (FIN) after {took:?}");
                    check!(took <= PROMPT, "{case}: read ended after {took:?}");
                }
                ("read", _) => failed_within(
                    case,
                    e,
                    t0,
                    Duration::ZERO,
                    PROMPT,
                    &[ErrorKind::ConnectionReset],
                )?,
                _ => failed_within(
                    case,
                    e,
                    t0,
                    Duration::ZERO,
                    PROMPT,
                    &[ErrorKind::BrokenPipe],
                )?,
            }
        }
        check!(conn.state() == State::Closed, "{}", conn.state());
        let err = (&conn).write(b"more").unwrap_err();
        check!(err.kind() == ErrorKind::BrokenPipe, "a later write: {err}");
        drop(conn);
        eventually(
            Duration::from_secs(5),
            "the socket table back at baseline",
            || stack.tcp_socket_count() == baseline,
        )?;
        Ok(())
    })
}

/// The peer sends a transfer to the stack, having left unread the bytes the stack sent
/// it first, and is killed: its kernel resets the connection at once (RFC 2525 §2.17),
/// and the blocked read fails with `ConnectionReset` within [`PROMPT`].
fn killed_sender_reset() -> TestResult {
    in_netns(|| {
        let (stack, _) = tap_stack(StackConfig::new())?;
        let (_listener, conn, mut peer) = peer_connection(&stack, "source")?;
        (&conn).write_all(b"never read")?;
        let moved = Arc::new(AtomicU64::new(0));
        let mut calls = Calls::new();
        calls.spawn("read", {
            let (conn, moved) = (conn.try_clone()?, moved.clone());
            move || read_until_end(conn, moved)
        });
        wait_moved(&moved, "1 MiB read from the peer")?;
        calls.all_blocked()?;
        let t0 = Instant::now();
        peer.kill()?;
        let ended = calls.all_ended(PROMPT * 5)?;
        failed_within(
            "killed sender, unread data",
            &ended[0],
            t0,
            Duration::ZERO,
            PROMPT,
            &[ErrorKind::ConnectionReset],
        )?;
        let err = (&conn).write(b"more").unwrap_err();
        check!(err.kind() == ErrorKind::BrokenPipe, "a later write: {err}");
        Ok(())
    })
}

/// The peer sends a transfer to the stack, with nothing unread, and is killed: its
/// kernel closes with FIN, so the read ends the stream (`Ok(0)`) within [`PROMPT`], as
/// with any peer that closes. The stack's next data meets a socket that is gone: the
/// kernel resets, and writes fail with `BrokenPipe` within [`PROMPT`] of the first one.
fn killed_sender_eof() -> TestResult {
    in_netns(|| {
        let (stack, _) = tap_stack(StackConfig::new())?;
        let (_listener, conn, mut peer) = peer_connection(&stack, "source")?;
        let moved = Arc::new(AtomicU64::new(0));
        let mut calls = Calls::new();
        calls.spawn("read", {
            let (conn, moved) = (conn.try_clone()?, moved.clone());
            move || read_until_end(conn, moved)
        });
        wait_moved(&moved, "1 MiB read from the peer")?;
        let t0 = Instant::now();
        peer.kill()?;
        let ended = calls.all_ended(PROMPT * 5)?;
        let took = ended[0].at.saturating_duration_since(t0);
        println!(
            "vanish: killed sender, nothing unread: read ended after {took:?}: {:?}",
            ended[0].result
        );
        check!(
            matches!(ended[0].result, Ok(n) if n >= MID_TRANSFER),
            "the read should end the stream: {:?}",
            ended[0].result
        );
        check!(took <= PROMPT, "the read ended after {took:?}");
        let t1 = Instant::now();
        let err = loop {
            match (&conn).write(b"anyone?") {
                Ok(_) if t1.elapsed() < PROMPT * 5 => std::thread::sleep(Duration::from_millis(5)),
                Ok(_) => return Err("writes to a killed peer still succeed after 5 s".into()),
                Err(e) => break e,
            }
        };
        let took = t1.elapsed();
        println!("vanish: killed sender, nothing unread: write failed after {took:?}: {err}");
        check!(err.kind() == ErrorKind::BrokenPipe, "{err}");
        check!(took <= PROMPT, "writes failed only after {took:?}");
        Ok(())
    })
}

/// Cuts the link both ways at the stack's device: the peer's host is gone, no RST.
fn cut(control: &ImpairControl) -> TestResult {
    let all = Impairment {
        loss: 100.0,
        ..Impairment::default()
    };
    control.set_egress(all.clone())?;
    control.set_ingress(all)?;
    Ok(())
}

/// The peer goes silent mid-transfer (to it) with keepalive on: the blocked write and
/// read fail with `TimedOut` at the keepalive bound, 2.5 s after the peer's last
/// segment, neither much earlier nor later than [`LATE`] after. Retransmissions show.
fn silent_receiver_keepalive() -> TestResult {
    in_netns(|| {
        let (stack, control) = tap_stack(StackConfig::new().with_keepalive(Some(KEEPALIVE)))?;
        let bound = KEEPALIVE.give_up_after();
        let (t0, ended, conn) = stack_to_peer(&stack, |_| cut(&control), bound + LATE * 3)?;
        for e in &ended {
            failed_within(
                "silent receiver, keepalive 1s/0.5s/3",
                e,
                t0,
                bound - EARLY,
                bound + LATE,
                &[ErrorKind::TimedOut],
            )?;
        }
        let info = conn.info()?;
        println!(
            "vanish: silent receiver: {} retransmits, {} keepalive probes",
            info.retransmits, info.keepalive_probes
        );
        check!(info.retransmits >= 1, "{info:?}");
        Ok(())
    })
}

/// The peer goes silent mid-transfer (from it) with keepalive on: the stack has nothing
/// to send, so keepalive probes find the peer gone; the blocked read fails with
/// `TimedOut` at the keepalive bound, after three probes.
fn silent_sender_keepalive() -> TestResult {
    in_netns(|| {
        let (stack, control) = tap_stack(StackConfig::new().with_keepalive(Some(KEEPALIVE)))?;
        let bound = KEEPALIVE.give_up_after();
        let (_listener, conn, _peer) = peer_connection(&stack, "source")?;
        let moved = Arc::new(AtomicU64::new(0));
        let mut calls = Calls::new();
        calls.spawn("read", {
            let (conn, moved) = (conn.try_clone()?, moved.clone());
            move || read_until_end(conn, moved)
        });
        wait_moved(&moved, "1 MiB read from the peer")?;
        let t0 = Instant::now();
        cut(&control)?;
        let ended = calls.all_ended(bound + LATE * 3)?;
        failed_within(
            "silent sender, keepalive 1s/0.5s/3",
            &ended[0],
            t0,
            bound - EARLY,
            bound + LATE,
            &[ErrorKind::TimedOut],
        )?;
        let info = conn.info()?;
        println!(
            "vanish: silent sender: {} keepalive probes",
            info.keepalive_probes
        );
        check!(
            info.keepalive_probes >= u64::from(KEEPALIVE.count()),
            "{info:?}"
        );
        Ok(())
    })
}

/// The peer goes silent mid-transfer (to it) without keepalive: the blocked write and
/// read fail with `TimedOut` when retransmission gives up, [`GIVE_UP`] after the peer's
/// last segment.
fn silent_receiver_give_up() -> TestResult {
    in_netns(|| {
        let config = StackConfig::new()
            .with_keepalive(None)
            .with_retransmit_give_up(GIVE_UP);
        let (stack, control) = tap_stack(config)?;
        let (t0, ended, conn) = stack_to_peer(&stack, |_| cut(&control), GIVE_UP + LATE * 3)?;
        for e in &ended {
            failed_within(
                "silent receiver, no keepalive, give-up 2s",
                e,
                t0,
                GIVE_UP - EARLY,
                GIVE_UP + LATE,
                &[ErrorKind::TimedOut],
            )?;
        }
        let info = conn.info()?;
        println!(
            "vanish: silent receiver, no keepalive: {} retransmits",
            info.retransmits
        );
        check!(info.retransmits >= 1, "{info:?}");
        Ok(())
    })
}

/// `ip link set tap0 down` mid-transfer: nothing crosses the TAP any more, the stack's
/// sends fail at the device (counted, not spun on), and the blocked write and read fail
/// with `TimedOut` at the keepalive bound. Set up again, the TAP carries a new
/// connection: the kernel connects, and bytes go both ways.
fn link_down() -> TestResult {
    in_netns(|| {
        let (stack, _) = tap_stack(StackConfig::new().with_keepalive(Some(KEEPALIVE)))?;
        let bound = KEEPALIVE.give_up_after();
        let before = stack.counters();
        let (t0, ended, _conn) = stack_to_peer(
            &stack,
            |_| ip(&["link", "set", "tap0", "down"]),
            bound + LATE * 3,
        )?;
        for e in &ended {
            failed_within(
                "tap0 down, keepalive 1s/0.5s/3",
                e,
                t0,
                bound - EARLY,
                bound + LATE,
                &[ErrorKind::TimedOut],
            )?;
        }
        let down = stack.counters();
        let errors = down.errors - before.errors;
        println!("vanish: tap0 down: {errors} device errors while down ({down})");
        // Each failed send is one error: a handful of retransmissions, not a spin.
        check!(errors < 1000, "{errors} device errors in {bound:?}");

        ip(&["link", "set", "tap0", "up"])?;
        let t1 = Instant::now();
        let listener = stack.listen(SocketAddr::from((STACK_ADDR, PORT + 1)))?;
        let target = SocketAddr::from((STACK_ADDR, PORT + 1));
        // The kernel may need a moment to route through the interface again.
        let mut kernel = loop {
            match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(conn) => break conn,
                Err(e) if t1.elapsed() > Duration::from_secs(10) => {
                    return Err(format!("connect after tap0 up: {e}").into());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let (conn, _) = listener.accept_timeout(Duration::from_secs(5))?;
        kernel.set_read_timeout(Some(Duration::from_secs(5)))?;
        kernel.write_all(b"back up?")?;
        let mut buf = [0; 8];
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        (&conn).read_exact(&mut buf)?;
        check!(&buf == b"back up?", "{buf:?}");
        (&conn).write_all(b"yes")?;
        let mut buf = [0; 3];
        kernel.read_exact(&mut buf)?;
        check!(&buf == b"yes", "{buf:?}");
        println!(
            "vanish: tap0 up again: a new connection served {:?} after the link came up",
            t1.elapsed()
        );
        Ok(())
    })
}

// ---------------------------------------------------------------- driver death

/// A device that panics at its next receive or transmit once `doom` is set: the driver
/// thread dies as it would on a bug.
struct Doomed<D> {
    inner: D,
    doom: Arc<AtomicBool>,
}

impl<D> Doomed<D> {
    fn check(&self, what: &str) {
        if self.doom.load(Ordering::Acquire) {
            panic!("deliberate panic in the device's {what} (vanish test): the driver dies");
        }
    }
}

impl<D: Link> Device for Doomed<D> {
    type RxToken<'a>
        = D::RxToken<'a>
    where
        D: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        D: 'a;

    fn receive(&mut self, now: netdev::Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.check("receive");
        self.inner.receive(now)
    }

    fn transmit(&mut self, now: netdev::Instant) -> Option<Self::TxToken<'_>> {
        self.check("transmit");
        self.inner.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<D: Link> Link for Doomed<D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
    fn poll_at(&self) -> Option<netdev::Instant> {
        self.inner.poll_at()
    }
    fn service(&mut self, now: netdev::Instant) {
        self.inner.service(now)
    }
    fn flush(&mut self) {
        self.inner.flush()
    }
    fn counters(&self) -> &Arc<Counters> {
        self.inner.counters()
    }
    fn is_broken(&self) -> bool {
        self.inner.is_broken()
    }
}

/// What the driver-death cases hold: alice (10.0.0.1, the stack that dies) with calls
/// blocked on every kind of handle, and bob (10.0.0.2) on the far end of the wire.
struct Scene {
    alice: Stack,
    bob: Stack,
    calls: Calls,
    /// Alice's ends of connections 0, 1 and 2 (see [`scene`]).
    alice_conns: Vec<TcpStream>,
    /// Bob's end of connection 0: a write to it wakes alice's driver.
    bob_conn: TcpStream,
    /// Alice's listener, with two accepts blocked on it.
    listener: TcpListener,
}

fn addr(s: &str) -> Result<SocketAddr, Failed> {
    s.parse().map_err(|e| format!("{s}: {e}").into())
}

/// Sets the scene on two stacks over the wire. On alice, blocked on several handles and
/// threads:
/// - a read on connection 0, which bob sends nothing on;
/// - a write into the full window of connection 1 (bob never reads it), and a read on it;
/// - a close that lingers (30 s) on the unacknowledged data of connection 2;
/// - two accepts, on two clones of one listener;
/// - a dial to 10.0.0.9, whom nobody answers (it waits on ARP).
fn scene(
    alice_device: impl Link + 'static,
    bob_device: impl Link + 'static,
) -> Result<Scene, Failed> {
    let config = |a: &str| -> Result<StackConfig, Failed> {
        Ok(StackConfig::new()
            .with_addr(a.parse()?)
            .with_buffers(16 << 10, 16 << 10))
    };
    let alice = Stack::new(alice_device, config("10.0.0.1/24")?)?;
    let bob = Stack::new(bob_device, config("10.0.0.2/24")?)?;
    let bob_listener = bob.listen(addr("0.0.0.0:20")?)?;
    let mut alice_conns = Vec::new();
    let mut bob_conns = Vec::new();
    for _ in 0..3 {
        alice_conns.push(alice.dial_timeout(addr("10.0.0.2:20")?, Duration::from_secs(5))?);
        bob_conns.push(bob_listener.accept_timeout(Duration::from_secs(5))?.0);
    }
    let listener = alice.listen(addr("0.0.0.0:21")?)?;
    let mut calls = Calls::new();

    calls.spawn("read (conn 0)", {
        let c = alice_conns[0].try_clone()?;
        move || read_until_end(c, Arc::default())
    });
    let written = Arc::new(AtomicU64::new(0));
    calls.spawn("write (conn 1)", {
        let (c, written) = (alice_conns[1].try_clone()?, written.clone());
        move || write_until_error(c, written)
    });
    calls.spawn("read (conn 1)", {
        let c = alice_conns[1].try_clone()?;
        move || read_until_end(c, Arc::default())
    });
    alice_conns[2].set_linger(Some(Duration::from_secs(30)))?;
    let c2 = alice_conns[2].try_clone()?;
    eventually(Duration::from_secs(5), "conn 2's send buffer full", || {
        let _ = c2.set_write_deadline(Some(Instant::now() + Duration::from_millis(50)));
        (&c2)
            .write(&[7; 4096])
            .is_err_and(|e| e.kind() == ErrorKind::TimedOut)
    })?;
    c2.set_write_deadline(None)?;
    calls.spawn("close with linger (conn 2)", move || c2.close().map(|()| 0));
    for what in ["accept (listener)", "accept (listener clone)"] {
        let l = listener.try_clone()?;
        calls.spawn(what, move || l.accept().map(|_| 0));
    }
    let nobody = addr("10.0.0.9:80")?;
    calls.spawn("dial 10.0.0.9", {
        let alice = alice.clone();
        move || alice.dial(nobody).map(|_| 0)
    });

    let c1 = alice_conns[1].try_clone()?;
    eventually(
        Duration::from_secs(10),
        "conn 1's write blocked on a full window",
        || c1.info().is_ok_and(|i| i.send_queue == 16 << 10),
    )?;
    // Let every call reach its wait.
    std::thread::sleep(Duration::from_millis(200));
    calls.all_blocked()?;
    Ok(Scene {
        alice,
        bob,
        calls,
        bob_conn: bob_conns.swap_remove(0),
        alice_conns,
        listener,
    })
}

/// Every blocked call of the scene fails within [`PROMPT`] of `t0`, saying the stack
/// is stopped; then later calls on every kind of handle fail (or, for close, return)
/// at once, and the stack says it is not running.
fn all_fail(case: &str, scene: Scene, t0: Instant) -> TestResult {
    let Scene {
        alice,
        bob,
        calls,
        alice_conns,
        bob_conn: _bob_conn,
        listener,
    } = scene;
    for e in calls.all_ended(PROMPT * 5)? {
        failed_within(
            case,
            &e,
            t0,
            Duration::ZERO,
            PROMPT,
            &[ErrorKind::NotConnected],
        )?;
        let text = e
            .result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        check!(
            text.ends_with("the stack is stopped"),
            "{case}: {}: {text}",
            e.what
        );
    }
    check!(!alice.is_running(), "{case}: alice still says she runs");

    // Later calls, each on a thread of its own, so that one that hangs is named.
    let mut later = Calls::new();
    let c = alice_conns[0].try_clone()?;
    later.spawn("a later read", move || {
        (&c).read(&mut [0; 8]).map(|n| n as u64)
    });
    let c = alice_conns[0].try_clone()?;
    later.spawn("a later write", move || (&c).write(b"x").map(|n| n as u64));
    let l = listener.try_clone()?;
    later.spawn("a later accept", move || l.accept().map(|_| 0));
    let a = alice.clone();
    let bob_addr = addr("10.0.0.2:20")?;
    later.spawn("a later dial", move || a.dial(bob_addr).map(|_| 0));
    let t1 = Instant::now();
    for e in later.all_ended(PROMPT * 5)? {
        failed_within(
            case,
            &e,
            t1,
            Duration::ZERO,
            PROMPT,
            &[ErrorKind::NotConnected],
        )?;
    }
    // Closing, stopping again, dropping: all return, none panics.
    let t2 = Instant::now();
    for conn in alice_conns {
        let _ = conn.close();
    }
    let _ = listener.close();
    alice.stop();
    drop(alice);
    let took = t2.elapsed();
    println!("vanish: {case}: close, stop and drop afterwards took {took:?}");
    check!(took <= PROMPT, "{case}: close, stop and drop took {took:?}");
    check!(bob.is_running(), "{case}: bob stopped too");
    Ok(())
}

/// `Stack::stop` from the test thread while calls are blocked on every kind of handle.
fn stop_with_blocked_calls() -> TestResult {
    let (a, b) = wire(&WireOptions::default())?;
    let scene = scene(a, b)?;
    let t0 = Instant::now();
    scene.alice.stop();
    println!("vanish: stop: stop() returned after {:?}", t0.elapsed());
    all_fail("stop", scene, t0)
}

/// The driver thread panics (its device does) while calls are blocked on every kind of
/// handle: they fail as after a stop, and the panic stays in the driver's thread.
fn driver_panic() -> TestResult {
    let (a, b) = wire(&WireOptions::default())?;
    let doom = Arc::new(AtomicBool::new(false));
    let scene = scene(
        Doomed {
            inner: a,
            doom: doom.clone(),
        },
        b,
    )?;
    // What `tapnet up` waits on, besides signals.
    let waiting = {
        let alice = scene.alice.clone();
        std::thread::spawn(move || alice.wait_stopped())
    };
    let t0 = Instant::now();
    doom.store(true, Ordering::Release);
    // A frame for alice wakes her driver, which meets the doomed device at once.
    (&scene.bob_conn).write_all(b"wake up")?;
    all_fail("driver panic", scene, t0)?;
    let deadline = t0 + PROMPT * 5;
    while !waiting.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    check!(
        waiting.is_finished(),
        "wait_stopped still blocks {:?} after the driver died",
        t0.elapsed()
    );
    Ok(())
}

/// After a stop, `listen` fails too, as every other call does (it used to succeed, and
/// return a listener that could never accept).
fn listen_after_stop() -> TestResult {
    let (a, _b) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, StackConfig::new().with_addr("10.0.0.1/24".parse()?))?;
    alice.stop();
    match alice.listen(addr("0.0.0.0:22")?) {
        Err(e) => {
            check!(e.kind() == ErrorKind::NotConnected, "{e}");
            check!(e.to_string().ends_with("the stack is stopped"), "{e}");
            Ok(())
        }
        Ok(l) => Err(format!(
            "listen on a stopped stack succeeded: {l:?}; its accept says {:?}",
            l.accept().err()
        )
        .into()),
    }
}
