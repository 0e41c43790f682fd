//! `tapnet demo`: narrated demos of TCP at work, each on two stacks joined by an
//! in-memory wire (no root needed).
//!
//! A demo prints the segment trace and the state lines of both stacks (see
//! [`stack::Trace`]) on stdout, interleaved with short narration (`#` lines) of what
//! happens and why, and ends with a summary of what it showed. [`Lab`] is what every
//! demo stands on: a client at 10.0.0.1 and a server at 10.0.0.2, each end of the wire
//! behind an impairment device the demo can change while it runs ([`ImpairControl`]),
//! one trace for both. `--seed` makes a run repeatable, `--pcap FILE` captures the wire
//! (at the client's end), `--tap NAME` puts the server on a real TAP instead, for the
//! demos that have a server side a kernel client can talk to. While a demo runs,
//! `tapnet ss --tap demo-server` (or `demo-client`) shows that stack's socket table.
//!
//! Each demo lives in a module of its own here; [`Demo`] lists them.

mod close;
mod close_wait;
mod handshake;
mod keepalive;
mod linger;
mod nagle;
mod ping;
mod retransmit;
mod zero_window;

use std::io::{self, IsTerminal};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use netdev::{Impair, ImpairConfig, ImpairControl, Tap, TapOptions, WireOptions, wire};
use stack::{Mac, Stack, StackConfig, Trace};

use crate::control;
use crate::device::DeviceArgs;

/// Options of `tapnet demo`.
#[derive(Args, Debug)]
#[command(after_help = "\
Without a name, lists the demos. Every demo runs two stacks on an in-memory wire (no
root needed) and prints both stacks' segments and state changes, with narration.

Examples:
  tapnet demo                          # list the demos
  tapnet demo handshake                # the three-way handshake
  tapnet demo close --pcap close.pcap  # and open it in wireshark afterwards
  tapnet demo ping -c 3 --loss 20%     # the original ARP + ICMP demo")]
pub struct DemoArgs {
    /// Which demo to run; without one, the list
    #[arg(value_enum)]
    pub name: Option<Demo>,
    /// Echo requests to send (ping)
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub count: u16,
    /// Time between requests, e.g. 200ms (ping)
    #[arg(short = 'i', long, value_name = "TIME", default_value = "200ms", value_parser = netdev::parse_duration)]
    pub interval: Duration,
    /// How long to wait for each reply, e.g. 1s (ping)
    #[arg(short = 'W', long, value_name = "TIME", default_value = "1s", value_parser = netdev::parse_duration)]
    pub timeout: Duration,
    /// Bytes of data in each echo request; past the MTU, watch it go in fragments (ping)
    #[arg(short = 's', long, value_name = "BYTES", default_value_t = stack::PING_SIZE as u16,
          value_parser = clap::value_parser!(u16).range(..=stack::MAX_PING_SIZE as i64))]
    pub size: u16,
    /// Device options: --pcap captures the wire, impairment applies to the client's end,
    /// --seed makes a run repeatable, --tap puts the server on a TAP
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The demos there are.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demo {
    /// The three-way handshake, with MSS and window scale negotiated
    Handshake,
    /// FIN from each side: FIN-WAIT-1/2, CLOSE-WAIT, LAST-ACK, TIME-WAIT
    Close,
    /// A reader that stops reading: the window closes, probes, and reopens
    ZeroWindow,
    /// A server that forgets to close: stuck in CLOSE-WAIT, then the fix
    CloseWait,
    /// Close with default linger, linger 0 (RST), and a bounded linger
    Linger,
    /// Keepalive probes on an idle connection, then a peer that goes silent
    Keepalive,
    /// Many small writes with Nagle's algorithm on and off
    Nagle,
    /// A lost segment and its retransmission: RTO or fast retransmit
    Retransmit,
    /// ARP, then ICMP echo requests and replies
    Ping,
}

/// Runs `tapnet demo [NAME]`.
pub fn run(args: DemoArgs) -> io::Result<ExitCode> {
    let Some(name) = args.name else {
        say!("The demos (run one with `tapnet demo NAME`):\n");
        for demo in Demo::value_variants() {
            if let Some(value) = demo.to_possible_value() {
                let help = value.get_help().map(|h| h.to_string()).unwrap_or_default();
                say!("  {:<12} {help}", value.get_name());
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    // The stacks draw their ports and sequence numbers from this thread's generator.
    fastrand::seed(args.device.impair.seed);
    match name {
        Demo::Handshake => handshake::run(&args),
        Demo::Close => close::run(&args),
        Demo::ZeroWindow => zero_window::run(&args),
        Demo::CloseWait => close_wait::run(&args),
        Demo::Linger => linger::run(&args),
        Demo::Keepalive => keepalive::run(&args),
        Demo::Nagle => nagle::run(&args),
        Demo::Retransmit => retransmit::run(&args),
        Demo::Ping => ping::run(&args),
    }
}

/// The port a demo's server listens on.
pub const PORT: u16 = 7;

/// Where a demo's server listens: 10.0.0.2, port [`PORT`].
pub const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), PORT));

