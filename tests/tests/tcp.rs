//! TCP semantics one by one, watched on the wire where the wire is the proof: dial and
//! listen, errors, CLOSE-WAIT, linger, keepalive probe times, windows and zero-window
//! probes, the listen backlog. The peer is the kernel over a TAP in a private namespace
//! wherever it can be; the rest runs on the in-memory wire without root.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netdev::{
    Capture, Direction, FrameLog, Impair, ImpairConfig, ImpairControl, Impairment, Tap, TapOptions,
    WireOptions, wire,
};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpOption, TcpPacket,
};
use stack::{KeepAlive, Stack, StackConfig, State, Trace};
use tapnet_tests::{
    KERNEL_ADDR, STACK_ADDR, TestResult, check, eventually, in_netns, kernel_side_up, plain, root,
};

fn main() {
    tapnet_tests::main(vec![
        plain(
            "wire::echo_and_the_socket_count_returns_to_baseline",
            wire_echo,
        ),
        plain("wire::refused_and_errors_name_both_ends", wire_refused),
        plain("wire::a_second_listen_is_addr_in_use", wire_addr_in_use),
        plain("wire::ephemeral_ports_rotate", wire_ephemeral_ports),
        plain(
            "wire::time_wait_frees_the_socket_as_the_last_handle_goes",
            wire_time_wait_on_drop,
        ),
        plain("wire::close_wait_is_visible_and_warned", wire_close_wait),
        plain(
            "wire::shutdown_read_discards_later_data",
            wire_shutdown_read,
        ),
        plain("wire::keepalive_kills_a_silent_peer", wire_keepalive_silent),
        plain("wire::buffers_before_and_after_the_handshake", wire_buffers),
        plain("wire::info_reports_the_connection", wire_info),
        plain("wire::dial_timeout_to_a_silent_host", wire_dial_timeout),
        plain(
            "wire::error_kinds_reset_broken_pipe_closed",
            wire_error_kinds,
        ),
        plain(
            "wire::retransmission_gives_up_without_keepalive",
            wire_give_up,
        ),
        plain("wire::a_stopped_stack_fails_blocked_calls", wire_stop),
        plain(
            "wire::reads_that_time_out_lose_no_bytes",
            wire_timed_out_reads,
        ),
        plain(
            "wire::writes_that_time_out_report_exactly_what_was_sent",
            wire_timed_out_writes,
        ),
        plain("wire::accept_deadlines", wire_accept_deadlines),
        plain(
            "wire::a_loss_in_a_small_flight_is_sent_again_at_once",
            wire_early_retransmit,
        ),
        plain(
            "wire::after_the_peers_fin_the_fin_waits_for_the_data",
            wire_fin_after_data,
        ),
        root("tap::kernel_echo_through_tapnet_listener", tap_echo),
        root("tap::linger_zero_sends_rst_default_sends_fin", tap_linger),
        root(
            "tap::bounded_linger_against_a_stalled_reader",
            tap_bounded_linger,
        ),
        root("tap::keepalive_probes_at_idle_then_interval", tap_keepalive),
        root("tap::advertised_window_is_the_read_buffer", tap_window),
        root(
            "tap::zero_window_blocks_probes_and_resumes",
            tap_zero_window,
        ),
        root("tap::backlog_200_clients_none_reset", tap_backlog),
    ])
}

// ---------------------------------------------------------------- helpers

/// Frames seen by a stack's device, with the time each passed.
type Frames = Arc<Mutex<Vec<(Instant, Direction, Vec<u8>)>>>;

fn recorder() -> (Frames, Box<dyn netdev::FrameSink>) {
    let frames: Frames = Arc::default();
    let sink = {
        let frames = frames.clone();
        FrameLog(move |dir: Direction, frame: &[u8]| {
            frames
                .lock()
                .unwrap()
                .push((Instant::now(), dir, frame.to_vec()))
        })
    };
    (frames, Box::new(sink))
}

fn config(addr: &str) -> StackConfig {
    StackConfig::new().with_addr(addr.parse().unwrap())
}

/// Two stacks on the wire: alice 10.0.0.1 (recorded) and bob 10.0.0.2.
fn wire_pair(
    alice: StackConfig,
    bob: StackConfig,
) -> Result<(Stack, Stack, Frames), tapnet_tests::Failed> {
    let (a, b) = wire(&WireOptions::default())?;
    let (frames, sink) = recorder();
    let alice = Stack::new(Capture::new(a, sink), alice)?;
    let bob = Stack::new(b, bob)?;
    Ok((alice, bob, frames))
}

/// What a stack's `--trace` wrote, for a test to read.
#[derive(Clone, Default)]
struct TraceLog(Arc<Mutex<Vec<u8>>>);

impl Write for TraceLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Two stacks on the wire, alice recorded and traced, her frames delayed 10 ms on their
/// way out (so that flights form) through an impairment whose control drops chosen
/// frames.
fn impaired_pair() -> Result<(Stack, Stack, Frames, TraceLog, ImpairControl), tapnet_tests::Failed>
{
    let (a, b) = wire(&WireOptions::default())?;
    let impaired = Impair::new(
        a,
        ImpairConfig {
            egress: Impairment {
                delay: Duration::from_millis(10),
                ..Impairment::default()
            },
            ingress: Impairment::default(),
            seed: 1,
        },
    )?;
    let control = impaired.control();
    let (frames, sink) = recorder();
    let log = TraceLog::default();
    let traced = config("10.0.0.1/24").with_trace(Trace::to_writer(log.clone(), false));
    let alice = Stack::new(Capture::new(impaired, sink), traced)?;
    let bob = Stack::new(b, config("10.0.0.2/24"))?;
    Ok((alice, bob, frames, log, control))
}

