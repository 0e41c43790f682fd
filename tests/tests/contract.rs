//! The contract suite for the `Conn` / `Listener` layer, modelled on
//! golang.org/x/net/nettest's `TestConn`: each case is written once, generic over the
//! two ends of a connection (which may be of different types), and runs over four pairs
//! of ends. A trial is named `contract::<pair>::<case>`, where the pair is
//! `<link>_<dialer>_<listener>`:
//!
//! - `wire_tapnet_tapnet`: two tapnet stacks (10.0.0.1/24 dials 10.0.0.2/24) on the
//!   in-memory wire; no root needed.
//! - `tap_tapnet_kernel` and `tap_kernel_tapnet`: tapnet (10.0.0.2) and the kernel
//!   (10.0.0.1, through [`stack::kernel::Kernel`], so with Go's semantics) on a TAP
//!   inside a private network namespace made for the trial; tapnet dials in the first,
//!   listens in the second. Root tests.
//! - `lo_kernel_kernel`: the reference, the kernel against itself on 127.0.0.1.
//!
//! Cases that act on one end run both ways round on fresh pipes (first with the dialed
//! end as `c1`, then with the accepted end), so every end type is the one under test in
//! every role. Every wait is bounded: ordinary I/O runs under a generous deadline, calls
//! whose timing is the point run on helper threads joined with a time limit, and each
//! trial as a whole has a limit too, so a hang fails the trial instead of the run.

use std::any::type_name;
use std::fmt::Debug;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use netdev::{Tap, TapOptions, WireOptions, wire};
use stack::kernel::Kernel;
use stack::{Conn, DEFAULT_BACKLOG, Listener, Network, OpError, Stack, StackConfig};
use tapnet_tests::{
    Failed, KERNEL_ADDR, STACK_ADDR, TestResult, check, in_netns, kernel_side_up, plain, root,
};

/// Ordinary I/O runs under this deadline, so lost data fails a case instead of hanging it.
const GUARD: Duration = Duration::from_secs(60);
/// How late a deadline, a close or a shutdown may take effect on a blocked call.
const SLACK: Duration = Duration::from_secs(1);
/// How long a call is given to block before another thread acts on it.
const SETTLE: Duration = Duration::from_millis(100);
/// How long a helper thread doing ordinary work may take.
const LIMIT: Duration = Duration::from_secs(90);
/// How long a whole trial may take.
const TRIAL_LIMIT: Duration = Duration::from_secs(150);
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The text of an error from a closed connection or listener.
const CLOSED: &str = "use of closed network connection";
/// The text of an error from a passed deadline.
const TIMEOUT: &str = "i/o timeout";

// ---------------------------------------------------------------------------------------
// The cases, and the trials they make for each pair.

/// Declares the cases: the `Case` enum, the dispatcher that runs one on a [`Pair`], and
/// the list of trials for one [`Setup`].
macro_rules! cases {
    ($($variant:ident => $name:literal: $run:expr,)*) => {
        /// One contract case.
        #[derive(Clone, Copy, Debug)]
        enum Case {
            $($variant,)*
        }

        /// Runs `case` on `pair`.
        fn dispatch<P: Pair>(pair: &P, case: Case) -> TestResult {
            match case {
                $(Case::$variant => {
                    let run: fn(&P) -> TestResult = $run;
                    run(pair)
                })*
            }
        }

        /// Every case on the pair `S` sets up, named `contract::<pair>::<case>`, made with
        /// `make` ([`plain`] or [`root`]).
        fn trials<S: Setup>(pair: &str, make: fn(&str, fn() -> TestResult) -> Trial) -> Vec<Trial> {
            vec![$(make(&format!("contract::{pair}::{}", $name), || S::run(Case::$variant)),)*]
        }
    };
}

cases! {
    BasicIo => "basic_io": basic_io,
    PingPong => "ping_pong": |p| both_ways(p, Sym::PingPong),
    ConcurrentReadWrite => "concurrent_read_write": |p| both_ways(p, Sym::ConcurrentReadWrite),
    DeadlinePast => "deadline_in_the_past": |p| both_ways(p, Sym::DeadlinePast),
    DeadlineFuture => "deadline_in_the_future": |p| both_ways(p, Sym::DeadlineFuture),
    DeadlineMovedEarlier => "deadline_moved_earlier_while_blocked": |p| both_ways(p, Sym::DeadlineMovedEarlier),
    DeadlineCleared => "deadline_cleared_while_blocked": |p| both_ways(p, Sym::DeadlineCleared),
    WriteDeadline => "write_deadline_reports_partial_write": |p| both_ways(p, Sym::WriteDeadline),
    CloseUnblocksRead => "close_unblocks_read": |p| both_ways(p, Sym::CloseUnblocksRead),
    CloseUnblocksWrite => "close_unblocks_write": |p| both_ways(p, Sym::CloseUnblocksWrite),
    CloseUnblocksAccept => "close_unblocks_accept": close_unblocks_accept,
    HalfClose => "half_close": |p| both_ways(p, Sym::HalfClose),
    ShutdownRead => "shutdown_read": |p| both_ways(p, Sym::ShutdownRead),
    ReadIntoBuffer => "read_into_buffer": |p| both_ways(p, Sym::ReadIntoBuffer),
    ManyConns => "256_concurrent_connections": many_conns,
    ErrorText => "error_text": |p| both_ways(p, Sym::ErrorText),
}

/// The cases that take two connected ends and run both ways round.
#[derive(Clone, Copy, Debug)]
enum Sym {
    PingPong,
    ConcurrentReadWrite,
    DeadlinePast,
    DeadlineFuture,
    DeadlineMovedEarlier,
    DeadlineCleared,
    WriteDeadline,
    CloseUnblocksRead,
    CloseUnblocksWrite,
    HalfClose,
    ShutdownRead,
    ReadIntoBuffer,
    ErrorText,
}

