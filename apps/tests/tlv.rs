//! `tapnet tlv-server` and `tapnet tlv-client` against real peers, inside a private
//! namespace: the server on tapnet with a kernel client that speaks the wire format by
//! hand (so the format itself is checked, not just agreement with our own codec), the
//! client on tapnet with the server on the kernel, and the book's TestMaxPayloadSize
//! end to end: bad messages close only their own connection.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{App, tapnet};
use tapnet_tests::{
    Failed, KERNEL_ADDR, STACK_ADDR, TempDir, TestResult, check, in_netns, plain, root,
};

fn main() {
    tapnet_tests::main(vec![
        plain("help_runs_and_bad_arguments_exit_2", cli),
        root(
            "payloads_round_trip_server_on_tapnet_client_on_the_kernel",
            server_on_tapnet,
        ),
        root(
            "payloads_round_trip_in_order_server_on_the_kernel_client_on_tapnet",
            client_on_tapnet,
        ),
        root(
            "oversized_unknown_and_non_utf8_messages_close_only_their_connection",
            bad_messages,
        ),
    ])
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// One message, laid out by hand: type byte, 4-byte big-endian length, payload.
fn frame(typ: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![typ];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one message by hand: (type, payload).
fn read_frame(s: &mut TcpStream) -> Result<(u8, Vec<u8>), Failed> {
    let mut header = [0u8; 5];
    s.read_exact(&mut header)
        .map_err(|e| format!("reading an echo's header: {e}"))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    check!(len <= 16 << 20, "echo header claims {len} bytes");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)
        .map_err(|e| format!("reading an echo's {len}-byte payload: {e}"))?;
    Ok((header[0], payload))
}

fn connect(addr: SocketAddr) -> Result<TcpStream, Failed> {
    let s =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(4);
    (0..n).map(|_| rng.u8(..)).collect()
}

fn cli() -> TestResult {
    for (sub, options) in [
        (
            "tlv-server",
            &["--port", "--max-payload", "--kernel", "--tap"][..],
        ),
        (
            "tlv-client",
            &[
                "--string",
                "--binary",
                "--file",
                "--max-payload",
                "--timeout",
                "--kernel",
            ],
        ),
    ] {
        let (code, out, err) = tapnet(&[sub, "--help"])?;
        check!(code == 0, "{sub} --help: exit {code}: {err}");
        for option in options {
            check!(out.contains(option), "{sub} --help lacks {option}:\n{out}");
        }
        check!(
            out.contains("Example"),
            "{sub} --help has no example:\n{out}"
        );
    }
    // clap rejects all of these before anything touches a network.
    let cases: &[(&[&str], &str)] = &[
        (&["tlv-client", "10.0.0.1:4000"], "required"),
        (
            &["tlv-client", "10.0.0.1:4000", "--binary", "abc"],
            "odd number",
        ),
        (
            &["tlv-client", "10.0.0.1:4000", "--binary", "0g"],
            "not hex",
        ),
        (&["tlv-client", "nowhere", "--string", "x"], "HOST:PORT"),
        (
            &[
                "tlv-client",
                "10.0.0.1:4000",
                "--string",
                "x",
                "--timeout",
                "0",
            ],
            "above zero",
        ),
        (
            &[
                "tlv-client",
                "10.0.0.1:4000",
                "--string",
                "x",
                "--max-payload",
                "8G",
            ],
            "limit",
        ),
        (&["tlv-server", "--max-payload", "lots"], "invalid size"),
        (&["tlv-server", "--port", "70000"], "--port"),
    ];
    for (args, why) in cases {
        let (code, _, err) = tapnet(args)?;
        check!(code == 2, "{args:?}: exit {code}, not 2; stderr: {err}");
        check!(err.contains(why), "{args:?}: stderr lacks {why:?}: {err}");
        check!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    Ok(())
}

/// The book's TestPayloads with tapnet serving: two Binary values and one String sent
/// in one write come back equal, then a message trickled a byte per segment, then a
/// 1 MiB Binary spanning many segments.
fn server_on_tapnet() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["tlv-server", "--port", "4000"])?;
        let addr = SocketAddr::from((STACK_ADDR, 4000));
        app.wait_listening(addr)?;
        let mut s = connect(addr)?;
        let client = s.local_addr()?;

        let book: [(u8, &[u8]); 3] = [
            (1, b"Clear is better than clever."),
            (2, b"Errors are values."),
            (1, b"Don't panic."),
        ];
        let all: Vec<u8> = book.iter().flat_map(|(t, p)| frame(*t, p)).collect();
        s.write_all(&all)?;
        for (typ, payload) in book {
            let (t, p) = read_frame(&mut s)?;
            check!(
                (t, p.as_slice()) == (typ, payload),
                "sent type {typ} {payload:?}, echo is type {t} {p:?}"
            );
        }

        // The decoder must wait for the declared length however it arrives.
        for b in frame(2, b"trickled") {
            s.write_all(&[b])?;
            std::thread::sleep(Duration::from_millis(5));
        }
        let echo = read_frame(&mut s)?;
        check!(echo == (2, b"trickled".to_vec()), "trickled echo: {echo:?}");

        let big = random_bytes(1 << 20);
        s.write_all(&frame(1, &big))?;
        let (t, p) = read_frame(&mut s)?;
        check!(
            t == 1 && p == big,
            "1 MiB Binary echo differs (type {t}, {} bytes)",
            p.len()
        );
        drop(s);
        let closed = format!("{client}: closed after 5 message(s)");
        tapnet_tests::eventually(TIMEOUT, "the server to log the clean close", || {
            app.output().1.contains(&closed)
        })?;

        let (_, out, err) = app.stop()?;
        for line in [
            format!(
                "{client} Binary (28 bytes) {}",
                hex(b"Clear is better than clever")
            ),
            format!("{client} String (18 bytes) \"Errors are values.\""),
            format!("{client} Binary (12 bytes) {}", hex(b"Don't panic.")),
            format!("{client} String (8 bytes) \"trickled\""),
            format!("{client} Binary (1048576 bytes) {}...", hex(&big[..32])),
        ] {
            check!(
                out.contains(&line),
                "server output lacks {line:?}:\n{out}\n{err}"
            );
        }
        Ok(())
    })
}