/// tapnet on tap0 (10.0.0.2), recorded; the kernel side is 10.0.0.1. Call inside
/// `in_netns`.
fn tap_stack(config: StackConfig) -> Result<(Stack, Frames), tapnet_tests::Failed> {
    let tap = Tap::open("tap0", &TapOptions::default())?;
    kernel_side_up("tap0")?;
    let (frames, sink) = recorder();
    let stack = Stack::new(Capture::new(tap, sink), config)?;
    Ok((stack, frames))
}

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// One TCP segment as the wire carried it.
#[derive(Debug, Clone)]
struct Seg {
    at: Instant,
    dir: Direction,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    window: u16,
    wscale: Option<u8>,
    len: usize,
}

fn segments(frames: &Frames) -> Vec<Seg> {
    let frames = frames.lock().unwrap();
    frames
        .iter()
        .filter_map(|(at, dir, frame)| {
            let eth = EthernetFrame::new_checked(&frame[..]).ok()?;
            if eth.ethertype() != EthernetProtocol::Ipv4 {
                return None;
            }
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            let mut wscale = None;
            let mut options = tcp.options();
            while !options.is_empty() {
                let Ok((rest, option)) = TcpOption::parse(options) else {
                    break;
                };
                if let TcpOption::WindowScale(s) = option {
                    wscale = Some(s);
                }
                if option == TcpOption::EndOfList {
                    break;
                }
                options = rest;
            }
            Some(Seg {
                at: *at,
                dir: *dir,
                src: SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
                dst: SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
                window: tcp.window_len(),
                wscale,
                len: tcp.payload().len(),
            })
        })
        .collect()
}

fn tx(seg: &Seg) -> bool {
    seg.dir == Direction::Out
}

/// Reads until `n` bytes arrived or the read fails.
fn read_n(mut r: impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------- the wire

fn wire_echo() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let baseline = (alice.tcp_socket_count(), bob.tcp_socket_count());
    let listener = bob.listen("0.0.0.0:7".parse()?)?;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (conn, _) = listener.accept()?;
        let n = std::io::copy(&mut &conn, &mut &conn)?;
        conn.close()?;
        Ok(n)
    });
    let conn = alice.dial("10.0.0.2:7".parse()?)?;
    check!(conn.state() == State::Established, "{}", conn.state());
    let data = pattern(300_000, 1);
    let writer = {
        let conn = conn.try_clone()?;
        let data = data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            (&conn).write_all(&data)?;
            conn.shutdown(Shutdown::Write)
        })
    };
    let mut back = Vec::new();
    (&conn).read_to_end(&mut back)?;
    writer.join().unwrap()?;
    check!(back == data, "echoed {} bytes, differ", back.len());
    check!(server.join().unwrap()? == data.len() as u64);
    drop(conn);
    eventually(
        Duration::from_secs(5),
        "bob's sockets back at baseline",
        || bob.tcp_socket_count() == baseline.1,
    )?;
    // Bob closed after alice's FIN (passive close: LAST-ACK, then freed); alice sent
    // the first FIN, so her end waits in TIME-WAIT: as a record, its socket freed.
    eventually(
        Duration::from_secs(5),
        "alice's sockets back at baseline",
        || alice.tcp_socket_count() == baseline.0,
    )?;
    let table = alice.sockets();
    check!(
        table.len() == 1
            && table[0].state() == State::TimeWait
            && table[0].peer() == Some("10.0.0.2:7".parse()?),
        "alice's table: {table:?}"
    );
    Ok(())
}

fn wire_refused() -> TestResult {
    let (alice, _bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let err = alice.dial("10.0.0.2:9".parse()?).unwrap_err();
    check!(err.kind() == ErrorKind::ConnectionRefused, "{err:?}");
    let text = err.to_string();
    check!(
        text.starts_with("dial tcp 10.0.0.1:")
            && text.ends_with("->10.0.0.2:9: connection refused"),
        "{text}"
    );
    check!(
        alice.tcp_socket_count() == 0,
        "a failed dial leaves no socket"
    );
    Ok(())
}

fn wire_addr_in_use() -> TestResult {
    let (_alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let first = bob.listen("10.0.0.2:80".parse()?)?;
    for again in ["10.0.0.2:80", "0.0.0.0:80"] {
        let err = bob.listen(again.parse()?).unwrap_err();
        check!(err.kind() == ErrorKind::AddrInUse, "{again}: {err}");
        check!(err.to_string().contains("address already in use"), "{err}");
    }
    let err = bob.listen("10.9.9.9:80".parse()?).unwrap_err();
    check!(err.kind() == ErrorKind::AddrNotAvailable, "{err}");
    first.close()?;
    let _again = bob.listen("0.0.0.0:80".parse()?)?;
    let any = bob.listen("0.0.0.0:0".parse()?)?;
    check!(any.local_addr()?.port() != 0);
    Ok(())
}

fn wire_ephemeral_ports() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:7".parse()?)?;
    let mut ports = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let conn = alice.dial("10.0.0.2:7".parse()?)?;
        ports.push(conn.local_addr()?.port());
        conns.push(conn);
        listener.accept_timeout(Duration::from_secs(5))?;
    }
    let mut unique = ports.clone();
    unique.sort();
    unique.dedup();
    check!(unique.len() == ports.len(), "ports reused: {ports:?}");
    check!(ports.iter().all(|p| *p >= 49152), "{ports:?}");
    // Closed by alice first: each sits in TIME-WAIT, and its port is not reused.
    drop(conns);
    for _ in 0..20 {
        let conn = alice.dial("10.0.0.2:7".parse()?)?;
        let port = conn.local_addr()?.port();
        check!(
            !ports.contains(&port),
            "port {port} reused while in TIME-WAIT"
        );
        listener.accept_timeout(Duration::from_secs(5))?;
    }
    Ok(())
}

