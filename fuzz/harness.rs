//! The `frames` fuzz target's harness: a stack under attack, a real client beside it,
//! and an injector that turns fuzz bytes into frames.
//!
//! Shared by the fuzz target (`fuzz_targets/frames.rs`) and the plain replay test
//! (`tests/tests/model.rs`, through `#[path]`), so a crash input kept in
//! `fuzz/regressions/` replays through exactly the code that found it.
//!
//! # The setup
//! The stack under test (10.0.0.2) holds a listener on port 7 and one established
//! connection, dialled by a client stack (10.0.0.1) on the far end of an in-memory wire.
//! The injector writes into that same far end, through a duplicate of its descriptor,
//! so its frames reach the stack under test exactly as the client's do, in order with
//! them. What the stack under test sends goes to the client's end: the client stack
//! sees it (and ignores what is not addressed to it).
//!
//! A [`FrameSink`] on the stack under test's device watches every frame it sends:
//! it remembers, per peer, the sequence numbers the stack expects and sends next (so
//! templates can aim inside the window), answers ARP for the injector's addresses, and
//! marks the end of each driver pass (so the injector can wait until its frames were
//! processed).
//!
//! # The input format
//! A fuzz input is a sequence of records `kind:u8 len:u16be body[len]` (a short body
//! takes what is left). `kind % 5` picks how the body becomes a frame:
//!
//! - 0, raw: the body is the whole Ethernet frame;
//! - 1, TCP: a valid Ethernet/IPv4 header and a TCP header from fuzzed fields
//!   (flags, sequence numbers absolute or relative to what the stack expects, window,
//!   raw options, payload), with correct checksums unless asked otherwise, from one of
//!   four injector peers or spoofing the client's connection;
//! - 2, IPv4: a fuzzed IPv4 header (version, header length, fragment fields, protocol,
//!   options) around a fuzzed payload, checksums fixed or not;
//! - 3, ARP: requests and replies for chosen addresses, some malformed;
//! - 4, ICMP or UDP: echo requests, errors quoting one of the stack's connections, and
//!   datagrams to open and closed ports.
//!
//! # The checks
//! After every input: the stack still runs, and the established connection carries a
//! byte each way within [`ECHO_BOUND`]. An input that mentions the client's address
//! (spoofs it, poisons its ARP entry, quotes its connection in an ICMP error) may
//! legitimately break that connection: then the client's ARP entry is put right, the
//! connection gets [`TOUCHED_BOUND`] to carry its bytes, and if it cannot, the harness
//! starts afresh and the fresh stacks must carry them.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use netdev::{Capture, Counters, Direction, FrameSink, Link, WireOptions, wire};
use stack::{Mac, Stack, StackConfig, TcpListener, TcpStream, Trace};

/// The stack under test's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The client stack's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The stack under test's Ethernet address.
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The client stack's Ethernet address.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The port the stack under test listens on.
pub const PORT: u16 = 7;
/// How long a healthy stack may take to echo a byte, or to connect afresh.
pub const ECHO_BOUND: Duration = Duration::from_secs(3);
/// How long the connection may take to echo after an input that named the client,
/// before the harness gives up on it and starts afresh.
pub const TOUCHED_BOUND: Duration = Duration::from_millis(100);
/// The most frames one input injects.
pub const MAX_FRAMES: usize = 32;

/// How many injector peers there are: 10.0.0.7 to 10.0.0.10.
const INJECTORS: u8 = 4;
/// The first injector peer's source port; fuzz bytes pick one of 8 from here.
const INJECTOR_PORT: u16 = 40_000;
/// The largest frame the wire carries (1500-byte MTU plus the Ethernet header).
const MAX_FRAME: usize = 1514;
/// How long to wait for the stack to take in injected frames before a frame that needs
/// its fresh sequence numbers. A stack that is slower than this only makes the template
/// less precise; the echo check catches a stack that is stuck.
const SETTLE_BOUND: Duration = Duration::from_millis(50);

