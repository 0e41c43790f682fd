//! `tapnet ping`: TCP ping, timing the three-way handshake to HOST:PORT.
//!
//! Where ICMP is filtered, a completed handshake still proves a host is up and its port
//! open (the book's TCP ping). Each attempt dials with a timeout, takes the time from
//! the call to the established connection (SYN out, SYN-ACK in, ACK out: RFC 9293,
//! 3.5), closes, and prints one line. A refusal (an RST in answer to the SYN) and a
//! timeout are reported per attempt and the pinging goes on. A summary follows at the
//! end, or on SIGINT / SIGTERM, which also interrupt an attempt or a wait in progress.
//! The exit status is 0 if any attempt connected, 1 otherwise.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use stack::{Conn, Network};

use crate::args;
use crate::net::{self, App, Ctx, NetArgs};

/// How often a wait looks whether it was asked to stop.
const STEP: Duration = Duration::from_millis(20);

/// Options of `tapnet ping`.
#[derive(Args, Debug)]
#[command(after_help = "\
Each line gives the handshake time, or why the attempt failed (refused, timed out). The
summary (min/avg/max, loss) is printed at the end and on Ctrl-C. Exit status: 0 if any
attempt connected, 1 otherwise. TIME is a number of seconds (0.5) or has a unit (200ms).

Example (as root): ping a kernel service from tapnet
  ip tuntap add dev tap0 mode tap
  ip addr add 10.0.0.1/24 dev tap0 && ip link set tap0 up
  nc -lk 10.0.0.1 8000 &
  tapnet ping 10.0.0.1:8000 -c 3 -i 0.2 --tap tap0")]
pub struct Opts {
    /// Where to connect, as IP:PORT
    #[arg(value_name = "HOST:PORT", value_parser = args::target)]
    pub target: SocketAddr,
    /// Attempts to make; 0 pings until interrupted
    #[arg(short = 'c', long, default_value_t = 4)]
    pub count: u64,
    /// Time between attempts, e.g. 1s, 200ms or 0.5
    #[arg(short = 'i', long, value_name = "TIME", default_value = "1s", value_parser = args::seconds)]
    pub interval: Duration,
    /// How long each handshake may take before the attempt counts as timed out
    #[arg(short = 'W', long, value_name = "TIME", default_value = "5s", value_parser = args::timeout)]
    pub timeout: Duration,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet ping`: 0 if any attempt connected, 1 otherwise.
pub fn run(args: Opts) -> io::Result<ExitCode> {
    let net = args.net.clone();
    net::run(&net, Ping { opts: args })
}

struct Ping {
    opts: Opts,
}

impl App for Ping {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        let Opts {
            target,
            count,
            interval,
            timeout,
            ..
        } = self.opts;
        say!("PING {target} (TCP handshake) on {describe}");
        if count == 0 {
            say!("Ctrl-C to stop.");
        }
        let mut stats = Stats::default();
        let mut seq = 0u64;
        while count == 0 || seq < count {
            if seq > 0 && !pause(ctx, interval) {
                break;
            }
            seq += 1;
            let Some(result) = attempt(&net, target, timeout, ctx) else {
                break;
            };
            stats.attempts += 1;
            match result {
                Ok(time) => {
                    say!("connected to {target}: seq={seq} time={:.3} ms", ms(time));
                    stats.times.push(time);
                }
                Err(e) => say!("{target}: seq={seq} {}", failure(&e, timeout)),
            }
        }
        say!(
            "\n--- {target} tcp ping statistics ---\n{}",
            stats.summary()
        );
        Ok(if stats.times.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// Dials once and returns the handshake time, or `None` if asked to stop meanwhile (the
/// dial goes on, on its own thread, and its result is dropped).
fn attempt<N: Network>(
    net: &N,
    target: SocketAddr,
    timeout: Duration,
    ctx: &Ctx,
) -> Option<io::Result<Duration>> {
    let (tx, rx) = mpsc::channel();
    let net = net.clone();
    let spawned = std::thread::Builder::new()
        .name("ping dial".into())
        .spawn(move || {
            let start = Instant::now();
            let result = net.dial_timeout(target, timeout).map(|conn| {
                let time = start.elapsed();
                let _ = conn.close();
                time
            });
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Some(Err(e));
    }
    loop {
        match rx.recv_timeout(STEP) {
            Ok(result) => return Some(result),
            Err(mpsc::RecvTimeoutError::Timeout) if ctx.stopping() => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Some(Err(io::Error::other("the dialing thread died")));
            }
        }
    }
}

/// Waits `interval` in short steps; false if asked to stop meanwhile.
fn pause(ctx: &Ctx, interval: Duration) -> bool {
    let end = Instant::now() + interval;
    loop {
        if ctx.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep(STEP.min(end - now));
    }
}

/// How a failed attempt is reported: "refused", "timed out after 5s", or the error.
fn failure(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::TimedOut => format!("timed out after {timeout:?}"),
        _ => e.to_string(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The attempts so far and the handshake time of each that connected.
#[derive(Debug, Default)]
struct Stats {
    attempts: u64,
    times: Vec<Duration>,
}

impl Stats {
    /// `N attempts, M connected, X% loss; time min/avg/max = a/b/c ms`, the time part
    /// only if something connected.
    fn summary(&self) -> String {
        let connected = self.times.len() as u64;
        let loss = if self.attempts == 0 {
            0.0
        } else {
            100.0 * (self.attempts - connected) as f64 / self.attempts as f64
        };
        let mut line = format!(
            "{} attempts, {connected} connected, {loss:.0}% loss",
            self.attempts
        );
        if let (Some(min), Some(max)) = (self.times.iter().min(), self.times.iter().max()) {
            let avg = self.times.iter().map(|t| ms(*t)).sum::<f64>() / self.times.len() as f64;
            line += &format!(
                "; time min/avg/max = {:.3}/{avg:.3}/{:.3} ms",
                ms(*min),
                ms(*max)
            );
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_and_times() {
        let stats = Stats {
            attempts: 4,
            times: vec![Duration::from_millis(1), Duration::from_millis(3)],
        };
        assert_eq!(
            stats.summary(),
            "4 attempts, 2 connected, 50% loss; time min/avg/max = 1.000/2.000/3.000 ms"
        );
        let none = Stats {
            attempts: 3,
            times: vec![],
        };
        assert_eq!(none.summary(), "3 attempts, 0 connected, 100% loss");
        assert_eq!(
            Stats::default().summary(),
            "0 attempts, 0 connected, 0% loss"
        );
    }

    #[test]
    fn failures_read_as_ping_does() {
        let w = Duration::from_secs(5);
        let refused = io::Error::new(ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(failure(&refused, w), "refused");
        let timed_out = io::Error::new(ErrorKind::TimedOut, "i/o timeout");
        assert_eq!(failure(&timed_out, w), "timed out after 5s");
        assert_eq!(
            failure(&timed_out, Duration::from_millis(500)),
            "timed out after 500ms"
        );
    }
}
