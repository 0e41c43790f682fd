//! The Conn layer against a model of a byte stream, and the fuzz target's inputs
//! replayed as plain tests. No root needed: everything runs on the in-memory wire.
//!
//! - A `proptest` model test: random sequences of write, read, shutdown, close and
//!   deadline changes on both ends of a freshly dialled connection, each result checked
//!   against what a byte stream must do.
//! - Every file in `fuzz/corpus/frames/` and `fuzz/regressions/` through the `frames`
//!   fuzz target's own harness (`fuzz/harness.rs`), so a crash CI's fuzzing found stays
//!   a test.
//! - The seed corpus's generator: a real exchange, captured by the pcap device, whose
//!   frames must replay cleanly. `TAPNET_WRITE_CORPUS=fuzz/corpus/frames` writes them
//!   there, one file per frame.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netdev::{Capture, PcapFile, WireOptions, wire};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use stack::{Mac, Stack, StackConfig, TcpStream};
use tapnet_tests::{TempDir, TestResult, check, pcap_frames, plain};

fn main() {
    tapnet_tests::main(vec![
        plain("conn_matches_a_byte_stream_model", model),
        plain("fuzz_corpus_and_regressions_replay_cleanly", replay),
        plain(
            "captured_frames_of_a_real_exchange_replay_cleanly",
            captured_frames,
        ),
        plain("templated_handshakes_reach_the_listener", templates),
    ])
}

// ---- The byte-stream model ----------------------------------------------------------

/// Cases the model test runs; each takes well under a second.
const CASES: u32 = 64;
/// A read the model expects to succeed may wait this long for data in flight.
const SAFETY: Duration = Duration::from_secs(2);
/// A read the model expects to find nothing waits this long before it must time out.
const QUIET: Duration = Duration::from_millis(20);
/// Each end's buffers: larger than everything one case can write, so no write blocks.
const BUFFER: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Deadline {
    /// No deadline (or one far away).
    None,
    /// Already passed: the operation fails at once with a timeout.
    Past,
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        side: usize,
        len: usize,
    },
    Read {
        side: usize,
        max: usize,
    },
    Shutdown {
        side: usize,
        how: Shutdown,
    },
    Close {
        side: usize,
    },
    SetDeadline {
        side: usize,
        read: bool,
        write: bool,
        past: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let side = 0..2usize;
    prop_oneof![
        3 => (side.clone(), 1..1500usize).prop_map(|(side, len)| Op::Write { side, len }),
        3 => (side.clone(), 1..3000usize).prop_map(|(side, max)| Op::Read { side, max }),
        1 => (side.clone(), prop_oneof![Just(Shutdown::Read), Just(Shutdown::Write), Just(Shutdown::Both)])
            .prop_map(|(side, how)| Op::Shutdown { side, how }),
        1 => side.clone().prop_map(|side| Op::Close { side }),
        2 => (side, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(side, read, write, past)| Op::SetDeadline { side, read: read || !write, write, past }),
    ]
}

/// One direction of the stream, from the writer `from` to the reader `1 - from`.
#[derive(Default, Clone, Copy)]
struct Flow {
    written: u64,
    read: u64,
    /// The writer shut down writing or closed: after the data, EOF.
    fin: bool,
    /// The reader may see a reset (it closed with data unread, or was written to after
    /// its peer closed): data may be cut short.
    may_reset: bool,
    /// A reset was seen: nothing more is checked in this direction.
    dead: bool,
}

/// The byte at position `at` of the flow from `from`: distinct per direction.
fn byte(from: usize, at: u64) -> u8 {
    ((at + from as u64 * 101) % 251) as u8
}

#[derive(Clone, Copy)]
struct End {
    closed: bool,
    read_shut: bool,
    write_shut: bool,
    read_deadline: Deadline,
    write_deadline: Deadline,
}

