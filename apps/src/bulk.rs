//! `tapnet sink` and `tapnet source`: bulk throughput, with every byte checked.
//!
//! The source writes a *pattern* and the sink verifies it as it arrives, so a transfer
//! proves its own integrity as well as measuring its rate. Byte `i` of the stream (`i`
//! counted from 0, as a `u64`) is byte `i % 8`, little-endian, of [`pattern_word`]`(i / 8)`:
//! the SplitMix64 finalizer applied to `i / 8 * 0x9E3779B97F4A7C15 + KEY`. Each 8-byte
//! word is a keyed, bijective hash of its own position, so a flipped byte changes the
//! word it sits in, and a lost, duplicated or reordered byte shifts or moves words to
//! positions whose hash they do not match. The sink reports the offset of the first
//! byte that differs ("corrupt at byte N"), or "pattern ok".
//!
//! Both sides work a word at a time (about one multiply chain per 8 bytes), so the
//! pattern costs far less than the stack that carries it: several GB/s on one core in a
//! release build.
//!
//! When the stream ends, the sink sends its verdict back as one line ("pattern ok" or
//! "corrupt at byte N") before closing, and the source prints it. A source therefore
//! learns that the sink received everything (its timing includes delivery, not only
//! queueing), and a plain `nc -l` peer still works: it just sends no verdict.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use stack::{Conn, Listener, Network};

use crate::args;
use crate::net::{self, App, Ctx, NetArgs};

/// The key mixed into every pattern word ("tapnet" and a version).
pub const KEY: u64 = 0x7461_706e_6574_0001;

/// How many bytes the source sends when neither `--bytes` nor `--time` is given.
pub const DEFAULT_BYTES: u64 = 100 << 20;

/// How long the source waits for the connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may make no progress before the source gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the source waits, after its FIN, for the sink's verdict and FIN.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(10);
/// The sink's read buffer.
const READ_BUF: usize = 256 << 10;
/// The longest verdict line the source keeps.
const MAX_VERDICT: usize = 256;

/// Word `w` of the pattern: bytes `8w .. 8w+8` of the stream, little-endian.
#[inline]
pub fn pattern_word(w: u64) -> u64 {
    // SplitMix64 (Steele, Lea, Flood 2014): a bijection on u64, so no two words collide.
    let mut z = w.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(KEY);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Byte `i` of the pattern.
#[inline]
pub fn pattern_byte(i: u64) -> u8 {
    pattern_word(i / 8).to_le_bytes()[(i % 8) as usize]
}

/// Fills `buf` with the pattern's bytes from stream offset `offset` on.
pub fn fill(offset: u64, buf: &mut [u8]) {
    // The unaligned head, byte by byte, up to a word boundary.
    let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
    let (first, rest) = buf.split_at_mut(head);
    for (k, b) in first.iter_mut().enumerate() {
        *b = pattern_byte(offset + k as u64);
    }
    let mut pos = offset + head as u64;
    let mut words = rest.chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&pattern_word(pos / 8).to_le_bytes());
        pos += 8;
    }
    for (k, b) in words.into_remainder().iter_mut().enumerate() {
        *b = pattern_byte(pos + k as u64);
    }
}

/// Checks a stream against the pattern, one buffer at a time, however the reads split it.
#[derive(Debug, Default, Clone)]
pub struct Verifier {
    /// Bytes seen so far.
    pub bytes: u64,
    /// The offset of the first byte that differed from the pattern, if any.
    pub first_bad: Option<u64>,
}

impl Verifier {
    /// Checks the next `buf` of the stream. After the first mismatch it only counts.
    pub fn update(&mut self, buf: &[u8]) {
        if self.first_bad.is_none() {
            self.first_bad = first_mismatch(self.bytes, buf);
        }
        self.bytes += buf.len() as u64;
    }
}

/// The stream offset of the first byte in `buf` (which starts at `offset`) that is not
/// the pattern's.
fn first_mismatch(offset: u64, buf: &[u8]) -> Option<u64> {
    let scan = |from: u64, bytes: &[u8]| {
        bytes
            .iter()
            .zip(from..)
            .find(|&(&b, i)| b != pattern_byte(i))
            .map(|(_, i)| i)
    };
    let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
    let (first, rest) = buf.split_at(head);
    if let Some(bad) = scan(offset, first) {
        return Some(bad);
    }
    let mut pos = offset + head as u64;
    let words = rest.chunks_exact(8);
    let tail = words.remainder();
    for chunk in words {
        let got = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        if got != pattern_word(pos / 8) {
            return scan(pos, chunk);
        }
        pos += 8;
    }
    scan(pos, tail)
}

