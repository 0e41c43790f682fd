//! The control socket: how `tapnet ss` looks inside a running stack.
//!
//! Every process that owns a stack serves a Unix stream socket at
//! `$XDG_RUNTIME_DIR/tapnet/<device>.<pid>.sock`, or `/run/tapnet/<device>.<pid>.sock`
//! when `XDG_RUNTIME_DIR` is unset ([`dir`]). The directory is made mode 0700 and the
//! socket 0600, so only the owner (and root) can connect.
//!
//! The protocol is one exchange per connection: the client writes one line, the
//! command; the server answers one JSON document and closes. The one command is
//! `sockets`, answered with a [`Report`]: the device, the pid, the CLOSE-WAIT warning
//! threshold and the socket table ([`Entry`], the same records `tapnet ss --json` prints).
//! Anything else is answered with `{"error": "..."}`. The field names are stable and
//! documented in `docs/ss.md`.
//!
//! [`serve`] starts the server on a thread of its own and returns a [`Guard`]; dropping
//! the guard stops the thread and removes the socket file.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::geteuid;
use serde::{Deserialize, Serialize};
use stack::{SocketEntry, Stack};

/// The one command: the socket table.
pub const SOCKETS: &str = "sockets";
/// The longest request line read; anything longer is an error.
const MAX_REQUEST: u64 = 256;
/// How long a client has to send its line, or to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The directory of the control sockets: `$XDG_RUNTIME_DIR/tapnet`, or `/run/tapnet`.
pub fn dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("tapnet"),
        None => PathBuf::from("/run/tapnet"),
    }
}

/// The socket file of the stack on `device` in process `pid`.
pub fn socket_path(dir: &Path, device: &str, pid: u32) -> PathBuf {
    dir.join(format!("{device}.{pid}.sock"))
}

/// The device and pid a socket file's name carries, if it is one of ours.
pub fn parse_name(name: &str) -> Option<(String, u32)> {
    let stem = name.strip_suffix(".sock")?;
    let (device, pid) = stem.rsplit_once('.')?;
    if device.is_empty() {
        return None;
    }
    Some((device.to_string(), pid.parse().ok()?))
}

/// What the server answers to `sockets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The device the stack runs on.
    pub tap: String,
    /// The process that owns it.
    pub pid: u32,
    /// The stack's CLOSE-WAIT warning threshold, in milliseconds.
    pub close_wait_warning_ms: f64,
    /// The socket table: listeners first, then connections, in address order.
    pub sockets: Vec<Entry>,
}

/// One socket, as the control socket and `tapnet ss --json` give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The device of the stack that holds it.
    pub tap: String,
    /// The process that owns that stack.
    pub pid: u32,
    /// The RFC 9293 state name: `LISTEN`, `ESTABLISHED`, `CLOSE-WAIT`, ...
    pub state: String,
    /// Bytes received and not yet read; for a listener, connections waiting for accept.
    pub recv_q: usize,
    /// Bytes sent and not yet acknowledged; for a listener, its backlog.
    pub send_q: usize,
    /// This end, `IP:PORT`.
    pub local: String,
    /// The other end, `IP:PORT`; `null` for a listener.
    pub peer: Option<String>,
    /// In CLOSE-WAIT for at least the stack's warning threshold.
    pub close_wait_overdue: bool,
    /// Closed by the application; the stack finishes it on its own.
    pub orphan: bool,
    /// The connection's details; `null` for a listener.
    pub info: Option<Info>,
}

/// A connection's details (`tapnet ss -i`), from [`stack::TcpInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// Time in the current state.
    pub time_in_state_ms: f64,
    /// Smoothed round-trip time; `null` before the first sample.
    pub rtt_ms: Option<f64>,
    /// Retransmission timeout; `null` before the first sample.
    pub rto_ms: Option<f64>,
    /// The receive window this end last advertised, in bytes.
    pub recv_window: u32,
    /// The window the peer last advertised (our send window), in bytes.
    pub peer_window: u32,
    /// The receive buffer's size.
    pub read_buffer: usize,
    /// The send buffer's size.
    pub write_buffer: usize,
    /// Segments sent again.
    pub retransmits: u64,
    /// Of those, the ones a loss signal started before any timer (fast retransmit).
    pub fast_retransmits: u64,
    /// Keepalive probes sent.
    pub keepalive_probes: u64,
    /// Zero-window probes sent.
    pub zero_window_probes: u64,
    /// Segments received.
    pub segments_in: u64,
    /// Segments sent.
    pub segments_out: u64,
    /// Keepalive settings; `null` when off.
    pub keepalive: Option<KeepAliveInfo>,
    /// Linger on close; `null` for the default (close in the background).
    pub linger_ms: Option<f64>,
    /// Whether Nagle's algorithm is off.
    pub nodelay: bool,
}

