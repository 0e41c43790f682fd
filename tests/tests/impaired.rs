//! Byte-exact delivery over impaired links: a transfer in each direction at once, over
//! one connection, compared by hash at both ends, within a stated bound.
//!
//! - **The wire, tapnet on both ends.** Each end's [`Impair`] impairs what that end
//!   transmits, so each direction of the link carries [`link`]: 5% loss, 1% duplication,
//!   5% reordering, 20 ms ± 5 ms delay, 0.1% corruption.
//! - **A TAP with a kernel peer**, in a private namespace. [`Impair`] wraps the TAP on
//!   tapnet's side and impairs both directions with [`link`]; on the kernel's side an
//!   nftables rule drops 2% of what arrives on tap0 (`numgen random`).
//!
//! Each end writes a pseudo-random stream (seeded per direction) and hashes what it
//! wrote; the other end hashes what it read. Success is: every write and the half-close
//! return `Ok`, the reader sees EOF after exactly [`bytes`] bytes, the hashes match, the
//! transfer ends within its bound, and a tapnet sender's `info()` counts retransmissions,
//! fast ones among them (losses repaired without waiting for the retransmission timer).
//!
//! # Size and time
//! 64 MiB each way ([`DEFAULT_KIB`]). At 5% loss and a 40 ms round trip, loss-based
//! congestion control holds a window of a few segments (RFC 3649's response function:
//! about 1.2 / sqrt(0.05) ≈ 5.5), so even an ideal sender moves about 200 KB/s; tapnet's
//! move about 100 KiB/s (the watch's SACK loss detection repairs most losses within a
//! round trip; the rest wait out smoltcp's one-second retransmission timer). The two
//! tests run side by side and take 10–15 minutes. Each direction is bounded at
//! [`SECONDS_PER_MIB`] s per MiB (43 minutes for 64 MiB). `TAPNET_IMPAIRED_KIB` sets
//! another size, e.g. 512 for a quick run. See docs/robustness.md for the figures.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream as KernelStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netdev::{
    Capture, Direction, FrameLog, Impair, ImpairConfig, Impairment, Tap, TapOptions, WireOptions,
    wire,
};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};
use stack::{Stack, StackConfig, TcpStream};
use tapnet_tests::{
    Failed, KERNEL_ADDR, STACK_ADDR, TestResult, check, in_netns, kernel_side_up, plain, root,
    run_text,
};

fn main() {
    tapnet_tests::main(vec![
        plain(
            "wire::both_ways_byte_exact_through_loss_duplication_reorder_delay_corruption",
            wire_impaired,
        ),
        root(
            "tap::both_ways_byte_exact_with_a_kernel_peer_and_nftables_loss",
            tap_impaired,
        ),
    ])
}

/// KiB sent each way unless `TAPNET_IMPAIRED_KIB` says otherwise: the 64 MiB.
const DEFAULT_KIB: u64 = 64 << 10;
/// The bound: each direction must finish within this many seconds per MiB (a floor of
/// 25.6 KiB/s, a quarter of what runs here move; a busy machine stretches the tail of
/// retransmission timeouts), and never under [`MIN_BOUND`].
const SECONDS_PER_MIB: u64 = 40;
/// The shortest bound, for small sizes, where one doubled retransmission timeout is a
/// large share of the whole.
const MIN_BOUND: Duration = Duration::from_secs(60);
/// Share of frames arriving on tap0 that the kernel's nftables rule drops, in percent.
const KERNEL_LOSS_PERCENT: u32 = 2;

/// The impaired link of the issue, for one direction.
fn link() -> Impairment {
    Impairment {
        loss: 5.0,
        duplicate: 1.0,
        reorder: 5.0,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        corrupt: 0.1,
        ..Impairment::default()
    }
}

/// Bytes sent each way.
fn bytes() -> u64 {
    let kib = std::env::var("TAPNET_IMPAIRED_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(DEFAULT_KIB);
    kib << 10
}

/// How long one direction may take.
fn bound() -> Duration {
    Duration::from_secs_f64(SECONDS_PER_MIB as f64 * bytes() as f64 / f64::from(1 << 20))
        .max(MIN_BOUND)
}

// ---------------------------------------------------------------- streams and hashes

/// FNV-1a, 64 bits: fast, and any changed, lost, doubled or moved byte changes it.
#[derive(Clone, Copy)]
struct Hash(u64);

impl Hash {
    fn new() -> Hash {
        Hash(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What one end sent or received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    hash: u64,
}

/// Writes `n` pseudo-random bytes drawn from `seed`, then half-closes; returns what it
/// wrote. `shutdown` is the stream's half-close.
fn send(
    mut w: impl Write,
    n: u64,
    seed: u64,
    shutdown: impl FnOnce() -> io::Result<()>,
) -> io::Result<Tally> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut chunk = vec![0; 64 << 10];
    let (mut sent, mut hash) = (0, Hash::new());
    while sent < n {
        let k = chunk.len().min((n - sent) as usize);
        rng.fill(&mut chunk[..k]);
        w.write_all(&chunk[..k])?;
        hash.update(&chunk[..k]);
        sent += k as u64;
    }
    w.flush()?;
    shutdown()?;
    Ok(Tally {
        bytes: sent,
        hash: hash.0,
    })
}

/// Reads to EOF; returns what arrived and when EOF came.
fn receive(mut r: impl Read) -> io::Result<(Tally, Instant)> {
    let mut buf = vec![0; 64 << 10];
    let (mut got, mut hash) = (0, Hash::new());
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((
                Tally {
                    bytes: got,
                    hash: hash.0,
                },
                Instant::now(),
            ));
        }
        hash.update(&buf[..k]);
        got += k as u64;
    }
}

