//! `tapnet ss` against running apps on a TAP in a private namespace, checked field by
//! field: the echo server with two kernel clients, a half-open connection (SYN-RECV), a
//! proxy that leaves a connection in CLOSE-WAIT, `tapnet up` and its control socket's
//! permissions, and no stack at all.
//!
//! Every test has its own `XDG_RUNTIME_DIR`, given to the app and to `tapnet ss` on their
//! command lines' environment, so tests running side by side never see each other.

mod common;

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{TAPNET, tap_up};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tapnet_tests::raw::{self, RawPeer};
use tapnet_tests::{
    Failed, KERNEL_ADDR, STACK_ADDR, TempDir, TestResult, check, eventually, in_netns, plain, root,
    run, run_text, wait_bounded,
};

fn main() {
    tapnet_tests::main(vec![
        plain("ss_help_and_bad_flags", help_and_bad_flags),
        plain("ss_without_a_running_stack_says_so_and_exits_1", no_stack),
        plain(
            "ss_removes_a_stale_socket_and_says_no_stack_runs",
            stale_socket,
        ),
        root(
            "ss_shows_echos_listener_and_two_kernel_clients_field_by_field",
            echo_table,
        ),
        root("ss_marks_a_close_wait_older_than_the_warning", close_wait),
        root("ss_lists_a_half_open_connection_in_syn_recv", half_open),
        root(
            "up_serves_a_0600_control_socket_that_goes_when_it_stops",
            up_socket,
        ),
    ])
}

const WAIT: Duration = Duration::from_secs(10);

/// `tapnet ss ARGS` with `XDG_RUNTIME_DIR=runtime`: exit code, stdout, stderr.
fn ss(runtime: &Path, args: &[&str]) -> Result<(i32, String, String), Failed> {
    run_text(
        Command::new(TAPNET)
            .arg("ss")
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime),
        Duration::from_secs(30),
    )
}

/// `tapnet ss ARGS` that must succeed; its stdout.
fn ss_ok(runtime: &Path, args: &[&str]) -> Result<String, Failed> {
    let (code, out, err) = ss(runtime, args)?;
    check!(code == 0, "ss {args:?}: exit {code}: {err}{out}");
    Ok(out)
}

/// `tapnet ss --json ARGS`, parsed.
fn ss_json(runtime: &Path, args: &[&str]) -> Result<Vec<Value>, Failed> {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = ss_ok(runtime, &all)?;
    let value: Value = serde_json::from_str(&out).map_err(|e| format!("ss --json: {e}:\n{out}"))?;
    match value {
        Value::Array(entries) => Ok(entries),
        other => Err(format!("ss --json is not an array: {other}").into()),
    }
}

/// One table line, split into its five columns.
#[derive(Debug, PartialEq)]
struct Row {
    state: String,
    recv_q: usize,
    send_q: usize,
    local: String,
    peer: String,
}

/// The socket lines of `ss` output: header and detail lines skipped, numbers parsed.
fn rows(out: &str) -> Result<Vec<Row>, Failed> {
    let mut rows = Vec::new();
    for line in out.lines() {
        if line.starts_with("tapnet on ")
            || line.starts_with("State ")
            || line.starts_with('\t')
            || line.starts_with("! ")
        {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        check!(cols.len() == 5, "not five columns: {line:?}\n{out}");
        let number = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("queue {s:?} is not a number in {line:?}"))
        };
        rows.push(Row {
            state: cols[0].into(),
            recv_q: number(cols[1])?,
            send_q: number(cols[2])?,
            local: cols[3].into(),
            peer: cols[4].into(),
        });
    }
    Ok(rows)
}

/// A `tapnet` app on tap0 with its own `XDG_RUNTIME_DIR`. Its output goes to files;
/// dropped without [`Running::stop`], it is killed.
struct Running {
    child: Option<Child>,
    logs: TempDir,
}