/// A chunk size for `--chunk`: 1 byte to 16 MiB.
fn parse_chunk(s: &str) -> Result<usize, String> {
    match args::size(s)? {
        0 => Err(format!("chunk size {s:?} must be at least 1 byte")),
        n if n > 16 << 20 => Err(format!("chunk size {s:?} is above 16M")),
        n => Ok(n as usize),
    }
}

/// Gbit/s for `bytes` over `elapsed` (decimal gigabits, as link speeds are quoted).
fn gbits(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64().max(1e-9);
    bytes as f64 * 8.0 / secs / 1e9
}

/// Options of `tapnet sink`.
#[derive(Args, Debug)]
#[command(after_help = "\
Listens on 0.0.0.0:PORT. For each connection, prints one line when the stream ends:
  PEER -> LOCAL: BYTES bytes in SECONDS s, RATE Gbit/s, pattern ok
or `corrupt at byte N` (the first byte that differs from the source's pattern), and
sends that verdict back to the source. With --once, the exit status is 0 if the pattern
held and 1 if not.

Example (tapnet receives, the kernel sends):
  sudo ip tuntap add dev tap0 mode tap user $USER
  sudo ip addr add 10.0.0.1/24 dev tap0 && sudo ip link set tap0 up
  tapnet sink --tap tap0 --addr 10.0.0.2/24 &
  tapnet source --kernel 10.0.0.2:5001 --bytes 1G")]
pub struct SinkOpts {
    /// Port to listen on
    #[arg(long, short = 'p', default_value_t = 5001)]
    pub port: u16,
    /// Exit after the first connection: 0 if its pattern held, 1 if not
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet sink`.
pub fn run_sink(args: SinkOpts) -> io::Result<ExitCode> {
    let app = Sink {
        port: args.port,
        once: args.once,
    };
    net::run(&args.net, app)
}

struct Sink {
    port: u16,
    once: bool,
}

impl App for Sink {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port));
        let listener = net.listen(addr)?;
        log::info!("sink listening on {addr} over {describe}");
        eprintln!("tapnet sink: listening on {addr} ({describe})");
        if !self.once {
            // A stop ends the process once `serve` returns, open connections with it.
            net::serve(listener, ctx, |conn, peer| {
                receive(conn, peer);
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        let closer = listener.try_clone()?;
        ctx.on_stop(move || {
            let _ = Listener::close(closer);
        });
        let (conn, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(_) if ctx.stopping() => {
                return Err(io::Error::other("stopped before any connection arrived"));
            }
            Err(e) => return Err(e),
        };
        let _ = listener.close();
        // A stop fails a blocked read at once (a deadline in the past), so an
        // interrupted stream is reported incomplete, not mistaken for its end.
        let stopper = conn.try_clone()?;
        ctx.on_stop(move || {
            let _ = stopper.set_deadline(Some(Instant::now()));
        });
        Ok(if receive(conn, peer) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Reads one connection to its end, checking the pattern; prints the result line and
/// sends the verdict back. True if the whole stream arrived and matched.
fn receive<C: Conn>(mut conn: C, peer: SocketAddr) -> bool {
    let local = conn
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    log::info!("{peer} -> {local}: connected");
    let start = Instant::now();
    let mut buf = vec![0u8; READ_BUF];
    let mut verifier = Verifier::default();
    let failure = loop {
        match conn.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => verifier.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        }
    };
    let elapsed = start.elapsed();
    let verdict = match (verifier.first_bad, &failure) {
        (Some(bad), _) => format!("corrupt at byte {bad}"),
        (None, None) => "pattern ok".to_string(),
        (None, Some(e)) => format!("incomplete: {e}"),
    };
    let ok = verifier.first_bad.is_none() && failure.is_none();
    say!(
        "{peer} -> {local}: {} bytes in {:.3} s, {:.3} Gbit/s, {verdict}",
        verifier.bytes,
        elapsed.as_secs_f64(),
        gbits(verifier.bytes, elapsed)
    );
    if failure.is_none() {
        // The source may have gone already; the verdict is a courtesy.
        let _ = conn.set_write_deadline(Some(Instant::now() + VERDICT_TIMEOUT));
        let _ = conn.write_all(format!("{verdict}\n").as_bytes());
    }
    if let Err(e) = conn.close() {
        log::debug!("{e}");
    }
    ok
}

/// Options of `tapnet source`.
#[derive(Args, Debug)]
#[command(after_help = "\
Sends 100 MiB unless --bytes or --time says otherwise, then half-closes and waits (up to
10 s) for the sink to finish, so the rate counts delivery. Prints one line:
  LOCAL -> PEER: sent BYTES bytes in SECONDS s, RATE Gbit/s
and, from a tapnet sink, its verdict (`sink: pattern ok`). The exit status is 1 if the
transfer failed or the sink found corruption.

Sizes are bytes, or take K, M, G, T (or KiB, MiB, GiB, TiB): powers of 1024.

Example (the kernel receives, tapnet sends):
  sudo ip tuntap add dev tap0 mode tap user $USER
  sudo ip addr add 10.0.0.1/24 dev tap0 && sudo ip link set tap0 up
  tapnet sink --kernel --once &
  tapnet source 10.0.0.1:5001 --tap tap0 --addr 10.0.0.2/24 --bytes 64M")]
pub struct SourceOpts {
    /// The sink to send to
    #[arg(value_name = "HOST:PORT", value_parser = args::target)]
    pub to: SocketAddr,
    /// How many bytes to send, e.g. 64M [default: 100M]
    #[arg(long, short = 'n', value_name = "SIZE", value_parser = args::size)]
    pub bytes: Option<u64>,
    /// Send for this long instead, e.g. 10 (seconds), 10s or 500ms
    #[arg(long, short = 't', value_name = "TIME", value_parser = args::timeout, conflicts_with = "bytes")]
    pub time: Option<Duration>,
    /// Bytes per write call
    #[arg(long, value_name = "SIZE", default_value = "128K", value_parser = parse_chunk)]
    pub chunk: usize,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet source`.
pub fn run_source(args: SourceOpts) -> io::Result<ExitCode> {
    let limit = match (args.bytes, args.time) {
        (_, Some(time)) => Limit::Time(time),
        (Some(bytes), None) => Limit::Bytes(bytes),
        (None, None) => Limit::Bytes(DEFAULT_BYTES),
    };
    let app = Source {
        to: args.to,
        limit,
        chunk: args.chunk,
    };
    net::run(&args.net, app)
}

/// When the source stops sending.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Bytes(u64),
    Time(Duration),
}

struct Source {
    to: SocketAddr,
    limit: Limit,
    chunk: usize,
}

impl App for Source {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        log::info!("source dialing {} over {describe}", self.to);
        let mut conn = net.dial_timeout(self.to, CONNECT_TIMEOUT)?;
        let local = conn.local_addr()?;
        // A stop makes a blocked write fail at once; the loop then sees `stopping`.
        let stopper = conn.try_clone()?;
        ctx.on_stop(move || {
            let _ = stopper.set_deadline(Some(Instant::now()));
        });
        let start = Instant::now();
        let mut buf = vec![0u8; self.chunk];
        let mut sent: u64 = 0;
        let result: io::Result<()> = loop {
            let n = match self.limit {
                Limit::Bytes(total) => (total - sent).min(self.chunk as u64) as usize,
                Limit::Time(t) if start.elapsed() >= t => 0,
                Limit::Time(_) => self.chunk,
            };
            if n == 0 {
                break Ok(());
            }
            fill(sent, &mut buf[..n]);
            if let Err(e) = conn.set_write_deadline(Some(Instant::now() + STALL_TIMEOUT)) {
                break Err(e);
            }
            if ctx.stopping() {
                break Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
            match conn.write(&buf[..n]) {
                Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
                // A short write (a deadline after part was queued): the rest goes next
                // round, from the right offset.
                Ok(k) => sent += k as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted && !ctx.stopping() => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            let why = if ctx.stopping() {
                "interrupted".to_string()
            } else {
                e.to_string()
            };
            say!(
                "{local} -> {}: sent {sent} bytes in {:.3} s, then failed: {why}",
                self.to,
                start.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::FAILURE);
        }
        // Half-close, then wait for the sink to read everything and close its side.
        conn.shutdown(Shutdown::Write)?;
        conn.set_deadline(Some(Instant::now() + VERDICT_TIMEOUT))?;
        let mut reply = Vec::new();
        let mut piece = [0u8; 512];
        let waited = loop {
            match conn.read(&mut piece) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    let room = MAX_VERDICT.saturating_sub(reply.len());
                    reply.extend_from_slice(&piece[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted && !ctx.stopping() => {}
                Err(e) => break Err(e),
            }
        };
        let elapsed = start.elapsed();
        say!(
            "{local} -> {}: sent {sent} bytes in {:.3} s, {:.3} Gbit/s",
            self.to,
            elapsed.as_secs_f64(),
            gbits(sent, elapsed)
        );
        let _ = conn.close();
        if let Err(e) = waited {
            say!("no end of stream from the sink: {e}");
            return Ok(ExitCode::FAILURE);
        }
        let verdict = String::from_utf8_lossy(&reply);
        let verdict = verdict.trim();
        if verdict.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        say!("sink: {verdict}");
        Ok(if verdict == "pattern ok" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(offset: u64, len: usize) -> Vec<u8> {
        (offset..offset + len as u64).map(pattern_byte).collect()
    }

    #[test]
    fn fill_matches_the_bytewise_definition_at_every_alignment() {
        for offset in 0..17 {
            for len in [0, 1, 7, 8, 9, 63, 100] {
                let mut buf = vec![0u8; len];
                fill(offset, &mut buf);
                assert_eq!(buf, pattern(offset, len), "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn verifier_accepts_the_pattern_split_anyhow() {
        let data = pattern(0, 10_000);
        for step in [1, 3, 8, 13, 4096] {
            let mut v = Verifier::default();
            for piece in data.chunks(step) {
                v.update(piece);
            }
            assert_eq!((v.bytes, v.first_bad), (10_000, None), "step {step}");
        }
    }

    #[test]
    fn verifier_finds_every_single_flipped_bit() {
        let data = pattern(0, 300);
        for at in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data.clone();
                bad[at] ^= 1 << bit;
                let mut v = Verifier::default();
                for piece in bad.chunks(7) {
                    v.update(piece);
                }
                assert_eq!(v.first_bad, Some(at as u64));
            }
        }
    }

    #[test]
    fn verifier_finds_lost_duplicated_and_reordered_bytes() {
        let data = pattern(0, 4096);
        let check = |bad: Vec<u8>, at: u64| {
            let mut v = Verifier::default();
            v.update(&bad);
            assert_eq!(v.first_bad, Some(at));
        };
        let mut lost = data.clone();
        lost.remove(1000);
        check(lost, 1000);
        let mut dup = data.clone();
        dup.insert(2000, data[2000]);
        // The duplicate matches at 2000 itself; 2001 then holds byte 2000.
        let first = (2001..).find(|&i| dup[i] != data[i]).unwrap() as u64;
        check(dup, first);
        let mut swapped = data.clone();
        swapped[1024..1536].swap_with_slice(&mut data[2048..2560].to_vec());
        check(swapped, 1024);
    }

    #[test]
    fn chunks_are_1_byte_to_16_mib() {
        assert!(parse_chunk("0").is_err());
        assert!(parse_chunk("32M").is_err());
        assert_eq!(parse_chunk("128K"), Ok(128 << 10));
    }

    /// Not a test of speed (debug builds are slow), but it prints the rate for a look:
    /// `cargo test --release -p tapnet --bin tapnet pattern_rate -- --nocapture`.
    #[test]
    fn pattern_rate() {
        let mut buf = vec![0u8; 64 << 20];
        let start = Instant::now();
        fill(0, &mut buf);
        let filled = start.elapsed();
        let start = Instant::now();
        let mut v = Verifier::default();
        for piece in buf.chunks(READ_BUF) {
            v.update(piece);
        }
        let checked = start.elapsed();
        assert_eq!(v.first_bad, None);
        eprintln!(
            "fill {:.1} Gbit/s, verify {:.1} Gbit/s",
            gbits(v.bytes, filled),
            gbits(v.bytes, checked)
        );
    }
}