/// Keepalive settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeepAliveInfo {
    /// Quiet time before the first probe.
    pub idle_ms: f64,
    /// Time between probes.
    pub interval_ms: f64,
    /// Unanswered probes before the connection fails.
    pub count: u32,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Report {
    /// The table of `stack`, which runs on `tap` in this process.
    pub fn of(stack: &Stack, tap: &str) -> Report {
        let pid = std::process::id();
        let sockets = stack
            .sockets()
            .into_iter()
            .map(|e| Entry::new(&e, tap, pid))
            .collect();
        Report {
            tap: tap.to_string(),
            pid,
            close_wait_warning_ms: ms(stack.config().close_wait_warning),
            sockets,
        }
    }
}

impl Entry {
    fn new(entry: &SocketEntry, tap: &str, pid: u32) -> Entry {
        let (orphan, close_wait_overdue, info) = match entry {
            SocketEntry::Listener { .. } => (false, false, None),
            SocketEntry::Conn {
                info,
                orphan,
                close_wait_overdue,
            } => (
                *orphan,
                *close_wait_overdue,
                Some(Info {
                    time_in_state_ms: ms(info.time_in_state),
                    rtt_ms: info.rtt.map(ms),
                    rto_ms: info.rto.map(ms),
                    recv_window: info.recv_window,
                    peer_window: info.peer_window,
                    read_buffer: info.read_buffer,
                    write_buffer: info.write_buffer,
                    retransmits: info.retransmits,
                    fast_retransmits: info.fast_retransmits,
                    keepalive_probes: info.keepalive_probes,
                    zero_window_probes: info.zero_window_probes,
                    segments_in: info.segments_in,
                    segments_out: info.segments_out,
                    keepalive: info.keepalive.map(|ka| KeepAliveInfo {
                        idle_ms: ms(ka.idle()),
                        interval_ms: ms(ka.interval()),
                        count: ka.count(),
                    }),
                    linger_ms: info.linger.map(ms),
                    nodelay: info.nodelay,
                }),
            ),
        };
        Entry {
            tap: tap.to_string(),
            pid,
            state: entry.state().name().to_string(),
            recv_q: entry.recv_q(),
            send_q: entry.send_q(),
            local: entry.local().to_string(),
            peer: entry.peer().map(|p| p.to_string()),
            close_wait_overdue,
            orphan,
            info,
        }
    }

    /// Whether this is a listener.
    pub fn is_listener(&self) -> bool {
        self.state == "LISTEN"
    }
}

/// The running control server. Dropping it stops the server and removes the socket file.
pub struct Guard {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // A connection wakes the accepting thread, which then sees the flag.
        let woke = UnixStream::connect(&self.path).is_ok();
        let _ = fs::remove_file(&self.path);
        if let Some(thread) = self.thread.take()
            && woke
        {
            let _ = thread.join();
        }
    }
}

/// Serves the control socket of `stack`, which runs on `tap`, until the guard is dropped.
/// A failure (no runtime directory, say) is logged, not fatal: the stack runs without
/// one, and `tapnet ss` cannot see it.
pub fn serve(stack: &Stack, tap: &str) -> Option<Guard> {
    match serve_in(&dir(), stack, tap) {
        Ok(guard) => {
            log::info!("control socket {}", guard.path.display());
            Some(guard)
        }
        Err(e) => {
            log::warn!("no control socket, so `tapnet ss` cannot see this stack: {e}");
            None
        }
    }
}

/// [`serve`], in `dir`.
fn serve_in(dir: &Path, stack: &Stack, tap: &str) -> io::Result<Guard> {
    private_dir(dir)?;
    let path = socket_path(dir, tap, std::process::id());
    // A file left by an earlier process with our pid is stale.
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| io::Error::new(e.kind(), format!("chmod {}: {e}", path.display())))?;
    let stopping = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("control".into()).spawn({
        let stopping = stopping.clone();
        let stack = stack.clone();
        let tap = tap.to_string();
        move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    return;
                }
                match client {
                    Ok(client) => {
                        if let Err(e) = answer(client, &stack, &tap) {
                            log::debug!("control socket: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("control socket: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    });
    let thread = match thread {
        Ok(thread) => thread,
        Err(e) => {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
    };
    Ok(Guard {
        path,
        stopping,
        thread: Some(thread),
    })
}

/// Makes `dir` (mode 0700) if it is missing; refuses one that another user owns, and
/// closes one of ours that others could enter.
fn private_dir(dir: &Path) -> io::Result<()> {
    let failed = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", dir.display()))
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed("creating", e))?;
    let meta = fs::metadata(dir).map_err(|e| failed("reading", e))?;
    let me = fs::metadata("/proc/self").map_err(|e| failed("checking the owner of", e))?;
    if meta.uid() != me.uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to us (uid {})",
                dir.display(),
                meta.uid(),
                me.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| failed("chmod 0700", e))?;
    }
    Ok(())
}