/// One end's view of a finished full-duplex transfer.
struct End {
    sent: Tally,
    received: Tally,
    /// From the start of the transfer to EOF on this end's reads.
    receive_time: Duration,
    /// Retransmissions of this end's sender, and the fast ones among them
    /// (`info().retransmits` and `fast_retransmits`, tapnet ends only).
    retransmits: Option<(u64, u64)>,
}

/// Runs both halves on a tapnet connection: writes seed `seed` from a second thread,
/// reads to EOF, then closes; every call is bounded by the connection's deadline.
fn tapnet_end(conn: TcpStream, start: Instant, seed: u64) -> Result<End, Failed> {
    conn.set_deadline(Some(start + bound()))?;
    let writer = {
        let conn = conn.try_clone()?;
        thread::spawn(move || send(&conn, bytes(), seed, || conn.shutdown(Shutdown::Write)))
    };
    let received = receive(&conn);
    let sent = writer.join().map_err(|_| "the writer panicked")?;
    let (received, at) = received.map_err(|e| format!("read: {e}"))?;
    let sent = sent.map_err(|e| format!("write: {e}"))?;
    // The count so far: this end's data is all queued, and the peer has been sending
    // through the same lossy link meanwhile, so it cannot be zero.
    let info = conn.info()?;
    let retransmits = (info.retransmits, info.fast_retransmits);
    conn.close().map_err(|e| format!("close: {e}"))?;
    Ok(End {
        sent,
        received,
        receive_time: at - start,
        retransmits: Some(retransmits),
    })
}

/// Checks one direction: exactly `bytes()` arrived, the hashes agree, within the bound,
/// with retransmissions counted at a tapnet sender. Returns a line for the report.
fn direction(what: &str, from: &End, to: &End) -> Result<String, Failed> {
    let n = bytes();
    check!(
        from.sent.bytes == n,
        "{what}: the sender wrote {} of {n} bytes",
        from.sent.bytes
    );
    check!(
        to.received.bytes == n,
        "{what}: EOF after {} bytes, want exactly {n}",
        to.received.bytes
    );
    check!(
        to.received.hash == from.sent.hash,
        "{what}: hash {:016x} received, {:016x} sent",
        to.received.hash,
        from.sent.hash
    );
    check!(
        to.receive_time <= bound(),
        "{what}: took {:?}, bound {:?}",
        to.receive_time,
        bound()
    );
    if let Some((all, fast)) = from.retransmits {
        check!(all > 0, "{what}: no retransmission over a 5%-loss link");
        check!(fast > 0, "{what}: no loss repaired by fast retransmit");
    }
    let secs = to.receive_time.as_secs_f64();
    Ok(format!(
        "{what}: {} KiB in {secs:.1} s ({:.1} KiB/s, bound {} s), hash {:016x}, retransmits {}",
        n >> 10,
        n as f64 / 1024.0 / secs,
        bound().as_secs(),
        to.received.hash,
        from.retransmits.map_or_else(
            || "(kernel sender)".to_string(),
            |(all, fast)| format!("{all} ({fast} fast)")
        ),
    ))
}

// ---------------------------------------------------------------- what the stack saw

/// Counts frames that reached a stack with a bad IPv4 or TCP checksum: corruption that
/// got through the link, which the stack must drop.
#[derive(Clone, Default)]
struct Damaged(Arc<AtomicU64>);

impl Damaged {
    fn sink(&self) -> Box<dyn netdev::FrameSink> {
        let count = self.0.clone();
        Box::new(FrameLog(move |dir: Direction, frame: &[u8]| {
            if dir == Direction::In && damaged(frame) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }))
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn damaged(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return true;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return true;
    };
    if !ip.verify_checksum() {
        return true;
    }
    if ip.next_header() != IpProtocol::Tcp {
        return false;
    }
    match TcpPacket::new_checked(ip.payload()) {
        Ok(tcp) => !tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()),
        Err(_) => true,
    }
}

// ---------------------------------------------------------------- the wire