/// The reverse: the server on the kernel, `tlv-client` on tapnet over the TAP. Messages
/// go out in command-line order, mixing the three flags; a message over the server's
/// limit fails the client with exit 1.
fn client_on_tapnet() -> TestResult {
    in_netns(|| {
        common::tap_up()?;
        let server = App::spawn(&["tlv-server", "--kernel", "--port", "4001"])?;
        server.wait_listening(SocketAddr::from((KERNEL_ADDR, 4001)))?;
        let dir = TempDir::new("tlv")?;
        let file = dir.join("payload.bin");
        let contents = random_bytes(200_000);
        std::fs::write(&file, &contents)?;
        let file_arg = file.to_string_lossy().into_owned();
        let on_tap = ["--tap", "tap0", "--addr", "10.0.0.2/24"];
        let target = format!("{KERNEL_ADDR}:4001");
        let clear = hex(b"Clear is better than clever.");
        let panic = hex(b"Don't panic.");
        let mut args = vec![
            "tlv-client",
            &target,
            "--binary",
            &clear,
            "--string",
            "Errors are values.",
            "--binary",
            &panic,
            "--file",
            &file_arg,
            "--string",
            "last",
        ];
        args.extend(on_tap);
        let (code, out, err) = tapnet(&args)?;
        check!(code == 0, "tlv-client exit {code}:\n{out}\n{err}");
        check!(
            out.contains("5 of 5 echoes matched"),
            "client output:\n{out}\n{err}"
        );

        let (_, sout, serr) = server.stop()?;
        let seen: Vec<&str> = sout
            .lines()
            .filter(|l| l.starts_with(&format!("{STACK_ADDR}:")))
            .collect();
        let expected = [
            format!("Binary (28 bytes) {clear}"),
            "String (18 bytes) \"Errors are values.\"".to_string(),
            format!("Binary (12 bytes) {panic}"),
            format!("Binary (200000 bytes) {}...", hex(&contents[..32])),
            "String (4 bytes) \"last\"".to_string(),
        ];
        check!(
            seen.len() == expected.len()
                && seen
                    .iter()
                    .zip(&expected)
                    .all(|(line, want)| line.ends_with(want.as_str())),
            "server saw, in order:\n{}\nexpected:\n{}\n{serr}",
            seen.join("\n"),
            expected.join("\n")
        );

        // Over the server's --max-payload: the server closes, the client says so.
        let small = App::spawn(&[
            "tlv-server",
            "--kernel",
            "--port",
            "4002",
            "--max-payload",
            "1000",
        ])?;
        small.wait_listening(SocketAddr::from((KERNEL_ADDR, 4002)))?;
        let target = format!("{KERNEL_ADDR}:4002");
        let too_big = hex(&[7u8; 2000]);
        let mut args = vec![
            "tlv-client",
            &target,
            "--binary",
            &too_big,
            "--max-payload",
            "1M",
        ];
        args.extend(on_tap);
        let (code, out, err) = tapnet(&args)?;
        check!(
            code == 1,
            "over-limit client: exit {code}, not 1:\n{out}\n{err}"
        );
        check!(
            err.contains("message 1"),
            "client stderr does not name the message:\n{err}"
        );
        // Over the client's own --max-payload: refused before sending.
        let (code, _, err) = tapnet(&[
            "tlv-client",
            &target,
            "--kernel",
            "--string",
            "eleven byte",
            "--max-payload",
            "10",
        ])?;
        check!(
            code == 1 && err.contains("over --max-payload 10"),
            "client's own limit: exit {code}: {err}"
        );
        let (_, _, serr) = small.stop()?;
        check!(
            serr.contains("payload of 2000 bytes exceeds the maximum of 1000 bytes"),
            "server did not log the over-limit message:\n{serr}"
        );
        Ok(())
    })
}