/// A connection that reached TIME-WAIT while still held (the peer's FIN came before the
/// last handle went, as when a client closes and the server closes at once) gives up its
/// socket with the driver's next pass once the handle goes, not at its next timed chore
/// (200 ms later): a client churning through a thousand connections a second would
/// otherwise hold hundreds of sockets, buffers and all. The next dial takes a few passes
/// on the wire, so by its end the old socket must be gone and only its record left.
fn wire_time_wait_on_drop() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let baseline = alice.tcp_socket_count();
    let listener = bob.listen("0.0.0.0:7".parse()?)?;
    let conn = alice.dial("10.0.0.2:7".parse()?)?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    let held = conn.try_clone()?;
    conn.close()?;
    accepted.close()?;
    eventually(
        Duration::from_secs(5),
        "alice's end in TIME-WAIT, still held",
        || held.state() == State::TimeWait,
    )?;
    check!(alice.tcp_socket_count() == baseline + 1);
    drop(held);
    let next = alice.dial("10.0.0.2:7".parse()?)?;
    check!(
        alice.tcp_socket_count() == baseline + 1 && alice.time_wait_count() == 1,
        "after the next dial: {} sockets (baseline {baseline}), {} TIME-WAIT records",
        alice.tcp_socket_count(),
        alice.time_wait_count()
    );
    drop(next);
    Ok(())
}

/// Captures warnings from the stack, for the CLOSE-WAIT test.
struct Warnings(Mutex<Vec<String>>);

impl log::Log for Warnings {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static WARNINGS: Warnings = Warnings(Mutex::new(Vec::new()));

fn wire_close_wait() -> TestResult {
    let _ = log::set_logger(&WARNINGS);
    log::set_max_level(log::LevelFilter::Warn);
    let bob_config = config("10.0.0.2/24").with_close_wait_warning(Duration::from_millis(300));
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), bob_config)?;
    let baseline = bob.tcp_socket_count();
    let listener = bob.listen("0.0.0.0:8".parse()?)?;
    let client = alice.dial("10.0.0.2:8".parse()?)?;
    let (server, _) = listener.accept()?;
    drop(listener);
    let name = format!("{} -> {}", server.local_addr()?, server.peer_addr()?);
    client.close()?;
    // The book's Listing 4-27: the server reads EOF and forgets to close.
    let mut buf = [0; 16];
    check!((&server).read(&mut buf)? == 0, "EOF is Ok(0)");
    check!(server.state() == State::CloseWait, "{}", server.state());
    eventually(Duration::from_secs(3), "a CLOSE-WAIT warning", || {
        WARNINGS
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.contains(&name) && w.contains("CLOSE-WAIT"))
    })?;
    check!(server.info()?.time_in_state >= Duration::from_millis(300));
    // Dropping it sends FIN; once acknowledged, the socket is freed.
    drop(server);
    eventually(
        Duration::from_secs(5),
        "socket count back at baseline",
        || bob.tcp_socket_count() == baseline,
    )?;
    Ok(())
}

fn wire_shutdown_read() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:9".parse()?)?;
    let client = alice.dial("10.0.0.2:9".parse()?)?;
    let (server, _) = listener.accept()?;
    (&client).write_all(b"before")?;
    eventually(Duration::from_secs(2), "data queued at the server", || {
        server.info().is_ok_and(|i| i.recv_queue == 6)
    })?;
    server.shutdown(Shutdown::Read)?;
    let mut buf = [0; 64];
    check!((&server).read(&mut buf)? == 0, "read after shutdown(Read)");
    (&client).write_all(&pattern(100_000, 3))?;
    // Discarded as it arrives, so the window stays open and the writer never blocks.
    eventually(
        Duration::from_secs(5),
        "client's data all acknowledged",
        || client.info().is_ok_and(|i| i.send_queue == 0),
    )?;
    check!((&server).read(&mut buf)? == 0);
    check!(server.info()?.recv_queue == 0);
    // The other direction still works.
    (&server).write_all(b"still here")?;
    check!(read_n(&client, 10)? == b"still here");
    Ok(())
}

fn wire_keepalive_silent() -> TestResult {
    let ka = KeepAlive::new()
        .with_idle(Duration::from_millis(300))
        .with_interval(Duration::from_millis(100))
        .with_count(3);
    let (alice, bob, _) = wire_pair(
        config("10.0.0.1/24").with_keepalive(Some(ka)),
        config("10.0.0.2/24"),
    )?;
    let listener = bob.listen("0.0.0.0:10".parse()?)?;
    let client = alice.dial("10.0.0.2:10".parse()?)?;
    // Alice's handshake ACK is the connection's last segment: her idle time runs from
    // here, however long what follows takes on a busy machine.
    let start = Instant::now();
    let (_server, _) = listener.accept()?;
    // Bob vanishes: his stack stops answering anything.
    bob.stop();
    let mut buf = [0; 8];
    let err = (&client).read(&mut buf).unwrap_err();
    let took = start.elapsed();
    check!(err.kind() == ErrorKind::TimedOut, "{err}");
    check!(err.to_string().contains("connection timed out"), "{err}");
    // idle + interval × count = 600 ms after the last word from bob.
    check!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2000),
        "gave up after {took:?}"
    );
    check!(client.info()?.keepalive_probes >= 3, "{:?}", client.info()?);
    Ok(())
}

fn wire_buffers() -> TestResult {
    let (alice, bob, frames) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob
        .listen_config()
        .read_buffer(100_000)
        .listen("0.0.0.0:11".parse()?)?;
    let small = alice
        .dialer()
        .read_buffer(4096)
        .write_buffer(8192)
        .dial("10.0.0.2:11".parse()?)?;
    let (server, _) = listener.accept()?;
    check!(small.read_buffer()? == 4096 && small.write_buffer()? == 8192);
    check!(server.read_buffer()? == 100_000);
    let segs = segments(&frames);
    let syn = segs.iter().find(|s| tx(s) && s.syn).ok_or("no SYN")?;
    check!(syn.window == 4096 && syn.wscale == Some(0), "{syn:?}");
    let synack = segs.iter().find(|s| !tx(s) && s.syn).ok_or("no SYN-ACK")?;
    // 100 000 bytes need a shift of 1 (RFC 7323 §2.3).
    check!(synack.wscale == Some(1), "{synack:?}");
    // Established: the size is fixed; asking for another fails and changes nothing.
    let err = small.set_read_buffer(1 << 20).unwrap_err();
    check!(err.kind() == ErrorKind::Unsupported, "{err}");
    check!(small.read_buffer()? == 4096);
    small.set_read_buffer(4096)?;
    // A listener's new size applies to the next connection.
    listener.set_read_buffer(1 << 20)?;
    let _big = alice.dial("10.0.0.2:11".parse()?)?;
    let (next, _) = listener.accept()?;
    check!(next.read_buffer()? == 1 << 20);
    check!(small.set_read_buffer(10).is_err());
    Ok(())
}

