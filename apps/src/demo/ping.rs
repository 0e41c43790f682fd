//! `tapnet demo ping`: two stacks on an in-memory wire, narrated frame by frame.
//!
//! Runs without root. Alice (10.0.0.1) pings Bob (10.0.0.2); every frame that crosses the
//! wire is printed as one line, then each round trip and a summary like ping's.

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use netdev::{Direction, FrameLog, FrameSink, WireOptions, describe, wire};
use stack::{Ipv4Net, Mac, Stack, StackConfig};

use super::DemoArgs;

/// ARP, then ICMP echo requests and replies between two stacks on the wire.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let dev = &args.device;
    if dev.tap.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the ping demo runs both hosts on the in-memory wire; \
             put a host on a TAP with `tapnet up --tap NAME`",
        ));
    }
    let (alice_end, bob_end) = wire(&WireOptions {
        mtu: dev.mtu.map_or(1500, usize::from),
        ..WireOptions::default()
    })?;

    // Fixed MACs make the printed run the same every time.
    let bob_config = StackConfig {
        mac: Some(dev.mac.unwrap_or(Mac([0x02, 0, 0, 0, 0, 0x02]))),
        ..dev.stack_config("10.0.0.2/24")
    };
    let bob_net = bob_config.addrs[0];
    let alice_config = StackConfig::new()
        .with_addr(neighbour(bob_net)?)
        .with_mac(Mac([0x02, 0, 0, 0, 0, 0x01]));

    let start = Instant::now();
    let printer: Box<dyn FrameSink> = Box::new(FrameLog(move |dir: Direction, frame: &[u8]| {
        let (from, to) = match dir {
            Direction::Out => ("alice", "bob  "),
            Direction::In => ("bob  ", "alice"),
        };
        say!(
            "{:>9.3} ms  {from} -> {to}  {}",
            start.elapsed().as_secs_f64() * 1e3,
            describe(frame)
        );
    }));
    let alice = Stack::new(dev.wrap(alice_end, Some(printer))?, alice_config)?;
    let bob = Stack::new(bob_end, bob_config)?;
    let _control = [(&alice, "demo-client"), (&bob, "demo-server")]
        .map(|(stack, name)| crate::control::serve(stack, name));
    let target = bob_net.addr;
    say!(
        "alice {} ({}) pings bob {} ({}) over an in-memory wire\n",
        alice.config().addrs[0],
        alice.mac(),
        bob.config().addrs[0],
        bob.mac()
    );

    let mut pinger = alice.pinger_with_size(target, usize::from(args.size))?;
    let mut rtts = Vec::new();
    for n in 0..args.count {
        if n > 0 {
            std::thread::sleep(args.interval);
        }
        match pinger.ping(args.timeout) {
            Ok(rtt) => {
                // As ping counts: the ICMP message, its 8-byte header and the data.
                say!(
                    "{:>9.3} ms  {} bytes from {target}: seq={} time={:.3} ms",
                    start.elapsed().as_secs_f64() * 1e3,
                    usize::from(args.size) + 8,
                    pinger.seq(),
                    rtt.as_secs_f64() * 1e3
                );
                rtts.push(rtt);
            }
            Err(e) => say!("{:>9.3} ms  {e}", start.elapsed().as_secs_f64() * 1e3),
        }
    }
    drop(pinger);
    alice.stop();
    bob.stop();

    let sent = usize::from(args.count);
    say!(
        "\n--- {target} ping statistics ---\n{sent} sent, {} received, {:.0}% loss",
        rtts.len(),
        100.0 * (sent - rtts.len()) as f64 / sent as f64
    );
    if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
        let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
        say!(
            "rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
            min.as_secs_f64() * 1e3,
            avg.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    say!("alice's link: {}", alice.counters());
    Ok(if rtts.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Alice's address: the first host of Bob's network that is not Bob.
fn neighbour(bob: Ipv4Net) -> io::Result<Ipv4Net> {
    if bob.prefix > 30 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{bob}: the demo needs a network with room for two hosts (prefix 30 or less)"),
        ));
    }
    let mask = u32::MAX << (32 - u32::from(bob.prefix));
    let first = (u32::from(bob.addr) & mask) + 1;
    let addr = if first == u32::from(bob.addr) {
        first + 1
    } else {
        first
    };
    Ok(Ipv4Net {
        addr: addr.into(),
        prefix: bob.prefix,
    })
}
