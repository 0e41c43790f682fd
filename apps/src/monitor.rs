//! `tapnet monitor`: the echo server with every chunk logged, as the book's `Monitor`.
//!
//! The book builds it from Go's `io.TeeReader` (what is read from the connection is
//! also written to the monitor) and `io.MultiWriter` (what is written to the connection
//! is also written to the monitor). [`TeeReader`] and [`MultiWriter`] are those two, and
//! [`Monitor`] is the writer they feed: it turns each chunk into one log line, prefixed
//! with the direction and the endpoints, and shows the bytes readably (printable ASCII as
//! an escaped string, anything else in hex, long chunks cut with their length given).
//!
//! A log that fails (a full disk, a closed pipe) must not stop the data, which is the
//! book's own warning: an error from the tee's writer would end the read. So the
//! [`Monitor`] never fails: it reports the log's first error once on stderr and swallows
//! the rest, and the echo goes on. A log that cannot even be opened is refused at start.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clap::Args;
use stack::{Conn, Listener, Network};

use crate::echo::{self, DEFAULT_PORT};
use crate::net::{self, App, Ctx, NetArgs};

/// How many bytes of a chunk a log line shows.
const SHOWN: usize = 64;

/// Options of `tapnet monitor`.
#[derive(Args, Debug)]
#[command(after_help = "\
Log lines: `read  LOCAL <- PEER: N bytes \"text\"` for a chunk read from the client,
`write LOCAL -> PEER: N bytes ...` for its echo; non-text chunks are shown in hex, and
chunks over 64 bytes are cut, with their full length given. A log that fails while
running is reported once on stderr; the echo carries on.

Example (as root):
  sudo ip tuntap add dev tap0 mode tap user $USER
  sudo ip addr add 10.0.0.1/24 dev tap0 && sudo ip link set tap0 up
  tapnet monitor --tap tap0 --addr 10.0.0.2/24 &
  echo Test | nc -N 10.0.0.2 7")]
