//! `tapnet proxy` and `tapnet ping` against kernel peers, over a TAP in a private
//! namespace (and on the kernel's loopback with `--kernel` / `--to-kernel`).
//!
//! The kernel side is plain `std::net`: a server that answers "pong" to "ping" and
//! echoes every other line (the book's TestProxy), clients that talk through the proxy,
//! and listeners for ping to find open. A port that drops SYNs is made with nftables.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{App, TAPNET, tap_up, tapnet_within};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tapnet_tests::{
    Failed, KERNEL_ADDR, STACK_ADDR, TempDir, TestResult, check, eventually, in_netns, plain, root,
    wait_bounded,
};

fn main() {
    tapnet_tests::main(vec![
        plain("proxy_and_ping_help_and_bad_flags", help_and_bad_flags),
        root(
            "proxy_relays_the_books_ping_pong_and_a_client_fin",
            proxy_ping_pong,
        ),
        root(
            "proxy_forwards_the_upstreams_fin_and_keeps_relaying_up",
            proxy_upstream_fin,
        ),
        root(
            "proxy_closes_the_client_when_the_upstream_refuses",
            proxy_refused,
        ),
        root(
            "proxy_to_kernel_bridges_tapnet_to_loopback",
            proxy_to_kernel,
        ),
        root("proxy_on_the_kernel", proxy_on_kernel),
        root("ping_times_an_open_port_and_exits_0", ping_open),
        root(
            "ping_reports_a_closed_port_as_refused_and_exits_1",
            ping_refused,
        ),
        root("ping_times_out_within_w_on_a_port_that_drops", ping_timeout),
        root("ping_prints_the_summary_on_sigint", ping_sigint),
        root("ping_on_the_kernel", ping_on_kernel),
    ])
}

const WAIT: Duration = Duration::from_secs(10);

/// `tapnet ARGS --tap tap0 --addr 10.0.0.2/24`, on the TAP [`tap_up`] made.
fn on_tap(args: &[&str]) -> Result<App, Failed> {
    let mut all = args.to_vec();
    all.extend(["--tap", "tap0", "--addr", "10.0.0.2/24"]);
    App::spawn(&all)
}

