//! An idle stack sleeps: alone in its own binary, so no other test's driver is counted.

use std::time::Duration;

use netdev::{WireOptions, wire};
use stack::{Stack, StackConfig};
use tapnet_tests::{TestResult, check, eventually, plain};

fn main() {
    tapnet_tests::main(vec![plain(
        "an_idle_stack_uses_no_measurable_cpu",
        idle_cpu,
    )])
}

fn config(addr: &str) -> StackConfig {
    StackConfig::new().with_addr(addr.parse().unwrap())
}

/// CPU time of this process's threads named `tapnet-driver`, in clock ticks.
fn driver_ticks() -> Result<u64, String> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").map_err(|e| e.to_string())? {
        let path = task.map_err(|e| e.to_string())?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "tapnet-driver" {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the ")" that ends the name: utime is the 12th, stime the 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += tick(11) + tick(12);
    }
    Ok(total)
}

/// Two idle stacks on a wire for a second: a spinning driver would burn ~100 ticks.
fn idle_cpu() -> TestResult {
    let (a, b) = wire(&WireOptions::default())?;
    let alice = Stack::new(a, config("10.0.0.1/24"))?;
    let _bob = Stack::new(b, config("10.0.0.2/24"))?;
    // Some traffic first, so the drivers have timers and neighbours.
    alice
        .pinger("10.0.0.2".parse()?)?
        .ping(Duration::from_secs(2))?;
    eventually(Duration::from_secs(2), "driver threads to appear", || {
        driver_ticks().is_ok()
    })?;
    let before = driver_ticks()?;
    std::thread::sleep(Duration::from_secs(1));
    let used = driver_ticks()? - before;
    // A tick is 10 ms; allow two for timer wake-ups and a slow, shared machine.
    check!(
        used <= 2,
        "idle drivers used {used} ticks of CPU in one second"
    );
    Ok(())
}