/// Runs `case` on `(c1, c2)`: two connected ends of whatever types.
fn run_sym<C1: Conn + 'static, C2: Conn + 'static>(case: Sym, c1: C1, c2: C2) -> TestResult {
    match case {
        Sym::PingPong => ping_pong(c1, c2),
        Sym::ConcurrentReadWrite => concurrent_read_write(c1, c2),
        Sym::DeadlinePast => deadline_past(c1, c2),
        Sym::DeadlineFuture => deadline_future(c1, c2),
        Sym::DeadlineMovedEarlier => deadline_moved_earlier(c1, c2),
        Sym::DeadlineCleared => deadline_cleared(c1, c2),
        Sym::WriteDeadline => write_deadline(c1, c2),
        Sym::CloseUnblocksRead => close_unblocks_read(c1, c2),
        Sym::CloseUnblocksWrite => close_unblocks_write(c1, c2),
        Sym::HalfClose => half_close(c1, c2),
        Sym::ShutdownRead => shutdown_read(c1, c2),
        Sym::ReadIntoBuffer => read_into_buffer(c1, c2),
        Sym::ErrorText => error_text(c1, c2),
    }
}

/// Runs `case` on a fresh pipe with the dialed end as `c1`, then on another with the
/// accepted end as `c1`; a failure says which way round it was.
fn both_ways<P: Pair>(pair: &P, case: Sym) -> TestResult {
    let (dialed, accepted) = pipe(pair)?;
    run_sym(case, dialed, accepted).map_err(|e| {
        annotate(
            &format!(
                "c1 = dialed {}, c2 = accepted {}",
                short::<P::C1>(),
                short::<P::C2>()
            ),
            e,
        )
    })?;
    let (dialed, accepted) = pipe(pair)?;
    run_sym(case, accepted, dialed).map_err(|e| {
        annotate(
            &format!(
                "c1 = accepted {}, c2 = dialed {}",
                short::<P::C2>(),
                short::<P::C1>()
            ),
            e,
        )
    })
}

fn main() {
    let mut all = Vec::new();
    all.extend(trials::<WireTapnetTapnet>("wire_tapnet_tapnet", plain));
    all.extend(trials::<TapTapnetKernel>("tap_tapnet_kernel", root));
    all.extend(trials::<TapKernelTapnet>("tap_kernel_tapnet", root));
    all.extend(trials::<LoKernelKernel>("lo_kernel_kernel", plain));
    all.push(plain(
        "contract::self_check::std_sockets_fail_where_documented",
        std_sockets_fail_where_documented,
    ));
    tapnet_tests::main(all)
}

// ---------------------------------------------------------------------------------------
// Pipe makers and the pairs they run on.

/// The pipe maker: listens on one side, dials from the other.
trait Pair: Clone + Send + Sync + 'static {
    /// The dialing side's connections.
    type C1: Conn + 'static;
    /// The listening side's connections.
    type C2: Conn + 'static;
    /// The listening side's listeners.
    type L: Listener<Conn = Self::C2> + 'static;
    /// Listens on the listening side (port 0: a free one).
    fn listen(&self, backlog: usize) -> io::Result<Self::L>;
    /// Dials `to` from the dialing side.
    fn dial(&self, to: SocketAddr) -> io::Result<Self::C1>;
}

/// A [`Pair`] made of two [`Network`]s: `dialer` dials `listener`, which listens on `at`.
#[derive(Clone)]
struct Nets<D, N> {
    dialer: D,
    listener: N,
    at: SocketAddr,
}

impl<D: Network, N: Network> Pair for Nets<D, N> {
    type C1 = D::Conn;
    type C2 = N::Conn;
    type L = N::Listener;

    fn listen(&self, backlog: usize) -> io::Result<N::Listener> {
        self.listener.listen_backlog(self.at, backlog)
    }

    fn dial(&self, to: SocketAddr) -> io::Result<D::Conn> {
        self.dialer.dial_timeout(to, DIAL_TIMEOUT)
    }
}

/// Makes a pair of ends and runs one case on it.
trait Setup {
    /// Sets the pair up, runs `case` on it within [`TRIAL_LIMIT`], and tears it down.
    fn run(case: Case) -> TestResult;
}

/// Runs `case` on `pair` on a thread of its own, within [`TRIAL_LIMIT`].
fn run_bounded<P: Pair>(pair: &P, case: Case) -> TestResult {
    let pair = pair.clone();
    spawn(format!("{case:?}"), move || dispatch(&pair, case)).join(TRIAL_LIMIT)?
}

fn stack_config(addr: Ipv4Addr) -> StackConfig {
    StackConfig::new().with_addr(format!("{addr}/24").parse().expect("a valid address"))
}

/// tapnet dials tapnet on the in-memory wire.
struct WireTapnetTapnet;

impl Setup for WireTapnetTapnet {
    fn run(case: Case) -> TestResult {
        let (a, b) = wire(&WireOptions::default())?;
        let alice = Stack::new(a, stack_config(Ipv4Addr::new(10, 0, 0, 1)))?;
        let bob = Stack::new(b, stack_config(Ipv4Addr::new(10, 0, 0, 2)))?;
        let pair = Nets {
            dialer: alice.clone(),
            listener: bob.clone(),
            at: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 0)),
        };
        let result = run_bounded(&pair, case);
        // Stopping also wakes anything a failed case left blocked.
        alice.stop();
        bob.stop();
        result
    }
}

/// A tapnet stack on `tap0` in the calling thread's namespace, the kernel on the far side.
fn tap_stack() -> Result<Stack, Failed> {
    let tap = Tap::open("tap0", &TapOptions::default())?;
    kernel_side_up("tap0")?;
    Ok(Stack::new(tap, stack_config(STACK_ADDR))?)
}

/// tapnet dials the kernel over a TAP, in a private namespace.
struct TapTapnetKernel;

impl Setup for TapTapnetKernel {
    fn run(case: Case) -> TestResult {
        in_netns(|| {
            let stack = tap_stack()?;
            let pair = Nets {
                dialer: stack.clone(),
                listener: Kernel,
                at: SocketAddr::from((KERNEL_ADDR, 0)),
            };
            let result = run_bounded(&pair, case);
            stack.stop();
            result
        })
    }
}

/// The kernel dials tapnet over a TAP, in a private namespace.
struct TapKernelTapnet;

impl Setup for TapKernelTapnet {
    fn run(case: Case) -> TestResult {
        in_netns(|| {
            let stack = tap_stack()?;
            let pair = Nets {
                dialer: Kernel,
                listener: stack.clone(),
                at: SocketAddr::from((STACK_ADDR, 0)),
            };
            let result = run_bounded(&pair, case);
            stack.stop();
            result
        })
    }
}

/// The kernel dials itself on loopback: the reference.
struct LoKernelKernel;