fn wire_info() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:12".parse()?)?;
    let client = alice.dial("10.0.0.2:12".parse()?)?;
    let (server, peer) = listener.accept()?;
    check!(peer == client.local_addr()?);
    for _ in 0..20 {
        (&client).write_all(b"ping")?;
        read_n(&server, 4)?;
        (&server).write_all(b"pong")?;
        read_n(&client, 4)?;
    }
    let info = client.info()?;
    check!(info.state == State::Established);
    check!(info.local == client.local_addr()? && info.peer == "10.0.0.2:12".parse()?);
    check!(info.rtt.is_some() && info.rto.is_some(), "{info:?}");
    check!(info.peer_window > 0 && info.recv_window > 0, "{info:?}");
    check!(
        info.segments_out >= 20 && info.segments_in >= 20,
        "{info:?}"
    );
    check!(
        info.nodelay && info.keepalive == Some(KeepAlive::new()),
        "{info:?}"
    );
    check!(info.retransmits == 0, "{info:?}");
    Ok(())
}

fn wire_dial_timeout() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    bob.stop();
    let start = Instant::now();
    let err = alice
        .dial_timeout("10.0.0.2:80".parse()?, Duration::from_millis(300))
        .unwrap_err();
    check!(err.kind() == ErrorKind::TimedOut, "{err}");
    check!(err.to_string().ends_with("i/o timeout"), "{err}");
    check!(start.elapsed() < Duration::from_secs(2));
    check!(alice.tcp_socket_count() == 0);
    Ok(())
}

fn wire_error_kinds() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:13".parse()?)?;
    let client = alice.dial("10.0.0.2:13".parse()?)?;
    let (server, _) = listener.accept()?;
    // Our own shutdown(Write), then a write: BrokenPipe.
    client.shutdown(Shutdown::Write)?;
    let err = (&client).write(b"x").unwrap_err();
    check!(err.kind() == ErrorKind::BrokenPipe, "{err}");
    check!(err.to_string().starts_with("write tcp 10.0.0.1:"), "{err}");
    // The peer resets: reads fail with ConnectionReset, then writes with BrokenPipe.
    server.set_linger(Some(Duration::ZERO))?;
    server.close()?;
    let mut buf = [0; 4];
    let err = (&client).read(&mut buf).unwrap_err();
    check!(err.kind() == ErrorKind::ConnectionReset, "{err}");
    check!(
        err.to_string().ends_with("connection reset by peer"),
        "{err}"
    );
    let other = alice.dial("10.0.0.2:13".parse()?)?;
    let (peer, _) = listener.accept()?;
    peer.set_linger(Some(Duration::ZERO))?;
    drop(peer);
    eventually(Duration::from_secs(2), "the reset to arrive", || {
        other.state() == State::Closed
    })?;
    let err = (&other).write(b"x").unwrap_err();
    check!(err.kind() == ErrorKind::BrokenPipe, "{err}");
    // Closing with unread data resets (RFC 2525 §2.17), as Linux does.
    let third = alice.dial("10.0.0.2:13".parse()?)?;
    let (unread, _) = listener.accept()?;
    (&third).write_all(b"never read")?;
    eventually(Duration::from_secs(2), "the data to arrive", || {
        unread.info().is_ok_and(|i| i.recv_queue == 10)
    })?;
    unread.close()?;
    let err = (&third).read(&mut buf).unwrap_err();
    check!(err.kind() == ErrorKind::ConnectionReset, "{err}");
    // Use after close, through a clone.
    let clone = other.try_clone()?;
    other.close()?;
    let err = (&clone).read(&mut buf).unwrap_err();
    check!(
        err.to_string()
            .ends_with("use of closed network connection"),
        "{err}"
    );
    check!(clone.close().is_err(), "a second close is an error");
    Ok(())
}

fn wire_give_up() -> TestResult {
    let alice_config = config("10.0.0.1/24")
        .with_keepalive(None)
        .with_retransmit_give_up(Duration::from_millis(2500));
    let (alice, bob, _) = wire_pair(alice_config, config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:14".parse()?)?;
    let client = alice.dial("10.0.0.2:14".parse()?)?;
    let (_server, _) = listener.accept()?;
    // Idle, without keepalive: nothing expires.
    std::thread::sleep(Duration::from_millis(3000));
    check!(client.state() == State::Established, "{}", client.state());
    // Data to a peer that vanished: retransmitted, then given up.
    bob.stop();
    (&client).write_all(b"hello?")?;
    let start = Instant::now();
    let mut buf = [0; 4];
    let err = (&client).read(&mut buf).unwrap_err();
    check!(err.kind() == ErrorKind::TimedOut, "{err}");
    check!(err.to_string().ends_with("connection timed out"), "{err}");
    check!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    check!(client.info()?.retransmits >= 1, "{:?}", client.info()?);
    Ok(())
}

fn wire_stop() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:15".parse()?)?;
    let client = alice.dial("10.0.0.2:15".parse()?)?;
    let (_server, _) = listener.accept()?;
    let other = alice.listen("0.0.0.0:16".parse()?)?;
    let reader = {
        let client = client.try_clone()?;
        std::thread::spawn(move || (&client).read(&mut [0; 4]))
    };
    let acceptor = std::thread::spawn(move || other.accept().map(|_| ()));
    std::thread::sleep(Duration::from_millis(100));
    alice.stop();
    let start = Instant::now();
    let err = reader.join().unwrap().unwrap_err();
    check!(err.to_string().ends_with("the stack is stopped"), "{err}");
    check!(acceptor.join().unwrap().is_err());
    check!(start.elapsed() < Duration::from_secs(1));
    check!((&client).write(b"x").is_err());
    Ok(())
}