/// Two tapnet stacks on the wire, each impairing what it sends: a transfer both ways at
/// once over one connection (see the module docs for the size).
fn wire_impaired() -> TestResult {
    let (a, b) = wire(&WireOptions::default())?;
    let impair = |seed| ImpairConfig {
        egress: link(),
        ingress: Impairment::default(),
        seed,
    };
    let (seen_a, seen_b) = (Damaged::default(), Damaged::default());
    let alice = Stack::new(
        Capture::new(Impair::new(a, impair(1))?, seen_a.sink()),
        StackConfig::new().with_addr("10.0.0.1/24".parse()?),
    )?;
    let bob = Stack::new(
        Capture::new(Impair::new(b, impair(2))?, seen_b.sink()),
        StackConfig::new().with_addr("10.0.0.2/24".parse()?),
    )?;
    let listener = bob.listen("0.0.0.0:7".parse()?)?;
    let start = Instant::now();
    let server = thread::spawn(move || -> Result<End, String> {
        listener
            .set_deadline(Some(start + bound()))
            .map_err(|e| e.to_string())?;
        let (conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        tapnet_end(conn, start, 2).map_err(|e| format!("server: {e:?}"))
    });
    let client = alice
        .dial("10.0.0.2:7".parse()?)
        .map_err(|e| Failed::from(format!("dial: {e}")))
        .and_then(|conn| tapnet_end(conn, start, 1));
    let server = server.join().map_err(|_| "the server panicked")??;
    let client = client?;
    let up = direction("client→server", &client, &server)?;
    let down = direction("server→client", &server, &client)?;
    eprintln!(
        "{up}\n{down}\ndamaged frames that reached the stacks (and were dropped): {} at the \
         client, {} at the server",
        seen_a.count(),
        seen_b.count()
    );
    alice.stop();
    bob.stop();
    Ok(())
}

// ---------------------------------------------------------------- the TAP

/// tapnet on an impaired TAP, the kernel as its peer behind a 2%-loss nftables rule: the
/// same transfer both ways, tapnet dialling a kernel listener.
fn tap_impaired() -> TestResult {
    in_netns(|| {
        let seen = Damaged::default();
        let tap = Tap::open("tap0", &TapOptions::default())?;
        kernel_side_up("tap0")?;
        let impaired = Impair::new(
            tap,
            ImpairConfig {
                egress: link(),
                ingress: link(),
                seed: 3,
            },
        )?;
        let stack = Stack::new(
            Capture::new(impaired, seen.sink()),
            StackConfig::new().with_addr(format!("{STACK_ADDR}/24").parse()?),
        )?;
        nft(&["add", "table", "inet", "impaired"])?;
        nft(&[
            "add",
            "chain",
            "inet",
            "impaired",
            "in",
            "{ type filter hook input priority 0; }",
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            "impaired",
            "in",
            "iifname",
            "tap0",
            "numgen",
            "random",
            "mod",
            "100",
            "<",
            &KERNEL_LOSS_PERCENT.to_string(),
            "counter",
            "drop",
        ])?;

        let listener = TcpListener::bind(SocketAddr::from((KERNEL_ADDR, 0)))?;
        let port = listener.local_addr()?.port();
        let start = Instant::now();
        let kernel = thread::spawn(move || -> Result<End, String> {
            kernel_end(&listener, start).map_err(|e| format!("kernel: {e}"))
        });
        let tapnet = stack
            .dial(SocketAddr::from((KERNEL_ADDR, port)))
            .map_err(|e| Failed::from(format!("dial: {e}")))
            .and_then(|conn| tapnet_end(conn, start, 1));
        let kernel = kernel.join().map_err(|_| "the kernel end panicked")??;
        let tapnet = tapnet?;
        let up = direction("tapnet→kernel", &tapnet, &kernel)?;
        let down = direction("kernel→tapnet", &kernel, &tapnet)?;
        let dropped = nft_dropped()?;
        eprintln!(
            "{up}\n{down}\nnftables dropped {dropped} frames on the kernel's side; {} damaged \
             frames reached tapnet (and were dropped)",
            seen.count()
        );
        check!(dropped > 0, "the nftables rule dropped nothing");
        stack.stop();
        Ok(())
    })
}

/// The kernel's end: accept one connection, write seed 2 from a second thread, read to
/// EOF. Socket timeouts bound every call.
fn kernel_end(listener: &TcpListener, start: Instant) -> io::Result<End> {
    listener.set_nonblocking(true)?;
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < bound() => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(bound()))?;
    conn.set_write_timeout(Some(bound()))?;
    let writer = {
        let conn = conn.try_clone()?;
        thread::spawn(move || {
            send(&conn, bytes(), 2, || {
                KernelStream::shutdown(&conn, Shutdown::Write)
            })
        })
    };
    let received = receive(&conn);
    let sent = writer
        .join()
        .map_err(|_| io::Error::other("the writer panicked"))??;
    let (received, at) = received?;
    Ok(End {
        sent,
        received,
        receive_time: at - start,
        retransmits: None,
    })
}

fn nft(args: &[&str]) -> TestResult {
    let (code, _, err) = run_text(Command::new("nft").args(args), Duration::from_secs(10))?;
    check!(code == 0, "nft {}: {err}", args.join(" "));
    Ok(())
}

/// Packets the nftables rule has dropped, from its counter.
fn nft_dropped() -> Result<u64, Failed> {
    let (code, out, err) = run_text(
        Command::new("nft").args(["list", "chain", "inet", "impaired", "in"]),
        Duration::from_secs(10),
    )?;
    check!(code == 0, "nft list chain: {err}");
    let count = out
        .split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    count.ok_or_else(|| format!("no counter in: {out}").into())
}