/// Reads one request line from `client` and writes the answer.
fn answer(client: UnixStream, stack: &Stack, tap: &str) -> io::Result<()> {
    client.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    client.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    let read = BufReader::new((&client).take(MAX_REQUEST)).read_line(&mut line);
    // The 0600 socket already keeps others out; the peer's credentials say so again
    // (root may always look, as it may at any process).
    let peer = getsockopt(&client, PeerCredentials).map(|c| c.uid());
    let me = geteuid().as_raw();
    let allowed = matches!(peer, Ok(uid) if uid == me || uid == 0);
    let reply = match &read {
        _ if !allowed => error_json("only the stack's owner may read its table"),
        Err(e) => error_json(&format!("reading the request: {e}")),
        Ok(_) => match line.trim() {
            SOCKETS => serde_json::to_string(&Report::of(stack, tap))
                .unwrap_or_else(|e| error_json(&format!("encoding the table: {e}"))),
            other => error_json(&format!(
                "unknown request {:?}; the one request is {SOCKETS:?}",
                other.chars().take(64).collect::<String>()
            )),
        },
    };
    let mut client = client;
    client.write_all(reply.as_bytes())?;
    client.write_all(b"\n")?;
    client.flush()?;
    // Closing with unread input resets the connection, and the client would lose the
    // answer: take in (briefly, boundedly) what is left of an over-long request.
    let complete = line.ends_with('\n') || (line.len() as u64) < MAX_REQUEST;
    if read.is_err() || !complete {
        client.shutdown(std::net::Shutdown::Write)?;
        client.set_read_timeout(Some(Duration::from_millis(100)))?;
        let _ = io::copy(&mut (&client).take(1 << 16), &mut io::sink());
    }
    Ok(())
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// Asks the control socket at `path` for the socket table.
///
/// # Errors
/// Whatever connecting, writing or reading fails with (`ConnectionRefused` when nobody
/// serves the socket), or `InvalidData` when the answer is an error or not a report.
pub fn query(path: &Path, timeout: Duration) -> io::Result<Report> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{SOCKETS}\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("a garbled answer: {e}")))?;
    if let Some(error) = value.get("error") {
        return Err(invalid(format!("the stack answered: {error}")));
    }
    serde_json::from_value(value).map_err(|e| invalid(format!("an answer not understood: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdev::{WireOptions, wire};
    use stack::StackConfig;

    /// A directory under the temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Sends `request` as it is and returns the answer.
    fn raw(path: &Path, request: &[u8]) -> serde_json::Value {
        let mut stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // A long request may be cut off by the server's answer: that is fine.
        let _ = stream.write_all(request);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn serves_the_table_to_its_owner_and_answers_bad_requests_with_errors() {
        let scratch = Scratch(std::env::temp_dir().join(format!(
            "tapnet-control-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        )));
        let dir = scratch.0.join("tapnet");
        let (a, b) = wire(&WireOptions::default()).unwrap();
        let stack = Stack::new(
            a,
            StackConfig::new().with_addr("10.0.0.2/24".parse().unwrap()),
        )
        .unwrap();
        let _other = Stack::new(
            b,
            StackConfig::new().with_addr("10.0.0.1/24".parse().unwrap()),
        )
        .unwrap();
        let _listener = stack.listen("0.0.0.0:7".parse().unwrap()).unwrap();
        let guard = serve_in(&dir, &stack, "wire0").unwrap();
        let path = socket_path(&dir, "wire0", std::process::id());
        assert_eq!(guard.path, path);
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);

        let report = query(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(
            (report.tap.as_str(), report.pid),
            ("wire0", std::process::id())
        );
        assert_eq!(report.close_wait_warning_ms, 30_000.0);
        assert_eq!(report.sockets.len(), 1);
        let listen = &report.sockets[0];
        assert_eq!(listen.state, "LISTEN");
        assert_eq!(listen.local, "0.0.0.0:7");
        assert_eq!((listen.recv_q, listen.send_q), (0, stack::DEFAULT_BACKLOG));
        assert_eq!((&listen.peer, &listen.info), (&None, &None));

        for bad in [&b"bogus\n"[..], b"", b"\xff\xfe\n", &[b'x'; 10_000]] {
            let answer = raw(&path, bad);
            assert!(answer["error"].is_string(), "{answer}");
        }
        // Still serving after all that.
        assert!(query(&path, Duration::from_secs(5)).is_ok());
        drop(guard);
        assert!(!path.exists(), "the guard removes the socket file");
    }

    #[test]
    fn socket_names_carry_the_device_and_pid() {
        let path = socket_path(Path::new("/run/tapnet"), "tap0", 1234);
        assert_eq!(path, Path::new("/run/tapnet/tap0.1234.sock"));
        assert_eq!(parse_name("tap0.1234.sock"), Some(("tap0".into(), 1234)));
        assert_eq!(parse_name("br.lab.7.sock"), Some(("br.lab".into(), 7)));
        for bad in ["tap0.sock", "tap0.x.sock", ".12.sock", "tap0.12", "README"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
