//! Floods and churn: a configurable socket limit, connection churn (sequential and
//! concurrent), and a SYN flood from spoofed sources, each with the bounds it keeps.
//!
//! The limit and churn tests run two stacks on the in-memory wire, which needs no root
//! and is faster than a TAP with kernel peers: churn is the stack's own work, not the
//! link's. The SYN flood runs on a TAP in a private namespace (root): a raw peer injects
//! SYNs from spoofed sources of the namespace's own subnet, beside a kernel client that
//! streams to the stack.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netdev::{Tap, TapOptions, WireOptions, wire};
use smoltcp::wire::{EthernetFrame, Ipv4Packet, TcpPacket, TcpSeqNumber};
use stack::{SocketEntry, Stack, StackConfig, State, TcpListener, TcpStream};
use tapnet_tests::raw::{self, RawPeer};
use tapnet_tests::{
    Failed, STACK_ADDR, TestResult, check, eventually, in_netns, kernel_side_up, plain, root,
    run_text,
};

fn main() {
    tapnet_tests::main(vec![
        plain(
            "limit::dial_fails_syns_drop_and_service_resumes",
            limit_on_the_wire,
        ),
        plain(SEQUENTIAL_CHURN, sequential_churn),
        plain(
            "churn::waves_of_concurrent_connections_all_exchange_and_go",
            concurrent_churn,
        ),
        root(SYN_FLOOD, syn_flood),
    ])
}

/// smoltcp's TIME-WAIT lasts this long (`CLOSE_DELAY` in its `socket/tcp.rs`).
const TIME_WAIT: Duration = Duration::from_secs(10);

fn config(addr: &str) -> StackConfig {
    StackConfig::new().with_addr(addr.parse().unwrap())
}

/// Two stacks on the wire: the client 10.0.0.1 and the server 10.0.0.2.
fn wire_pair(client: StackConfig, server: StackConfig) -> Result<(Stack, Stack), Failed> {
    let (a, b) = wire(&WireOptions::default())?;
    Ok((Stack::new(a, client)?, Stack::new(b, server)?))
}

fn server_addr(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port))
}

/// The resident set of this process, in KiB, from /proc/self/status.
fn rss_kib() -> Result<u64, Failed> {
    status_kib("VmRSS")
}

/// The resident memory of this process that is its own (heap, stacks: RssAnon), in KiB.
/// Unlike VmRSS it leaves out the pages of the program's file, which fault in as code
/// runs for the first time, whenever that is.
fn anon_kib() -> Result<u64, Failed> {
    status_kib("RssAnon")
}

fn status_kib(field: &str) -> Result<u64, Failed> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status").into())
}

fn time_wait_count(stack: &Stack) -> usize {
    stack.time_wait_count()
}

