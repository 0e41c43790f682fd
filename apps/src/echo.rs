//! `tapnet echo`: the echo server (RFC 862, port 7) written once against
//! [`stack::Network`], so it runs on tapnet or, with `--kernel`, on the kernel's sockets.
//!
//! Every byte read from a client is written back to it; each client gets a thread of
//! its own ([`net::serve`]), so many are served at once. When a client half-closes
//! (sends its FIN), everything it sent has already been echoed: the server then sends
//! its own FIN and closes. One line is printed when a connection opens and one when it
//! closes, with both endpoints and the bytes each way.
//!
//! The echo loop and the open/close lines are shared with `tapnet monitor`, which is this
//! server with every chunk logged.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use stack::{Conn, Listener, Network};

use crate::net::{self, App, Ctx, NetArgs};

/// The port `echo` and `monitor` listen on by default: RFC 862's echo port.
pub const DEFAULT_PORT: u16 = 7;

/// Options of `tapnet echo`.
#[derive(Args, Debug)]
#[command(after_help = "\
Each connection's open and close is printed with both endpoints and the bytes each way.

Example (as root):
  sudo ip tuntap add dev tap0 mode tap user $USER
  sudo ip addr add 10.0.0.1/24 dev tap0 && sudo ip link set tap0 up
  tapnet echo --tap tap0 --addr 10.0.0.2/24 &
  echo hello | nc -N 10.0.0.2 7")]
pub struct Opts {
    /// The TCP port to listen on, on every address of the network
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Serve one connection, then exit (0 if it ended cleanly, 1 if in an error)
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet echo`.
pub fn run(args: Opts) -> io::Result<ExitCode> {
    net::run(
        &args.net,
        Echo {
            port: args.port,
            once: args.once,
        },
    )
}

/// The echo server as an [`App`].
struct Echo {
    port: u16,
    once: bool,
}

impl App for Echo {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        let listener = listen(&net, self.port)?;
        let local = listener.local_addr()?;
        let what = if self.once {
            ", for one connection"
        } else {
            ""
        };
        say!("echo listening on {local} ({describe}){what}");
        if self.once {
            return serve_once(listener, ctx, |line| say!("{line}"));
        }
        net::serve(listener, ctx, |conn, peer| {
            // A failure is already in the close line; this connection is done either way.
            let _ = handle(conn, peer, |line| say!("{line}"), plain);
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Listens on every address of `net` at `port`, with an error that says what failed.
pub(crate) fn listen<N: Network>(net: &N, port: u16) -> io::Result<N::Listener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    net.listen(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("listening on port {port}: {e}")))
}

/// Accepts one connection, stops listening, and serves it; a stop request closes it.
/// Exits 0 if it ended cleanly (or the app was stopped before anyone came), 1 if not.
pub(crate) fn serve_once<L: Listener + 'static>(
    listener: L,
    ctx: &Ctx,
    say: impl Fn(&str),
) -> io::Result<ExitCode> {
    let closer = listener.try_clone()?;
    ctx.on_stop(move || {
        let _ = closer.close();
    });
    let (conn, peer) = match listener.accept() {
        Ok(accepted) => accepted,
        Err(_) if ctx.stopping() => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e),
    };
    // No one else is served: later SYNs are refused rather than left waiting.
    let _ = listener.close();
    let stopper = conn.try_clone()?;
    ctx.on_stop(move || {
        let _ = stopper.close();
    });
    match handle(conn, peer, say, plain) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(_) if ctx.stopping() => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("tapnet echo: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Bytes moved on one connection.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    /// Bytes read from the client.
    pub received: u64,
    /// Bytes written back to it.
    pub sent: u64,
}

/// Serves one echo connection: says it opened, echoes until the client's FIN, sends
/// ours, closes, and says how it went. `split` turns the connection into the reader and
/// the writer the echo loop uses (the plain connection for echo; tees for the monitor);
/// it gets the connection's own address too.
pub(crate) fn handle<C, R, W>(
    conn: C,
    peer: SocketAddr,
    say: impl Fn(&str),
    split: impl FnOnce(C, SocketAddr) -> io::Result<(R, W)>,
) -> io::Result<()>
where
    C: Conn,
    R: Read,
    W: Write,
{
    let start = Instant::now();
    let local = match conn.local_addr() {
        Ok(local) => local,
        Err(e) => {
            say(&format!("close ? <- {peer}: {e}"));
            return Err(e);
        }
    };
    say(&format!("open  {local} <- {peer}"));
    let mut counts = Counts::default();
    let result = (|| {
        let ctl = conn.try_clone()?;
        let (mut r, mut w) = split(conn, local)?;
        let mut result = echo(&mut r, &mut w, &mut counts);
        if result.is_ok() {
            // The client's FIN came and all it sent is echoed: send ours (RFC 9293 3.6).
            result = ctl.shutdown(Shutdown::Write);
        }
        drop((r, w));
        result.and(ctl.close())
    })();
    let tail = match &result {
        Ok(()) => String::new(),
        Err(e) => format!("; {e}"),
    };
    say(&format!(
        "close {local} <- {peer}: {} bytes in, {} bytes out, {}{tail}",
        counts.received,
        counts.sent,
        elapsed(start.elapsed())
    ));
    result
}

/// Writes everything `r` yields to `w` until end of stream, counting as it goes.
pub(crate) fn echo(r: &mut impl Read, w: &mut impl Write, counts: &mut Counts) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        counts.received += n as u64;
        w.write_all(&buf[..n])?;
        counts.sent += n as u64;
    }
}

/// The plain split: the connection reads, a second handle on it writes.
pub(crate) fn plain<C: Conn>(conn: C, _local: SocketAddr) -> io::Result<(C, C)> {
    let writer = conn.try_clone()?;
    Ok((conn, writer))
}

/// A duration as a person reads it: "850µs", "12.3ms", "4.21s".
pub(crate) fn elapsed(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}