impl Setup for LoKernelKernel {
    fn run(case: Case) -> TestResult {
        let pair = Nets {
            dialer: Kernel,
            listener: Kernel,
            at: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        run_bounded(&pair, case)
    }
}

/// std's sockets as a [`Network`], through the best-effort `Conn` / `Listener` impls in
/// [`stack::kernel`]; used only by the self-check.
#[derive(Clone)]
struct StdNet;

impl Network for StdNet {
    type Conn = std::net::TcpStream;
    type Listener = std::net::TcpListener;

    fn dial(&self, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect(addr)
    }

    fn dial_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect_timeout(&addr, timeout)
    }

    fn listen_backlog(
        &self,
        addr: SocketAddr,
        _backlog: usize,
    ) -> io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind(addr)
    }
}

/// The suite can fail: std's sockets, whose `Conn` impl documents where it falls short
/// of Go's semantics (a blocked call does not see a moved deadline, a past deadline
/// still returns data already there, errors are not wrapped, close is EOF rather than
/// "use of closed network connection"), fail exactly the cases that check those points.
fn std_sockets_fail_where_documented() -> TestResult {
    let pair = Nets {
        dialer: StdNet,
        listener: StdNet,
        at: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    };
    let cases = [
        Case::DeadlinePast,
        Case::DeadlineMovedEarlier,
        Case::DeadlineCleared,
        Case::CloseUnblocksRead,
        Case::ErrorText,
    ];
    let passed: Vec<Case> = cases
        .into_iter()
        .filter(|&case| run_bounded(&pair, case).is_ok())
        .collect();
    check!(
        passed.is_empty(),
        "std's sockets passed {passed:?}, which check what their Conn impl documents it \
         does not do: those cases no longer test anything"
    );
    // And what std does do, it passes.
    run_bounded(&pair, Case::BasicIo).map_err(|e| annotate("std's sockets, basic_io", e))
}

/// Accepts one connection on (a clone of) `listener`, within [`LIMIT`].
fn accept<L: Listener + 'static>(listener: &L) -> Result<(L::Conn, SocketAddr), Failed> {
    let listener = listener.try_clone()?;
    Ok(spawn("accept", move || listener.accept()).join(LIMIT)??)
}

/// Two connected ends: (dialed, accepted).
fn pipe<P: Pair>(pair: &P) -> Result<(P::C1, P::C2), Failed> {
    let listener = pair.listen(DEFAULT_BACKLOG)?;
    let dialed = pair.dial(listener.local_addr()?)?;
    let (accepted, _) = accept(&listener)?;
    listener.close()?;
    Ok((dialed, accepted))
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A helper thread whose result is awaited with a time limit. A thread that outlives
/// the limit is left behind (the trial fails; stopping the stack or the end of the run
/// releases it).
struct Task<T> {
    what: String,
    rx: mpsc::Receiver<thread::Result<T>>,
}

fn spawn<T: Send + 'static>(
    what: impl Into<String>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Task<T> {
    let what = what.into();
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("contract".into())
        .spawn(move || {
            let _ = tx.send(panic::catch_unwind(AssertUnwindSafe(f)));
        })
        .expect("spawn a thread");
    Task { what, rx }
}

/// Runs `f` on a clone of `conn`, on a helper thread.
fn spawn_on<C: Conn + 'static, T: Send + 'static>(
    conn: &C,
    what: &str,
    f: impl FnOnce(C) -> T + Send + 'static,
) -> Result<Task<T>, Failed> {
    let clone = conn
        .try_clone()
        .map_err(|e| format!("try_clone for {what}: {e}"))?;
    Ok(spawn(what, move || f(clone)))
}

impl<T> Task<T> {
    /// The result, if the thread ends within `within`; `None` if it is still running.
    fn wait(&self, within: Duration) -> Result<Option<T>, Failed> {
        match self.rx.recv_timeout(within) {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(panic)) => {
                let text = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("?");
                Err(format!("{} panicked: {text}", self.what).into())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(format!("{} ended without a result", self.what).into())
            }
        }
    }

    /// The result, failing if the thread is not done within `within`.
    fn join(self, within: Duration) -> Result<T, Failed> {
        self.wait(within)?.ok_or_else(|| {
            format!(
                "{} did not finish within {within:?} (still blocked)",
                self.what
            )
            .into()
        })
    }

    /// Fails if the thread has already finished: it was expected to be blocked.
    fn still_blocked(&self) -> TestResult
    where
        T: Debug,
    {
        match self.wait(Duration::ZERO)? {
            None => Ok(()),
            Some(value) => {
                Err(format!("{} returned {value:?} instead of blocking", self.what).into())
            }
        }
    }
}

/// The type's last path segments, for messages: `kernel::TcpStream`, `tcp::TcpStream`.
fn short<T>() -> String {
    let name = type_name::<T>();
    let parts: Vec<&str> = name.split("::").collect();
    parts[parts.len().saturating_sub(2)..].join("::")
}

fn annotate(context: &str, e: Failed) -> Failed {
    format!("[{context}] {}", e.message().unwrap_or("failed")).into()
}

/// `n` random bytes.
fn random(n: usize) -> Vec<u8> {
    let mut data = vec![0; n];
    fastrand::fill(&mut data);
    data
}

/// Checks that `got` is `want`, saying where they first differ.
fn same(what: &str, got: &[u8], want: &[u8]) -> TestResult {
    if got == want {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Err(format!(
        "{what}: got {} bytes, want {}; they first differ at byte {at}",
        got.len(),
        want.len()
    )
    .into())
}

/// Gives ordinary I/O on `conn` a deadline [`GUARD`] from now.
fn guard<C: Conn>(conn: &C) -> TestResult {
    conn.set_deadline(Some(Instant::now() + GUARD))
        .map_err(|e| format!("set a guard deadline: {e}").into())
}

/// A moment already past.
fn past() -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
}

/// Checks that `result` failed with `kind` (if given) and an error that says `text`.
fn fails_with<T: Debug>(
    what: &str,
    result: io::Result<T>,
    kind: Option<ErrorKind>,
    text: &str,
) -> TestResult {
    match result {
        Ok(value) => {
            Err(format!("{what}: expected an error saying {text:?}, got Ok({value:?})").into())
        }
        Err(e) => {
            check!(
                kind.is_none_or(|k| e.kind() == k),
                "{what}: error kind {:?}, want {kind:?} ({e})",
                e.kind()
            );
            check!(
                e.to_string().contains(text),
                "{what}: the error \"{e}\" does not say {text:?}"
            );
            Ok(())
        }
    }
}