/// Echoes each accepted connection until EOF, then closes it; runs until the listener
/// is closed. With `threaded`, each connection gets its own short-lived thread; without,
/// connections are served one after another (no thread churn to blur the process's
/// memory figures).
fn echo_server(listener: TcpListener, threaded: bool) -> thread::JoinHandle<()> {
    fn serve(conn: TcpStream) {
        let mut buf = [0u8; 256];
        loop {
            match (&conn).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if (&conn).write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = conn.close();
    }
    thread::spawn(move || {
        while let Ok((conn, _)) = listener.accept() {
            if threaded {
                thread::spawn(move || serve(conn));
            } else {
                serve(conn);
            }
        }
    })
}

/// Writes `msg` and reads back exactly as many bytes.
fn exchange(conn: &TcpStream, msg: &[u8]) -> Result<(), Failed> {
    (&*conn).write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    (&*conn).read_exact(&mut back)?;
    check!(back == msg, "echo mismatch: {back:?} != {msg:?}");
    Ok(())
}

/// The socket limit, with L = 16 on the server: a listener keeps taking connections until
/// the server holds L sockets; then the next client's SYN is dropped unanswered (its dial
/// times out rather than being refused, and `dropped_syns` counts it), and the server's
/// own dial fails at once with `QuotaExceeded`, naming the limit. The L connections at
/// the limit all keep echoing. Once one closes, the listener re-arms by itself and a new
/// client is accepted within 1 s, and a dial from the server works again.
fn limit_on_the_wire() -> TestResult {
    const LIMIT: usize = 16;
    let (client, server) = wire_pair(
        config("10.0.0.1/24"),
        config("10.0.0.2/24").with_max_sockets(LIMIT),
    )?;
    let listener = server.listen_backlog(server_addr(7), 64)?;
    let _client_listener = client.listen("10.0.0.1:9".parse()?)?;
    let mut pairs = Vec::new();
    for i in 0..LIMIT {
        let conn = client
            .dial_timeout(server_addr(7), Duration::from_secs(2))
            .map_err(|e| format!("dial {i} of {LIMIT}, under the limit: {e}"))?;
        let (accepted, _) = listener.accept_timeout(Duration::from_secs(2))?;
        pairs.push((conn, accepted));
    }
    check!(
        server.tcp_socket_count() == LIMIT,
        "the server holds {} sockets, not the limit {LIMIT}",
        server.tcp_socket_count()
    );

    // Over the limit: the SYN is dropped, unanswered, so the dial times out.
    let over = client.dial_timeout(server_addr(7), Duration::from_millis(700));
    match &over {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => return Err(format!("a dial over the server's limit: {other:?}").into()),
    }
    check!(
        listener.dropped_syns()? >= 1,
        "dropped_syns = {}",
        listener.dropped_syns()?
    );
    let err = server
        .dial("10.0.0.1:9".parse()?)
        .err()
        .ok_or("the server's dial at its limit succeeded")?;
    check!(
        err.kind() == ErrorKind::QuotaExceeded,
        "kind {:?}: {err}",
        err.kind()
    );
    let text = err.to_string();
    check!(
        text.starts_with("dial tcp 10.0.0.2:")
            && text.contains("->10.0.0.1:9: socket limit of 16 reached"),
        "error: {text}"
    );
    check!(server.tcp_socket_count() == LIMIT);

    // Existing connections are unaffected: each still echoes, both ways.
    for (i, (conn, accepted)) in pairs.iter().enumerate() {
        let msg = format!("conn {i} at the limit");
        (&*conn).write_all(msg.as_bytes())?;
        let mut buf = vec![0u8; msg.len()];
        (&*accepted).read_exact(&mut buf)?;
        (&*accepted).write_all(&buf)?;
        let mut back = vec![0u8; msg.len()];
        (&*conn).read_exact(&mut back)?;
        check!(back == msg.as_bytes(), "conn {i}: {back:?}");
    }

    // One closes (the client first: the server's side ends in LAST-ACK, then is freed).
    let (conn, accepted) = pairs.pop().ok_or("no pairs")?;
    conn.close()?;
    let mut buf = [0u8; 1];
    check!((&accepted).read(&mut buf)? == 0, "the FIN arrives");
    accepted.close()?;
    // A SYN that arrives before the last ACK frees the socket is still dropped (and
    // retried by its client a second later); from the moment it is freed, the listener
    // re-arms by itself.
    eventually(
        Duration::from_secs(2),
        "the closed connection to be freed",
        || server.sockets().iter().filter(|e| !e.is_listener()).count() == LIMIT - 1,
    )?;
    let started = Instant::now();
    let conn = client
        .dial_timeout(server_addr(7), Duration::from_secs(1))
        .map_err(|e| format!("service did not resume within 1 s: {e}"))?;
    let resumed = started.elapsed();
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(1))?;
    exchange_pair(&conn, &accepted)?;
    eprintln!("limit: service resumed {resumed:?} after a socket freed");

    // More free up: the listener re-arms its LISTEN sockets (two at most, and they count)
    // as room appears; with them back, one more freed socket lets the server's own dial
    // through. The server closes first, so its side passes through TIME-WAIT, which holds
    // no socket.
    for _ in 0..3 {
        let (c2, a2) = pairs.pop().ok_or("no pairs")?;
        a2.close()?;
        check!((&c2).read(&mut buf)? == 0, "the FIN arrives");
        c2.close()?;
    }
    eventually(
        Duration::from_secs(2),
        "the server's dial to succeed",
        || server.dial("10.0.0.1:9".parse().unwrap()).is_ok(),
    )?;
    Ok(())
}

fn exchange_pair(conn: &TcpStream, accepted: &TcpStream) -> TestResult {
    (&*conn).write_all(b"ping")?;
    let mut buf = [0u8; 4];
    (&*accepted).read_exact(&mut buf)?;
    check!(&buf == b"ping");
    Ok(())
}

