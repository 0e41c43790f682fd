//! `tapnet proxy`: accepts connections and relays each to an upstream, both ways.
//!
//! Each accepted client gets its own upstream connection and two pumps, one per
//! direction, each on a thread of its own (the connection's handles come from
//! [`Conn::try_clone`]). A pump copies until its source reaches end of stream, then
//! forwards the FIN by shutting down the write half of its destination (RFC 9293, 3.6:
//! a half-closed connection keeps carrying data the other way), and the other pump
//! carries on. When both directions have ended, both connections are closed. If either
//! pump fails (a reset, a write to a peer that went away), it closes both connections,
//! which wakes the other pump, and the relay ends.
//!
//! With `--to-kernel` the upstream is dialed through the kernel's sockets while the
//! clients still arrive on the network the app runs on, so a lab can bridge the
//! userspace stack to the host's real services. The relay is therefore generic over two
//! [`Conn`] types.

use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use stack::kernel::Kernel;
use stack::{Conn, Network};

use crate::args;
use crate::net::{self, App, Ctx, NetArgs};

/// Options of `tapnet proxy`.
#[derive(Args, Debug)]
#[command(after_help = "\
Every connection is logged with its three parties (client -> proxy -> upstream) and,
when it ends, the bytes relayed each way. A FIN from either side is forwarded, and the
other direction keeps flowing until it ends too.

Example (as root): relay tapnet's port 8080 to a kernel server on 10.0.0.1:8000
  ip tuntap add dev tap0 mode tap
  ip addr add 10.0.0.1/24 dev tap0 && ip link set tap0 up
  python3 -m http.server --bind 10.0.0.1 8000 &
  tapnet proxy --listen 8080 --to 10.0.0.1:8000 --tap tap0 &
  curl http://10.0.0.2:8080/")]
