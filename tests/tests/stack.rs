//! The stack on the in-memory wire: no root needed.

use std::time::{Duration, Instant};

use netdev::{Device, Link, WireOptions, wire};
use smoltcp::phy::TxToken;
use stack::{Stack, StackConfig};
use tapnet_tests::{TestResult, check, plain};

fn main() {
    tapnet_tests::main(vec![
        plain("two_stacks_ping_each_other", ping_each_other),
        plain("an_unanswered_ping_times_out_on_time", ping_times_out),
        plain(
            "pings_of_every_size_up_to_the_largest_datagram_are_answered",
            ping_sizes,
        ),
        plain(
            "dropping_the_last_handle_releases_the_device",
            last_handle_releases,
        ),
        plain(
            "stop_is_idempotent_and_fails_later_calls",
            stop_fails_later_calls,
        ),
        plain("bad_configs_are_refused_with_reasons", bad_configs),
        plain(
            "a_gateway_and_a_second_address_route_pings",
            gateway_and_second_address,
        ),
    ])
}

fn config(addr: &str) -> StackConfig {
    StackConfig::new().with_addr(addr.parse().unwrap())
}

fn ping_each_other() -> TestResult {
    let (a, b) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, config("10.0.0.1/24"))?;
    let bob = Stack::new(b, config("10.0.0.2/24"))?;
    let mut to_bob = alice.pinger("10.0.0.2".parse()?)?;
    let mut to_alice = bob.pinger("10.0.0.1".parse()?)?;
    for _ in 0..5 {
        let rtt = to_bob.ping(Duration::from_secs(2))?;
        check!(rtt < Duration::from_secs(1), "rtt {rtt:?}");
        to_alice.ping(Duration::from_secs(2))?;
    }
    // A driver counts a frame once it is written, and the last reply may be read and
    // answered before its sender has counted it: the counts agree once both settle.
    let settled = tapnet_tests::eventually(Duration::from_secs(2), "the counters to agree", || {
        let (ca, cb) = (alice.counters(), bob.counters());
        ca.tx_frames == cb.rx_frames && cb.tx_frames == ca.rx_frames
    });
    let (ca, cb) = (alice.counters(), bob.counters());
    check!(settled.is_ok(), "alice {ca} / bob {cb}");
    // 10 requests and 10 replies each way, plus ARP.
    check!(ca.tx_frames >= 10 && ca.rx_frames >= 10, "alice: {ca}");
    check!(
        ca.tx_bytes == cb.rx_bytes,
        "bytes differ: alice {ca} / bob {cb}"
    );
    Ok(())
}

/// Pings from empty to the largest an IPv4 datagram holds: past the 1,500-byte MTU both
/// stacks send in fragments and reassemble, and each reply carries the data back whole
/// (a pinger takes only a reply whose data matches). A shorter one after the longest is
/// answered too (smoltcp's fragmenter left bytes that spoiled its ICMP checksum; see
/// `staged.rs`). One byte more than the largest is refused.
fn ping_sizes() -> TestResult {
    let (a, b) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, config("10.0.0.1/24"))?;
    let _bob = Stack::new(b, config("10.0.0.2/24"))?;
    for size in [0, 1472, 1473, 4000, 20_000, stack::MAX_PING_SIZE] {
        let mut pinger = alice.pinger_with_size("10.0.0.2".parse()?, size)?;
        check!(pinger.size() == size);
        pinger
            .ping(Duration::from_secs(2))
            .map_err(|e| format!("{size} bytes: {e}"))?;
    }
    let before = alice.counters();
    let mut pinger = alice.pinger_with_size("10.0.0.2".parse()?, 4000)?;
    pinger.ping(Duration::from_secs(2))?;
    let after = alice.counters();
    check!(
        after.tx_frames - before.tx_frames == 3 && after.rx_frames - before.rx_frames == 3,
        "4,000 bytes went in {} frames and came back in {}, not 3 each",
        after.tx_frames - before.tx_frames,
        after.rx_frames - before.rx_frames
    );
    let err = alice
        .pinger_with_size("10.0.0.2".parse()?, stack::MAX_PING_SIZE + 1)
        .err();
    check!(
        err.as_ref()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::InvalidInput
                && e.to_string().contains("at most 65507")),
        "{err:?}"
    );
    Ok(())
}