/// A kernel server: accepts until dropped, running `handle` on a thread per connection.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Server {
    fn start(
        bind: &str,
        handle: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Result<Server, Failed> {
        let handle = Arc::new(handle);
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(WAIT));
                        let handle = handle.clone();
                        thread::spawn(move || handle(conn));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Server {
            addr,
            stop,
            accepted,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The book's TestProxy server: "pong" to "ping", every other line echoed; at the
/// client's FIN it sends a last line and closes.
fn ping_pong(conn: TcpStream) {
    let mut out = match conn.try_clone() {
        Ok(out) => out,
        Err(_) => return,
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let reply = if line == "ping" { "pong" } else { &line };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
    let _ = out.write_all(b"bye after EOF\n");
}

/// Dials the proxy, plays the book's exchange, then half-closes and expects the
/// server's last line and EOF.
fn talk_through(proxy: SocketAddr) -> TestResult {
    let conn = TcpStream::connect_timeout(&proxy, WAIT)?;
    conn.set_read_timeout(Some(WAIT))?;
    let mut out = conn.try_clone()?;
    let mut replies = BufReader::new(conn.try_clone()?);
    for (msg, want) in [
        ("ping", "pong"),
        ("pong", "pong"),
        ("echo", "echo"),
        ("ping", "pong"),
    ] {
        writeln!(out, "{msg}")?;
        let mut got = String::new();
        replies.read_line(&mut got)?;
        check!(got == format!("{want}\n"), "sent {msg:?}, got {got:?}");
    }
    // Our FIN must reach the server through the proxy; its answer must come back.
    conn.shutdown(Shutdown::Write)?;
    let mut rest = String::new();
    replies.read_to_string(&mut rest)?;
    check!(
        rest == "bye after EOF\n",
        "after our FIN: {rest:?}, not the server's last line then EOF"
    );
    Ok(())
}

/// Waits until the proxy logged a connection that carried exactly these byte counts.
fn wait_for_close_line(app: &App, up: u64, down: u64) -> TestResult {
    let want = format!("{up} bytes up, {down} bytes down");
    eventually(WAIT, &format!("the proxy to log {want:?}"), || {
        app.output()
            .0
            .lines()
            .any(|l| l.starts_with("closed ") && l.contains(&want))
    })
    .map_err(|e| {
        format!(
            "{}; stdout: {}",
            e.message().unwrap_or_default(),
            app.output().0
        )
        .into()
    })
}

/// Bytes of the exchange in [`talk_through`]: four lines each way and the last line.
const UP_BYTES: u64 = 20;
const DOWN_BYTES: u64 = 20 + 14;

fn proxy_ping_pong() -> TestResult {
    in_netns(|| {
        tap_up()?;
        let server = Server::start(&format!("{KERNEL_ADDR}:0"), ping_pong)?;
        let to = server.addr.to_string();
        let app = on_tap(&["proxy", "--listen", "7000", "--to", &to])?;
        let proxy = SocketAddr::from((STACK_ADDR, 7000));
        app.wait_listening(proxy)?;
        talk_through(proxy)?;
        wait_for_close_line(&app, UP_BYTES, DOWN_BYTES)?;
        let (out, stdout, stderr) = app.stop()?;
        check!(out.status.success(), "exit {:?}: {stderr}", out.status);
        check!(
            stdout.contains(&format!("-> {to}")) && stdout.contains("open   10.0.0.1:"),
            "the connection's parties are not logged: {stdout}"
        );
        Ok(())
    })
}

/// Sends a line, then FIN, while still reading; reports what it read to `seen`.
fn greet_then_fin(mut conn: TcpStream, seen: &mpsc::Sender<std::io::Result<String>>) {
    let _ = conn.write_all(b"hello\n");
    let _ = conn.shutdown(Shutdown::Write);
    let mut got = String::new();
    let _ = seen.send(conn.read_to_string(&mut got).map(|_| got));
}

fn proxy_upstream_fin() -> TestResult {
    in_netns(|| {
        tap_up()?;
        let (tx, seen) = mpsc::channel();
        let server = Server::start(&format!("{KERNEL_ADDR}:0"), move |conn| {
            greet_then_fin(conn, &tx)
        })?;
        let app = on_tap(&[
            "proxy",
            "--listen",
            "7001",
            "--to",
            &server.addr.to_string(),
        ])?;
        let proxy = SocketAddr::from((STACK_ADDR, 7001));
        app.wait_listening(proxy)?;
        // The probe's own relay told the server something (or nothing): not ours.
        let _ = seen.recv_timeout(WAIT);

        let mut conn = TcpStream::connect_timeout(&proxy, WAIT)?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut got = String::new();
        conn.read_to_string(&mut got)?;
        check!(got == "hello\n", "before the server's FIN: {got:?}");
        // The server has half-closed; our direction must still be relayed.
        conn.write_all(b"still here\n")?;
        conn.shutdown(Shutdown::Write)?;
        let read = seen.recv_timeout(WAIT)?;
        check!(
            matches!(&read, Ok(text) if text == "still here\n"),
            "the server read {read:?}, not our line after its FIN"
        );
        wait_for_close_line(&app, 11, 6)?;
        Ok(())
    })
}

fn proxy_refused() -> TestResult {
    in_netns(|| {
        tap_up()?;
        // Bound and closed again: nothing listens on that port.
        let closed = TcpListener::bind(format!("{KERNEL_ADDR}:0"))?.local_addr()?;
        let app = on_tap(&["proxy", "--listen", "7002", "--to", &closed.to_string()])?;
        let proxy = SocketAddr::from((STACK_ADDR, 7002));
        app.wait_listening(proxy)?;
        let mut conn = TcpStream::connect_timeout(&proxy, WAIT)?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => return Err(format!("the client was not closed: {other:?}").into()),
        }
        let want = format!("dialing upstream {closed} failed");
        eventually(WAIT, "the dial failure to be logged", || {
            let out = app.output().0;
            out.lines()
                .any(|l| l.contains(&want) && l.contains("refused"))
        })
        .map_err(|e| format!("{}: {}", e.message().unwrap_or_default(), app.output().0))?;
        Ok(())
    })
}

fn proxy_to_kernel() -> TestResult {
    in_netns(|| {
        tap_up()?;
        // Only the kernel's own stack can reach its loopback: tapnet cannot.
        let server = Server::start("127.0.0.1:0", ping_pong)?;
        let app = on_tap(&[
            "proxy",
            "--listen",
            "7003",
            "--to",
            &server.addr.to_string(),
            "--to-kernel",
        ])?;
        let proxy = SocketAddr::from((STACK_ADDR, 7003));
        app.wait_listening(proxy)?;
        talk_through(proxy)?;
        wait_for_close_line(&app, UP_BYTES, DOWN_BYTES)?;
        check!(
            app.output().0.contains("via the kernel"),
            "{}",
            app.output().0
        );
        Ok(())
    })
}

fn proxy_on_kernel() -> TestResult {
    in_netns(|| {
        let server = Server::start("127.0.0.1:0", ping_pong)?;
        let app = App::spawn(&[
            "proxy",
            "--kernel",
            "--listen",
            "127.0.0.1:7004",
            "--to",
            &server.addr.to_string(),
        ])?;
        let proxy: SocketAddr = "127.0.0.1:7004".parse()?;
        app.wait_listening(proxy)?;
        talk_through(proxy)?;
        wait_for_close_line(&app, UP_BYTES, DOWN_BYTES)?;
        Ok(())
    })
}

/// A kernel listener that completes handshakes (the backlog does) and counts accepts.
fn open_port(bind: &str) -> Result<Server, Failed> {
    Server::start(bind, drop)
}

fn count_lines(out: &str, needle: &str) -> usize {
    out.lines().filter(|l| l.contains(needle)).count()
}

fn ping_open() -> TestResult {
    in_netns(|| {
        tap_up()?;
        let server = open_port(&format!("{KERNEL_ADDR}:0"))?;
        let target = server.addr.to_string();
        let (code, out, err) = tapnet_within(
            &[
                "ping",
                &target,
                "-c",
                "3",
                "-i",
                "0.1",
                "--tap",
                "tap0",
                "--addr",
                "10.0.0.2/24",
            ],
            WAIT,
        )?;
        check!(code == 0, "exit {code}: {out}{err}");
        for seq in 1..=3 {
            let line = format!("connected to {target}: seq={seq} time=");
            check!(out.contains(&line), "no {line:?}:\n{out}");
        }
        check!(
            out.contains("3 attempts, 3 connected, 0% loss; time min/avg/max = "),
            "summary:\n{out}"
        );
        let accepted = server.accepted.load(Ordering::Relaxed);
        check!(
            accepted == 3,
            "the server accepted {accepted} connections, not 3"
        );
        Ok(())
    })
}

fn ping_refused() -> TestResult {
    in_netns(|| {
        tap_up()?;
        let closed = TcpListener::bind(format!("{KERNEL_ADDR}:0"))?.local_addr()?;
        let target = closed.to_string();
        let (code, out, err) = tapnet_within(
            &[
                "ping",
                &target,
                "-c",
                "2",
                "-i",
                "0.1",
                "--tap",
                "tap0",
                "--addr",
                "10.0.0.2/24",
            ],
            WAIT,
        )?;
        check!(code == 1, "exit {code}, not 1: {out}{err}");
        check!(
            out.contains(&format!("{target}: seq=1 refused"))
                && out.contains(&format!("{target}: seq=2 refused")),
            "refusals not reported:\n{out}"
        );
        check!(
            out.contains("2 attempts, 0 connected, 100% loss") && !out.contains("min/avg/max"),
            "summary:\n{out}"
        );
        Ok(())
    })
}

/// Makes the kernel drop every SYN to `port` on the TAP side, silently.
fn drop_port(port: u16) -> TestResult {
    let rules = format!(
        "table inet tapnet_test {{\n\
         chain input {{\n\
         type filter hook input priority 0\n\
         policy accept\n\
         ip daddr {KERNEL_ADDR} tcp dport {port} drop\n\
         }}\n\
         }}\n"
    );
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("nft has no stdin")?
        .write_all(rules.as_bytes())?;
    let out = wait_bounded(child, WAIT)?;
    check!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn ping_timeout() -> TestResult {
    in_netns(|| {
        tap_up()?;
        let server = open_port(&format!("{KERNEL_ADDR}:0"))?;
        drop_port(server.addr.port())?;
        let target = server.addr.to_string();
        let start = Instant::now();
        let (code, out, err) = tapnet_within(
            &[
                "ping",
                &target,
                "-c",
                "2",
                "-i",
                "0.1",
                "-W",
                "500ms",
                "--tap",
                "tap0",
                "--addr",
                "10.0.0.2/24",
            ],
            WAIT,
        )?;
        let took = start.elapsed();
        check!(code == 1, "exit {code}, not 1: {out}{err}");
        check!(
            count_lines(&out, "timed out after 500ms") == 2,
            "two timeouts expected:\n{out}"
        );
        // Two attempts of 0.5 s and one pause of 0.1 s: no attempt may outlive -W much.
        check!(
            took >= Duration::from_millis(1100) && took < Duration::from_millis(3000),
            "2 attempts with -W 500ms took {took:?}"
        );
        check!(
            server.accepted.load(Ordering::Relaxed) == 0,
            "the drop rule let a SYN through"
        );
        Ok(())
    })
}

/// Starts `tapnet ping ARGS` on tap0, its stdout in a file, and returns it with the
/// file's path.
fn spawn_ping(args: &[&str], dir: &TempDir) -> Result<(Child, std::path::PathBuf), Failed> {
    let stdout = dir.join(&format!("ping-{}", args.join("_").replace(['/', ':'], "_")));
    let child = Command::new(TAPNET)
        .arg("ping")
        .args(args)
        .args(["--tap", "tap0", "--addr", "10.0.0.2/24"])
        .stdin(Stdio::null())
        .stdout(File::create(&stdout)?)
        .stderr(Stdio::piped())
        .spawn()?;
    Ok((child, stdout))
}

/// Sends SIGINT and returns (exit code, stdout, how long it took to exit).
fn interrupt(child: Child, stdout: &std::path::Path) -> Result<(i32, String, Duration), Failed> {
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
    let out = wait_bounded(child, WAIT)?;
    let took = sent.elapsed();
    let text = std::fs::read_to_string(stdout)?;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && code != 1 {
        return Err(format!(
            "exit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok((code, text, took))
}

fn ping_sigint() -> TestResult {
    in_netns(|| {
        tap_up()?;
        let dir = TempDir::new("ping")?;
        let server = open_port(&format!("{KERNEL_ADDR}:0"))?;
        let target = server.addr.to_string();
        let (child, stdout) = spawn_ping(&[&target, "-c", "0", "-i", "0.1"], &dir)?;
        eventually(WAIT, "three connections", || {
            std::fs::read_to_string(&stdout).is_ok_and(|out| out.contains("seq=3 "))
        })?;
        let (code, out, took) = interrupt(child, &stdout)?;
        check!(code == 0, "exit {code} after connecting:\n{out}");
        check!(
            took < Duration::from_secs(2),
            "SIGINT took {took:?} to end it"
        );
        check!(
            out.contains("connected, 0% loss; time min/avg/max = "),
            "no summary after SIGINT:\n{out}"
        );

        // Interrupted in the middle of a long handshake wait, with nothing connected.
        drop_port(server.addr.port())?;
        let (child, stdout) = spawn_ping(&[&target, "-c", "0", "-W", "30s"], &dir)?;
        eventually(WAIT, "the first attempt to start", || {
            std::fs::read_to_string(&stdout).is_ok_and(|out| out.contains("PING "))
        })?;
        thread::sleep(Duration::from_millis(300));
        let (code, out, took) = interrupt(child, &stdout)?;
        check!(code == 1, "exit {code} with nothing connected:\n{out}");
        check!(
            took < Duration::from_secs(2),
            "SIGINT took {took:?} to end it"
        );
        check!(
            out.contains("0 connected") && !out.contains("seq=1"),
            "no summary, or an attempt reported, after SIGINT:\n{out}"
        );
        Ok(())
    })
}

fn ping_on_kernel() -> TestResult {
    in_netns(|| {
        let server = open_port("127.0.0.1:0")?;
        let target = server.addr.to_string();
        let (code, out, err) =
            tapnet_within(&["ping", "--kernel", &target, "-c", "2", "-i", "0.1"], WAIT)?;
        check!(code == 0, "exit {code}: {out}{err}");
        check!(
            out.contains("on the kernel's sockets")
                && out.contains("2 attempts, 2 connected, 0% loss"),
            "{out}"
        );
        Ok(())
    })
}

fn help_and_bad_flags() -> TestResult {
    for (cmd, options) in [
        (
            "proxy",
            &["--listen", "--to", "--to-kernel", "--kernel", "--tap"][..],
        ),
        (
            "ping",
            &["--count", "--interval", "--timeout", "--kernel", "--tap"],
        ),
    ] {
        let (code, out, err) = tapnet_within(&[cmd, "--help"], WAIT)?;
        check!(code == 0, "{cmd} --help: exit {code}: {err}");
        for option in options {
            check!(out.contains(option), "{cmd} --help lacks {option}:\n{out}");
        }
        check!(out.contains("Example"), "{cmd} --help has no example");
    }
    let cases: &[(&[&str], &str)] = &[
        (&["ping"], "required"),
        (&["ping", "10.0.0.1"], "10.0.0.1"),
        (&["ping", "example.com:80"], "IP:PORT"),
        (&["ping", "10.0.0.1:80", "-W", "0"], "above zero"),
        (&["ping", "10.0.0.1:80", "-i", "soon"], "--interval"),
        (&["ping", "10.0.0.1:80", "-c", "many"], "--count"),
        (&["proxy", "--listen", "8080"], "--to"),
        (
            &["proxy", "--listen", "70000", "--to", "10.0.0.1:80"],
            "70000",
        ),
        (&["proxy", "--listen", "80", "--to", "10.0.0.1"], "IP:PORT"),
    ];
    for (args, why) in cases {
        let (code, _, err) = tapnet_within(args, WAIT)?;
        check!(code == 2, "{args:?}: exit {code}, not 2; stderr: {err}");
        check!(err.contains(why), "{args:?}: stderr lacks {why:?}: {err}");
        check!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    Ok(())
}
