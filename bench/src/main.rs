//! `bench`: tapnet against raw smoltcp and the kernel, side by side, on this machine.
//!
//! Three systems serve the same three services (`serve.rs`: a sink, a source and an
//! echo) to the same peer, the kernel's own sockets (`peer.rs`):
//!
//! 1. **tapnet**: tapnet's Conn API, a `stack::Stack` on a TAP (`tapnet.rs`);
//! 2. **raw**: a hand-written smoltcp poll loop on the same TAP device type, the
//!    baseline that shows what the Conn layer costs (`raw.rs`);
//! 3. **kernel**: the kernel talking to itself across a veth pair between two
//!    namespaces (`kernel.rs`).
//!
//! For each one: bulk throughput kernel → X and X → kernel, 1-byte round trips (p50 and
//! p99), and connections per second. The machine may be shared and noisy, so the
//! measurements run in rounds, each round measuring every system in turn, and the table
//! shows the best of the rounds. Everything happens inside namespaces that the bench
//! makes and deletes (`netns.rs`), so it needs root.
//!
//! This file: the command line, the order of events, and the table.

mod kernel;
mod netns;
mod peer;
mod raw;
mod serve;
mod tapnet;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::{Pid, geteuid};
use signal_hook::consts::{SIGINT, SIGTERM};

use netns::Netns;
use peer::Latency;

/// Errors, from anywhere, with a message worth printing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set by SIGINT or SIGTERM: the bench stops measuring and cleans up. A second signal
/// exits at once (a later run removes what that leaves behind).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the bench has been asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// tapnet's benchmark: its Conn API against raw smoltcp and the kernel, side by side.
///
/// Measures, for each system, bulk TCP throughput both ways at MTU 1500, 1-byte round
/// trips (p50, p99) and connections per second (dial, one byte each way, close), always
/// against the kernel's own sockets as the peer. tapnet and raw smoltcp run on a TAP
/// inside a private network namespace; the kernel runs across a veth pair between two.
/// Every figure is the best of several rounds. Needs root; nothing leaves the machine,
/// and every namespace and device it makes is deleted when it ends.
#[derive(Parser, Debug)]
#[command(name = "bench", version)]
struct Args {
    /// A short run: one round, 1 s transfers, 1000 round trips, 1 s of connections.
    #[arg(long)]
    quick: bool,

    /// Rounds to run; each figure is the best of them [default: 3; --quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: Option<u32>,

    /// Seconds each bulk transfer lasts [default: 3; --quick: 1].
    #[arg(long, value_parser = parse_secs)]
    secs: Option<Duration>,

    /// 1-byte round trips per latency measurement [default: 5000; --quick: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pings: Option<u64>,

    /// Seconds of back-to-back connections per measurement [default: 3; --quick: 1].
    #[arg(long, value_parser = parse_secs)]
    conn_secs: Option<Duration>,

    /// Receive and send buffer of every TCP connection of tapnet and raw smoltcp, in
    /// bytes (the kernel autotunes its own).
    #[arg(long, default_value_t = 256 << 10, value_parser = clap::value_parser!(u64).range(1024..=64 << 20))]
    buffer: u64,

    /// The systems to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = System::ALL)]
    only: Vec<System>,

    /// Pin every thread of the bench (peer, servers, tapnet's driver) to these CPUs,
    /// comma-separated, e.g. `0`. Without it the scheduler places them; on a VM, round
    /// trips between two CPUs can cost several times more than on one.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 600.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0, at most 600"
        )),
    }
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    /// tapnet's Conn API on a TAP.
    Tapnet,
    /// A hand-written smoltcp loop on a TAP.
    Raw,
    /// The kernel, across a veth pair.
    Kernel,
}

impl System {
    const ALL: [System; 3] = [System::Tapnet, System::Raw, System::Kernel];

    fn name(self) -> &'static str {
        match self {
            System::Tapnet => "tapnet",
            System::Raw => "raw",
            System::Kernel => "kernel",
        }
    }

    fn start(self, settings: &Settings) -> Result<Box<dyn Subject>, BoxError> {
        Ok(match self {
            System::Tapnet => Box::new(tapnet::start(settings)?),
            System::Raw => Box::new(raw::start(settings)?),
            System::Kernel => Box::new(kernel::start(settings)?),
        })
    }
}