/// Two stacks for a demo: a client at 10.0.0.1 and a server at 10.0.0.2, on one wire
/// (or the server alone on a TAP, with `--tap`), traced into one stream on stdout.
pub struct Lab {
    /// The client's stack; `None` when the server is on a TAP and the kernel is its client.
    pub client: Option<Stack>,
    pub server: Stack,
    /// Changes the client's end of the wire while the demo runs (loss, drops, delay).
    pub client_link: Option<ImpairControl>,
    /// Changes the server's end of the wire (or the TAP) while the demo runs.
    pub server_link: ImpairControl,
    trace: Trace,
    /// Both stacks' control sockets, so `tapnet ss` sees them while the demo runs.
    _control: Vec<control::Guard>,
}

impl Lab {
    /// Brings the two stacks up. `tune` adjusts each stack's config (buffers, keepalive,
    /// CLOSE-WAIT warning) before it starts; the trace, addresses and MACs are the lab's,
    /// and a `--close-wait-warning` the user gave wins over the tune's.
    pub fn new(args: &DemoArgs, tune: impl Fn(StackConfig) -> StackConfig) -> io::Result<Lab> {
        let dev = &args.device;
        let colour = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let trace = Trace::to_writer(io::stdout(), colour);
        let config = |addr: &str, mac: u8, label: &str| -> StackConfig {
            let config = StackConfig::new()
                .with_addr(addr.parse().expect("built-in addresses parse"))
                .with_mac(Mac([0x02, 0, 0, 0, 0, mac]))
                .with_trace(trace.labelled(label));
            let config = tune(config);
            StackConfig {
                close_wait_warning: dev.close_wait_warning.unwrap_or(config.close_wait_warning),
                ..config
            }
        };
        if let Some(name) = &dev.tap {
            let tap = Tap::open(
                name,
                &TapOptions {
                    mtu: dev.mtu.map(usize::from),
                },
            )
            .map_err(|e| io::Error::new(e.kind(), format!("opening TAP {name}: {e}")))?;
            let server_end = dev.wrap(tap, None)?;
            let server_link = server_end.control();
            let server = Stack::new(server_end, config("10.0.0.2/24", 2, "server"))?;
            return Ok(Lab {
                _control: control::serve(&server, name).into_iter().collect(),
                client: None,
                server,
                client_link: None,
                server_link,
                trace,
            });
        }
        let (client_end, server_end) = wire(&WireOptions {
            mtu: dev.mtu.map_or(1500, usize::from),
            ..WireOptions::default()
        })?;
        let client_end = dev.wrap(client_end, None)?;
        let server_end = Impair::new(
            server_end,
            ImpairConfig {
                seed: dev.impair.seed.wrapping_add(1),
                ..ImpairConfig::default()
            },
        )?;
        let (client_link, server_link) = (client_end.control(), server_end.control());
        let client = Stack::new(client_end, config("10.0.0.1/24", 1, "client"))?;
        let server = Stack::new(server_end, config("10.0.0.2/24", 2, "server"))?;
        let control = [(&client, "demo-client"), (&server, "demo-server")]
            .into_iter()
            .filter_map(|(stack, name)| control::serve(stack, name))
            .collect();
        Ok(Lab {
            _control: control,
            client: Some(client),
            server,
            client_link: Some(client_link),
            server_link,
            trace,
        })
    }

    /// A line of narration, in order with the trace.
    pub fn say(&self, text: &str) {
        self.trace.note(text);
    }

    /// The client stack, or an error naming the demo that needs it (with `--tap`, the
    /// kernel is the client).
    pub fn client(&self) -> io::Result<&Stack> {
        self.client.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "this demo needs both stacks on the in-memory wire; run it without --tap",
            )
        })
    }

    /// The control of the client's end of the wire (`--tap` has no client stack).
    pub fn client_link(&self) -> io::Result<&ImpairControl> {
        self.client()?;
        self.client_link
            .as_ref()
            .ok_or_else(|| io::Error::other("the client's end of the wire has no control"))
    }

    /// Ends the demo: lets both stacks finish (bounded), stops them (completing a
    /// `--pcap` file), and prints what the demo showed.
    pub fn finish(self, showed: &[&str]) -> io::Result<ExitCode> {
        for stack in self.client.iter().chain([&self.server]) {
            stack.settle(Duration::from_secs(2));
        }
        if let Some(client) = &self.client {
            client.stop();
        }
        self.server.stop();
        say!("\nWhat this showed:");
        for point in showed {
            say!("  - {point}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
