//! `tapnet echo` and `tapnet monitor` against real kernel peers (`nc`, `socat`, std
//! sockets) over a TAP in a private namespace, and on the kernel's own sockets.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{App, tapnet};
use tapnet_tests::{
    Failed, STACK_ADDR, TempDir, TestResult, check, eventually, in_netns, plain, root, run,
    wait_bounded,
};

fn main() {
    tapnet_tests::main(vec![
        plain("help_texts_run_and_bad_flags_exit_2", help_and_bad_flags),
        plain(
            "monitor_refuses_a_log_it_cannot_open_at_start",
            monitor_bad_log,
        ),
        root("echo_gives_nc_and_socat_their_bytes_back", echo_nc_socat),
        root(
            "echo_gives_100_concurrent_kernel_clients_1_mib_each_back",
            echo_concurrent,
        ),
        root("echo_once_exits_0_after_one_client", echo_once),
        root(
            "echo_with_max_sockets_serves_that_many_then_drops_syns",
            echo_max_sockets,
        ),
        root(
            "echo_with_trace_prints_each_segment_and_state_change",
            echo_trace,
        ),
        root(
            "echo_on_kernel_sockets_gives_nc_its_bytes_back",
            echo_kernel,
        ),
        root(
            "monitor_logs_the_chunk_read_and_the_chunk_written",
            monitor_log,
        ),
        root(
            "monitor_with_a_failing_log_keeps_echoing",
            monitor_failing_log,
        ),
    ])
}

fn echo_addr() -> SocketAddr {
    SocketAddr::from((STACK_ADDR, 7))
}

