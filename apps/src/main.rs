//! `tapnet`: a userspace TCP/IP stack on a TAP device, and the programs that run on it.
//!
//! One binary with subcommands. Each subcommand is a module here; the device options they
//! all share live in [`device`].

/// `println!` that ends the program quietly when stdout has gone away
/// (`tapnet demo | head`), where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => { $crate::say(format_args!($($arg)*)) };
}

mod args;
mod bulk;
mod control;
mod demo;
mod device;
mod echo;
mod get;
mod http;
mod monitor;
mod net;
mod ping;
mod proxy;
mod ss;
mod tlv;
mod up;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A userspace TCP/IP stack on a Linux TAP device, built to be watched.
#[derive(Parser, Debug)]
#[command(name = "tapnet", version, propagate_version = true)]
#[command(after_help = "Logging: set RUST_LOG, e.g. RUST_LOG=debug tapnet up --tap tap0")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bring a host up on a TAP: it answers ARP and ping until SIGINT or SIGTERM
    Up(up::UpArgs),
    /// Two stacks on an in-memory wire, one pinging the other (no root needed)
    Demo(demo::DemoArgs),
    /// Echo every byte back to each client, many at once
    Echo(echo::Opts),
    /// Serve the type-length-value protocol: decode, print and echo each message
    #[command(name = "tlv-server")]
    TlvServer(tlv::ServerOpts),
    /// Send type-length-value messages and check the echoes
    #[command(name = "tlv-client")]
    TlvClient(tlv::ClientOpts),
    /// Relay connections to an upstream, both ways, half-close included
    Proxy(proxy::Opts),
    /// An echo server that logs every chunk read and written
    Monitor(monitor::Opts),
    /// TCP ping: time the handshake to HOST:PORT
    Ping(ping::Opts),
    /// A static HTTP/1.1 file server
    Http(http::Opts),
    /// Fetch a URL over HTTP/1.1
    Get(get::Opts),
    /// Receive bulk data and report its rate, checking the pattern
    Sink(bulk::SinkOpts),
    /// Send bulk data (a checkable pattern) to a sink
    Source(bulk::SourceOpts),
    /// Show the socket table of a running tapnet stack, like `ss -tn`
    Ss(ss::Opts),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    // clap prints its own message and exits 2 on bad flags or values.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Echo(args) => echo::run(args),
        Command::TlvServer(args) => tlv::run_server(args),
        Command::TlvClient(args) => tlv::run_client(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Ping(args) => ping::run(args),
        Command::Http(args) => http::run(args),
        Command::Get(args) => get::run(args),
        Command::Sink(args) => bulk::run_sink(args),
        Command::Source(args) => bulk::run_source(args),
        Command::Ss(args) => ss::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tapnet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one line to stdout; exits with status 0 if stdout is closed.
pub fn say(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{args}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