struct World {
    /// Keeps the stacks up for the case; dropped with it.
    _stacks: (Stack, Stack),
    /// The open ends; `None` once closed.
    conns: [Option<TcpStream>; 2],
    /// A clone of each end that outlives its close, to check the errors that follow.
    ghosts: [TcpStream; 2],
    ends: [End; 2],
    /// `flows[s]`: what side `s` writes.
    flows: [Flow; 2],
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

fn kind_is(result: &io::Result<usize>, kind: ErrorKind) -> bool {
    matches!(result, Err(e) if e.kind() == kind)
}

impl World {
    fn new() -> io::Result<World> {
        let (a, b) = wire(&WireOptions::default())?;
        let config = |addr: &str| {
            StackConfig::new()
                .with_addr(addr.parse().expect("a valid address"))
                .with_buffers(BUFFER, BUFFER)
        };
        let alice = Stack::new(a, config("10.0.0.1/24"))?;
        let bob = Stack::new(b, config("10.0.0.2/24"))?;
        let listener = bob.listen(SocketAddr::from(([10, 0, 0, 2], 7)))?;
        let dialled = alice.dial_timeout(SocketAddr::from(([10, 0, 0, 2], 7)), SAFETY)?;
        let (accepted, _) = listener.accept_timeout(SAFETY)?;
        for conn in [&dialled, &accepted] {
            conn.set_read_timeout(Some(SAFETY))?;
            conn.set_write_timeout(Some(SAFETY))?;
        }
        let end = End {
            closed: false,
            read_shut: false,
            write_shut: false,
            read_deadline: Deadline::None,
            write_deadline: Deadline::None,
        };
        Ok(World {
            _stacks: (alice, bob),
            ghosts: [dialled.try_clone()?, accepted.try_clone()?],
            conns: [Some(dialled), Some(accepted)],
            ends: [end; 2],
            flows: [Flow::default(); 2],
        })
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Write { side, len } => self.write(side, len),
            Op::Read { side, max } => self.read(side, max),
            Op::Shutdown { side, how } => {
                let result = self.ghosts[side].shutdown(how);
                if self.ends[side].closed {
                    return expect_closed(result.map(|()| 0), "shutdown");
                }
                result.map_err(|e| fail(format!("shutdown({how:?}) of side {side}: {e}")))?;
                if matches!(how, Shutdown::Read | Shutdown::Both) {
                    self.ends[side].read_shut = true;
                }
                if matches!(how, Shutdown::Write | Shutdown::Both) {
                    self.ends[side].write_shut = true;
                    self.flows[side].fin = true;
                }
                Ok(())
            }
            Op::Close { side } => {
                let Some(conn) = self.conns[side].take() else {
                    let again = self.ghosts[side]
                        .try_clone()
                        .map_err(|e| fail(e.to_string()))?;
                    return expect_closed(again.close().map(|()| 0), "a second close");
                };
                conn.close()
                    .map_err(|e| fail(format!("close of side {side}: {e}")))?;
                self.ends[side].closed = true;
                self.flows[side].fin = true;
                // Data left unread (or still on its way) makes the close a reset.
                let incoming = self.flows[1 - side];
                if incoming.written > incoming.read {
                    self.flows[side].may_reset = true;
                }
                Ok(())
            }
            Op::SetDeadline {
                side,
                read,
                write,
                past,
            } => {
                let at = past.then(|| Instant::now() - Duration::from_millis(1));
                let conn = &self.ghosts[side];
                let result = match (read, write) {
                    (true, true) => conn.set_deadline(at),
                    (true, false) => conn.set_read_deadline(at),
                    _ => conn.set_write_deadline(at),
                };
                if self.ends[side].closed {
                    return expect_closed(result.map(|()| 0), "set deadline");
                }
                result.map_err(|e| fail(format!("set deadline on side {side}: {e}")))?;
                let deadline = if past { Deadline::Past } else { Deadline::None };
                if read {
                    self.ends[side].read_deadline = deadline;
                }
                if write {
                    self.ends[side].write_deadline = deadline;
                }
                Ok(())
            }
        }
    }

    fn write(&mut self, side: usize, len: usize) -> Result<(), TestCaseError> {
        let flow = &mut self.flows[side];
        let data: Vec<u8> = (0..len as u64)
            .map(|i| byte(side, flow.written + i))
            .collect();
        let result = (&self.ghosts[side]).write(&data);
        let end = self.ends[side];
        if end.closed {
            return expect_closed(result, "write");
        }
        if end.write_shut {
            return check_kind(result, ErrorKind::BrokenPipe, "write after shutdown(Write)");
        }
        if end.write_deadline == Deadline::Past {
            return check_kind(result, ErrorKind::TimedOut, "write past its deadline");
        }
        if self.ends[1 - side].closed {
            // Written to a closed peer: it answers with a reset, which may cut short
            // what it sent us.
            self.flows[1 - side].may_reset = true;
            if let Ok(n) = result {
                self.flows[side].written += n as u64;
            }
            return Ok(());
        }
        match result {
            Ok(n) if n == len => {
                self.flows[side].written += n as u64;
                Ok(())
            }
            other => Err(fail(format!(
                "write of {len} bytes on side {side}: {other:?}"
            ))),
        }
    }