/// The `tapnet` child of this process whose command line holds all of `words`.
fn child_pid(words: &[&str]) -> Option<u32> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if words.iter().all(|w| args.iter().any(|a| a == w)) {
                return Some(pid);
            }
        }
    }
    None
}

/// A process's resident set size in bytes.
fn rss(pid: u32) -> Result<u64, Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// Waits for the server to end the connection: EOF or a reset, not silence.
fn closed_by_server(s: &mut TcpStream, what: &str) -> TestResult {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
        Ok(n) => Err(format!("{what}: the server answered {n} bytes instead of closing").into()),
        Err(e) => Err(format!("{what}: the server kept the connection open: {e}").into()),
    }
}

/// The book's TestMaxPayloadSize, end to end: a header claiming 1 GB is refused at once
/// (a decoder that believed it would wait for the gigabyte, and might allocate it), and
/// so are an unknown type and a String that is not UTF-8. Each closes only its own
/// connection: a client connected all along still gets its echoes.
fn bad_messages() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["tlv-server", "--port", "4003"])?;
        let addr = SocketAddr::from((STACK_ADDR, 4003));
        app.wait_listening(addr)?;
        let pid = child_pid(&["tlv-server", "4003"]).ok_or("cannot find the server's pid")?;

        let mut good = connect(addr)?;
        let mut exchange = |n: usize| -> TestResult {
            let msg = format!("still here {n}");
            good.write_all(&frame(2, msg.as_bytes()))?;
            let echo = read_frame(&mut good)?;
            check!(
                echo == (2, msg.clone().into_bytes()),
                "good client's echo {n}: {echo:?}"
            );
            Ok(())
        };
        exchange(0)?;

        let cases: [(&str, Vec<u8>, &str); 3] = [
            (
                "1 GB header",
                vec![1, 0x40, 0, 0, 0],
                "message 1: payload of 1073741824 bytes exceeds the maximum of 10485760 bytes",
            ),
            (
                "unknown type",
                vec![7, 0, 0, 0, 1, b'x'],
                "message 1: unknown message type 7",
            ),
            (
                "non-UTF-8 String",
                frame(2, &[b'o', b'k', 0xff, 0xfe]),
                "message 1: String payload is not valid UTF-8",
            ),
        ];
        let mut logged = Vec::new();
        for (n, (what, bytes, error)) in cases.into_iter().enumerate() {
            let mut bad = connect(addr)?;
            bad.write_all(&bytes)?;
            closed_by_server(&mut bad, what)?;
            logged.push(format!("{}: {error}", bad.local_addr()?));
            exchange(n + 1)?;
        }

        let rss = rss(pid)?;
        check!(
            rss < 200 << 20,
            "server RSS is {} MiB after the 1 GB header",
            rss >> 20
        );

        let (_, _, err) = app.stop()?;
        for line in logged {
            check!(err.contains(&line), "server log lacks {line:?}:\n{err}");
        }
        Ok(())
    })
}