/// How many connect / exchange / close cycles the sequential churn runs.
const CYCLES: usize = 100_000;
/// The most TIME-WAIT records a stack keeps (`docs/tcp.md`).
const MAX_TIME_WAIT: usize = 16_384;

/// Sequential churn: `CYCLES` cycles of dial, a 32-byte exchange through an echo server,
/// and close (the client closes first, so its side ends in TIME-WAIT). Afterwards both
/// socket tables return to their baselines (once the 10 s TIME-WAIT has run out); the
/// TIME-WAIT count never exceeds its bound (16,384 records: at ~1,700 cycles a second the
/// client runs through every ephemeral port within one TIME-WAIT, and dials then reuse
/// the oldest), and the process's resident memory has grown by at most 10% since the
/// first 1,000 cycles: its own (RssAnon, heap and stacks), and all of it (VmRSS).
fn sequential_churn() -> TestResult {
    if std::env::var_os(ALONE).is_none() {
        return alone(SEQUENTIAL_CHURN);
    }
    let small = |addr| config(addr).with_buffers(4096, 4096);
    let (client, server) = wire_pair(small("10.0.0.1/24"), small("10.0.0.2/24"))?;
    let listener = server.listen_backlog(server_addr(7), 128)?;
    let server_base = server.tcp_socket_count();
    let client_base = client.tcp_socket_count();
    let echo = echo_server(listener.try_clone()?, false);
    let started = Instant::now();
    let (mut rss_at_1000, mut anon_at_1000) = (0, 0);
    let mut max_time_wait = 0;
    for i in 0..CYCLES {
        let conn = client
            .dial_timeout(server_addr(7), Duration::from_secs(5))
            .map_err(|e| format!("cycle {i}: {e:?}"))?;
        let msg = format!("cycle {i:>26}");
        exchange(&conn, msg.as_bytes()).map_err(|e| format!("cycle {i}: {e:?}"))?;
        conn.close()?;
        if i + 1 == 1000 {
            rss_at_1000 = rss_kib()?;
            anon_at_1000 = anon_kib()?;
        }
        if (i + 1) % 10_000 == 0 {
            let tw = time_wait_count(&client);
            max_time_wait = max_time_wait.max(tw);
            eprintln!(
                "churn: {} cycles in {:.1?}, {tw} in TIME-WAIT, RSS {} KiB ({} KiB anonymous)",
                i + 1,
                started.elapsed(),
                rss_kib()?,
                anon_kib()?
            );
        }
    }
    let elapsed = started.elapsed();
    let (rss_end, anon_end) = (rss_kib()?, anon_kib()?);
    eprintln!(
        "churn: {CYCLES} cycles in {elapsed:.1?} ({:.0}/s); RSS {rss_at_1000} KiB after 1,000 \
         ({anon_at_1000} KiB anonymous), {rss_end} KiB after {CYCLES} ({anon_end} KiB \
         anonymous); TIME-WAIT at most {max_time_wait}",
        CYCLES as f64 / elapsed.as_secs_f64()
    );
    check!(
        max_time_wait <= MAX_TIME_WAIT,
        "{max_time_wait} in TIME-WAIT, over the bound {MAX_TIME_WAIT}"
    );
    // The process's own memory (heap and stacks), by at most 10%. A leak of even 100
    // bytes a cycle would be 10 MiB.
    check!(
        anon_end <= anon_at_1000 + anon_at_1000 / 10,
        "anonymous memory grew from {anon_at_1000} KiB to {anon_end} KiB, by over 10%"
    );
    // And all of it, file pages included.
    check!(
        rss_end <= rss_at_1000 + rss_at_1000 / 10,
        "RSS grew from {rss_at_1000} KiB to {rss_end} KiB, by over 10%"
    );
    eventually(
        TIME_WAIT + Duration::from_secs(5),
        "both socket tables back at their baselines, TIME-WAIT over",
        || {
            server.tcp_socket_count() == server_base
                && client.tcp_socket_count() == client_base
                && client.time_wait_count() == 0
        },
    )?;
    check!(client.sockets().is_empty(), "{:#?}", client.sockets());
    check!(
        server.sockets().iter().all(SocketEntry::is_listener),
        "{:#?}",
        server.sockets()
    );
    listener.close()?;
    let _ = echo.join();
    Ok(())
}