    fn read(&mut self, side: usize, max: usize) -> Result<(), TestCaseError> {
        let end = self.ends[side];
        let conn = &self.ghosts[side];
        let mut buf = vec![0u8; max];
        if end.closed {
            return expect_closed((&*conn).read(&mut buf), "read");
        }
        if end.read_shut {
            let result = (&*conn).read(&mut buf);
            return match result {
                Ok(0) => Ok(()),
                other => Err(fail(format!(
                    "read after shutdown(Read) on side {side}: {other:?}, not 0"
                ))),
            };
        }
        if end.read_deadline == Deadline::Past {
            return check_kind(
                (&*conn).read(&mut buf),
                ErrorKind::TimedOut,
                "read past its deadline",
            );
        }
        let flow = self.flows[1 - side];
        let pending = flow.written - flow.read;
        let quiet = pending == 0 && !flow.fin && !flow.may_reset && !flow.dead;
        if quiet {
            // Nothing will come: a short deadline must expire, and lose nothing.
            conn.set_read_deadline(Some(Instant::now() + QUIET))
                .map_err(|e| fail(e.to_string()))?;
        }
        let result = (&*conn).read(&mut buf);
        if quiet {
            conn.set_read_deadline(None)
                .map_err(|e| fail(e.to_string()))?;
            return check_kind(result, ErrorKind::TimedOut, "read with nothing to read");
        }
        self.received(side, &buf, result)
    }

    /// Checks what a read on `side` returned against the flow into it.
    fn received(
        &mut self,
        side: usize,
        buf: &[u8],
        result: io::Result<usize>,
    ) -> Result<(), TestCaseError> {
        let flow = &mut self.flows[1 - side];
        let pending = flow.written - flow.read;
        match result {
            Ok(0) if pending == 0 && (flow.fin || flow.dead) => Ok(()),
            Ok(0) | Err(_) if flow.may_reset || flow.dead => {
                flow.dead = true;
                Ok(())
            }
            Ok(n) if n as u64 <= pending => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let at = flow.read + i as u64;
                    if b != byte(1 - side, at) {
                        return Err(fail(format!(
                            "side {side} read byte {at} as {b}, not {}",
                            byte(1 - side, at)
                        )));
                    }
                }
                flow.read += n as u64;
                Ok(())
            }
            other => Err(fail(format!(
                "read on side {side} with {pending} bytes pending (EOF expected: {}): {other:?}",
                flow.fin
            ))),
        }
    }

    /// After the ops: every byte still owed to an open reader arrives, then EOF if the
    /// writer shut down.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for side in 0..2 {
            let end = self.ends[side];
            if end.closed || end.read_shut {
                continue;
            }
            let conn = self.ghosts[side]
                .try_clone()
                .map_err(|e| fail(e.to_string()))?;
            conn.set_read_deadline(None)
                .map_err(|e| fail(e.to_string()))?;
            self.ends[side].read_deadline = Deadline::None;
            let mut guard = 0;
            loop {
                let flow = self.flows[1 - side];
                let pending = flow.written - flow.read;
                if flow.dead || (pending == 0 && !flow.fin) || guard > 1000 {
                    break;
                }
                guard += 1;
                let mut buf = vec![0u8; 4096];
                let result = (&conn).read(&mut buf);
                let eof = matches!(result, Ok(0));
                self.received(side, &buf, result)?;
                if eof {
                    break;
                }
            }
        }
        Ok(())
    }
}

fn expect_closed(result: io::Result<usize>, what: &str) -> Result<(), TestCaseError> {
    check_kind(
        result,
        ErrorKind::NotConnected,
        &format!("{what} after close"),
    )
}

fn check_kind(result: io::Result<usize>, kind: ErrorKind, what: &str) -> Result<(), TestCaseError> {
    if kind_is(&result, kind) {
        Ok(())
    } else {
        Err(fail(format!("{what}: {result:?}, expected {kind:?}")))
    }
}

fn model() -> TestResult {
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..24), |ops| {
        let mut world = World::new().map_err(|e| fail(format!("setup: {e}")))?;
        for op in &ops {
            world.apply(op)?;
        }
        world.finish()
    });
    let took = started.elapsed();
    eprintln!("model: {CASES} cases in {took:.1?}");
    result.map_err(|e| format!("{e}"))?;
    check!(
        took < Duration::from_secs(60),
        "{CASES} cases took {took:?}, over the 60 s bound"
    );
    Ok(())
}

// ---- The fuzz target's inputs, replayed ---------------------------------------------

fn fuzz_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(sub)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    files.sort();
    Ok(files)
}