/// Runs a client tool with `input` on its stdin; returns its stdout.
fn pipe_through(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>, Failed> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(input)?;
    drop(stdin);
    let out = wait_bounded(child, Duration::from_secs(15))?;
    check!(
        out.status.success(),
        "{cmd:?}: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// Connects (bounded), sends `data`, half-closes, and reads everything back. A writer
/// thread sends while this one reads, so neither side's buffers can deadlock.
fn round_trip(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>, Failed> {
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = conn.try_clone()?;
    thread::scope(|s| {
        let sending = s.spawn(move || -> std::io::Result<()> {
            writer.write_all(data)?;
            writer.shutdown(Shutdown::Write)
        });
        let mut got = Vec::with_capacity(data.len());
        let read = (&conn).read_to_end(&mut got);
        let sent = sending.join().map_err(|_| "writer panicked")?;
        sent.map_err(|e| format!("sending to {addr}: {e}"))?;
        read.map_err(|e| {
            // What the kernel's side of a stuck connection looks like (windows, queues).
            let port = conn.local_addr().map(|a| a.port()).unwrap_or(0);
            let ss = run(
                Command::new("ss").args(["-tnio", "sport", "=", &format!(":{port}")]),
                Duration::from_secs(5),
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
            format!("reading from {addr} after {} bytes: {e}\n{ss}", got.len())
        })?;
        Ok(got)
    })
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn help_and_bad_flags() -> TestResult {
    for cmd in ["echo", "monitor"] {
        let (code, out, err) = tapnet(&[cmd, "--help"])?;
        check!(code == 0, "{cmd} --help: exit {code}: {err}");
        for text in ["--port", "--kernel", "--tap", "Example"] {
            check!(out.contains(text), "{cmd} --help lacks {text}:\n{out}");
        }
    }
    let (_, out, _) = tapnet(&["echo", "--help"])?;
    check!(out.contains("--once"), "echo --help lacks --once:\n{out}");
    let (_, out, _) = tapnet(&["monitor", "--help"])?;
    check!(out.contains("--log"), "monitor --help lacks --log:\n{out}");
    for args in [
        &["echo", "--port", "70000"][..],
        &["echo", "--port", "seven"],
        &["echo", "stray"],
        &["monitor", "--port", "-1"],
        &["monitor", "--log"],
    ] {
        let (code, _, err) = tapnet(args)?;
        check!(code == 2, "{args:?}: exit {code}, not 2: {err}");
        check!(
            err.contains("error:") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    Ok(())
}

fn monitor_bad_log() -> TestResult {
    let dir = TempDir::new("monitor-dir")?;
    let path = dir.0.to_string_lossy().into_owned();
    // The log is opened before the network, so this needs no TAP and no root.
    let (code, _, err) = tapnet(&["monitor", "--log", &path])?;
    check!(code == 1, "exit {code}: {err}");
    check!(
        err.contains(&format!("opening the log file {path}")) && err.contains("directory"),
        "stderr: {err}"
    );
    Ok(())
}

fn echo_nc_socat() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["echo"])?;
        app.wait_listening(echo_addr())?;
        let nc_input = b"hello from nc\nsecond line\n";
        let got = pipe_through(
            Command::new("nc").args(["-N", "-w", "10", "10.0.0.2", "7"]),
            nc_input,
        )?;
        check!(
            got == nc_input,
            "nc got {:?}",
            String::from_utf8_lossy(&got)
        );
        let socat_input = b"socat says hi";
        let got = pipe_through(
            Command::new("socat").args(["-t", "5", "-T", "10", "-", "TCP:10.0.0.2:7"]),
            socat_input,
        )?;
        check!(
            got == socat_input,
            "socat got {:?}",
            String::from_utf8_lossy(&got)
        );
        // The close line comes after the client's FIN; give it a moment to be printed.
        eventually(Duration::from_secs(10), "the socat close line", || {
            app.output().0.contains("13 bytes in, 13 bytes out")
        })?;
        let (out, stdout, stderr) = app.stop()?;
        check!(out.status.success(), "exit {:?}: {stderr}", out.status);
        check!(
            stdout.starts_with("echo listening on 0.0.0.0:7 (tapnet on tap0 (10.0.0.2/24))"),
            "first line: {stdout}"
        );
        check!(
            stdout.contains("open  10.0.0.2:7 <- 10.0.0.1:"),
            "no open line with both endpoints:\n{stdout}"
        );
        check!(
            stdout
                .lines()
                .any(|l| l.starts_with("close 10.0.0.2:7 <- 10.0.0.1:")
                    && l.contains(": 26 bytes in, 26 bytes out, ")),
            "no close line for nc with both endpoints and counts:\n{stdout}"
        );
        Ok(())
    })
}

fn echo_concurrent() -> TestResult {
    const CLIENTS: usize = 100;
    const SIZE: usize = 1 << 20;
    in_netns(|| {
        let app = App::on_tap(&["echo"])?;
        app.wait_listening(echo_addr())?;
        let start = Instant::now();
        let results: Vec<Result<(), String>> = thread::scope(|s| {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    s.spawn(move || -> Result<(), String> {
                        let mut rng = fastrand::Rng::with_seed(i as u64);
                        let data: Vec<u8> = (0..SIZE).map(|_| rng.u8(..)).collect();
                        let got = round_trip(echo_addr(), &data)
                            .map_err(|e| format!("client {i}: {e:?}"))?;
                        if got != data {
                            let at = got.iter().zip(&data).position(|(a, b)| a != b);
                            return Err(format!(
                                "client {i}: got {} bytes back, first difference at {at:?}",
                                got.len()
                            ));
                        }
                        Ok(())
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|c| c.join().unwrap_or_else(|_| Err("client panicked".into())))
                .collect()
        });
        let took = start.elapsed();
        let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        check!(
            failures.is_empty(),
            "{} of {CLIENTS} clients failed: {:?}\ntapnet's stderr ends:\n{}",
            failures.len(),
            &failures[..failures.len().min(5)],
            tail(&app.output().1, 30)
        );
        check!(took < Duration::from_secs(120), "100 x 1 MiB took {took:?}");
        let want = format!(": {SIZE} bytes in, {SIZE} bytes out, ");
        eventually(Duration::from_secs(10), "100 close lines", || {
            app.output().0.matches(want.as_str()).count() == CLIENTS
        })?;
        let (out, _, stderr) = app.stop()?;
        check!(out.status.success(), "exit {:?}: {stderr}", out.status);
        eprintln!("100 concurrent clients x 1 MiB echoed in {took:?}");
        Ok(())
    })
}

fn echo_once() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["echo", "--once"])?;
        // Not wait_listening: its probe would be the one client.
        eventually(Duration::from_secs(10), "the listening line", || {
            app.output().0.contains("echo listening on")
        })?;
        let got = round_trip(echo_addr(), b"just once")?;
        check!(
            got == b"just once",
            "got {:?}",
            String::from_utf8_lossy(&got)
        );
        let (out, stdout, stderr) = app.wait(Duration::from_secs(10))?;
        check!(
            out.status.code() == Some(0),
            "exit {:?}: {stderr}",
            out.status
        );
        check!(
            stdout.contains("for one connection") && stdout.contains(": 9 bytes in, 9 bytes out, "),
            "stdout: {stdout}"
        );
        Ok(())
    })
}