/// Checks for a deadline's error: `TimedOut`, "i/o timeout".
fn timed_out<T: Debug>(what: &str, result: io::Result<T>) -> TestResult {
    fails_with(what, result, Some(ErrorKind::TimedOut), TIMEOUT)
}

/// Checks for a closed connection's (or listener's) error.
fn closed<T: Debug>(what: &str, result: io::Result<T>) -> TestResult {
    fails_with(what, result, None, CLOSED)
}

/// Sends `data` from `from` (on a writer thread, through a clone) and checks that `to`
/// receives exactly it.
fn transfer<A: Conn + 'static, B: Conn>(from: &A, to: &mut B, data: Vec<u8>) -> TestResult {
    let data = Arc::new(data);
    let sent = data.clone();
    let writer = spawn_on(from, "writer", move |mut c| c.write_all(&sent))?;
    let mut got = vec![0; data.len()];
    let read = to.read_exact(&mut got);
    writer.join(LIMIT)?.map_err(|e| format!("write_all: {e}"))?;
    read.map_err(|e| format!("read_exact of {} bytes: {e}", data.len()))?;
    same("transfer", &got, &data)
}

/// Reads one read's worth and checks it is the end of the stream.
fn expect_eof<C: Conn>(what: &str, conn: &mut C) -> TestResult {
    let mut buf = [0; 64];
    match conn.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{what}: read {n} bytes where the stream should have ended").into()),
        Err(e) => Err(format!("{what}: expected the end of the stream (Ok(0)), got {e}").into()),
    }
}

// ---------------------------------------------------------------------------------------
// The cases.

/// Addresses match crosswise and with the listener's; data crosses intact both ways;
/// close on one end is EOF on the other, and both closes succeed.
fn basic_io<P: Pair>(pair: &P) -> TestResult {
    let listener = pair.listen(DEFAULT_BACKLOG)?;
    let at = listener.local_addr()?;
    check!(at.port() != 0, "the listener reports port 0: {at}");
    let mut c1 = pair.dial(at)?;
    let (mut c2, from) = accept(&listener)?;
    let (l1, p1) = (c1.local_addr()?, c1.peer_addr()?);
    let (l2, p2) = (c2.local_addr()?, c2.peer_addr()?);
    check!(
        p1 == at,
        "the dialed end's peer is {p1}, the listener is {at}"
    );
    check!(
        l2 == at,
        "the accepted end's local address is {l2}, the listener is {at}"
    );
    check!(
        p2 == l1 && from == l1,
        "the dialed end is {l1}; the accepted end says its peer is {p2}, accept said {from}"
    );
    guard(&c1)?;
    guard(&c2)?;
    transfer(&c1, &mut c2, b"hello from c1".to_vec())?;
    transfer(&c2, &mut c1, b"hello from c2".to_vec())?;
    transfer(&c1, &mut c2, random(200_000))?;
    transfer(&c2, &mut c1, random(200_000))?;
    c1.close().map_err(|e| format!("close c1: {e}"))?;
    expect_eof("c2 after c1 closed", &mut c2)?;
    c2.close().map_err(|e| format!("close c2: {e}"))?;
    listener
        .close()
        .map_err(|e| format!("close the listener: {e}"))?;
    Ok(())
}

/// 1000 round trips of a small message, c2 echoing.
fn ping_pong<C1: Conn + 'static, C2: Conn + 'static>(mut c1: C1, c2: C2) -> TestResult {
    const ROUNDS: u64 = 1000;
    guard(&c1)?;
    guard(&c2)?;
    let echo = spawn_on(&c2, "echo", |mut c| -> io::Result<()> {
        let mut msg = [0; 16];
        for _ in 0..ROUNDS {
            c.read_exact(&mut msg)?;
            c.write_all(&msg)?;
        }
        Ok(())
    })?;
    let start = Instant::now();
    for i in 0..ROUNDS {
        let mut msg = [0; 16];
        msg[..8].copy_from_slice(&i.to_be_bytes());
        msg[8..].copy_from_slice(&(!i).to_be_bytes());
        c1.write_all(&msg)
            .map_err(|e| format!("round {i}: write: {e}"))?;
        let mut back = [0; 16];
        c1.read_exact(&mut back)
            .map_err(|e| format!("round {i}: read: {e}"))?;
        check!(back == msg, "round {i}: sent {msg:?}, got back {back:?}");
    }
    echo.join(LIMIT)?.map_err(|e| format!("echo: {e}"))?;
    log::info!("{ROUNDS} round trips in {:?}", start.elapsed());
    Ok(())
}

/// One thread writes 4 MiB while another reads 4 MiB on the same connection, on both
/// ends at once; everything arrives intact.
fn concurrent_read_write<C1: Conn + 'static, C2: Conn + 'static>(c1: C1, c2: C2) -> TestResult {
    const SIZE: usize = 4 << 20;
    guard(&c1)?;
    guard(&c2)?;
    let one_to_two = Arc::new(random(SIZE));
    let two_to_one = Arc::new(random(SIZE));
    let tasks = [
        ("c1 writes", writer_task(&c1, &one_to_two)?),
        ("c1 reads", reader_task(&c1, &two_to_one)?),
        ("c2 writes", writer_task(&c2, &two_to_one)?),
        ("c2 reads", reader_task(&c2, &one_to_two)?),
    ];
    let mut failures = Vec::new();
    for (what, task) in tasks {
        match task.join(LIMIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{what}: {e}")),
            Err(e) => failures.push(format!("{what}: {}", e.message().unwrap_or("failed"))),
        }
    }
    check!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Writes all of `data` through a clone of `conn`, on a helper thread.
fn writer_task<C: Conn + 'static>(
    conn: &C,
    data: &Arc<Vec<u8>>,
) -> Result<Task<Result<(), String>>, Failed> {
    let data = data.clone();
    spawn_on(conn, "writer", move |mut c| {
        c.write_all(&data).map_err(|e| format!("write: {e}"))
    })
}