/// Runs one input through a fresh harness.
fn replay_one(name: &str, data: &[u8]) -> TestResult {
    let mut h = harness::Harness::new().map_err(|e| format!("{name}: harness: {e}"))?;
    h.run(data).map_err(|e| format!("{name}: {e}"))?;
    Ok(())
}

fn replay() -> TestResult {
    let corpus = files(&fuzz_dir("corpus/frames"))?;
    let regressions = files(&fuzz_dir("regressions"))?;
    check!(
        corpus.len() >= 10,
        "the seed corpus has {} files; regenerate it (see fuzz/README.md)",
        corpus.len()
    );
    let started = Instant::now();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        replay_one(&path.display().to_string(), &data)?;
    }
    eprintln!(
        "replayed {} corpus files and {} regressions in {:.1?}",
        corpus.len(),
        regressions.len(),
        started.elapsed()
    );
    Ok(())
}

/// One record of the input format, kind 0: the frame as it is.
fn raw_record(frame: &[u8]) -> Vec<u8> {
    let len = frame.len().min(usize::from(u16::MAX));
    let mut out = vec![0];
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&frame[..len]);
    out
}

/// What a frame from the client is, for the corpus file's name.
fn frame_name(frame: &[u8]) -> String {
    if frame.len() < 14 {
        return "short".into();
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0806 => "arp".into(),
        0x0800 if frame.len() >= 34 => {
            let ip = &frame[14..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            match ip[9] {
                1 => "icmp".into(),
                17 => "udp".into(),
                6 if ip.len() >= ihl + 20 => {
                    let tcp = &ip[ihl..];
                    let flags = tcp[13];
                    let payload = ip.len() > ihl + usize::from(tcp[12] >> 4) * 4;
                    let mut name = String::from("tcp");
                    for (bit, tag) in [(0x02, "syn"), (0x01, "fin"), (0x04, "rst"), (0x10, "ack")] {
                        if flags & bit != 0 {
                            name.push('-');
                            name.push_str(tag);
                        }
                    }
                    if payload {
                        name.push_str("-data");
                    }
                    name
                }
                p => format!("ip{p}"),
            }
        }
        t => format!("eth{t:04x}"),
    }
}

/// A real exchange between a client at the harness's client address and a stack at the
/// harness's server address: ARP, ping, a connection with data both ways and FINs, and
/// a SYN to a closed port (answered by RST). Returns the client's frames, in order.
fn capture_exchange(dir: &TempDir) -> Result<Vec<Vec<u8>>, tapnet_tests::Failed> {
    let pcap = dir.join("exchange.pcap");
    {
        let (a, b) = wire(&WireOptions::default())?;
        let config = |ip, mac| {
            StackConfig::new()
                .with_addr(stack::Ipv4Net {
                    addr: ip,
                    prefix: 24,
                })
                .with_mac(Mac(mac))
        };
        let client = Stack::new(
            Capture::new(a, PcapFile::create(&pcap)?),
            config(harness::CLIENT_IP, harness::CLIENT_MAC),
        )?;
        let server = Stack::new(b, config(harness::SERVER_IP, harness::SERVER_MAC))?;
        client
            .pinger(harness::SERVER_IP)?
            .ping(Duration::from_secs(2))?;
        let listener = server.listen(SocketAddr::from((harness::SERVER_IP, harness::PORT)))?;
        let to = SocketAddr::from((harness::SERVER_IP, harness::PORT));
        let conn = client.dial_timeout(to, Duration::from_secs(2))?;
        let (peer, _) = listener.accept_timeout(Duration::from_secs(2))?;
        peer.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        (&conn).write_all(b"hello, fuzzer")?;
        let mut buf = [0u8; 13];
        (&peer).read_exact(&mut buf)?;
        (&peer).write_all(&buf)?;
        (&conn).read_exact(&mut buf)?;
        conn.shutdown(Shutdown::Write)?;
        check!(
            (&peer).read(&mut buf)? == 0,
            "the server did not see the FIN"
        );
        peer.close()?;
        check!(
            (&conn).read(&mut buf)? == 0,
            "the client did not see the FIN"
        );
        conn.close()?;
        let refused = client.dial_timeout(
            SocketAddr::from((harness::SERVER_IP, 9)),
            Duration::from_secs(2),
        );
        check!(refused.is_err(), "a dial to a closed port succeeded");
        // An abortive close: data the peer never read, so RST.
        let conn = client.dial_timeout(to, Duration::from_secs(2))?;
        let (peer, _) = listener.accept_timeout(Duration::from_secs(2))?;
        (&peer).write_all(b"unread")?;
        std::thread::sleep(Duration::from_millis(50));
        conn.close()?;
        client.settle(Duration::from_secs(1));
        drop(peer);
    }
    let frames = pcap_frames(&pcap)?;
    // The client's own frames: what the stack under test would receive from it.
    Ok(frames
        .into_iter()
        .filter(|f| f.len() >= 12 && f[6..12] == harness::CLIENT_MAC)
        .collect())
}

fn captured_frames() -> TestResult {
    let dir = TempDir::new("model-capture")?;
    let frames = capture_exchange(&dir)?;
    let names: Vec<String> = frames.iter().map(|f| frame_name(f)).collect();
    for want in ["arp", "icmp", "tcp-syn", "-data", "-fin", "tcp-rst"] {
        check!(
            names
                .iter()
                .any(|n| n.starts_with(want) || n.contains(want)),
            "the capture has no {want} frame from the client: {names:?}"
        );
    }
    let out = std::env::var_os("TAPNET_WRITE_CORPUS").map(PathBuf::from);
    if let Some(out) = &out {
        std::fs::create_dir_all(out)?;
    }
    let mut h = harness::Harness::new()?;
    for (i, (frame, name)) in frames.iter().zip(&names).enumerate() {
        let record = raw_record(frame);
        h.run(&record)
            .map_err(|e| format!("frame {i} ({name}): {e}"))?;
        if let Some(out) = &out {
            std::fs::write(out.join(format!("{i:02}-{name}")), &record)?;
        }
    }
    // The whole exchange as one input, too.
    let all: Vec<u8> = frames.iter().flat_map(|f| raw_record(f)).collect();
    h.run(&all)
        .map_err(|e| format!("the whole exchange: {e}"))?;
    if let Some(out) = &out {
        std::fs::write(out.join("whole-exchange"), &all)?;
        let templates = template_seeds();
        for (name, input) in &templates {
            std::fs::write(out.join(name), input)?;
        }
        let count = frames.len() + 1 + templates.len();
        eprintln!("wrote {count} corpus files to {}", out.display());
    }
    Ok(())
}

/// A record of kind `kind` with `body`.
fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A TCP template record (kind 1) from injector peer `peer` (0 to 3): `mode` bits 0 and
/// 1 make seq and ack relative to what the stack expects.
fn tcp_record(peer: u8, mode: u8, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![peer, mode, flags];
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(&ack.to_be_bytes());
    body.extend_from_slice(&64_000u16.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    // Options: MSS 1460, window scale 7.
    let options = [2, 4, 0x05, 0xb4, 3, 3, 7, 1];
    body.push(options.len() as u8);
    body.extend_from_slice(&options);
    body.extend_from_slice(payload);
    record(1, &body)
}

/// Hand-made seeds in the template kinds: a handshake, data and FIN from an injector
/// peer, with sequence numbers relative to the stack's.
fn template_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;
    const FIN_ACK: u8 = 0x11;
    let handshake = [
        tcp_record(0, 0, SYN, 1000, 0, b""),
        tcp_record(0, 3, ACK, 0, 0, b""),
    ]
    .concat();
    let session = [
        handshake.clone(),
        tcp_record(0, 3, PSH_ACK, 0, 0, b"data from the injector"),
        tcp_record(0, 3, FIN_ACK, 0, 0, b""),
    ]
    .concat();
    vec![
        ("template-handshake", handshake),
        ("template-session", session),
        // An ICMP echo request from an injector peer (kind 4).
        ("template-icmp-echo", record(4, &[0, 8, 0, 0, 1, 0, 1])),
        // A fragment of a TCP packet (kind 2: more-fragments set).
        (
            "template-ip-fragment",
            record(2, &[4, 0x45, 0, 0, 1, 0x20, 0, 64, 6, 0, 0, 1, 2, 3, 4]),
        ),
        // ARP who-has the stack, from an injector peer (kind 3).
        ("template-arp", record(3, &[0x0c, 1])),
    ]
}

/// The TCP templates are precise enough to complete a handshake with the listener and
/// deliver data: the fuzzer starts from frames the stack takes seriously.
fn templates() -> TestResult {
    for (name, input) in template_seeds() {
        let mut h = harness::Harness::new()?;
        h.run(&input).map_err(|e| format!("{name}: {e}"))?;
        if name.starts_with("template-handshake") || name.starts_with("template-session") {
            check!(
                h.accepted() == 1,
                "{name}: the listener accepted {} connections, not 1",
                h.accepted()
            );
        }
    }
    Ok(())
}