fn echo_trace() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["echo", "--once", "--trace"])?;
        eventually(Duration::from_secs(10), "the listening line", || {
            app.output().0.contains("echo listening on")
        })?;
        let got = round_trip(echo_addr(), b"traced")?;
        check!(got == b"traced", "got {:?}", String::from_utf8_lossy(&got));
        let (_, _, stderr) = app.wait(Duration::from_secs(10))?;
        let has = |parts: &[&str]| stderr.lines().any(|l| parts.iter().all(|p| l.contains(p)));
        for parts in [
            &[
                "<",
                "10.0.0.1:",
                "→ 10.0.0.2:7",
                "[S]",
                "seq 0 ",
                "mss 1460",
            ][..],
            &[">", "10.0.0.2:7", "[S.]", "ack 1 "],
            &["<", "[P.]", "seq 1:7 ", "len 6"],
            &[">", "seq 1:7 ", "len 6"],
            &["LISTEN → SYN-RECEIVED (SYN received)"],
            &["SYN-RECEIVED → ESTABLISHED (ACK of our SYN received)"],
            &["ESTABLISHED → CLOSE-WAIT (FIN received)"],
            &["LAST-ACK → CLOSED (ACK of our FIN received)"],
        ] {
            check!(has(parts), "no trace line with {parts:?} in:\n{stderr}");
        }
        Ok(())
    })
}

fn echo_kernel() -> TestResult {
    in_netns(|| {
        let app = App::spawn(&["echo", "--kernel", "--port", "7007"])?;
        app.wait_listening("127.0.0.1:7007".parse()?)?;
        let input = b"kernel echo\n";
        let got = pipe_through(
            Command::new("nc").args(["-N", "-w", "10", "127.0.0.1", "7007"]),
            input,
        )?;
        check!(got == input, "nc got {:?}", String::from_utf8_lossy(&got));
        eventually(Duration::from_secs(10), "the nc close line", || {
            app.output().0.contains(": 12 bytes in, 12 bytes out, ")
        })?;
        let (out, stdout, stderr) = app.stop()?;
        check!(out.status.success(), "exit {:?}: {stderr}", out.status);
        check!(
            stdout.starts_with("echo listening on 0.0.0.0:7007 (the kernel's sockets)"),
            "stdout: {stdout}"
        );
        check!(
            stdout.contains("close 127.0.0.1:7007 <- 127.0.0.1:"),
            "stdout: {stdout}"
        );
        Ok(())
    })
}