/// Reads `data.len()` bytes through a clone of `conn`, on a helper thread, and checks
/// they are `data`.
fn reader_task<C: Conn + 'static>(
    conn: &C,
    data: &Arc<Vec<u8>>,
) -> Result<Task<Result<(), String>>, Failed> {
    let data = data.clone();
    spawn_on(conn, "reader", move |mut c| {
        let mut got = vec![0; data.len()];
        c.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
        same("data", &got, &data).map_err(|e| e.message().unwrap_or("").to_string())
    })
}

/// A deadline in the past fails reads and writes before any I/O, with data waiting;
/// moving it to the future (or clearing it) makes the connection usable again, and
/// nothing was consumed or sent meanwhile.
fn deadline_past<C1: Conn + 'static, C2: Conn + 'static>(mut c1: C1, mut c2: C2) -> TestResult {
    guard(&c1)?;
    guard(&c2)?;
    // One segment: once "a" is read, "b" is waiting in c1's buffer.
    c2.write_all(b"ab")?;
    let mut one = [0; 1];
    c1.read_exact(&mut one)?;
    check!(one == *b"a", "read {one:?}, want \"a\"");
    c1.set_read_deadline(Some(past()))?;
    for attempt in 1..=2 {
        let result = spawn_on(&c1, "a read past its deadline", |mut c| {
            let mut one = [0; 1];
            c.read(&mut one).map(|n| one[..n].to_vec())
        })?
        .join(SLACK)?;
        timed_out(
            &format!("read #{attempt} with a past deadline and data waiting"),
            result,
        )?;
    }
    c1.set_write_deadline(Some(past()))?;
    let result = spawn_on(&c1, "a write past its deadline", |mut c| c.write(b"zz"))?.join(SLACK)?;
    timed_out("write with a past deadline", result)?;
    // Usable again, with nothing lost and nothing extra sent.
    c1.set_read_deadline(Some(Instant::now() + GUARD))?;
    c1.read_exact(&mut one)
        .map_err(|e| format!("read after the deadline moved to the future: {e}"))?;
    check!(
        one == *b"b",
        "after the deadline moved to the future, read {one:?}, want \"b\""
    );
    c1.set_write_deadline(None)?;
    c1.write_all(b"c")
        .map_err(|e| format!("write after the deadline was cleared: {e}"))?;
    c1.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    c2.read_to_end(&mut rest)?;
    same(
        "what the peer received after the failed write and a good one",
        &rest,
        b"c",
    )
}

/// A future read deadline times a blocked read out on time; the connection stays timed
/// out until the deadline moves, and data that arrived meanwhile is all there after.
fn deadline_future<C1: Conn + 'static, C2: Conn + 'static>(mut c1: C1, mut c2: C2) -> TestResult {
    const AHEAD: Duration = Duration::from_millis(200);
    guard(&c2)?;
    let deadline = Instant::now() + AHEAD;
    c1.set_read_deadline(Some(deadline))?;
    let (result, at) = spawn_on(&c1, "a read with a deadline 200 ms ahead", |mut c| {
        let r = c.read(&mut [0; 16]);
        (r, Instant::now())
    })?
    .join(AHEAD + SLACK)?;
    timed_out("a blocked read at its deadline", result)?;
    check!(
        at >= deadline,
        "the read timed out {:?} before its deadline",
        deadline - at
    );
    check!(
        at - deadline <= SLACK,
        "the read timed out {:?} after its deadline",
        at - deadline
    );
    // Data arriving after expiry waits; reads keep failing until the deadline moves.
    let data = random(64 << 10);
    c2.write_all(&data)?;
    thread::sleep(SETTLE);
    let result = spawn_on(&c1, "a read after expiry", |mut c| c.read(&mut [0; 16]))?.join(SLACK)?;
    timed_out("a read after the deadline passed, data waiting", result)?;
    c1.set_read_deadline(Some(Instant::now() + GUARD))?;
    let mut got = vec![0; data.len()];
    c1.read_exact(&mut got)
        .map_err(|e| format!("read after the deadline moved to the future: {e}"))?;
    same(
        "data that arrived while the deadline had passed",
        &got,
        &data,
    )
}

/// A deadline moved earlier while a read is blocked takes effect at once: to a moment
/// soon, the read fails then; into the past, it fails now.
fn deadline_moved_earlier<C1: Conn + 'static, C2: Conn + 'static>(
    mut c1: C1,
    mut c2: C2,
) -> TestResult {
    const SOON: Duration = Duration::from_millis(150);
    guard(&c2)?;
    let blocked_read = |c1: &C1| {
        spawn_on(c1, "a read blocked with a 60 s deadline", |mut c| {
            let r = c.read(&mut [0; 16]);
            (r, Instant::now())
        })
    };
    // Moved to a moment soon.
    c1.set_read_deadline(Some(Instant::now() + GUARD))?;
    let reader = blocked_read(&c1)?;
    thread::sleep(SETTLE);
    reader.still_blocked()?;
    let moved = Instant::now() + SOON;
    c1.set_read_deadline(Some(moved))?;
    let (result, at) = reader
        .join(SOON + SLACK)
        .map_err(|e| annotate("deadline moved from 60 s to 150 ms ahead", e))?;
    timed_out("a blocked read whose deadline moved earlier", result)?;
    check!(
        at >= moved,
        "the read failed {:?} before the moved deadline",
        moved - at
    );
    check!(
        at - moved <= SLACK,
        "the read failed {:?} after the moved deadline",
        at - moved
    );
    // Moved into the past.
    c1.set_read_deadline(Some(Instant::now() + GUARD))?;
    let reader = blocked_read(&c1)?;
    thread::sleep(SETTLE);
    reader.still_blocked()?;
    let moved = Instant::now();
    c1.set_read_deadline(Some(past()))?;
    let (result, at) = reader
        .join(SLACK)
        .map_err(|e| annotate("deadline moved from 60 s ahead into the past", e))?;
    timed_out("a blocked read whose deadline moved into the past", result)?;
    check!(
        at - moved <= SLACK,
        "the read failed {:?} after its deadline moved into the past",
        at - moved
    );
    // And usable again.
    c1.set_read_deadline(Some(Instant::now() + GUARD))?;
    c2.write_all(b"still here")?;
    let mut got = [0; 10];
    c1.read_exact(&mut got)?;
    same("data after the timeouts", &got, b"still here")
}