/// Concurrent churn: 5 waves of 1,000 connections open at once (dialed from 8 threads),
/// each exchanging its own message through the echo server while all are open, then all
/// closed. Every exchange is checked; afterwards both socket tables return to their
/// baselines.
fn concurrent_churn() -> TestResult {
    const WAVES: usize = 5;
    const PER_WAVE: usize = 1000;
    const THREADS: usize = 8;
    // 16 KiB buffers: up to 4,096 TIME-WAIT sockets keep theirs for 10 s.
    let small = |addr| config(addr).with_buffers(16 << 10, 16 << 10);
    let (client, server) = wire_pair(small("10.0.0.1/24"), small("10.0.0.2/24"))?;
    let listener = server.listen_backlog(server_addr(7), PER_WAVE)?;
    let server_base = server.tcp_socket_count();
    let client_base = client.tcp_socket_count();
    let echo = echo_server(listener.try_clone()?, true);
    let started = Instant::now();
    for wave in 0..WAVES {
        let open = Arc::new(std::sync::Barrier::new(THREADS + 1));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (client, open) = (client.clone(), open.clone());
                thread::spawn(move || -> Result<usize, String> {
                    let mine = (t..PER_WAVE).step_by(THREADS);
                    let mut conns = Vec::new();
                    for i in mine {
                        let conn = client
                            .dial_timeout(server_addr(7), Duration::from_secs(10))
                            .map_err(|e| format!("wave {wave} conn {i}: {e:?}"))?;
                        conns.push((i, conn));
                    }
                    open.wait(); // All 1,000 are open.
                    for (i, conn) in &conns {
                        let msg = format!("wave {wave} conn {i:>4}");
                        exchange(conn, msg.as_bytes())
                            .map_err(|e| format!("wave {wave} conn {i}: {e:?}"))?;
                    }
                    let n = conns.len();
                    for (_, conn) in conns {
                        conn.close().map_err(|e| e.to_string())?;
                    }
                    Ok(n)
                })
            })
            .collect();
        // Count the open connections while every worker waits at the barrier.
        let at_barrier = thread::spawn({
            let client = client.clone();
            let open = open.clone();
            move || {
                open.wait();
                client
                    .sockets()
                    .iter()
                    .filter(|e| e.state() == State::Established)
                    .count()
            }
        });
        let mut done = 0;
        for w in workers {
            done += w.join().map_err(|_| "a worker panicked")??;
        }
        let established = at_barrier.join().map_err(|_| "the counter panicked")?;
        check!(done == PER_WAVE, "wave {wave}: {done} exchanges");
        check!(
            established >= PER_WAVE,
            "wave {wave}: only {established} connections open at once"
        );
        eprintln!(
            "concurrent churn: wave {} done at {:.1?}; {} in TIME-WAIT",
            wave + 1,
            started.elapsed(),
            time_wait_count(&client)
        );
    }
    // Orphans finish as their peers' echo threads close, which a busy machine delays.
    let back = eventually(
        TIME_WAIT + Duration::from_secs(20),
        "both socket tables back at their baselines",
        || server.tcp_socket_count() == server_base && client.tcp_socket_count() == client_base,
    );
    if back.is_err() {
        // What is left, by state, to say why.
        let left = |stack: &Stack| {
            let mut by_state = std::collections::BTreeMap::new();
            for e in stack.sockets() {
                *by_state.entry(e.state().name()).or_insert(0) += 1;
            }
            by_state
        };
        return Err(format!(
            "not back at baseline: server {} sockets (baseline {server_base}) {:?}, client {} \
             (baseline {client_base}) {:?}",
            server.tcp_socket_count(),
            left(&server),
            client.tcp_socket_count(),
            left(&client)
        )
        .into());
    }
    eprintln!(
        "concurrent churn: {} connections in {:.1?}, tables at baseline",
        WAVES * PER_WAVE,
        started.elapsed()
    );
    listener.close()?;
    let _ = echo.join();
    Ok(())
}

/// The sequential churn's trial.
const SEQUENTIAL_CHURN: &str = "churn::sequential_cycles_leave_the_table_and_memory_as_they_were";
/// The SYN flood's trial.
const SYN_FLOOD: &str =
    "syn_flood::bounded_memory_a_stream_keeps_flowing_and_clients_accepted_after";
