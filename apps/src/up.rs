//! `tapnet up`: a host on a TAP that answers ARP and ping until SIGINT or SIGTERM (or
//! until its stack's driver dies, an error).

use std::io;
use std::process::ExitCode;

use clap::Args;
use netdev::{Tap, TapOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use stack::Stack;

use crate::device::DeviceArgs;

/// Options of `tapnet up`.
#[derive(Args, Debug)]
#[command(after_help = "\
Without --tap, up opens tap0; without --addr, it takes 10.0.0.2/24.

Example (as root, or with a TAP made for your user):
  sudo ip tuntap add dev tap0 mode tap user $USER
  sudo ip addr add 10.0.0.1/24 dev tap0 && sudo ip link set tap0 up
  tapnet up --tap tap0 --addr 10.0.0.2/24 &
  ping -c 3 10.0.0.2")]
pub struct UpArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The address `up` takes when no `--addr` is given.
const DEFAULT_ADDR: &str = "10.0.0.2/24";

pub fn run(args: UpArgs) -> io::Result<ExitCode> {
    let dev = &args.device;
    let name = dev.tap.as_deref().unwrap_or("tap0");
    // Register for the signals before anything starts, so none is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let tap = Tap::open(
        name,
        &TapOptions {
            mtu: dev.mtu.map(usize::from),
        },
    )?;
    let mtu = tap.mtu();
    let stack = Stack::new(dev.wrap(tap, None)?, dev.stack_config(DEFAULT_ADDR))
        .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
    // `tapnet ss` can look in until the stack stops (the guard outlives `stop` below).
    let _control = crate::control::serve(&stack, name);
    let addrs: Vec<String> = stack.config().addrs.iter().map(|a| a.to_string()).collect();
    say!(
        "tapnet up on {name}: {} mac {} mtu {mtu}; SIGINT or SIGTERM stops it",
        addrs.join(" "),
        stack.mac()
    );
    // A driver that dies (a panic, logged) ends the wait for a signal too: up has nothing
    // left to do, and says so rather than sit there answering nothing.
    let closer = signals.handle();
    let watcher = std::thread::spawn({
        let stack = stack.clone();
        move || {
            stack.wait_stopped();
            closer.close();
        }
    });
    let signal = signals.forever().next();
    let died = signal.is_none() && !stack.is_running();
    // Stopping joins the driver, which drops the device and so completes the pcap file.
    stack.stop();
    let _ = watcher.join();
    if died {
        return Err(io::Error::other(format!(
            "{name}: the stack's driver died: {}",
            stack.counters()
        )));
    }
    say!(
        "tapnet down on {name} ({}): {}",
        signal.map_or("end of signals".into(), signal_name),
        stack.counters()
    );
    Ok(ExitCode::SUCCESS)
}

fn signal_name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}