/// What a run measures, resolved from the command line.
pub struct Settings {
    rounds: u32,
    transfer: Duration,
    pings: usize,
    connect_for: Duration,
    /// TCP buffers of tapnet and raw smoltcp, in bytes.
    pub buffer: usize,
    /// Whether the threads were pinned with `--cpus`.
    pinned: bool,
}

impl Settings {
    fn new(args: &Args) -> Settings {
        let (rounds, secs, pings) = if args.quick {
            (1, 1, 1000)
        } else {
            (3, 3, 5000)
        };
        Settings {
            rounds: args.rounds.unwrap_or(rounds),
            transfer: args.secs.unwrap_or(Duration::from_secs(secs)),
            pings: args.pings.map_or(pings, |p| p as usize),
            connect_for: args.conn_secs.unwrap_or(Duration::from_secs(secs)),
            buffer: args.buffer as usize,
            pinned: !args.cpus.is_empty(),
        }
    }

    /// The longest a server lets one connection last: longer than any measurement.
    pub fn conn_limit(&self) -> Duration {
        self.transfer.max(self.connect_for) + Duration::from_secs(90)
    }
}

/// A system under test, up and serving `serve.rs`'s services. Dropping it tears it all
/// down: servers, devices, namespaces.
pub trait Subject {
    /// The namespace the peer (the kernel's sockets) measures from.
    fn peer(&self) -> &Netns;
    /// Where the services listen.
    fn addr(&self) -> Ipv4Addr;
    /// Anything worth a line under the table (device counters, say).
    fn notes(&self) -> Option<String> {
        None
    }
}