/// Set in a child process that runs one trial alone (see [`alone`]).
const ALONE: &str = "TAPNET_FLOOD_ALONE";

/// Runs the trial `name` in a child process of this test binary, alone, and passes on
/// its verdict. Resident memory is the whole process's: the trials that measure it (the
/// SYN flood, the sequential churn) would otherwise count each other's, and the
/// concurrent churn's thousands of connections.
fn alone(name: &str) -> TestResult {
    // One at a time, too: each measures its memory against its own start, and the other's
    // load on this 2-core machine would delay its driver threads and swell their pools.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe()?;
    let (code, out, err) = run_text(
        Command::new(exe)
            .args([name, "--exact", "--test-threads=1"])
            .env(ALONE, "1")
            // The trials spawn a thread per connection, and glibc gives threads arenas
            // of their own, up to 8 per core: resident memory would creep as arenas are
            // made, whatever the stack does. Two keep it a measure of what is live.
            .env("MALLOC_ARENA_MAX", "2"),
        Duration::from_secs(180),
    )?;
    eprint!("{err}");
    check!(
        code == 0 && out.contains("1 passed"),
        "{name}, alone, exited with {code}:\n{out}"
    );
    Ok(())
}

/// SYNs the flood sends, over `FLOOD_TIME`: 10,000 a second.
const FLOOD_SYNS: usize = 100_000;
const FLOOD_TIME: Duration = Duration::from_secs(10);
/// Below this rate the flood would not test what it claims: fail rather than pass.
const FLOOD_FLOOR: f64 = 5_000.0;
/// The flooded listener's port and backlog (its SYN-RECEIVED cap).
const FLOOD_PORT: u16 = 80;
const FLOOD_BACKLOG: usize = 128;
/// The made-up source MAC of every spoofed SYN: no host in the namespace holds it.
const FLOOD_MAC: [u8; 6] = [0x02, 0x5f, 0x10, 0x0d, 0x00, 0x01];
/// How much the process's resident memory may grow during and after the flood, beyond
/// the buffers of a full listener pool (each armed or half-open socket holds its read
/// and write buffers: 512 KiB with the defaults).
const FLOOD_RSS_SLACK_KIB: u64 = 20 << 10;
/// When the queue is surely full (it fills in the flood's first 20 ms) ...
const QUEUE_FILLED: Duration = Duration::from_secs(2);
/// ... and how much more memory the remaining 80,000 SYNs may take after that.
const FLOOD_RSS_LATER_KIB: u64 = 8 << 10;
/// The stack recycles a full listener's half-open connections once they are this old
/// (`HALF_OPEN_RECYCLE` in stack/src/table.rs).
const HALF_OPEN_RECYCLE: Duration = Duration::from_millis(200);
/// How long the unloaded stream is timed before the flood.
const UNLOADED_TIME: Duration = Duration::from_secs(2);
/// How soon after the flood a new client must be accepted: under the 1 s of the
/// kernel's first SYN retransmission, so the first SYN must get in.
const AT_ONCE: Duration = Duration::from_secs(1);

/// A SYN flood: `FLOOD_SYNS` SYNs over `FLOOD_TIME` at a listener with a backlog of
/// `FLOOD_BACKLOG`, from spoofed sources 10.0.0.3–254 (the namespace's own subnet, where
/// nobody answers the stack's ARP requests), random ports and ISNs, injected by a raw
/// peer. Beside it, a kernel client streams to a connection the same listener accepted.
///
/// - Memory stays bounded: during and after the flood the stack holds at most its
///   baseline + the backlog + 2 TCP sockets (the SYN-RECEIVED cap, and the 2 armed), and
///   the resident set grows by less than the pool's buffers ((backlog + 2) × (read +
///   write buffer)) + `FLOOD_RSS_SLACK_KIB`, and by less than `FLOOD_RSS_LATER_KIB` after
///   the queue has filled. The trial runs in a child process of its own ([`alone`]).
/// - The stream keeps at least half of the throughput it had unloaded (timed for
///   `UNLOADED_TIME` just before).
/// - Once the flood ends, new kernel clients are accepted within `AT_ONCE`, one dialing
///   the moment it ends and one 200 ms later: their first SYN gets in, because a SYN
///   that finds the queue full of half-open connections takes the oldest one's place
///   (RFC 4987 §3.4). Without recycling the queue would stay full of handshakes that
///   never complete.
/// - The flood really ran at least at `FLOOD_FLOOR` SYNs a second.
fn syn_flood() -> TestResult {
    if std::env::var_os(ALONE).is_none() {
        return alone(SYN_FLOOD);
    }
    in_netns(|| {
        let tap = Tap::open("tap0", &TapOptions::default())?;
        kernel_side_up("tap0")?;
        let stack = Stack::new(tap, config(&format!("{STACK_ADDR}/24")))?;
        let result = syn_flood_on(&stack);
        stack.stop();
        result
    })
}