/// A deadline cleared while a read is blocked no longer fires; data sent later is read.
fn deadline_cleared<C1: Conn + 'static, C2: Conn + 'static>(mut c1: C1, mut c2: C2) -> TestResult {
    const AHEAD: Duration = Duration::from_millis(300);
    guard(&c2)?;
    let deadline = Instant::now() + AHEAD;
    c1.set_read_deadline(Some(deadline))?;
    let reader = spawn_on(&c1, "a read whose deadline was cleared", |mut c| {
        let mut buf = [0; 64];
        c.read(&mut buf).map(|n| buf[..n].to_vec())
    })?;
    thread::sleep(SETTLE);
    reader.still_blocked()?;
    c1.set_read_deadline(None)?;
    // Well past the old deadline, it is still blocked.
    let until = deadline + AHEAD;
    if let Some(result) = reader.wait(until.saturating_duration_since(Instant::now()))? {
        return Err(format!(
            "a read whose deadline was cleared while it was blocked returned {result:?} \
             around the old deadline"
        )
        .into());
    }
    let message = b"late but welcome";
    c2.write_all(message)?;
    let first = reader
        .join(SLACK)?
        .map_err(|e| format!("the read, once data came: {e}"))?;
    check!(!first.is_empty(), "the read returned Ok(0) instead of data");
    check!(
        message.starts_with(&first),
        "the read returned {first:?}, not a prefix of {message:?}"
    );
    guard(&c1)?;
    let mut rest = vec![0; message.len() - first.len()];
    c1.read_exact(&mut rest)?;
    same("the rest of the message", &rest, &message[first.len()..])
}

/// A write to a peer that does not read times out at its deadline, reporting the part
/// it queued as `Ok(n)`; the next write fails; exactly those `n` bytes reach the peer.
fn write_deadline<C1: Conn + 'static, C2: Conn + 'static>(c1: C1, mut c2: C2) -> TestResult {
    const AHEAD: Duration = Duration::from_millis(500);
    // Far more than any send buffer plus receive window here (Linux: 4 MiB + 32 MiB at
    // most by default, and the window does not grow while nobody reads).
    const SIZE: usize = 64 << 20;
    let data = Arc::new(random(SIZE));
    let deadline = Instant::now() + AHEAD;
    c1.set_write_deadline(Some(deadline))?;
    let sent = data.clone();
    let (first, at) = spawn_on(
        &c1,
        "a big write to a peer that does not read",
        move |mut c| {
            let r = c.write(&sent);
            (r, Instant::now())
        },
    )?
    .join(AHEAD + SLACK)?;
    let n = match first {
        Ok(n) => n,
        Err(e) => {
            return Err(format!(
                "the first write, past its deadline after queueing part of its buffer, \
                 should report that part as Ok(n); it failed: {e}"
            )
            .into());
        }
    };
    check!(n > 0, "the first write reported Ok(0)");
    check!(
        n < SIZE,
        "all {SIZE} bytes were queued; the peer never pushed back"
    );
    check!(
        at >= deadline,
        "the write returned {:?} before its deadline",
        deadline - at
    );
    check!(
        at - deadline <= SLACK,
        "the write returned {:?} after its deadline",
        at - deadline
    );
    let rest = data.clone();
    let second = spawn_on(&c1, "the write after a partial one", move |mut c| {
        c.write(&rest[n..])
    })?
    .join(SLACK)?;
    timed_out("the write after the partial one", second)?;
    // Nothing lost, nothing extra: exactly the first n bytes arrive.
    c1.set_write_deadline(None)?;
    c1.shutdown(Shutdown::Write)?;
    guard(&c2)?;
    let mut got = Vec::new();
    c2.read_to_end(&mut got)?;
    same(
        &format!("what the peer received after a partial write of {n}"),
        &got,
        &data[..n],
    )
}

/// A read blocked on one handle fails promptly when another handle closes the
/// connection; every later call fails as closed; the peer sees the end of the stream.
fn close_unblocks_read<C1: Conn + 'static, C2: Conn + 'static>(c1: C1, mut c2: C2) -> TestResult {
    guard(&c1)?;
    guard(&c2)?;
    let mut clone = c1.try_clone()?;
    let reader = spawn_on(
        &c1,
        "a read blocked while another handle closes",
        |mut c| {
            let r = c.read(&mut [0; 16]);
            (r, Instant::now())
        },
    )?;
    thread::sleep(SETTLE);
    reader.still_blocked()?;
    let closed_at = Instant::now();
    c1.close().map_err(|e| format!("close: {e}"))?;
    let (result, at) = reader.join(SLACK)?;
    closed("a read blocked when another handle closed", result)?;
    check!(
        at - closed_at <= SLACK,
        "the read failed {:?} after close",
        at - closed_at
    );
    closed("read after close", clone.read(&mut [0; 16]))?;
    closed("write after close", clone.write(b"x"))?;
    closed(
        "set_read_deadline after close",
        clone.set_read_deadline(None),
    )?;
    closed("a second close", clone.close())?;
    expect_eof("the peer after close", &mut c2)
}

/// A write blocked on one handle (the peer does not read) ends promptly when another
/// handle closes: with the part it queued, and then the closed error.
fn close_unblocks_write<C1: Conn + 'static, C2: Conn + 'static>(c1: C1, c2: C2) -> TestResult {
    guard(&c1)?;
    let writer = spawn_on(
        &c1,
        "a write blocked while another handle closes",
        |mut c| {
            let buf = vec![7; 1 << 20];
            let mut total = 0usize;
            loop {
                match c.write(&buf) {
                    Ok(0) => {
                        return (
                            Err(io::Error::other("write returned Ok(0)")),
                            total,
                            Instant::now(),
                        );
                    }
                    Ok(n) => {
                        total += n;
                        if total > 1 << 30 {
                            return (
                                Err(io::Error::other("1 GiB queued: never blocked")),
                                total,
                                Instant::now(),
                            );
                        }
                    }
                    Err(e) => return (Err::<(), _>(e), total, Instant::now()),
                }
            }
        },
    )?;
    // Long enough to fill every buffer on the way.
    thread::sleep(3 * SETTLE);
    writer.still_blocked()?;
    let closed_at = Instant::now();
    c1.close().map_err(|e| format!("close: {e}"))?;
    let (result, total, at) = writer.join(SLACK)?;
    closed(
        &format!("a write blocked (after {total} bytes) when another handle closed"),
        result,
    )?;
    check!(total > 0, "nothing was written before the write blocked");
    check!(
        at - closed_at <= SLACK,
        "the write failed {:?} after close",
        at - closed_at
    );
    drop(c2);
    Ok(())
}