/// A blocked read is handed data by the driver as it arrives (`Tcp::hand_off`); a read
/// whose deadline passes meanwhile, or a smaller read after it, must still get every
/// byte, in order. Tiny deadlines, buffer sizes from 1 byte to 96 KiB, and a writer that
/// pauses, so reads block, get data and time out in every order.
fn wire_timed_out_reads() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:7".parse()?)?;
    let data = pattern(4 << 20, 7);
    let conn = alice.dial("10.0.0.2:7".parse()?)?;
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            for (i, piece) in data.chunks(20_000).enumerate() {
                (&conn).write_all(piece)?;
                if i % 8 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            conn.close()
        })
    };
    let (conn, _) = listener.accept()?;
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0; 96 << 10];
    let (mut timeouts, mut reads) = (0, 0u64);
    let give_up = Instant::now() + Duration::from_secs(30);
    while Instant::now() < give_up {
        reads += 1;
        let size = 1 + (reads.wrapping_mul(2_654_435_761) % buf.len() as u64) as usize;
        let wait = Duration::from_micros(100 + reads % 1500);
        conn.set_read_deadline(Some(Instant::now() + wait))?;
        match (&conn).read(&mut buf[..size]) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::TimedOut => timeouts += 1,
            Err(e) => return Err(e.into()),
        }
    }
    writer.join().unwrap()?;
    check!(
        got.len() == data.len(),
        "{} of {} bytes arrived",
        got.len(),
        data.len()
    );
    check!(got == data, "the bytes arrived changed or out of order");
    check!(timeouts > 0, "no read timed out in {reads} reads");
    Ok(())
}

/// The rest of a blocked write is queued by the driver as ACKs make room
/// (`Tcp::hand_off`); a write whose deadline passes meanwhile reports exactly the bytes
/// that were queued. The writer advances by what each call reports, through sizes from
/// 1 byte to 300 KiB (beyond the 64 KiB buffer) with sub-millisecond deadlines, against
/// a reader that pauses; the reader must get exactly that prefix of the data, in order.
fn wire_timed_out_writes() -> TestResult {
    let small = |addr| config(addr).with_buffers(64 << 10, 64 << 10);
    let (alice, bob, _) = wire_pair(small("10.0.0.1/24"), small("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:7".parse()?)?;
    let conn = alice.dial("10.0.0.2:7".parse()?)?;
    let (server, _) = listener.accept()?;
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0; 50_000];
        loop {
            match (&server).read(&mut buf)? {
                0 => return Ok(got),
                n => got.extend_from_slice(&buf[..n]),
            }
            if got.len() % 7 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    });
    let data = pattern(6 << 20, 9);
    let (mut sent, mut timeouts, mut partial, mut calls) = (0, 0, 0, 0u64);
    let give_up = Instant::now() + Duration::from_secs(30);
    while sent < data.len() && Instant::now() < give_up {
        calls += 1;
        let size = 1 + (calls.wrapping_mul(2_654_435_761) % (300 << 10)) as usize;
        let piece = &data[sent..data.len().min(sent + size)];
        let wait = Duration::from_micros(100 + calls % 1500);
        conn.set_write_deadline(Some(Instant::now() + wait))?;
        match (&conn).write(piece) {
            Ok(n) => {
                check!(
                    n > 0 && n <= piece.len(),
                    "write of {} said {n}",
                    piece.len()
                );
                partial += usize::from(n < piece.len());
                sent += n;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => timeouts += 1,
            Err(e) => return Err(e.into()),
        }
    }
    conn.set_write_deadline(None)?;
    conn.close()?;
    let got = reader.join().unwrap()?;
    check!(sent == data.len(), "sent {sent} of {} in 30 s", data.len());
    check!(
        got.len() == sent,
        "the writer reported {sent} bytes, the reader got {}",
        got.len()
    );
    check!(got == data, "the bytes arrived changed or out of order");
    check!(
        partial > 0 && timeouts > 0,
        "{partial} partial writes, {timeouts} timeouts in {calls} calls"
    );
    Ok(())
}

/// Accept with a timeout, and a listener deadline that applies to an accept already
/// blocked: moved nearer, it fails that accept at the new time; cleared, accept works.
fn wire_accept_deadlines() -> TestResult {
    let (alice, bob, _) = wire_pair(config("10.0.0.1/24"), config("10.0.0.2/24"))?;
    let listener = bob.listen("0.0.0.0:7".parse()?)?;
    let start = Instant::now();
    let err = listener
        .accept_timeout(Duration::from_millis(100))
        .err()
        .ok_or("accept_timeout without a client returned a connection")?;
    let took = start.elapsed();
    check!(err.kind() == ErrorKind::TimedOut, "{err}");
    check!(
        err.to_string() == "accept tcp 0.0.0.0:7: i/o timeout",
        "message: {err}"
    );
    check!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "accept_timeout(100 ms) took {took:?}"
    );

    // An accept blocked with no deadline; the deadline set from another thread ends it.
    // (Timed from here, not from when the thread first runs: on a busy machine that can
    // be late, and the deadline below is set from this thread's clock.)
    let start = Instant::now();
    let blocked = {
        let listener = listener.try_clone()?;
        std::thread::spawn(move || (listener.accept().map(|_| ()), start.elapsed()))
    };
    std::thread::sleep(Duration::from_millis(100));
    listener.set_deadline(Some(Instant::now() + Duration::from_millis(50)))?;
    let (result, took) = blocked.join().unwrap();
    let err = result
        .err()
        .ok_or("the blocked accept returned a connection")?;
    check!(err.kind() == ErrorKind::TimedOut, "{err}");
    check!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "the blocked accept ended after {took:?}"
    );

    // A deadline in the past fails at once; cleared, accept takes the next client.
    listener.set_deadline(Some(Instant::now() - Duration::from_millis(1)))?;
    let conn = alice.dial("10.0.0.2:7".parse()?)?;
    let err = listener.accept().err().ok_or("accept past its deadline")?;
    check!(err.kind() == ErrorKind::TimedOut, "{err}");
    listener.set_deadline(None)?;
    let (_, peer) = listener.accept_timeout(Duration::from_secs(5))?;
    check!(peer == conn.local_addr()?, "accepted {peer}");
    Ok(())
}