fn syn_flood_on(stack: &Stack) -> TestResult {
    let at = SocketAddr::from((STACK_ADDR, FLOOD_PORT));
    let listener = stack.listen_backlog(at, FLOOD_BACKLOG)?;
    let mut peer = RawPeer::open("tap0")?;

    // The stream: a kernel client writes, the stack's side counts what it reads.
    let client = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(2))?;
    client.set_write_timeout(Some(Duration::from_secs(5)))?;
    let (server, _) = listener.accept_timeout(Duration::from_secs(2))?;
    // The stack's MAC, from its ARP reply to the kernel (or its SYN-ACK).
    let frame = peer
        .recv_matching(Duration::from_secs(1), |_| true)?
        .ok_or("the stack sent nothing the raw peer saw")?;
    let stack_mac: [u8; 6] = frame[6..12].try_into()?;
    check!(
        stack_mac == stack.mac().0,
        "learned MAC {stack_mac:02x?}, the stack's is {}",
        stack.mac()
    );
    let received = Arc::new(AtomicU64::new(0));
    let reader = thread::spawn({
        let received = received.clone();
        move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = (&server).read(&mut buf) {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = thread::spawn({
        let stop = stop.clone();
        let mut client = client.try_clone()?;
        move || {
            let chunk = vec![0x5au8; 16 << 10];
            while !stop.load(Ordering::Relaxed) {
                if client.write_all(&chunk).is_err() {
                    return false;
                }
            }
            true
        }
    });
    let result = flood_beside_stream(stack, &listener, &mut peer, stack_mac, &received);
    stop.store(true, Ordering::Relaxed);
    let wrote = writer.join().map_err(|_| "the writer panicked")?;
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    result?;
    check!(
        wrote,
        "the kernel client's write failed (timed out) during the test"
    );
    Ok(())
}

/// Bytes a second `received` grows by over `during`.
fn rate(received: &AtomicU64, during: Duration) -> f64 {
    let (start, began) = (received.load(Ordering::Relaxed), Instant::now());
    thread::sleep(during);
    (received.load(Ordering::Relaxed) - start) as f64 / began.elapsed().as_secs_f64()
}

fn flood_beside_stream(
    stack: &Stack,
    listener: &TcpListener,
    peer: &mut RawPeer,
    stack_mac: [u8; 6],
    received: &AtomicU64,
) -> TestResult {
    thread::sleep(Duration::from_millis(300)); // Past slow start.
    let unloaded = rate(received, UNLOADED_TIME);
    let base_sockets = stack.tcp_socket_count();
    let base_rss = rss_kib()?;
    let before = stack.counters();
    let tap_before = tap_tx_dropped()?;
    let cap = base_sockets + FLOOD_BACKLOG + 2;
    // Each socket of the listener's pool holds its buffers from the moment it is armed.
    let per_socket = (stack.config().read_buffer + stack.config().write_buffer) as u64 >> 10;
    let rss_bound = (FLOOD_BACKLOG as u64 + 2) * per_socket + FLOOD_RSS_SLACK_KIB;

    // The flood, on its own thread; this one samples the stack meanwhile.
    let (flood, during) = thread::scope(|scope| -> Result<_, Failed> {
        let start_bytes = received.load(Ordering::Relaxed);
        let started = Instant::now();
        let flood = scope.spawn(|| flood(peer, stack_mac, FLOOD_SYNS, FLOOD_TIME));
        let (mut max_sockets, mut max_rss, mut rss_filled) = (0, 0, None);
        let mut half_open = 0;
        let deadline = started + FLOOD_TIME * 3;
        while !flood.is_finished() && Instant::now() < deadline {
            max_sockets = max_sockets.max(stack.tcp_socket_count());
            let rss = rss_kib()?;
            max_rss = max_rss.max(rss);
            if rss_filled.is_none() && started.elapsed() >= QUEUE_FILLED {
                rss_filled = Some(rss);
                // The socket table shows the backlog the flood holds, as `ss` would.
                half_open = stack
                    .sockets()
                    .iter()
                    .filter(|e| e.state() == State::SynReceived)
                    .count();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let flood = flood.join().map_err(|_| "the flood thread panicked")??;
        let bytes = received.load(Ordering::Relaxed) - start_bytes;
        let rss_filled = rss_filled.ok_or("the flood ended before the queue filled")?;
        Ok((flood, (bytes, max_sockets, max_rss, rss_filled, half_open)))
    })?;
    let flood_end = Instant::now();
    let (sent, took) = flood;
    let (bytes, max_sockets, max_rss, rss_filled, half_open) = during;
    let loaded = bytes as f64 / took.as_secs_f64();
    let syn_rate = sent as f64 / took.as_secs_f64();

    // Two new clients: one dials the moment the flood ends, one HALF_OPEN_RECYCLE later,
    // when every half-open connection the flood left is old enough to be recycled.
    let at = SocketAddr::from((STACK_ADDR, FLOOD_PORT));
    let dial = |after: Duration| {
        thread::spawn(move || {
            thread::sleep(after.saturating_sub(flood_end.elapsed()));
            std::net::TcpStream::connect_timeout(&at, Duration::from_secs(5))
        })
    };
    let (early, late) = (dial(Duration::ZERO), dial(HALF_OPEN_RECYCLE));
    let mut accepted = Vec::new();
    for _ in 0..2 {
        let (conn, peer) = listener
            .accept_timeout(Duration::from_secs(5))
            .map_err(|e| format!("a new client after the flood: {e}"))?;
        accepted.push((conn, peer, flood_end.elapsed()));
    }
    let early = early.join().map_err(|_| "a dialer panicked")??;
    let late = late.join().map_err(|_| "a dialer panicked")??;
    let mut taken = [Duration::ZERO; 2];
    for (i, client) in [&early, &late].into_iter().enumerate() {
        let (conn, _, after) = accepted
            .iter()
            .find(|(_, peer, _)| *peer == client.local_addr().unwrap_or(*peer))
            .ok_or("a new client was not among the accepted")?;
        taken[i] = *after;
        let msg = format!("client {i} after the flood");
        (&*client).write_all(msg.as_bytes())?;
        let mut buf = vec![0u8; msg.len()];
        (&*conn).read_exact(&mut buf)?;
        check!(buf == msg.as_bytes(), "client {i}: {buf:?}");
    }
    let [early_at, late_at] = taken;

    // After: the table stays under the cap, and memory where it was.
    thread::sleep(Duration::from_secs(1));
    let after_sockets = stack.tcp_socket_count();
    let after_rss = rss_kib()?;
    let counters = stack.counters();
    let tap_dropped = tap_tx_dropped()? - tap_before;
    let mib = |b: f64| b / (1 << 20) as f64;
    eprintln!(
        "syn flood: {sent} SYNs in {took:.2?} ({syn_rate:.0}/s); the stack read {} frames \
         and sent {} meanwhile (the TAP's queue dropped {tap_dropped}); its listener dropped \
         {} SYNs at the gate",
        counters.rx_frames - before.rx_frames,
        counters.tx_frames - before.tx_frames,
        listener.dropped_syns()?
    );
    eprintln!(
        "syn flood: TCP sockets {base_sockets} before, at most {max_sockets} during, \
         {after_sockets} after with 2 new clients (cap {cap}); RSS {base_rss} KiB before, \
         {rss_filled} KiB {QUEUE_FILLED:?} in (when {half_open} were listed in SYN-RECEIVED), \
         at most {max_rss} KiB during, {after_rss} KiB after (bound {rss_bound} KiB: {} \
         sockets x {per_socket} KiB of buffers + {} KiB)",
        FLOOD_BACKLOG + 2,
        FLOOD_RSS_SLACK_KIB
    );
    eprintln!(
        "syn flood: the stream moved {:.1} MiB/s unloaded, {:.1} MiB/s during the flood \
         ({:.0}%); new clients were accepted {early_at:.2?} (dialed at once) and \
         {late_at:.2?} (dialed {HALF_OPEN_RECYCLE:?}) after the flood",
        mib(unloaded),
        mib(loaded),
        100.0 * loaded / unloaded
    );
    check!(
        syn_rate >= FLOOD_FLOOR,
        "the flood reached only {syn_rate:.0} SYNs/s, under the floor of {FLOOD_FLOOR}"
    );
    check!(
        max_sockets <= cap && after_sockets <= cap + 2,
        "TCP sockets: at most {max_sockets} during the flood, {after_sockets} after \
         (+2 new clients), over the cap {cap}"
    );
    check!(
        half_open > FLOOD_BACKLOG / 2 && half_open <= FLOOD_BACKLOG,
        "the socket table listed {half_open} half-open connections in a flood at a backlog \
         of {FLOOD_BACKLOG}"
    );
    let peak = max_rss.max(after_rss);
    check!(
        peak.saturating_sub(base_rss) < rss_bound,
        "RSS grew from {base_rss} KiB to {peak} KiB, by over {rss_bound} KiB"
    );
    check!(
        peak.saturating_sub(rss_filled) < FLOOD_RSS_LATER_KIB,
        "RSS kept growing once the queue was full: {rss_filled} KiB {QUEUE_FILLED:?} in, \
         {peak} KiB at most later, over +{FLOOD_RSS_LATER_KIB} KiB"
    );
    check!(
        loaded * 2.0 >= unloaded,
        "the stream fell to {:.1} MiB/s during the flood, under half of {:.1} MiB/s",
        mib(loaded),
        mib(unloaded)
    );
    check!(
        late_at < AT_ONCE,
        "a client that dialed {HALF_OPEN_RECYCLE:?} after the flood was accepted only \
         {late_at:.2?} after it: its first SYN did not get in"
    );
    check!(
        early_at < AT_ONCE,
        "a client that dialed as the flood ended was accepted only {early_at:.2?} after \
         it: its first SYN did not get in"
    );
    Ok(())
}

/// Frames the kernel dropped on their way into the TAP (its `tx_dropped`), from the
/// calling thread's namespace (`/proc/thread-self`: `/sys` shows the mount's).
fn tap_tx_dropped() -> Result<u64, Failed> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix("tap0:"))
        .and_then(|l| l.split_whitespace().nth(11)?.parse().ok())
        .ok_or_else(|| "no tap0 in /proc/thread-self/net/dev".into())
}

/// Sends `count` spoofed SYNs at the stack's `FLOOD_PORT`, evenly over `over`: one frame
/// built once from smoltcp's wire types, then only its varying fields patched (source
/// address, IP ident, source port, ISN) and its checksums refilled. Returns how many were
/// sent and how long it took.
fn flood(
    peer: &mut RawPeer,
    stack_mac: [u8; 6],
    count: usize,
    over: Duration,
) -> Result<(usize, Duration), Failed> {
    let mut frame = raw::syn(
        FLOOD_MAC,
        stack_mac,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 1024),
        SocketAddrV4::new(STACK_ADDR, FLOOD_PORT),
    );
    let eth_len = EthernetFrame::<&[u8]>::header_len();
    let ip_len = usize::from(Ipv4Packet::new_unchecked(&frame[eth_len..]).header_len());

    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let due = (count as f64 * started.elapsed().as_secs_f64() / over.as_secs_f64()) as usize;
        if due <= sent {
            thread::sleep(Duration::from_micros(500));
            continue;
        }
        while sent < due.min(count) {
            let src = Ipv4Addr::new(10, 0, 0, fastrand::u8(3..=254));
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[eth_len..]);
            ip.set_src_addr(src);
            ip.set_ident(sent as u16);
            ip.fill_checksum();
            let mut tcp = TcpPacket::new_unchecked(&mut frame[eth_len + ip_len..]);
            tcp.set_src_port(fastrand::u16(1024..));
            tcp.set_seq_number(TcpSeqNumber(fastrand::i32(..)));
            tcp.fill_checksum(&src.into(), &STACK_ADDR.into());
            peer.send(&frame)?;
            sent += 1;
        }
    }
    Ok((sent, started.elapsed()))
}