fn ping_times_out() -> TestResult {
    let (a, _silent) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, config("10.0.0.1/24"))?;
    let mut pinger = alice.pinger("10.0.0.2".parse()?)?;
    let start = Instant::now();
    let err = pinger.ping(Duration::from_millis(300)).err();
    let took = start.elapsed();
    check!(
        err.as_ref()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
        "expected a timeout, got {err:?}"
    );
    check!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    Ok(())
}

/// The wire's far end learns that our end closed: writing to it fails.
fn last_handle_releases() -> TestResult {
    let (a, mut b) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, config("10.0.0.1/24"))?;
    let clone = alice.clone();
    drop(alice);
    check!(
        clone.is_running(),
        "dropping one of two handles stopped the stack"
    );
    let send = |b: &mut netdev::WireEnd| {
        if let Some(token) = b.transmit(netdev::Instant::from_millis(0)) {
            token.consume(60, |f| f.fill(0));
        }
        b.counters().snapshot()
    };
    let before = send(&mut b);
    check!(
        before.errors == 0 && before.tx_frames == 1,
        "before: {before}"
    );
    drop(clone);
    let after = send(&mut b);
    check!(
        after.errors == 1,
        "the far end is still open after the last handle dropped: {after}"
    );
    Ok(())
}

fn stop_fails_later_calls() -> TestResult {
    let (a, _b) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, config("10.0.0.1/24"))?;
    alice.stop();
    alice.stop();
    check!(!alice.is_running(), "still running after stop");
    let err = alice
        .pinger("10.0.0.2".parse()?)?
        .ping(Duration::from_secs(5))
        .err();
    check!(
        err.as_ref()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotConnected),
        "ping after stop: {err:?}"
    );
    Ok(())
}

fn bad_configs() -> TestResult {
    let cases = [
        (StackConfig::new(), "at least one address"),
        (
            config("10.0.0.1/24").with_gateway("10.9.9.9".parse()?),
            "not on any of the stack's networks",
        ),
    ];
    for (config, why) in cases {
        let (a, _b) = wire(&WireOptions::default())?;
        match Stack::new(a, config) {
            Err(e) => check!(e.to_string().contains(why), "error {e} lacks {why:?}"),
            Ok(_) => return Err(format!("a config that should fail ({why}) was accepted").into()),
        }
    }
    Ok(())
}

/// A second address and a default gateway: alice reaches 10.0.1.1, outside her prefix,
/// through bob at 10.0.0.254, who also owns 10.0.1.1.
fn gateway_and_second_address() -> TestResult {
    let (a, b) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, config("10.0.0.1/24").with_gateway("10.0.0.254".parse()?))?;
    let bob = Stack::new(b, config("10.0.0.254/24").with_addr("10.0.1.1/24".parse()?))?;
    alice
        .pinger("10.0.1.1".parse()?)?
        .ping(Duration::from_secs(2))?;
    alice
        .pinger("10.0.0.254".parse()?)?
        .ping(Duration::from_secs(2))?;
    // Without the gateway, 10.0.1.1 is unreachable.
    let (c, d) = wire(&WireOptions::default())?;
    let carol = Stack::new(c, config("10.0.0.1/24"))?;
    let _dave = Stack::new(d, config("10.0.0.254/24").with_addr("10.0.1.1/24".parse()?))?;
    let err = carol
        .pinger("10.0.1.1".parse()?)?
        .ping(Duration::from_millis(300))
        .err();
    check!(err.is_some(), "10.0.1.1 answered without a route");
    check!(
        bob.config().addrs.len() == 2,
        "bob's addresses: {:?}",
        bob.config().addrs
    );
    Ok(())
}
