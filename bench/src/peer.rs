//! The peer: the kernel's own sockets (`std::net`), measuring a system under test that
//! serves the services of `serve.rs` (or the same services from raw smoltcp's loop).
//!
//! It always runs in the kernel's side of the link: the TAP's namespace for tapnet and
//! raw smoltcp, the other end of the veth pair for the kernel. Each measurement is one
//! function, timed here, at the kernel's side:
//!
//! - [`send`] (kernel → X): writes for a while, half-closes, and waits for the sink's
//!   byte count, so the time covers the last byte's arrival and the count proves it.
//! - [`receive`] (X → kernel): reads from the source for a while, then leaves.
//! - [`ping_pong`]: 1-byte round trips on one connection, after a warm-up.
//! - [`connect_rate`]: serial connections, each dial, one byte each way, close.
//!
//! Every socket call has a timeout ([`IO_TIMEOUT`]) and every loop a deadline, so a
//! stalled stack shows as an error, not a hang.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::serve::{CHUNK, ECHO, SINK, SOURCE};
use crate::{BoxError, interrupted};

/// The longest any one socket call may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Round trips before the measured ones, which are not counted.
const WARM_UP: usize = 100;
/// The most a ping-pong measurement may take, however many round trips it was asked for.
pub const PING_LIMIT: Duration = Duration::from_secs(60);

/// A connection with the timeouts every call of the peer obeys.
fn dial(addr: SocketAddr) -> Result<TcpStream, BoxError> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| explain(format!("connect to {addr}"), e))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An I/O error in plain words: what the peer was doing, and for a timeout (which std
/// reports as EAGAIN) how long it waited.
fn explain(what: impl std::fmt::Display, e: io::Error) -> BoxError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what}: nothing happened for {IO_TIMEOUT:?} (timed out)").into()
        }
        _ => format!("{what}: {e}").into(),
    }
}

fn check_interrupted() -> Result<(), BoxError> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Gbit/s for `bytes` in `elapsed`.
fn gbits(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// Kernel → X: writes to the sink for `secs`, then waits for its count. Gbit/s.
pub fn send(server: Ipv4Addr, secs: Duration) -> Result<f64, BoxError> {
    let mut stream = dial((server, SINK).into())?;
    let chunk = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < secs {
        check_interrupted()?;
        let n = stream
            .write(&chunk)
            .map_err(|e| explain(format_args!("write after {sent} bytes"), e))?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    // Up to a few MB may still be queued; the sink answers once it has them all.
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).map_err(|e| {
        explain(
            format_args!("waiting for the sink's count after {sent} bytes"),
            e,
        )
    })?;
    let elapsed = start.elapsed();
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(format!("sent {sent} bytes but the sink counted {received}").into());
    }
    Ok(gbits(sent, elapsed))
}

/// X → kernel: reads from the source for `secs`. Gbit/s.
pub fn receive(server: Ipv4Addr, secs: Duration) -> Result<f64, BoxError> {
    let mut stream = dial((server, SOURCE).into())?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut received = 0u64;
    while start.elapsed() < secs {
        check_interrupted()?;
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("the source closed after {received} bytes").into()),
            Ok(n) => received += n as u64,
            Err(e) => return Err(explain(format_args!("read after {received} bytes"), e)),
        }
    }
    let elapsed = start.elapsed();
    // Dropping the stream with data unread resets it, which ends the source's writes.
    Ok(gbits(received, elapsed))
}

/// Round-trip times of 1-byte ping-pongs.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

/// `count` 1-byte round trips to the echo, after [`WARM_UP`] unmeasured ones.
pub fn ping_pong(server: Ipv4Addr, count: usize) -> Result<Latency, BoxError> {
    let mut stream = dial((server, ECHO).into())?;
    let mut rtts = Vec::with_capacity(count);
    let deadline = Instant::now() + PING_LIMIT;
    let mut byte = [0u8; 1];
    for i in 0..WARM_UP + count {
        if i % 256 == 0 {
            check_interrupted()?;
            if Instant::now() > deadline {
                return Err(format!("only {i} round trips in {PING_LIMIT:?}").into());
            }
        }
        let start = Instant::now();
        stream
            .write_all(&[i as u8])
            .and_then(|()| stream.read_exact(&mut byte))
            .map_err(|e| explain(format_args!("round trip {i}"), e))?;
        let rtt = start.elapsed();
        if byte[0] != i as u8 {
            return Err(format!("round trip {i}: sent {}, got {} back", i as u8, byte[0]).into());
        }
        if i >= WARM_UP {
            rtts.push(rtt);
        }
    }
    stream.shutdown(Shutdown::Write)?;
    // The echo closes in turn: wait for that, so the next test starts on a quiet link.
    let _ = stream.read(&mut byte);
    rtts.sort_unstable();
    Ok(Latency {
        p50: percentile(&rtts, 50.0),
        p99: percentile(&rtts, 99.0),
    })
}

/// The nearest-rank percentile of sorted, non-empty `values`.
fn percentile(values: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Connections per second for `secs`: each one dials the echo, sends a byte, reads it
/// back and closes, before the next one starts.
pub fn connect_rate(server: Ipv4Addr, secs: Duration) -> Result<f64, BoxError> {
    let addr = (server, ECHO).into();
    let start = Instant::now();
    let mut done = 0u64;
    let mut byte = [0u8; 1];
    while start.elapsed() < secs {
        check_interrupted()?;
        let mut stream = dial(addr).map_err(|e| format!("connection {done}: {e}"))?;
        stream
            .write_all(b"x")
            .and_then(|()| stream.read_exact(&mut byte))
            .map_err(|e| explain(format_args!("connection {done}: one byte each way"), e))?;
        drop(stream);
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&values, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&values, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&values[..1], 99.0), Duration::from_micros(1));
        let ten: Vec<Duration> = (1..=10).map(Duration::from_micros).collect();
        assert_eq!(percentile(&ten, 99.0), Duration::from_micros(10));
    }
}