// ---------------------------------------------------------------- the TAP

fn tap_echo() -> TestResult {
    in_netns(|| {
        let (stack, _) = tap_stack(config("10.0.0.2/24"))?;
        let listener = stack.listen("0.0.0.0:7".parse()?)?;
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (conn, _) = listener.accept()?;
            std::io::copy(&mut &conn, &mut &conn)?;
            Ok(())
        });
        let mut kernel =
            std::net::TcpStream::connect_timeout(&addr(STACK_ADDR, 7), Duration::from_secs(5))?;
        kernel.set_read_timeout(Some(Duration::from_secs(10)))?;
        let data = pattern(1 << 20, 9);
        let mut writer = kernel.try_clone()?;
        let sent = data.clone();
        let w = std::thread::spawn(move || -> std::io::Result<()> {
            writer.write_all(&sent)?;
            writer.shutdown(Shutdown::Write)
        });
        let mut back = Vec::new();
        kernel.read_to_end(&mut back)?;
        w.join().unwrap()?;
        server.join().unwrap()?;
        check!(back == data, "echo differs ({} bytes back)", back.len());
        Ok(())
    })
}

fn tap_linger() -> TestResult {
    in_netns(|| {
        let (stack, frames) = tap_stack(config("10.0.0.2/24"))?;
        let kernel = std::net::TcpListener::bind(addr(KERNEL_ADDR, 5000))?;
        // linger 0: RST, and the kernel's read fails with a reset.
        let conn = stack.dial(addr(KERNEL_ADDR, 5000))?;
        let (mut k, _) = kernel.accept()?;
        k.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.set_linger(Some(Duration::ZERO))?;
        let port = conn.local_addr()?.port();
        conn.close()?;
        let mut buf = [0; 8];
        let err = k.read(&mut buf).unwrap_err();
        check!(err.kind() == ErrorKind::ConnectionReset, "{err}");
        let segs = segments(&frames);
        let ours: Vec<&Seg> = segs
            .iter()
            .filter(|s| tx(s) && s.src.port() == port)
            .collect();
        check!(ours.iter().any(|s| s.rst), "no RST from linger 0");
        check!(!ours.iter().any(|s| s.fin), "a FIN from linger 0");
        // Default linger: close returns at once; the data and the FIN still arrive.
        let conn = stack.dial(addr(KERNEL_ADDR, 5000))?;
        let (mut k, _) = kernel.accept()?;
        k.set_read_timeout(Some(Duration::from_secs(5)))?;
        let port = conn.local_addr()?.port();
        let data = pattern(200_000, 4);
        (&conn).write_all(&data)?;
        let start = Instant::now();
        conn.close()?;
        check!(start.elapsed() < Duration::from_millis(50), "close blocked");
        let mut got = Vec::new();
        k.read_to_end(&mut got)?;
        check!(got == data, "{} of {} bytes", got.len(), data.len());
        let segs = segments(&frames);
        let ours: Vec<&Seg> = segs
            .iter()
            .filter(|s| tx(s) && s.src.port() == port)
            .collect();
        check!(ours.iter().any(|s| s.fin) && !ours.iter().any(|s| s.rst));
        Ok(())
    })
}

fn tap_bounded_linger() -> TestResult {
    in_netns(|| {
        let (stack, frames) = tap_stack(config("10.0.0.2/24"))?;
        let kernel = std::net::TcpListener::bind(addr(KERNEL_ADDR, 5001))?;
        // A reader that reads everything: close waits for the acknowledgements, Ok.
        let conn = stack
            .dialer()
            .linger(Some(Duration::from_secs(5)))
            .dial(addr(KERNEL_ADDR, 5001))?;
        let (mut k, _) = kernel.accept()?;
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = k.read_to_end(&mut v);
            v.len()
        });
        (&conn).write_all(&pattern(100_000, 5))?;
        conn.close()?;
        check!(reader.join().unwrap() == 100_000);
        // A stalled reader: the window fills, linger expires, RST, an error.
        let conn = stack.dial(addr(KERNEL_ADDR, 5001))?;
        let (k, _) = kernel.accept()?;
        k.set_nonblocking(true)?; // and never read
        let port = conn.local_addr()?.port();
        conn.set_write_deadline(Some(Instant::now() + Duration::from_secs(3)))?;
        let mut sent = 0;
        let chunk = pattern(64 << 10, 6);
        while let Ok(n) = (&conn).write(&chunk) {
            sent += n;
            if n < chunk.len() {
                break;
            }
        }
        check!(sent > 0);
        conn.set_linger(Some(Duration::from_millis(500)))?;
        let start = Instant::now();
        let err = conn.close().unwrap_err();
        let took = start.elapsed();
        check!(err.kind() == ErrorKind::TimedOut, "{err}");
        check!(err.to_string().contains("not delivered"), "{err}");
        check!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "{took:?}"
        );
        eventually(Duration::from_secs(2), "an RST on the wire", || {
            segments(&frames)
                .iter()
                .any(|s| tx(s) && s.src.port() == port && s.rst)
        })?;
        drop(k);
        Ok(())
    })
}