/// Every measurement of one system, round by round; failures keep their message.
#[derive(Default)]
struct Samples {
    send: Vec<Result<f64, String>>,
    receive: Vec<Result<f64, String>>,
    rtt: Vec<Result<Latency, String>>,
    connect: Vec<Result<f64, String>>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if !geteuid().is_root() {
        eprintln!(
            "bench: needs root: it makes network namespaces, TAP devices and a veth pair.\n\
             Run it as root, for example: cargo build --release -p bench && sudo target/release/bench"
        );
        return ExitCode::FAILURE;
    }
    for signal in [SIGINT, SIGTERM] {
        // The first signal sets the flag; a second one, with the flag set, exits.
        let registered =
            signal_hook::flag::register_conditional_shutdown(signal, 130, &INTERRUPTED)
                .and_then(|_| signal_hook::flag::register(signal, &INTERRUPTED));
        if let Err(e) = registered {
            eprintln!("bench: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !args.cpus.is_empty()
        && let Err(e) = pin(&args.cpus)
    {
        eprintln!("bench: cannot pin to CPUs {:?}: {e}", args.cpus);
        return ExitCode::FAILURE;
    }
    let settings = Settings::new(&args);
    match run(&args.only, &settings) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("bench: {failed} measurement(s) failed; see the errors under the table");
            ExitCode::FAILURE
        }
        Err(e) if interrupted() => {
            log::debug!("interrupted: {e}");
            eprintln!("bench: interrupted; everything it made is removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Pins the calling thread, and so every thread started after, to `cpus`.
fn pin(cpus: &[usize]) -> Result<(), BoxError> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

/// The CPUs this process may run on.
fn cpus_allowed() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Brings every system up, measures them round by round, prints the table, and tears
/// everything down. Returns how many measurements failed.
fn run(systems: &[System], settings: &Settings) -> Result<usize, BoxError> {
    for name in netns::remove_stale() {
        eprintln!("bench: removed namespace {name}, left behind by an earlier run");
    }
    let mut unique = Vec::new();
    for &system in systems {
        if !unique.contains(&system) {
            unique.push(system);
        }
    }
    let systems = unique;
    let mut subjects = Vec::new();
    for &system in &systems {
        eprintln!("bench: starting {}", system.name());
        let subject = system
            .start(settings)
            .map_err(|e| format!("starting {}: {e}", system.name()))?;
        // The peer closes first, so its sockets would pile up in TIME-WAIT and run out of
        // ports in the connection test; in its own namespace it can do without.
        subject.peer().sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
        subjects.push((system, subject));
    }

    for (system, subject) in &subjects {
        if let Err(e) = warm_up(subject.as_ref()) {
            if interrupted() {
                return Err(e);
            }
            eprintln!("bench: warning: warming up {}: {e}", system.name());
        }
    }

    let mut samples: Vec<Samples> = subjects.iter().map(|_| Samples::default()).collect();
    for round in 1..=settings.rounds {
        for ((system, subject), samples) in subjects.iter().zip(&mut samples) {
            measure(subject.as_ref(), settings, samples)?;
            eprintln!(
                "round {round}/{}  {:<6}  {}",
                settings.rounds,
                system.name(),
                last_round(samples)
            );
        }
    }

    println!("{}", table(&systems, &samples, settings));
    let mut failed = 0;
    let mut errors = String::new();
    for ((system, _), samples) in subjects.iter().zip(&samples) {
        for (what, round, error) in failures(samples) {
            failed += 1;
            let _ = writeln!(errors, "  {} {what}, round {round}: {error}", system.name());
        }
    }
    if !errors.is_empty() {
        println!("errors:\n{errors}");
    }
    for (system, subject) in &subjects {
        if let Some(notes) = subject.notes() {
            println!("{}: {notes}", system.name());
        }
    }
    // Tear down in reverse order of start-up.
    while let Some((system, subject)) = subjects.pop() {
        eprintln!("bench: stopping {}", system.name());
        drop(subject);
    }
    Ok(failed)
}

/// Unmeasured traffic first: ARP, the first connections, buffers touched.
fn warm_up(subject: &dyn Subject) -> Result<(), BoxError> {
    let addr = subject.addr();
    let short = Duration::from_millis(200);
    subject
        .peer()
        .run("warm-up", Duration::from_secs(60), move || {
            peer::ping_pong(addr, 100)?;
            peer::send(addr, short)?;
            peer::receive(addr, short)?;
            peer::connect_rate(addr, short)?;
            Ok(())
        })
}

/// One round of every measurement on one system. Fails only when interrupted; a
/// measurement's own failure is kept in `samples`.
fn measure(
    subject: &dyn Subject,
    settings: &Settings,
    samples: &mut Samples,
) -> Result<(), BoxError> {
    let ns = subject.peer();
    let addr = subject.addr();
    let slack = Duration::from_secs(30);

    let (transfer, pings, connect_for) = (settings.transfer, settings.pings, settings.connect_for);

    let send = ns.run("send", transfer + slack, move || peer::send(addr, transfer));
    samples.send.push(keep(send)?);
    let receive = ns.run("receive", transfer + slack, move || {
        peer::receive(addr, transfer)
    });
    samples.receive.push(keep(receive)?);
    let rtt = ns.run("ping-pong", peer::PING_LIMIT + slack, move || {
        peer::ping_pong(addr, pings)
    });
    samples.rtt.push(keep(rtt)?);
    let connect = ns.run("connect", connect_for + slack, move || {
        peer::connect_rate(addr, connect_for)
    });
    samples.connect.push(keep(connect)?);
    Ok(())
}

/// A measurement's result, to keep; or, once interrupted, the end of measuring.
fn keep<T>(result: Result<T, BoxError>) -> Result<Result<T, String>, BoxError> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(result.map_err(|e| e.to_string()))
    }
}

/// The latest round of one system, as a progress line.
fn last_round(samples: &Samples) -> String {
    fn show<T>(r: Option<&Result<T, String>>, f: impl Fn(&T) -> String) -> String {
        match r {
            Some(Ok(v)) => f(v),
            _ => "FAILED".into(),
        }
    }
    format!(
        "kernel→X {} Gbit/s  X→kernel {} Gbit/s  round trip p50 {} µs p99 {} µs  {} conn/s",
        show(samples.send.last(), |v| format!("{v:.2}")),
        show(samples.receive.last(), |v| format!("{v:.2}")),
        show(samples.rtt.last(), |l| micros(l.p50)),
        show(samples.rtt.last(), |l| micros(l.p99)),
        show(samples.connect.last(), |v| format!("{v:.0}")),
    )
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Every failed measurement: what, which round, and why.
fn failures(samples: &Samples) -> Vec<(&'static str, usize, &str)> {
    fn collect<'a, T>(
        out: &mut Vec<(&'static str, usize, &'a str)>,
        what: &'static str,
        results: &'a [Result<T, String>],
    ) {
        for (i, r) in results.iter().enumerate() {
            if let Err(e) = r {
                out.push((what, i + 1, e));
            }
        }
    }
    let mut out = Vec::new();
    collect(&mut out, "kernel → X", &samples.send);
    collect(&mut out, "X → kernel", &samples.receive);
    collect(&mut out, "round trip", &samples.rtt);
    collect(&mut out, "connections", &samples.connect);
    out
}

/// One row of the table: how to pick its figures from the samples and show them.
struct Row {
    label: &'static str,
    lower_is_better: bool,
    values: fn(&Samples) -> Vec<f64>,
    decimals: usize,
}

fn oks<T, U>(results: &[Result<T, String>], f: impl Fn(&T) -> U) -> Vec<U> {
    results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(f)
        .collect()
}

const ROWS: [Row; 5] = [
    Row {
        label: "throughput kernel → X   Gbit/s",
        lower_is_better: false,
        values: |s| oks(&s.send, |v| *v),
        decimals: 2,
    },
    Row {
        label: "throughput X → kernel   Gbit/s",
        lower_is_better: false,
        values: |s| oks(&s.receive, |v| *v),
        decimals: 2,
    },
    Row {
        label: "round trip p50 (lower better)  µs",
        lower_is_better: true,
        values: |s| oks(&s.rtt, |l| l.p50.as_secs_f64() * 1e6),
        decimals: 1,
    },
    Row {
        label: "round trip p99 (lower better)  µs",
        lower_is_better: true,
        values: |s| oks(&s.rtt, |l| l.p99.as_secs_f64() * 1e6),
        decimals: 1,
    },
    Row {
        label: "connections per second",
        lower_is_better: false,
        values: |s| oks(&s.connect, |v| *v),
        decimals: 0,
    },
];

/// The best of the rounds that succeeded: the highest, or the lowest for latency.
fn best(values: &[f64], lower_is_better: bool) -> Option<f64> {
    let pick = if lower_is_better { f64::min } else { f64::max };
    values.iter().copied().reduce(pick)
}

/// The report: what was measured and how, then a row per figure.
fn table(systems: &[System], samples: &[Samples], settings: &Settings) -> String {
    let mut out = String::new();
    let rounds = match settings.rounds {
        1 => "one round (--quick: expect noise)".to_string(),
        n => format!("best of {n} rounds"),
    };
    let _ = writeln!(
        out,
        "\ntapnet bench: {rounds}; each round measures every system in turn; \
         best = highest rate, lowest latency"
    );
    let _ = writeln!(
        out,
        "  links: TAP (tapnet, raw smoltcp) and veth (kernel), MTU {}; the peer is always the kernel's sockets",
        netns::MTU
    );
    let _ = writeln!(
        out,
        "  TCP buffers: {} KiB per connection for tapnet and raw smoltcp; the kernel autotunes its own",
        settings.buffer >> 10
    );
    let _ = writeln!(
        out,
        "  throughput: {:.1} s per transfer; round trip: {} × 1 byte on one connection; \
         connections: serial, dial + 1 byte each way + close, for {:.1} s",
        settings.transfer.as_secs_f64(),
        settings.pings,
        settings.connect_for.as_secs_f64()
    );
    let cpus = cpus_allowed();
    let placement = if settings.pinned {
        "every thread pinned to them (--cpus)"
    } else {
        "threads placed by the scheduler, so round trips vary with where it puts them \
         (--cpus 0 pins every thread to one CPU)"
    };
    let _ = writeln!(out, "  CPUs: {} ({cpus:?}); {placement}", cpus.len());
    let _ = writeln!(
        out,
        "  ratios: tapnet ÷ the other: for rates below 1x, for round trips (lower is better) above 1x, means tapnet is slower\n"
    );

    let column = |system: System| systems.iter().position(|s| *s == system);
    let _ = writeln!(
        out,
        "{:<34}{:>10}{:>10}{:>10}{:>13}{:>15}",
        "", "tapnet", "raw", "kernel", "tapnet/raw", "tapnet/kernel"
    );
    for row in &ROWS {
        let figure = |system: System| -> (Option<f64>, String) {
            match column(system) {
                None => (None, "-".into()),
                Some(i) => match best(&(row.values)(&samples[i]), row.lower_is_better) {
                    Some(v) => (Some(v), format!("{v:.*}", row.decimals)),
                    None => (None, "FAILED".into()),
                },
            }
        };
        let (tapnet, tapnet_s) = figure(System::Tapnet);
        let (raw, raw_s) = figure(System::Raw);
        let (kernel, kernel_s) = figure(System::Kernel);
        let ratio = |other: Option<f64>| match (tapnet, other) {
            (Some(t), Some(o)) if o > 0.0 => format!("{:.2}x", t / o),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<34}{:>10}{:>10}{:>10}{:>13}{:>15}",
            row.label,
            tapnet_s,
            raw_s,
            kernel_s,
            ratio(raw),
            ratio(kernel)
        );
    }
    out
}