/// An accept blocked on one handle fails promptly when another closes the listener;
/// later accepts and closes fail as closed; dials are refused; a connection accepted
/// before stays open.
fn close_unblocks_accept<P: Pair>(pair: &P) -> TestResult {
    let listener = pair.listen(DEFAULT_BACKLOG)?;
    let at = listener.local_addr()?;
    let mut c1 = pair.dial(at)?;
    let (mut c2, _) = accept(&listener)?;
    guard(&c1)?;
    guard(&c2)?;
    let clone = listener.try_clone()?;
    let acceptor = {
        let clone = listener.try_clone()?;
        spawn("an accept blocked while another handle closes", move || {
            let r = clone.accept().map(|(_, from)| from);
            (r, Instant::now())
        })
    };
    thread::sleep(SETTLE);
    acceptor.still_blocked()?;
    let closed_at = Instant::now();
    listener
        .close()
        .map_err(|e| format!("close the listener: {e}"))?;
    let (result, when) = acceptor.join(SLACK)?;
    let text = result.as_ref().err().map(ToString::to_string);
    closed("an accept blocked when another handle closed", result)?;
    let text = text.unwrap_or_default();
    check!(
        text.starts_with("accept tcp ") && text.contains(&at.to_string()),
        "the accept error \"{text}\" does not name the op and the listener's address {at}"
    );
    check!(
        when - closed_at <= SLACK,
        "the accept failed {:?} after close",
        when - closed_at
    );
    let (again, clone) = spawn("an accept after close", move || {
        let r = clone.accept().map(|(_, from)| from);
        (r, clone)
    })
    .join(SLACK)?;
    closed("accept after close", again)?;
    closed("a second close of the listener", clone.close())?;
    match pair.dial(at) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => return Err(format!("a dial to a closed listener: want refused, got {e}").into()),
        Ok(conn) => {
            return Err(format!(
                "a dial to a closed listener succeeded ({:?})",
                conn.local_addr()
            )
            .into());
        }
    }
    transfer(&c1, &mut c2, b"still open".to_vec())
        .map_err(|e| annotate("the accepted connection after the listener closed", e))?;
    transfer(&c2, &mut c1, b"still open too".to_vec())
        .map_err(|e| annotate("the accepted connection after the listener closed", e))
}

/// c1 shuts its write half: c2 reads what was sent, then EOF (again and again), and can
/// still write to c1, which reads it; c1's writes fail; then c2 shuts down too.
fn half_close<C1: Conn + 'static, C2: Conn + 'static>(mut c1: C1, mut c2: C2) -> TestResult {
    guard(&c1)?;
    guard(&c2)?;
    let request = random(100_000);
    c1.write_all(&request)?;
    c1.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown(Write): {e}"))?;
    let result = c1.write(b"more");
    fails_with(
        "a write after shutdown(Write)",
        result,
        Some(ErrorKind::BrokenPipe),
        "write tcp ",
    )?;
    let mut got = Vec::new();
    c2.read_to_end(&mut got)
        .map_err(|e| format!("reading to the FIN: {e}"))?;
    same("data before the FIN", &got, &request)?;
    expect_eof("c2 reading again after EOF", &mut c2)?;
    let response = random(100_000);
    transfer(&c2, &mut c1, response)
        .map_err(|e| annotate("the other direction after shutdown(Write)", e))?;
    c2.shutdown(Shutdown::Write)
        .map_err(|e| format!("c2's shutdown(Write): {e}"))?;
    expect_eof("c1 after c2's shutdown(Write)", &mut c1)?;
    c1.close().map_err(|e| format!("close c1: {e}"))?;
    c2.close().map_err(|e| format!("close c2: {e}"))?;
    Ok(())
}

/// shutdown(Read) makes a blocked read and every later one return Ok(0), even with data
/// arriving; the write half still works.
fn shutdown_read<C1: Conn + 'static, C2: Conn + 'static>(mut c1: C1, mut c2: C2) -> TestResult {
    guard(&c1)?;
    guard(&c2)?;
    let reader = spawn_on(&c1, "a read blocked during shutdown(Read)", |mut c| {
        let r = c.read(&mut [0; 16]);
        (r, Instant::now())
    })?;
    thread::sleep(SETTLE);
    reader.still_blocked()?;
    let shut_at = Instant::now();
    c1.shutdown(Shutdown::Read)
        .map_err(|e| format!("shutdown(Read): {e}"))?;
    let (result, at) = reader.join(SLACK)?;
    check!(
        matches!(result, Ok(0)),
        "a read blocked during shutdown(Read) returned {result:?}, want Ok(0)"
    );
    check!(
        at - shut_at <= SLACK,
        "the blocked read returned {:?} after shutdown(Read)",
        at - shut_at
    );
    c2.write_all(b"ignored")?;
    thread::sleep(SETTLE);
    expect_eof("a read after shutdown(Read), data sent", &mut c1)?;
    transfer(&c1, &mut c2, b"the write half still works".to_vec())
}

/// The book's TestReadIntoBuffer: 16 MiB of random data, read through a 512 KiB buffer,
/// arrives whole and in order, and then the stream ends.
fn read_into_buffer<C1: Conn + 'static, C2: Conn + 'static>(c1: C1, mut c2: C2) -> TestResult {
    const SIZE: usize = 16 << 20;
    guard(&c1)?;
    guard(&c2)?;
    let data = Arc::new(random(SIZE));
    let sent = data.clone();
    let writer = spawn_on(&c1, "the 16 MiB writer", move |mut c| {
        c.write_all(&sent)?;
        c.shutdown(Shutdown::Write)
    })?;
    let start = Instant::now();
    let mut buf = vec![0; 512 << 10];
    let mut offset = 0;
    loop {
        let n = c2
            .read(&mut buf)
            .map_err(|e| format!("read at offset {offset}: {e}"))?;
        if n == 0 {
            break;
        }
        check!(
            offset + n <= SIZE,
            "read {} bytes, more than the {SIZE} sent",
            offset + n
        );
        same(
            &format!("{n} bytes at offset {offset}"),
            &buf[..n],
            &data[offset..offset + n],
        )?;
        offset += n;
    }
    writer.join(LIMIT)?.map_err(|e| format!("writer: {e}"))?;
    check!(
        offset == SIZE,
        "the stream ended after {offset} of {SIZE} bytes"
    );
    log::info!("16 MiB in {:?}", start.elapsed());
    Ok(())
}