/// Whether the stack under test traces every segment (to nowhere), so that the
/// trace's formatting of hostile segments is fuzzed too. (It found the trace's first
/// crash: a segment older than the first one seen; `regressions/trace-seq-below-base*`.)
const TRACED: bool = true;

fn traced(config: StackConfig) -> StackConfig {
    if TRACED {
        config.with_trace(Trace::to_writer(io::sink(), false))
    } else {
        config
    }
}

fn injector_ip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 7 + k % INJECTORS)
}

fn injector_mac(k: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x0f, 7 + k % INJECTORS]
}

/// Sequence numbers of one conversation, as the stack under test last sent them.
#[derive(Clone, Copy, Default)]
struct Seqs {
    /// The stack's next sequence number (what the peer should acknowledge).
    snd_nxt: u32,
    /// What the stack acknowledged last (what it expects the peer to send next).
    rcv_nxt: u32,
}

/// What the sink learned, shared with the injector.
#[derive(Default)]
struct Seen {
    /// Per peer (address, port): the stack's latest sequence numbers towards it.
    seqs: std::collections::HashMap<(Ipv4Addr, u16), Seqs>,
    /// Frames the stack had taken in (received or dropped) at the end of its last pass.
    taken: u64,
}

/// Watches what the stack under test sends; see the module docs.
struct Watcher {
    seen: Arc<(Mutex<Seen>, Condvar)>,
    counters: Arc<Counters>,
    /// The injector's socket, to answer ARP for the injector peers.
    arp: UnixDatagram,
    injected: Arc<AtomicU64>,
}