fn tap_keepalive() -> TestResult {
    in_netns(|| {
        let idle = Duration::from_millis(1000);
        let interval = Duration::from_millis(400);
        let ka = KeepAlive::new()
            .with_idle(idle)
            .with_interval(interval)
            .with_count(3);
        let (stack, frames) = tap_stack(config("10.0.0.2/24"))?;
        let kernel = std::net::TcpListener::bind(addr(KERNEL_ADDR, 5002))?;
        let conn = stack
            .dialer()
            .keepalive(Some(ka))
            .dial(addr(KERNEL_ADDR, 5002))?;
        let (k, _) = kernel.accept()?;
        let port = conn.local_addr()?.port();
        // The kernel answers every probe: the connection stays up, and each answer
        // restarts the idle time. Watch for 3.5 s.
        std::thread::sleep(Duration::from_millis(3500));
        check!(conn.state() == State::Established);
        let segs = segments(&frames);
        let mine: Vec<&Seg> = segs
            .iter()
            .filter(|s| (tx(s) && s.src.port() == port) || (!tx(s) && s.dst.port() == port))
            .collect();
        let probes: Vec<&&Seg> = mine.iter().filter(|s| tx(s) && s.len == 1).collect();
        check!(probes.len() >= 2, "{} probes", probes.len());
        for probe in &probes {
            // Each probe comes `idle` after the last segment before it (its answer).
            let before = mine
                .iter()
                .rev()
                .find(|s| s.at < probe.at)
                .ok_or("nothing before a probe")?;
            let gap = probe.at - before.at;
            check!(
                gap >= idle - Duration::from_millis(20) && gap <= idle + Duration::from_millis(150),
                "probe {gap:?} after the previous segment, not {idle:?}"
            );
        }
        // Now the kernel goes silent (nftables drops what it would send to us): probes
        // come every `interval`, and after 3 the connection fails.
        let out = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(
                    b"table inet t {\n chain o {\n type filter hook output priority 0;\n tcp sport 5002 drop\n }\n}\n",
                )?;
                child.wait()
            })?;
        check!(out.success(), "nft failed");
        let silent_from = Instant::now();
        let mut buf = [0; 4];
        let err = (&conn).read(&mut buf).unwrap_err();
        check!(err.kind() == ErrorKind::TimedOut, "{err}");
        let segs = segments(&frames);
        let probes: Vec<Instant> = segs
            .iter()
            .filter(|s| tx(s) && s.src.port() == port && s.len == 1 && s.at >= silent_from)
            .map(|s| s.at)
            .collect();
        check!(probes.len() >= 3, "{} probes while silent", probes.len());
        for pair in probes.windows(2) {
            let gap = pair[1] - pair[0];
            check!(
                gap >= interval - Duration::from_millis(20)
                    && gap <= interval + Duration::from_millis(150),
                "probes {gap:?} apart, not {interval:?}"
            );
        }
        drop(k);
        Ok(())
    })
}

fn tap_window() -> TestResult {
    in_netns(|| {
        let (stack, frames) = tap_stack(config("10.0.0.2/24"))?;
        let listener = stack
            .listen_config()
            .read_buffer(1 << 20)
            .listen("0.0.0.0:5003".parse()?)?;
        let mut kernel =
            std::net::TcpStream::connect_timeout(&addr(STACK_ADDR, 5003), Duration::from_secs(5))?;
        let (conn, _) = listener.accept()?;
        // Something to acknowledge, so the window shows on an ordinary ACK.
        kernel.write_all(b"x")?;
        read_n(&conn, 1)?;
        let segs = segments(&frames);
        let synack = segs
            .iter()
            .find(|s| tx(s) && s.syn && s.ack)
            .ok_or("no SYN-ACK")?;
        // 1 MiB of window needs a shift of 5 (RFC 7323 §2.3): 65535 << 5 > 1 MiB.
        check!(synack.wscale == Some(5), "{synack:?}");
        eventually(
            Duration::from_secs(2),
            "an ACK advertising the window",
            || {
                segments(&frames).iter().any(|s| {
                    tx(s) && !s.syn && s.ack && (u32::from(s.window) << 5) >= (1 << 20) - 32
                })
            },
        )?;
        let info = conn.info()?;
        check!(info.recv_window >= (1 << 20) - 32, "{info:?}");
        check!(info.read_buffer == 1 << 20, "{info:?}");
        Ok(())
    })
}

fn tap_zero_window() -> TestResult {
    in_netns(|| {
        let (stack, frames) = tap_stack(config("10.0.0.2/24"))?;
        let kernel = std::net::TcpListener::bind(addr(KERNEL_ADDR, 5004))?;
        let conn = stack
            .dialer()
            .write_buffer(64 << 10)
            .dial(addr(KERNEL_ADDR, 5004))?;
        let (mut k, _) = kernel.accept()?;
        // Shrink the kernel's receive buffer is not possible after accept; instead the
        // kernel reader simply stops reading until the window is zero.
        let total = 16 << 20;
        let data = pattern(total, 7);
        conn.set_write_deadline(Some(Instant::now() + Duration::from_secs(2)))?;
        let mut sent = 0;
        loop {
            match (&conn).write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::TimedOut => break,
                Err(e) => return Err(e.into()),
            }
            if sent == total {
                return Err("the kernel never closed its window".into());
            }
        }
        let port = conn.local_addr()?.port();
        eventually(Duration::from_secs(10), "a zero window and probes", || {
            let segs = segments(&frames);
            segs.iter()
                .any(|s| !tx(s) && s.dst.port() == port && s.window == 0)
                && conn.info().is_ok_and(|i| i.zero_window_probes >= 1)
        })?;
        // The reader resumes; everything arrives, once, in order.
        conn.set_write_deadline(None)?;
        let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            k.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut v = Vec::new();
            k.read_to_end(&mut v)?;
            Ok(v)
        });
        (&conn).write_all(&data[sent..])?;
        conn.close()?;
        let got = reader.join().unwrap()?;
        check!(got.len() == total, "{} of {total}", got.len());
        check!(got == data, "bytes differ");
        Ok(())
    })
}