pub struct Opts {
    /// Port to accept clients on (PORT, or ADDR:PORT to pick the address)
    #[arg(long, value_name = "PORT", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Upstream to relay each client to, as IP:PORT
    #[arg(long, value_name = "HOST:PORT", value_parser = args::target)]
    pub to: SocketAddr,
    /// Dial the upstream through the kernel's sockets rather than the network the
    /// proxy runs on (bridges tapnet to the host's real services)
    #[arg(long)]
    pub to_kernel: bool,
    /// How long to wait for the upstream to answer, e.g. 5s
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = args::timeout)]
    pub dial_timeout: Duration,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet proxy` until SIGINT or SIGTERM.
pub fn run(args: Opts) -> io::Result<ExitCode> {
    let net = args.net.clone();
    net::run(&net, Proxy { opts: args })
}

struct Proxy {
    opts: Opts,
}

impl App for Proxy {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        let Opts {
            listen,
            to,
            to_kernel,
            dial_timeout,
            ..
        } = self.opts;
        let listener = net
            .listen(listen)
            .map_err(|e| io::Error::new(e.kind(), format!("listening on {listen}: {e}")))?;
        let local = stack::Listener::local_addr(&listener).unwrap_or(listen);
        let via = if to_kernel { " via the kernel" } else { "" };
        say!("proxy on {describe}: {local} -> {to}{via}");
        if to_kernel {
            net::serve(listener, ctx, move |client, peer| {
                proxy(client, peer, &Kernel, to, dial_timeout);
            })?;
        } else {
            net::serve(listener, ctx, move |client, peer| {
                proxy(client, peer, &net, to, dial_timeout);
            })?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Dials `to` on `upstream` for one client and relays until both directions end.
fn proxy<C, U>(client: C, peer: SocketAddr, upstream: &U, to: SocketAddr, timeout: Duration)
where
    C: Conn + 'static,
    U: Network,
{
    let proxy_addr = local_name(&client);
    let server = match upstream.dial_timeout(to, timeout) {
        Ok(server) => server,
        Err(e) => {
            say!("{peer} -> {proxy_addr}: dialing upstream {to} failed: {e}; closing the client");
            let _ = client.close();
            return;
        }
    };
    let path = format!("{peer} -> {proxy_addr} | {} -> {to}", local_name(&server));
    say!("open   {path}");
    match relay(client, server) {
        Ok(totals) => {
            let ending = match &totals.error {
                None => String::new(),
                Some(e) => format!(" ({e})"),
            };
            say!(
                "closed {path}: {} bytes up, {} bytes down{ending}",
                totals.up,
                totals.down
            );
        }
        Err(e) => say!("failed {path}: {e}"),
    }
}

fn local_name(conn: &impl Conn) -> String {
    conn.local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string())
}

/// What a finished relay carried.
#[derive(Debug, Default)]
struct Totals {
    /// Bytes from the client to the upstream.
    up: u64,
    /// Bytes from the upstream to the client.
    down: u64,
    /// The first failure, if a direction ended by one rather than by a FIN.
    error: Option<io::Error>,
}

/// Relays between `client` and `server`, each direction on its own thread, until both
/// directions have ended; then closes both. Fails only if the handles or the thread
/// cannot be made (both connections are closed then too).
fn relay<A, B>(client: A, server: B) -> io::Result<Totals>
where
    A: Conn + 'static,
    B: Conn + 'static,
{
    let handles = (|| {
        Ok::<_, io::Error>((
            client.try_clone()?,
            server.try_clone()?,
            client.try_clone()?,
            server.try_clone()?,
        ))
    })();
    let (client_r, server_w, client_w, server_r) = match handles {
        Ok(h) => h,
        Err(e) => {
            let _ = client.close();
            let _ = server.close();
            return Err(e);
        }
    };
    // The first failure is the one to report: the other pump then fails only because
    // the connections were closed under it.
    let first_failure = Arc::new(Mutex::new(None));
    let first = first_failure.clone();
    let upward = std::thread::Builder::new()
        .name("proxy up".into())
        .spawn(move || pump(client_r, server_w, &first));
    let upward = match upward {
        Ok(thread) => thread,
        Err(e) => {
            let _ = client.close();
            let _ = server.close();
            return Err(e);
        }
    };
    let down = pump(server_r, client_w, &first_failure);
    let up = upward.join().unwrap_or(0);
    let closed = [client.close().err(), server.close().err()];
    // A close that fails after a pump failed only repeats that failure.
    let error = first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .or_else(|| closed.into_iter().flatten().next());
    Ok(Totals { up, down, error })
}

/// Copies `from` into `to` until end of stream, then forwards the FIN with
/// `shutdown(Write)`, and returns the byte count. On a failure it records the error in
/// `first_failure` (unless the other pump failed first), closes both connections (which
/// wakes the pump going the other way) and returns the count so far.
fn pump<R: Conn, W: Conn>(mut from: R, mut to: W, first_failure: &Mutex<Option<io::Error>>) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let failure = loop {
        match from.read(&mut buf) {
            Ok(0) => match to.shutdown(Shutdown::Write) {
                // The FIN is forwarded; the other direction goes on (RFC 9293, 3.6).
                Ok(()) => return total,
                Err(e) => break e,
            },
            Ok(n) => match to.write_all(&buf[..n]) {
                Ok(()) => total += n as u64,
                Err(e) => break e,
            },
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break e,
        }
    };
    first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(failure);
    let _ = from.close();
    let _ = to.close();
    total
}

/// Parses `--listen`: a port (on every address) or ADDR:PORT.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not a port (0-65535) or ADDR:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_a_port_or_an_address() {
        assert_eq!(parse_listen("8080"), Ok("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(
            parse_listen("10.0.0.2:80"),
            Ok("10.0.0.2:80".parse().unwrap())
        );
        assert!(parse_listen("70000").is_err());
        assert!(parse_listen("http").is_err());
    }
}