pub struct Opts {
    /// The TCP port to listen on, on every address of the network
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Append the log to FILE instead of printing it on stdout
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet monitor`.
pub fn run(args: Opts) -> io::Result<ExitCode> {
    // Open the log before the network, so a bad path fails at once and touches nothing.
    let log = match &args.log {
        None => Log::new(Box::new(io::stdout()), "stdout".into()),
        Some(path) => {
            let file = open_log(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("opening the log file {}: {e}", path.display()),
                )
            })?;
            Log::new(Box::new(file), path.display().to_string())
        }
    };
    net::run(
        &args.net,
        MonitorApp {
            port: args.port,
            log: Arc::new(log),
        },
    )
}

fn open_log(path: &PathBuf) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    // Opening a directory read-only works; for writing it fails above. Be explicit anyway.
    if file.metadata()?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        ));
    }
    Ok(file)
}

/// The monitor as an [`App`].
struct MonitorApp {
    port: u16,
    log: Arc<Log>,
}

impl App for MonitorApp {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        let listener = echo::listen(&net, self.port)?;
        let local = listener.local_addr()?;
        say!(
            "monitor listening on {local} ({describe}), logging to {}",
            self.log.name
        );
        let log = self.log;
        net::serve(listener, ctx, move |conn, peer| {
            let log = log.clone();
            let say = |line: &str| log.line(line);
            // A failure is already in the close line; this connection is done either way.
            let _ = echo::handle(conn, peer, say, |conn, local| {
                let writer = conn.try_clone()?;
                let inbound = Monitor::new(log.clone(), format!("read  {local} <- {peer}:"));
                let outbound = Monitor::new(log.clone(), format!("write {local} -> {peer}:"));
                Ok((
                    TeeReader::new(conn, inbound),
                    MultiWriter::new(writer, outbound),
                ))
            });
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Where log lines go: stdout or a file. Writing a line never fails; the first failure
/// is reported on stderr, later ones are swallowed.
pub struct Log {
    out: Mutex<Box<dyn Write + Send>>,
    name: String,
    failed: AtomicBool,
}

impl Log {
    /// A log writing to `out`, called `name` in messages.
    pub fn new(out: Box<dyn Write + Send>, name: String) -> Log {
        Log {
            out: Mutex::new(out),
            name,
            failed: AtomicBool::new(false),
        }
    }

    /// Writes one line (one write call, so lines of concurrent connections never mix).
    pub fn line(&self, line: &str) {
        let text = format!("{line}\n");
        let result = {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        };
        if let Err(e) = result
            && !self.failed.swap(true, Ordering::AcqRel)
        {
            eprintln!(
                "tapnet monitor: writing the log to {}: {e}; the data keeps flowing, \
                 later log errors are not reported",
                self.name
            );
        }
    }
}

/// The writer the tees feed: each chunk becomes one log line after `prefix`. It never
/// fails, so a broken log cannot interrupt the connection.
pub struct Monitor {
    log: Arc<Log>,
    prefix: String,
}

impl Monitor {
    /// A monitor writing lines that start with `prefix` to `log`.
    pub fn new(log: Arc<Log>, prefix: String) -> Monitor {
        Monitor { log, prefix }
    }
}

impl Write for Monitor {
    fn write(&mut self, chunk: &[u8]) -> io::Result<usize> {
        self.log.line(&format!("{} {}", self.prefix, show(chunk)));
        Ok(chunk.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Go's `io.TeeReader`: reads from `r`, and writes what it read to `w` before returning
/// it. An error from `w` is returned (as Go does); [`Monitor`] never gives one.
pub struct TeeReader<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> TeeReader<R, W> {
    /// Tees `r` into `w`.
    pub fn new(r: R, w: W) -> Self {
        TeeReader { r, w }
    }
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        if n > 0 {
            self.w.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Go's `io.MultiWriter` of two: each write goes wholly to `a`, then to `b`.
pub struct MultiWriter<A, B> {
    a: A,
    b: B,
}

impl<A: Write, B: Write> MultiWriter<A, B> {
    /// Writes to `a`, then `b`.
    pub fn new(a: A, b: B) -> Self {
        MultiWriter { a, b }
    }
}

impl<A: Write, B: Write> Write for MultiWriter<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.a.write_all(buf)?;
        self.b.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.a.flush().and(self.b.flush())
    }
}

/// A chunk as a log shows it: its length, then printable ASCII (with `\n`, `\r`, `\t`)
/// as an escaped string, or anything else in hex; at most [`SHOWN`] bytes, the rest
/// counted.
fn show(chunk: &[u8]) -> String {
    let head = &chunk[..chunk.len().min(SHOWN)];
    let text = head
        .iter()
        .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    let shown = if text {
        format!("\"{}\"", head.escape_ascii())
    } else {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("hex {}", hex.join(" "))
    };
    let more = match chunk.len() - head.len() {
        0 => String::new(),
        rest => format!(" ... ({rest} more bytes)"),
    };
    let unit = if chunk.len() == 1 { "byte" } else { "bytes" };
    format!("{} {unit} {shown}{more}", chunk.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_shown_escaped_and_binary_in_hex() {
        assert_eq!(show(b"Test\n"), r#"5 bytes "Test\n""#);
        assert_eq!(show(b"say \"hi\""), r#"8 bytes "say \"hi\"""#);
        assert_eq!(show(&[0, 1, 0xff]), "3 bytes hex 00 01 ff");
        assert_eq!(show(b"x"), r#"1 byte "x""#);
    }

    #[test]
    fn long_chunks_are_cut_with_their_length() {
        let line = show(&[b'a'; 100]);
        assert!(line.starts_with("100 bytes \"aaaa"), "{line}");
        assert!(line.ends_with("\" ... (36 more bytes)"), "{line}");
    }

    /// A writer that fails every write, as /dev/full does.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_log_does_not_stop_the_tee() {
        let log = Arc::new(Log::new(Box::new(Full), "full".into()));
        let mut tee = TeeReader::new(&b"data"[..], Monitor::new(log.clone(), "r".into()));
        let mut got = Vec::new();
        tee.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"data");
        let mut out = Vec::new();
        MultiWriter::new(&mut out, Monitor::new(log.clone(), "w".into()))
            .write_all(b"echo")
            .unwrap();
        assert_eq!(out, b"echo");
        assert!(log.failed.load(Ordering::Acquire));
    }
}