impl FrameSink for Watcher {
    fn frame(&mut self, direction: Direction, frame: &[u8]) {
        if direction != Direction::Out || frame.len() < 14 {
            return;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if ethertype == 0x0806 && frame.len() >= 42 {
            // ARP who-has an injector peer: answer it, as the peer would.
            let target = Ipv4Addr::new(frame[38], frame[39], frame[40], frame[41]);
            let op = u16::from_be_bytes([frame[20], frame[21]]);
            if let Some(k) = (0..INJECTORS).find(|&k| injector_ip(k) == target)
                && op == 1
            {
                let reply = arp(2, injector_mac(k), injector_ip(k), SERVER_MAC, SERVER_IP);
                if self
                    .arp
                    .send(&ethernet(injector_mac(k), SERVER_MAC, 0x0806, &reply))
                    .is_ok()
                {
                    self.injected.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        if ethertype != 0x0800 || frame.len() < 14 + 20 {
            return;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 6 || ip.len() < ihl + 20 {
            return;
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let tcp = &ip[ihl..total.max(ihl + 20)];
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        let offset = usize::from(tcp[12] >> 4) * 4;
        let flags = tcp[13];
        let len = tcp.len().saturating_sub(offset) as u32
            + u32::from(flags & 0x02 != 0)
            + u32::from(flags & 0x01 != 0);
        let mut seen = self.seen.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.seqs.entry((dst, dport)).or_default();
        entry.snd_nxt = seq.wrapping_add(len);
        if flags & 0x10 != 0 {
            entry.rcv_nxt = ack;
        }
    }

    fn flush(&mut self) {
        let c = self.counters.snapshot();
        let (lock, cvar) = &*self.seen;
        lock.lock().unwrap_or_else(|e| e.into_inner()).taken = c.rx_frames + c.rx_dropped;
        cvar.notify_all();
    }
}

/// The stack under test, its client, the connection between them, and the injector.
pub struct Harness {
    server: Stack,
    client: Stack,
    listener: TcpListener,
    /// The established connection: the client's end and the server's end.
    conn: (TcpStream, TcpStream),
    inject: UnixDatagram,
    injected: Arc<AtomicU64>,
    seen: Arc<(Mutex<Seen>, Condvar)>,
    /// Connections the fuzzer's frames completed with the listener (accepted, closed).
    accepted: u64,
    /// Inputs run.
    pub runs: u64,
    /// Inputs after which the connection had to be rebuilt (allowed: they touched it).
    pub restarts: u64,
}

impl Harness {
    /// Builds the stacks and establishes the connection.
    ///
    /// # Errors
    /// A wire, a stack or the connection that cannot be made.
    pub fn new() -> io::Result<Harness> {
        let (server_end, client_end) = wire(&WireOptions::default())?;
        let inject = UnixDatagram::from(client_end.as_fd().try_clone_to_owned()?);
        let injected = Arc::new(AtomicU64::new(0));
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let watcher = Watcher {
            seen: seen.clone(),
            counters: server_end.counters().clone(),
            arp: inject.try_clone()?,
            injected: injected.clone(),
        };
        let config = |ip: Ipv4Addr, mac: [u8; 6]| {
            StackConfig::new()
                .with_addr(stack::Ipv4Net {
                    addr: ip,
                    prefix: 24,
                })
                .with_mac(Mac(mac))
                .with_buffers(16 << 10, 16 << 10)
        };
        let server = Stack::new(
            Capture::new(server_end, watcher),
            traced(config(SERVER_IP, SERVER_MAC)),
        )?;
        let client = Stack::new(client_end, config(CLIENT_IP, CLIENT_MAC))?;
        let listener = server.listen_backlog(SocketAddr::from((SERVER_IP, PORT)), 1024)?;
        let conn = connect(&client, &listener)?;
        Ok(Harness {
            server,
            client,
            listener,
            conn,
            inject,
            injected,
            seen,
            accepted: 0,
            runs: 0,
            restarts: 0,
        })
    }

    /// Injects the frames `data` describes, then checks the stack: still running, the
    /// connection still echoes (or, if the input was allowed to break it, a fresh
    /// harness connects).
    ///
    /// # Errors
    /// What went wrong, for the fuzz target to panic with.
    pub fn run(&mut self, data: &[u8]) -> Result<(), String> {
        self.runs += 1;
        let touched = self.inject_all(data);
        if !self.server.is_running() {
            return Err("the stack under test stopped".into());
        }
        if !touched {
            self.echo(ECHO_BOUND).map_err(|e| {
                format!("the established connection broke although no frame named the client: {e}")
            })?;
            // The echo's bytes went after the injected frames: the stack has taken
            // those in, and any handshake they completed waits in the accept queue.
            self.drain_accepts();
            return Ok(());
        }
        // The input may have poisoned the stack's ARP entry for the client: the client
        // asks for the stack, which puts the entry right.
        let repair = arp(1, CLIENT_MAC, CLIENT_IP, [0; 6], SERVER_IP);
        if self
            .inject
            .send(&ethernet(CLIENT_MAC, [0xff; 6], 0x0806, &repair))
            .is_ok()
        {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        match self.echo(TOUCHED_BOUND) {
            Ok(()) => self.drain_accepts(),
            Err(_) if !self.server.is_running() => {
                return Err("the stack under test stopped".into());
            }
            Err(e) => {
                log::debug!("input touched the client and broke the connection: {e}");
                let (runs, restarts, accepted) = (self.runs, self.restarts + 1, self.accepted);
                *self = Harness::new().map_err(|e| format!("a fresh harness failed: {e}"))?;
                (self.runs, self.restarts, self.accepted) = (runs, restarts, accepted);
                self.echo(ECHO_BOUND)
                    .map_err(|e| format!("a fresh harness does not echo: {e}"))?;
            }
        }
        Ok(())
    }

    /// Sends every frame of the input; returns whether one may affect the client.
    fn inject_all(&mut self, data: &[u8]) -> bool {
        let mut input = Bytes(data);
        let mut touched = false;
        let mut pending = false;
        for _ in 0..MAX_FRAMES {
            if input.0.is_empty() {
                break;
            }
            let kind = input.u8() % 5;
            let len = usize::from(input.u16());
            let mut body = Bytes(input.take(len));
            if kind == 1 && pending {
                // The template wants fresh sequence numbers: let the stack catch up.
                self.settle();
                pending = false;
            }
            let frame = match kind {
                0 => body.0[..body.0.len().min(MAX_FRAME + 64)].to_vec(),
                1 => self.tcp_frame(&mut body),
                2 => ip_frame(&mut body),
                3 => arp_frame(&mut body),
                _ => self.icmp_udp_frame(&mut body),
            };
            touched |= names_client(&frame);
            // An empty datagram is no frame: the device reads it as "nothing waiting".
            if !frame.is_empty() && self.inject.send(&frame).is_ok() {
                self.injected.fetch_add(1, Ordering::Relaxed);
                pending = true;
            }
        }
        touched
    }

    /// Waits (bounded) until the stack under test has taken in every frame sent so far.
    fn settle(&self) {
        // The target grows while the stack works: an ARP request it sends for an
        // injector peer is answered at once, and its answer must be taken in too.
        let target = || self.injected.load(Ordering::Relaxed) + self.client.counters().tx_frames;
        let (lock, cvar) = &*self.seen;
        let until = Instant::now() + SETTLE_BOUND;
        let mut seen = lock.lock().unwrap_or_else(|e| e.into_inner());
        while seen.taken < target() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            seen = cvar
                .wait_timeout(seen, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn seqs(&self, peer: (Ipv4Addr, u16)) -> Seqs {
        let seen = self.seen.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.seqs.get(&peer).copied().unwrap_or_default()
    }

    /// The client's end of the connection: its address and port.
    fn client_port(&self) -> u16 {
        self.conn.0.local_addr().map_or(0, |a| a.port())
    }

    /// A TCP segment to the listener's port; see the module docs for the fields.
    fn tcp_frame(&self, body: &mut Bytes) -> Vec<u8> {
        let sel = body.u8();
        let mode = body.u8();
        let flags = body.u8();
        let (seq, ack, window, urgent) = (body.u32(), body.u32(), body.u16(), body.u16());
        let options_len = usize::from(body.u8() % 41);
        let options = body.take(options_len).to_vec();
        let payload = body.0;
        let (ip, mac, sport) = if sel % 5 == 4 {
            (CLIENT_IP, CLIENT_MAC, self.client_port())
        } else {
            let k = sel % 5;
            (
                injector_ip(k),
                injector_mac(k),
                INJECTOR_PORT + u16::from(sel / 5 % 8),
            )
        };
        let known = self.seqs((ip, sport));
        let seq = if mode & 1 != 0 {
            known.rcv_nxt.wrapping_add(seq)
        } else {
            seq
        };
        let ack = if mode & 2 != 0 {
            known.snd_nxt.wrapping_add(ack)
        } else {
            ack
        };
        let mut tcp = Vec::with_capacity(20 + options.len() + payload.len());
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&PORT.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        let words = 5 + options.len().div_ceil(4) as u8;
        // Mode bit 3: the data offset is the fuzzer's, however wrong.
        let offset = if mode & 8 != 0 { mode >> 4 } else { words };
        tcp.push(offset << 4);
        tcp.push(flags);
        tcp.extend_from_slice(&window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0]);
        tcp.extend_from_slice(&urgent.to_be_bytes());
        tcp.extend_from_slice(&options);
        tcp.resize(usize::from(words) * 4, 0);
        tcp.extend_from_slice(payload);
        let sum = transport_checksum(ip, SERVER_IP, 6, &tcp);
        // Mode bit 2: a wrong checksum.
        let sum = if mode & 4 != 0 { sum ^ 0x5a5a } else { sum };
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        ethernet(mac, SERVER_MAC, 0x0800, &ipv4(ip, SERVER_IP, 6, &tcp))
    }

    /// An ICMP message (echo, or an error quoting one of the stack's connections) or a
    /// UDP datagram, from an injector peer or the client's address.
    fn icmp_udp_frame(&self, body: &mut Bytes) -> Vec<u8> {
        let sel = body.u8();
        let (src, mac) = if sel & 0x80 != 0 {
            (CLIENT_IP, CLIENT_MAC)
        } else {
            (injector_ip(sel), injector_mac(sel))
        };
        if sel & 0x40 != 0 {
            let dport = body.u16() % 16;
            let mut udp = Vec::new();
            udp.extend_from_slice(&50_000u16.to_be_bytes());
            udp.extend_from_slice(&dport.to_be_bytes());
            udp.extend_from_slice(&((8 + body.0.len()) as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(body.0);
            let sum = transport_checksum(src, SERVER_IP, 17, &udp);
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            return ethernet(mac, SERVER_MAC, 0x0800, &ipv4(src, SERVER_IP, 17, &udp));
        }
        let (kind, code, rest) = (body.u8(), body.u8(), body.u32());
        let mut icmp = vec![kind, code, 0, 0];
        icmp.extend_from_slice(&rest.to_be_bytes());
        if matches!(kind, 3 | 4 | 5 | 11 | 12) {
            // An error quoting a segment the stack sent: its IP header and 8 bytes of TCP.
            let (peer, port) = if sel & 0x20 != 0 {
                (CLIENT_IP, self.client_port())
            } else {
                (injector_ip(sel), INJECTOR_PORT + u16::from(sel >> 2 & 7))
            };
            let seq = self.seqs((peer, port)).snd_nxt.wrapping_add(body.u32());
            let mut quoted = Vec::new();
            quoted.extend_from_slice(&PORT.to_be_bytes());
            quoted.extend_from_slice(&port.to_be_bytes());
            quoted.extend_from_slice(&seq.to_be_bytes());
            icmp.extend_from_slice(&ipv4(SERVER_IP, peer, 6, &quoted));
        }
        icmp.extend_from_slice(body.0);
        let sum = checksum(&[&icmp]);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        ethernet(mac, SERVER_MAC, 0x0800, &ipv4(src, SERVER_IP, 1, &icmp))
    }

    /// Accepts and closes connections the fuzzer completed, so they do not pile up.
    fn drain_accepts(&mut self) {
        while let Ok((conn, _)) = self.listener.accept_timeout(Duration::from_micros(1)) {
            self.accepted += 1;
            drop(conn);
        }
    }

    /// How many connections the injected frames completed with the listener.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// One byte each way at once: the client's to the server, the server's to the
    /// client. Both directions must deliver exactly the byte written.
    fn echo(&self, bound: Duration) -> io::Result<()> {
        let (client, server) = (&self.conn.0, &self.conn.1);
        let deadline = Some(Instant::now() + bound);
        client.set_deadline(deadline)?;
        server.set_deadline(deadline)?;
        let byte = (self.runs % 251) as u8;
        (&*client).write_all(&[byte])?;
        (&*server).write_all(&[!byte])?;
        for (end, who, want) in [(server, "server", byte), (client, "client", !byte)] {
            let mut buf = [0u8; 1];
            (&*end).read_exact(&mut buf)?;
            if buf[0] != want {
                return Err(io::Error::other(format!(
                    "the {who} read {} where its peer wrote {want}",
                    buf[0]
                )));
            }
        }
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.conn.0.shutdown(Shutdown::Both);
        self.client.stop();
        self.server.stop();
    }
}

/// Dials the listener from the client stack and accepts the connection.
fn connect(client: &Stack, listener: &TcpListener) -> io::Result<(TcpStream, TcpStream)> {
    let to = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PORT));
    let dialled = client.dial_timeout(to, ECHO_BOUND)?;
    let (accepted, _) = listener.accept_timeout(ECHO_BOUND)?;
    dialled.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    Ok((dialled, accepted))
}

/// Whether a frame carries the client's address anywhere past the Ethernet addresses:
/// such a frame may legitimately break the client's connection.
fn names_client(frame: &[u8]) -> bool {
    let ip = CLIENT_IP.octets();
    frame.len() > 12 && frame[12..].windows(4).any(|w| w == ip)
}

/// A fuzzed IPv4 packet: header fields, options and payload from the body.
fn ip_frame(body: &mut Bytes) -> Vec<u8> {
    let sel = body.u8();
    let vihl = body.u8();
    let (tos, ident, frag, ttl, proto) = (body.u8(), body.u16(), body.u16(), body.u8(), body.u8());
    let total = body.u16();
    let src = if sel & 0x80 != 0 {
        CLIENT_IP
    } else {
        injector_ip(sel)
    };
    // Version 4 and a sane header length unless bit 0 says keep the fuzzer's byte.
    let vihl = if sel & 1 != 0 {
        vihl
    } else {
        0x45 + (vihl & 0x0f) % 11
    };
    let options = body
        .take((usize::from(vihl & 0x0f) * 4).saturating_sub(20))
        .to_vec();
    let mut packet = vec![vihl, tos, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&frag.to_be_bytes());
    packet.extend_from_slice(&[ttl, proto, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&SERVER_IP.octets());
    packet.extend_from_slice(&options);
    let header = packet.len();
    let mut payload = body.0.to_vec();
    // Bit 2: a correct transport checksum (TCP, UDP, ICMP) where it fits.
    if sel & 4 != 0 {
        let at = match proto {
            6 => Some(16),
            17 => Some(6),
            1 => Some(2),
            _ => None,
        };
        if let Some(at) = at.filter(|at| payload.len() >= at + 2) {
            payload[at..at + 2].fill(0);
            let sum = if proto == 1 {
                checksum(&[&payload])
            } else {
                transport_checksum(src, SERVER_IP, proto, &payload)
            };
            payload[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
    }
    packet.extend_from_slice(&payload);
    // Bit 1: the fuzzer's total length; otherwise the true one.
    let total = if sel & 2 != 0 {
        total
    } else {
        packet.len() as u16
    };
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    // Bit 3: a wrong header checksum.
    let sum = checksum(&[&packet[..header]]) ^ if sel & 8 != 0 { 0x1234 } else { 0 };
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.truncate(MAX_FRAME - 14);
    ethernet(injector_mac(sel), SERVER_MAC, 0x0800, &packet)
}

/// An ARP request or reply about chosen addresses, sometimes with odd lengths.
fn arp_frame(body: &mut Bytes) -> Vec<u8> {
    let sel = body.u8();
    let op = match sel & 3 {
        0 => 1,
        1 => 2,
        _ => body.u16(),
    };
    let addr = |k: u8| match k % 5 {
        0 => CLIENT_IP,
        1 => SERVER_IP,
        2 => Ipv4Addr::UNSPECIFIED,
        3 => Ipv4Addr::new(10, 0, 1, 9),
        _ => injector_ip(k),
    };
    let sender_ip = addr(sel >> 2);
    // A sender claiming the client's address with the client's own MAC is harmless;
    // with another MAC, it poisons the stack's entry for the client.
    let sender_mac = if sel & 0x80 != 0 {
        injector_mac(sel)
    } else {
        CLIENT_MAC
    };
    let target_ip = addr(body.u8());
    let mut packet = arp(op, sender_mac, sender_ip, [0; 6], target_ip);
    if sel & 0x40 != 0 {
        // Fuzzed hardware type, protocol type and lengths.
        let raw = body.take(6);
        packet[..raw.len()].copy_from_slice(raw);
    }
    packet.extend_from_slice(body.0);
    packet.truncate(MAX_FRAME - 14);
    let dst = if sel & 0x20 != 0 {
        SERVER_MAC
    } else {
        [0xff; 6]
    };
    ethernet(sender_mac, dst, 0x0806, &packet)
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    p
}

fn ethernet(src: [u8; 6], dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.truncate(MAX_FRAME);
    frame
}

/// A plain IPv4 header (no options, don't-fragment clear) in front of `payload`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()).min(usize::from(u16::MAX)) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&[&p]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The TCP or UDP checksum over the pseudo-header and `segment` (whose own checksum
/// field must be zero).
fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let len = (segment.len() as u16).to_be_bytes();
    let pseudo = [0, proto, len[0], len[1]];
    checksum(&[&src.octets(), &dst.octets(), &pseudo, segment])
}

/// The Internet checksum (RFC 1071) of the concatenated parts (each of even length but
/// the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Fuzz bytes read front to back; past the end, every number is zero.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }
}