impl Running {
    /// Starts `tapnet ARGS --tap tap0 --addr 10.0.0.2/24` on the TAP [`tap_up`] made.
    fn on_tap(args: &[&str], runtime: &Path) -> Result<Running, Failed> {
        let logs = TempDir::new("ss-app")?;
        let child = Command::new(TAPNET)
            .args(args)
            .args(["--tap", "tap0", "--addr", "10.0.0.2/24"])
            .env("XDG_RUNTIME_DIR", runtime)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(logs.join("stdout"))?)
            .stderr(File::create(logs.join("stderr"))?)
            .spawn()?;
        Ok(Running {
            child: Some(child),
            logs,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its control socket, where `tapnet ss` looks for it.
    fn socket(&self, runtime: &Path) -> PathBuf {
        runtime
            .join("tapnet")
            .join(format!("tap0.{}.sock", self.pid()))
    }

    fn output(&self) -> String {
        let read = |name| fs::read_to_string(self.logs.join(name)).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read("stdout"), read("stderr"))
    }

    /// Waits until its control socket exists.
    fn wait_control(&self, runtime: &Path) -> TestResult {
        let path = self.socket(runtime);
        eventually(WAIT, "the control socket", || path.exists())
            .map_err(|e| format!("{}; {}", e.message().unwrap_or_default(), self.output()).into())
    }

    /// SIGTERM, then waits (bounded) for it to exit.
    fn stop(mut self) -> Result<Output, Failed> {
        let child = self.child.take().ok_or("not running")?;
        let signalled = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let out = wait_bounded(child, WAIT)?;
        signalled?;
        Ok(out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connects to `addr`, retrying (bounded) until the app listens.
fn connect(addr: SocketAddr) -> Result<TcpStream, Failed> {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(conn) => {
                conn.set_read_timeout(Some(WAIT))?;
                return Ok(conn);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("connecting to {addr}: {e}").into());
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn help_and_bad_flags() -> TestResult {
    let out = run(Command::new(TAPNET).args(["ss", "--help"]), WAIT)?;
    let help = String::from_utf8_lossy(&out.stdout);
    check!(out.status.success(), "ss --help: {:?}", out.status);
    for text in [
        "--tap",
        "--pid",
        "-i",
        "-l",
        "-a",
        "--json",
        "XDG_RUNTIME_DIR",
        "Example",
    ] {
        check!(help.contains(text), "ss --help lacks {text}:\n{help}");
    }
    for args in [
        &["ss", "--tap", "tap0", "--pid", "1"][..],
        &["ss", "-l", "-a"],
        &["ss", "--pid", "x"],
        &["ss", "--bogus"],
    ] {
        let out = run(Command::new(TAPNET).args(args), WAIT)?;
        check!(
            out.status.code() == Some(2),
            "{args:?}: {:?}, not 2",
            out.status
        );
    }
    Ok(())
}

fn no_stack() -> TestResult {
    let runtime = TempDir::new("ss-none")?;
    // No tapnet directory at all, then an empty one: both mean no stack runs.
    for make in [false, true] {
        if make {
            fs::create_dir(runtime.join("tapnet"))?;
        }
        for args in [
            &[][..],
            &["-a", "--json"],
            &["--tap", "tap0"],
            &["--pid", "1"],
        ] {
            let (code, out, err) = ss(&runtime.0, args)?;
            check!(code == 1, "ss {args:?}: exit {code}, not 1: {out}{err}");
            check!(out.is_empty(), "ss {args:?} printed {out:?}");
            check!(
                err.contains("no running tapnet stack")
                    && err.contains(&format!(
                        "no control socket in {}",
                        runtime.join("tapnet").display()
                    )),
                "ss {args:?}: {err}"
            );
        }
    }
    Ok(())
}

fn stale_socket() -> TestResult {
    let runtime = TempDir::new("ss-stale")?;
    let dir = runtime.join("tapnet");
    fs::create_dir(&dir)?;
    // A process that has exited, and a socket nobody serves under a live pid (ours).
    let mut gone = Command::new("true").spawn()?;
    gone.wait()?;
    let dead = dir.join(format!("tap0.{}.sock", gone.id()));
    let refused = dir.join(format!("tap1.{}.sock", std::process::id()));
    for path in [&dead, &refused] {
        drop(UnixListener::bind(path)?);
        check!(path.exists());
    }
    let (code, out, err) = ss(&runtime.0, &["-a"])?;
    check!(code == 1, "exit {code}: {out}{err}");
    check!(err.contains("no running tapnet stack"), "{err}");
    check!(!dead.exists(), "the dead process's socket is still there");
    check!(!refused.exists(), "the socket nobody serves is still there");
    Ok(())
}

/// A SYN from an address nobody answers for (10.0.0.77, made up, in the namespace's own
/// subnet): the stack's SYN-ACK waits on an ARP reply that never comes, so the connection
/// stays half-open, and `ss` lists it in SYN-RECV as it lists the kernel's.
fn half_open() -> TestResult {
    const STRANGER_MAC: [u8; 6] = [0x02, 0x5f, 0x10, 0x0d, 0x00, 0x02];
    let runtime = TempDir::new("ss-half-open")?;
    in_netns(|| {
        tap_up()?;
        let app = Running::on_tap(&["echo"], &runtime.0)?;
        let mut peer = RawPeer::open("tap0")?;
        let echo = SocketAddrV4::new(STACK_ADDR, 7);
        // A kernel client first: the app is up, and the raw peer learns its MAC.
        let _client = connect(echo.into())?;
        let frame = peer
            .recv_matching(WAIT, |_| true)?
            .ok_or("the app sent nothing the raw peer saw")?;
        let stack_mac: [u8; 6] = frame[6..12].try_into()?;
        app.wait_control(&runtime.0)?;
        let stranger = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 4242);
        peer.send(&raw::syn(STRANGER_MAC, stack_mac, stranger, echo))?;
        let want = Row {
            state: "SYN-RECV".into(),
            recv_q: 0,
            send_q: 0,
            local: echo.to_string(),
            peer: stranger.to_string(),
        };
        let mut out = String::new();
        eventually(WAIT, "a SYN-RECV line for the stranger", || {
            out = ss_ok(&runtime.0, &[]).unwrap_or_default();
            rows(&out).is_ok_and(|r| r.contains(&want))
        })
        .map_err(|e| format!("{}:\n{out}", e.message().unwrap_or_default()))?;
        let json = ss_json(&runtime.0, &[])?;
        check!(
            json.iter().any(|e| e["state"] == "SYN-RECEIVED"
                && e["peer"] == stranger.to_string().as_str()),
            "{json:#?}"
        );
        app.stop()?;
        Ok(())
    })
}

fn echo_table() -> TestResult {
    let runtime = TempDir::new("ss-echo")?;
    in_netns(|| {
        tap_up()?;
        let app = Running::on_tap(&["echo"], &runtime.0)?;
        let echo = SocketAddr::from((STACK_ADDR, 7));
        let mut talker = connect(echo)?;
        let quiet = connect(echo)?;
        talker.write_all(b"hello, ss")?;
        let mut back = [0u8; 9];
        talker.read_exact(&mut back)?;
        check!(&back == b"hello, ss", "echoed {back:?}");
        app.wait_control(&runtime.0)?;
        // The table lists connections in address order.
        let mut ports = [talker.local_addr()?, quiet.local_addr()?];
        ports.sort();
        let pid = app.pid().to_string();

        // The echo's ACK may still be on its way: wait (bounded) for empty queues.
        let mut out = String::new();
        eventually(WAIT, "both connections with empty queues", || {
            out = ss_ok(&runtime.0, &["-a", "--tap", "tap0"]).unwrap_or_default();
            rows(&out).is_ok_and(|r| {
                r.len() == 3
                    && r.iter()
                        .all(|r| r.state == "LISTEN" || (r.recv_q == 0 && r.send_q == 0))
            })
        })
        .map_err(|e| format!("{}:\n{out}", e.message().unwrap_or_default()))?;
        let lines: Vec<&str> = out.lines().collect();
        check!(
            lines[0] == format!("tapnet on tap0, pid {pid}"),
            "header {:?}",
            lines[0]
        );
        check!(lines[1].starts_with("State "), "titles {:?}", lines[1]);
        let table = rows(&out)?;
        check!(
            table[0]
                == Row {
                    state: "LISTEN".into(),
                    recv_q: 0,
                    send_q: stack::DEFAULT_BACKLOG,
                    local: "0.0.0.0:7".into(),
                    peer: "0.0.0.0:*".into(),
                },
            "{table:?}"
        );
        for (row, client) in table[1..].iter().zip(ports) {
            check!(
                *row == Row {
                    state: "ESTAB".into(),
                    recv_q: 0,
                    send_q: 0,
                    local: echo.to_string(),
                    peer: client.to_string(),
                },
                "{row:?} is not the connection from {client}:\n{out}"
            );
        }
        // Columns line up: addresses start under their titles.
        for title in ["Local Address", "Peer Address"] {
            let at = lines[1].find(title).ok_or("no title")?;
            check!(
                lines[2..]
                    .iter()
                    .all(|l| l[at..].starts_with(|c: char| c.is_ascii_digit())
                        && l[..at].ends_with(' ')),
                "{title} misaligned:\n{out}"
            );
        }

        // Default: connections only; -l: listeners only.
        let conns = rows(&ss_ok(&runtime.0, &[])?)?;
        check!(
            conns.len() == 2 && conns.iter().all(|r| r.state == "ESTAB"),
            "{conns:?}"
        );
        let listening = rows(&ss_ok(&runtime.0, &["-l", "--pid", &pid])?)?;
        check!(
            listening.len() == 1 && listening[0] == table[0],
            "{listening:?}"
        );

        // --json: the same entries, with the details.
        let json = ss_json(&runtime.0, &["-a"])?;
        check!(json.len() == 3, "{json:#?}");
        for (entry, row) in json.iter().zip(&table) {
            let state = if row.state == "ESTAB" {
                "ESTABLISHED"
            } else {
                "LISTEN"
            };
            check!(entry["state"] == state, "{entry}");
            check!(
                entry["recv_q"] == row.recv_q && entry["send_q"] == row.send_q,
                "{entry}"
            );
            check!(entry["local"] == row.local.as_str(), "{entry}");
            check!(
                entry["tap"] == "tap0" && entry["pid"] == app.pid(),
                "{entry}"
            );
            check!(entry["close_wait_overdue"] == false, "{entry}");
        }
        check!(
            json[0]["peer"].is_null() && json[0]["info"].is_null(),
            "{}",
            json[0]
        );
        for (entry, client) in json[1..].iter().zip(ports) {
            check!(entry["peer"] == client.to_string().as_str(), "{entry}");
            let info = &entry["info"];
            check!(
                info["peer_window"].as_u64().is_some_and(|w| w > 0),
                "{entry}"
            );
            check!(
                info["recv_window"].as_u64().is_some_and(|w| w > 0),
                "{entry}"
            );
            check!(
                info["keepalive"].is_object() || info["keepalive"].is_null(),
                "{entry}"
            );
        }
        // The talker's connection carried data both ways: its RTT is known.
        let talked = talker.local_addr()?.to_string();
        let rtt = json
            .iter()
            .find(|e| e["peer"] == talked.as_str())
            .and_then(|e| e["info"]["rtt_ms"].as_f64());
        check!(rtt.is_some_and(|r| r > 0.0 && r < 1000.0), "rtt {rtt:?}");

        // -i: a details line under each connection.
        let detailed = ss_ok(&runtime.0, &["-i"])?;
        let details: Vec<&str> = detailed.lines().filter(|l| l.starts_with('\t')).collect();
        check!(details.len() == 2, "{detailed}");
        check!(
            details[0].contains("rtt:") && details[0].contains("ms rto:"),
            "{detailed}"
        );
        for d in &details {
            for key in [
                "snd_wnd:",
                "rcv_wnd:",
                "retrans:0 fast:0",
                "keepalive:",
                "linger:",
                "in_state:",
                "zwp:0",
            ] {
                check!(d.contains(key), "{key} missing in {d:?}");
            }
        }

        // Filters that match nothing.
        for args in [&["--tap", "tap9"][..], &["--pid", "1"]] {
            let (code, _, err) = ss(&runtime.0, args)?;
            check!(
                code == 1 && err.contains("no running tapnet stack"),
                "{args:?}: {code} {err}"
            );
        }

        drop((talker, quiet));
        let socket = app.socket(&runtime.0);
        let out = app.stop()?;
        check!(out.status.success(), "echo exited {:?}", out.status);
        check!(!socket.exists(), "the control socket outlived echo");
        Ok(())
    })
}

fn close_wait() -> TestResult {
    let runtime = TempDir::new("ss-close-wait")?;
    in_netns(|| {
        tap_up()?;
        let upstream = TcpListener::bind((KERNEL_ADDR, 9000))?;
        upstream.set_nonblocking(true)?;
        let app = Running::on_tap(
            &[
                "proxy",
                "--listen",
                "8080",
                "--to",
                "10.0.0.1:9000",
                "--close-wait-warning",
                "1s",
            ],
            &runtime.0,
        )?;
        let client = connect(SocketAddr::from((STACK_ADDR, 8080)))?;
        // The proxy dials the upstream for this client; the upstream holds it, and never
        // sends nor closes.
        let deadline = Instant::now() + WAIT;
        let _held = loop {
            match upstream.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("the proxy's upstream connection: {e}").into()),
            }
        };
        // The client's FIN: the proxy reads end of stream and passes the FIN upstream, but
        // keeps its side to the client open while the upstream may still answer.
        client.shutdown(Shutdown::Write)?;
        app.wait_control(&runtime.0)?;
        let me = client.local_addr()?.to_string();
        let find = |json: &[Value]| {
            json.iter()
                .find(|e| e["peer"] == me.as_str())
                .cloned()
                .ok_or_else(|| format!("no entry for {me}: {json:#?}"))
        };
        let mut json = Vec::new();
        eventually(WAIT, "CLOSE-WAIT", || {
            json = ss_json(&runtime.0, &[]).unwrap_or_default();
            find(&json).is_ok_and(|e| e["state"] == "CLOSE-WAIT")
        })
        .map_err(|e| format!("{}: {json:#?}", e.message().unwrap_or_default()))?;
        // Overdue exactly when it has sat in CLOSE-WAIT for the 1 s warning.
        let entry = find(&json)?;
        let age = entry["info"]["time_in_state_ms"].as_f64().ok_or("no age")?;
        check!(entry["close_wait_overdue"] == (age >= 1000.0), "{entry}");
        check!(
            entry["local"] == "10.0.0.2:8080" && entry["orphan"] == false,
            "{entry}"
        );
        thread::sleep(Duration::from_millis(1100));
        let entry = find(&ss_json(&runtime.0, &[])?)?;
        check!(
            entry["state"] == "CLOSE-WAIT" && entry["close_wait_overdue"] == true,
            "{entry}"
        );
        // The proxy's own connection upstream has sent its FIN, and waits for the
        // upstream's.
        let json = ss_json(&runtime.0, &[])?;
        let up = json
            .iter()
            .find(|e| e["peer"] == "10.0.0.1:9000")
            .ok_or_else(|| format!("no upstream connection: {json:#?}"))?;
        check!(
            up["state"] == "FIN-WAIT-2" && up["close_wait_overdue"] == false,
            "{up}"
        );

        let out = ss_ok(&runtime.0, &[])?;
        let row = rows(&out)?
            .into_iter()
            .find(|r| r.peer == me)
            .ok_or_else(|| format!("no row for {me}:\n{out}"))?;
        check!(
            row.state == "CLOSE-WAIT!" && row.local == "10.0.0.2:8080",
            "{row:?}"
        );
        check!(out.contains("! in CLOSE-WAIT longer than 1.0s"), "{out}");
        let fin_wait = rows(&out)?
            .into_iter()
            .find(|r| r.peer == "10.0.0.1:9000")
            .ok_or_else(|| format!("no upstream row:\n{out}"))?;
        check!(fin_wait.state == "FIN-WAIT-2", "{fin_wait:?}");
        let detailed = ss_ok(&runtime.0, &["-i"])?;
        check!(
            detailed
                .lines()
                .any(|l| l.starts_with('\t') && l.contains("close-wait ") && l.ends_with("> 1.0s")),
            "{detailed}"
        );
        drop(client);
        app.stop()?;
        Ok(())
    })
}

fn up_socket() -> TestResult {
    let runtime = TempDir::new("ss-up")?;
    in_netns(|| {
        tapnet_tests::ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"])?;
        let app = Running::on_tap(&["up"], &runtime.0)?;
        app.wait_control(&runtime.0)?;
        let socket = app.socket(&runtime.0);
        let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        check!(mode(&socket)? == 0o600, "socket mode {:o}", mode(&socket)?);
        check!(
            mode(&runtime.join("tapnet"))? == 0o700,
            "directory mode {:o}",
            mode(&runtime.join("tapnet"))?
        );
        // A stack with no sockets: the header and titles only.
        let out = ss_ok(&runtime.0, &["-a"])?;
        check!(
            out.lines().collect::<Vec<_>>()
                == [
                    format!("tapnet on tap0, pid {}", app.pid()).as_str(),
                    "State Recv-Q Send-Q Local Address:Port Peer Address:Port",
                ],
            "{out:?}"
        );
        check!(ss_json(&runtime.0, &["-a"])?.is_empty());
        let out = app.stop()?;
        check!(out.status.success(), "up exited {:?}", out.status);
        check!(!socket.exists(), "the control socket outlived up");
        let (code, _, err) = ss(&runtime.0, &[])?;
        check!(
            code == 1 && err.contains("no running tapnet stack"),
            "{code} {err}"
        );
        Ok(())
    })
}