/// The book's ExampleMonitor: the client sends "Test\n"; the log shows it read, then
/// written back, each with its direction and both endpoints. Once on stdout, once with
/// `--log FILE`.
fn monitor_log() -> TestResult {
    let dir = TempDir::new("monitor")?;
    let file = dir.join("monitor.log");
    let file_arg = file.to_string_lossy().into_owned();
    for to_file in [false, true] {
        in_netns(|| {
            let mut args = vec!["monitor"];
            if to_file {
                args.extend(["--log", &file_arg]);
            }
            let app = App::on_tap(&args)?;
            app.wait_listening(echo_addr())?;
            let mut conn = TcpStream::connect_timeout(&echo_addr(), Duration::from_secs(10))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            conn.write_all(b"Test\n")?;
            let mut back = [0u8; 5];
            conn.read_exact(&mut back)?;
            check!(&back == b"Test\n", "echoed {back:?}");
            let port = conn.local_addr()?.port();
            conn.shutdown(Shutdown::Write)?;
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest)?;
            check!(rest.is_empty(), "more after the echo: {rest:?}");
            let read = format!("read  10.0.0.2:7 <- 10.0.0.1:{port}: 5 bytes \"Test\\n\"");
            let write = format!("write 10.0.0.2:7 -> 10.0.0.1:{port}: 5 bytes \"Test\\n\"");
            let closed = format!("close 10.0.0.2:7 <- 10.0.0.1:{port}: 5 bytes in, 5 bytes out");
            let log = || {
                if to_file {
                    std::fs::read_to_string(&file).unwrap_or_default()
                } else {
                    app.output().0
                }
            };
            eventually(Duration::from_secs(10), "the close line", || {
                log().contains(&closed)
            })?;
            let log = log();
            let (out, stdout, stderr) = app.stop()?;
            check!(out.status.success(), "exit {:?}: {stderr}", out.status);
            let lines: Vec<&str> = log.lines().collect();
            let r = lines.iter().position(|l| *l == read);
            let w = lines.iter().position(|l| *l == write);
            check!(
                matches!((r, w), (Some(r), Some(w)) if r < w),
                "the log lacks {read:?} then {write:?}:\n{log}"
            );
            check!(
                stdout.starts_with("monitor listening on 0.0.0.0:7 (tapnet on tap0"),
                "stdout: {stdout}"
            );
            if to_file {
                check!(
                    !stdout.contains("Test") && stdout.contains(&file_arg),
                    "with --log, stdout has: {stdout}"
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `--log /dev/full` fails every write: the data still flows, byte-exact, and the
/// failure is reported once.
fn monitor_failing_log() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["monitor", "--log", "/dev/full"])?;
        app.wait_listening(echo_addr())?;
        let mut rng = fastrand::Rng::with_seed(42);
        for round in 0..3 {
            let data: Vec<u8> = (0..256 << 10).map(|_| rng.u8(..)).collect();
            let got = round_trip(echo_addr(), &data)?;
            check!(
                got == data,
                "round {round}: got {} bytes back, not the {} sent",
                got.len(),
                data.len()
            );
        }
        let (out, stdout, stderr) = app.stop()?;
        check!(out.status.success(), "exit {:?}: {stderr}", out.status);
        check!(stdout.contains("logging to /dev/full"), "stdout: {stdout}");
        let reports = stderr.matches("writing the log to /dev/full").count();
        check!(
            reports == 1 && stderr.contains("No space left on device"),
            "{reports} reports of the failing log:\n{stderr}"
        );
        Ok(())
    })
}

/// `tapnet echo --max-sockets 4`: the listener's sockets count, so four clients are
/// served at once (the two armed LISTEN sockets become connections as the limit nears);
/// a fifth client's SYNs are dropped and its connect times out, the four still echo,
/// and once one closes a new client is served.
fn echo_max_sockets() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["echo", "--max-sockets", "4"])?;
        app.wait_listening(echo_addr())?;
        let echo_one = |c: &mut TcpStream, tag: &[u8]| -> std::io::Result<bool> {
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(tag)?;
            let mut got = vec![0; tag.len()];
            c.read_exact(&mut got)?;
            Ok(got == tag)
        };
        let mut clients = Vec::new();
        for i in 0..4u8 {
            let mut c = TcpStream::connect_timeout(&echo_addr(), Duration::from_secs(5))?;
            check!(echo_one(&mut c, &[b'a' + i])?, "client {i} got no echo");
            clients.push(c);
        }
        let fifth = TcpStream::connect_timeout(&echo_addr(), Duration::from_millis(1500));
        check!(
            fifth.is_err(),
            "a fifth client connected past --max-sockets 4"
        );
        for (i, c) in clients.iter_mut().enumerate() {
            check!(
                echo_one(c, b"still")?,
                "client {i} stopped echoing at the limit"
            );
        }
        drop(clients.pop());
        let mut c = eventually_connect(echo_addr(), Duration::from_secs(5))?;
        check!(echo_one(&mut c, b"after")?, "the new client got no echo");
        let (out, _, stderr) = app.stop()?;
        check!(out.status.success(), "exit {:?}: {stderr}", out.status);
        Ok(())
    })
}

/// Connects to `addr`, retrying until `within` has passed.
fn eventually_connect(addr: SocketAddr, within: Duration) -> Result<TcpStream, Failed> {
    let end = Instant::now() + within;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= end => {
                return Err(format!("connecting to {addr}: {e}").into());
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}