/// 256 concurrent dials against one listener, each connection with its own pair of
/// threads exchanging a unique payload; all verified and all closed cleanly.
fn many_conns<P: Pair>(pair: &P) -> TestResult {
    const CONNS: u32 = 256;
    /// Connection `id`'s request: its id, then bytes only it sends.
    fn payload(id: u32) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(u64::from(id));
        let mut data = id.to_be_bytes().to_vec();
        data.extend((0..1000 + 7 * id).map(|_| rng.u8(..)));
        data
    }
    /// The answer to a request: the request reversed.
    fn answer(request: &[u8]) -> Vec<u8> {
        request.iter().rev().copied().collect()
    }
    let listener = pair.listen(CONNS as usize)?;
    let at = listener.local_addr()?;
    let acceptor = {
        let listener = listener.try_clone()?;
        spawn("the acceptor", move || -> Result<(), String> {
            let mut servers = Vec::new();
            for i in 0..CONNS {
                let (mut conn, from) =
                    listener.accept().map_err(|e| format!("accept #{i}: {e}"))?;
                servers.push(spawn(
                    format!("server for {from}"),
                    move || -> Result<(), String> {
                        guard(&conn).map_err(|_| "guard".to_string())?;
                        let peer = conn.peer_addr().map_err(|e| e.to_string())?;
                        if peer != from {
                            return Err(format!("accept said {from}, the conn says {peer}"));
                        }
                        let mut request = Vec::new();
                        conn.read_to_end(&mut request)
                            .map_err(|e| format!("{from}: read: {e}"))?;
                        let id = u32::from_be_bytes(
                            request
                                .get(..4)
                                .and_then(|b| b.try_into().ok())
                                .ok_or(format!("{from}: short request"))?,
                        );
                        if id >= CONNS || request != payload(id) {
                            return Err(format!(
                                "{from}: a garbled request of {} bytes (id {id})",
                                request.len()
                            ));
                        }
                        conn.write_all(&answer(&request))
                            .map_err(|e| format!("{from}: write: {e}"))?;
                        conn.close().map_err(|e| format!("{from}: close: {e}"))
                    },
                ));
            }
            let mut failures = Vec::new();
            for server in servers {
                match server.join(LIMIT) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(e),
                    Err(e) => failures.push(e.message().unwrap_or("failed").to_string()),
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} server(s) failed: {}",
                    failures.len(),
                    failures.join("; ")
                ))
            }
        })
    };
    let start = Instant::now();
    let clients: Vec<_> = (0..CONNS)
        .map(|id| {
            let pair = pair.clone();
            spawn(format!("client {id}"), move || -> Result<(), String> {
                let mut conn = pair.dial(at).map_err(|e| format!("client {id}: {e}"))?;
                guard(&conn).map_err(|_| "guard".to_string())?;
                let request = payload(id);
                conn.write_all(&request)
                    .map_err(|e| format!("client {id}: write: {e}"))?;
                conn.shutdown(Shutdown::Write)
                    .map_err(|e| format!("client {id}: shutdown: {e}"))?;
                let mut response = Vec::new();
                conn.read_to_end(&mut response)
                    .map_err(|e| format!("client {id}: read: {e}"))?;
                if response != answer(&request) {
                    return Err(format!(
                        "client {id}: a wrong answer of {} bytes",
                        response.len()
                    ));
                }
                conn.close().map_err(|e| format!("client {id}: close: {e}"))
            })
        })
        .collect();
    let mut failures = Vec::new();
    for client in clients {
        match client.join(LIMIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.message().unwrap_or("failed").to_string()),
        }
    }
    let served = acceptor.join(LIMIT);
    let _ = listener.close();
    let served = match served {
        Ok(Ok(())) => "all served".to_string(),
        Ok(Err(e)) => e,
        Err(e) => e.message().unwrap_or("the acceptor failed").to_string(),
    };
    check!(
        failures.is_empty(),
        "{} of {CONNS} clients failed, e.g. {}; the listening side: {served}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    check!(served == "all served", "the listening side: {served}");
    log::info!("{CONNS} connections in {:?}", start.elapsed());
    Ok(())
}

/// Errors name the op and both endpoints in Go's words, and carry an [`OpError`].
fn error_text<C1: Conn + 'static, C2: Conn + 'static>(c1: C1, c2: C2) -> TestResult {
    guard(&c2)?;
    let (local, peer) = (c1.local_addr()?, c1.peer_addr()?);
    let expect = |what: &str, result: io::Result<usize>, op: &str, cause: &str| -> TestResult {
        let Err(e) = result else {
            return Err(format!("{what}: expected an error, got {result:?}").into());
        };
        let want = format!("{op} tcp {local}->{peer}: {cause}");
        check!(
            e.to_string() == want,
            "{what}: the error reads \"{e}\", want \"{want}\""
        );
        let op_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<OpError>());
        check!(
            op_error.is_some_and(|o| o.op == op && o.local == Some(local) && o.addr == Some(peer)),
            "{what}: the error does not carry a matching OpError: {e:?}"
        );
        Ok(())
    };
    c1.set_read_deadline(Some(past()))?;
    let result = spawn_on(&c1, "a read past its deadline", |mut c| {
        c.read(&mut [0; 16])
    })?
    .join(SLACK)?;
    expect("a read past its deadline", result, "read", TIMEOUT)?;
    c1.set_write_deadline(Some(past()))?;
    let result = spawn_on(&c1, "a write past its deadline", |mut c| c.write(b"x"))?.join(SLACK)?;
    expect("a write past its deadline", result, "write", TIMEOUT)?;
    let mut clone = c1.try_clone()?;
    c1.close()?;
    expect(
        "a read after close",
        clone.read(&mut [0; 16]),
        "read",
        CLOSED,
    )?;
    expect("a write after close", clone.write(b"x"), "write", CLOSED)?;
    drop(c2);
    Ok(())
}