fn tap_backlog() -> TestResult {
    in_netns(|| {
        let (stack, _) = tap_stack(config("10.0.0.2/24"))?;
        let listener = stack.listen_backlog("0.0.0.0:5005".parse()?, 128)?;
        let clients: Vec<_> = (0..200)
            .map(|i| {
                std::thread::spawn(move || -> std::io::Result<()> {
                    let mut c = std::net::TcpStream::connect_timeout(
                        &addr(STACK_ADDR, 5005),
                        Duration::from_secs(60),
                    )?;
                    c.set_read_timeout(Some(Duration::from_secs(60)))?;
                    c.write_all(&[i as u8])?;
                    let mut b = [0; 1];
                    c.read_exact(&mut b)?;
                    if b[0] != i as u8 {
                        return Err(std::io::Error::other("wrong echo"));
                    }
                    Ok(())
                })
            })
            .collect();
        // Accept slowly: the queue fills, extra SYNs are dropped, clients retry.
        let mut accepted = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted < 200 && Instant::now() < deadline {
            let (conn, _) = listener.accept_timeout(Duration::from_secs(30))?;
            std::thread::sleep(Duration::from_millis(2));
            let mut b = [0; 1];
            conn.set_read_deadline(Some(Instant::now() + Duration::from_secs(10)))?;
            (&conn).read_exact(&mut b)?;
            (&conn).write_all(&b)?;
            accepted += 1;
        }
        check!(accepted == 200, "accepted {accepted}");
        for c in clients {
            c.join()
                .unwrap()
                .map_err(|e| format!("a client failed: {e}"))?;
        }
        check!(listener.dropped_syns()? > 0, "the backlog never filled");
        Ok(())
    })
}

/// A flight of two or three segments whose first is lost can never bring the three
/// duplicate ACKs smoltcp counts: its SACK blocks show the loss, and the watch has
/// smoltcp send it again at once (RFC 5827), not after a retransmission timeout.
fn wire_early_retransmit() -> TestResult {
    let (alice, bob, frames, log, control) = impaired_pair()?;
    let listener = bob.listen("0.0.0.0:9".parse()?)?;
    let client = alice.dial("10.0.0.2:9".parse()?)?;
    let (server, _) = listener.accept()?;
    server.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The first flight after the handshake: a few segments; the first one is lost.
    let data = pattern(3000, 7);
    control.drop_next_egress(1);
    let start = Instant::now();
    (&client).write_all(&data)?;
    check!(
        read_n(&server, data.len())? == data,
        "the bytes arrived intact"
    );
    let took = start.elapsed();
    let info = client.info()?;
    check!(
        info.retransmits == 1 && info.fast_retransmits == 1,
        "one retransmission, a fast one: {} retransmits, {} fast, after {took:?}",
        info.retransmits,
        info.fast_retransmits
    );
    // smoltcp's retransmission timer starts at a second: the repair came long before.
    check!(took < Duration::from_millis(900), "repaired after {took:?}");
    let sent_again = segments(&frames)
        .iter()
        .filter(|s| tx(s) && s.len > 0)
        .count();
    check!(sent_again >= 3, "{sent_again} data segments sent");
    // The trace names the ACK that showed the loss.
    let trace = log.text();
    check!(
        trace
            .lines()
            .any(|l| l.contains(" < ") && l.contains("(SACK shows a loss: fast retransmit)")),
        "no ACK marked as showing the loss:\n{trace}"
    );
    Ok(())
}

/// The peer closed; the application writes, then closes its side while the data is
/// still in flight. The FIN waits until the data is acknowledged (smoltcp's LAST-ACK
/// would otherwise take no duplicate ACKs, and a loss could only be repaired by the
/// retransmission timer): the state stays CLOSE-WAIT meanwhile, a lost segment is sent
/// again at once, and the peer reads every byte, then EOF.
fn wire_fin_after_data() -> TestResult {
    let (alice, bob, frames, _log, control) = impaired_pair()?;
    let listener = bob.listen("0.0.0.0:9".parse()?)?;
    let client = alice.dial("10.0.0.2:9".parse()?)?;
    let (server, _) = listener.accept()?;
    server.set_read_timeout(Some(Duration::from_secs(10)))?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    server.shutdown(Shutdown::Write)?;
    check!((&client).read(&mut [0; 16])? == 0, "EOF from the peer");
    eventually(Duration::from_secs(2), "CLOSE-WAIT", || {
        client.state() == State::CloseWait
    })?;
    let data = pattern(200_000, 3);
    (&client).write_all(&data)?;
    client.shutdown(Shutdown::Write)?;
    let info = client.info()?;
    check!(
        info.state == State::CloseWait && info.send_queue > 0,
        "with {} bytes unacknowledged the FIN waits: {}",
        info.send_queue,
        info.state
    );
    // A segment of a later flight is lost.
    std::thread::sleep(Duration::from_millis(30));
    control.drop_next_egress(1);
    let mut got = Vec::new();
    (&server).read_to_end(&mut got)?;
    check!(
        got == data,
        "{} of {} bytes arrived intact",
        got.len(),
        data.len()
    );
    let info = client.info()?;
    check!(
        info.fast_retransmits >= 1,
        "the loss was repaired by fast retransmit: {} retransmits, {} fast",
        info.retransmits,
        info.fast_retransmits
    );
    eventually(Duration::from_secs(3), "the connection closed", || {
        matches!(client.state(), State::Closed | State::TimeWait)
    })?;
    // On the wire: no FIN of alice's before her last data.
    let segs = segments(&frames);
    let fin = segs.iter().position(|s| tx(s) && s.fin);
    let last_data = segs.iter().rposition(|s| tx(s) && s.len > 0);
    check!(
        matches!((fin, last_data), (Some(f), Some(d)) if f > d),
        "the FIN (segment {fin:?}) follows the last data (segment {last_data:?})"
    );
    Ok(())
}
