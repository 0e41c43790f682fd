//! The narrated demos `handshake`, `zero-window`, `nagle` and `retransmit`, run as a user
//! runs them: each must exit 0 and its trace must show the events the demo is about.
//! The assertions read the segment and state lines, never the narration.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tapnet_tests::{STACK_ADDR, TempDir, TestResult, check, in_netns, pcap_frames, plain, root};

mod common;

use common::{App, tapnet_within};

fn main() {
    tapnet_tests::main(vec![
        plain("demo_without_a_name_lists_all_nine_demos", list),
        plain(
            "handshake_shows_syn_synack_ack_with_options_and_the_states",
            handshake,
        ),
        plain(
            "zero_window_closes_the_window_probes_and_delivers_everything",
            zero_window,
        ),
        plain("nagle_on_sends_fewer_segments_than_nodelay", nagle),
        plain(
            "retransmit_shows_a_fast_retransmit_and_an_rto_and_delivers_everything",
            retransmit,
        ),
        plain("retransmit_with_pcap_writes_the_frames", pcap),
        plain("a_running_demo_shows_its_stacks_in_tapnet_ss", demo_in_ss),
        root(
            "zero_window_on_a_tap_closes_the_window_to_a_kernel_writer",
            zero_window_tap,
        ),
        root("nagle_on_a_tap_says_it_needs_both_stacks", nagle_tap),
        root("handshake_on_a_tap_takes_a_kernel_client", handshake_tap),
    ])
}

/// While a demo runs, `tapnet ss` finds both of its stacks by their names.
fn demo_in_ss() -> TestResult {
    use std::process::{Command, Stdio};
    let runtime = TempDir::new("demo-ss")?;
    let env = ("XDG_RUNTIME_DIR", runtime.join(""));
    // The keepalive demo keeps its connection idle for seconds.
    let mut child = Command::new(common::TAPNET)
        .args(["demo", "keepalive", "--seed", "1"])
        .env(env.0, &env.1)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut table = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !table.contains("ESTAB") {
        std::thread::sleep(Duration::from_millis(100));
        let out = tapnet_tests::run(
            Command::new(common::TAPNET)
                .args(["ss", "-a", "--tap", "demo-server"])
                .env(env.0, &env.1),
            Duration::from_secs(10),
        )?;
        table = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let _ = child.kill();
    let _ = child.wait();
    let has = |parts: &[&str]| table.lines().any(|l| parts.iter().all(|p| l.contains(p)));
    check!(
        table.contains("tapnet on demo-server")
            && has(&["LISTEN", "10.0.0.2:7", "0.0.0.0:*"])
            && has(&["ESTAB", "10.0.0.2:7", "10.0.0.1:"]),
        "tapnet ss --tap demo-server during the demo:\n{table}"
    );
    Ok(())
}

/// Runs `tapnet demo ARGS --seed 1` and returns its stdout, failing unless it exits 0.
fn demo(args: &[&str]) -> Result<String, tapnet_tests::Failed> {
    let mut all = vec!["demo"];
    all.extend(args);
    all.extend(["--seed", "1"]);
    let (code, out, err) = tapnet_within(&all, Duration::from_secs(30))?;
    check!(
        code == 0,
        "tapnet {} exited {code}\nstderr: {err}\nstdout: {out}",
        all.join(" ")
    );
    Ok(out)
}

/// One segment line of the trace.
#[derive(Debug)]
struct Seg {
    time: f64,
    /// "client" or "server".
    who: String,
    /// True for a segment the stack sent (`>`), false for one it received (`<`).
    out: bool,
    src: String,
    flags: String,
    seq: u64,
    /// One past the last data byte (`seq` when there is none).
    end: u64,
    ack: Option<u64>,
    win: u64,
    len: u64,
    /// What follows `len N`: options and the watch's note.
    rest: String,
}

/// The segment lines of a trace; other lines (state, narration) are skipped.
fn segments(trace: &str) -> Vec<Seg> {
    trace.lines().filter_map(segment).collect()
}

fn segment(line: &str) -> Option<Seg> {
    let words: Vec<&str> = line.split_whitespace().collect();
    // time who dir src → dst [flags] seq S ack A win W len L rest...
    if words.len() < 15 || !matches!(words[2], ">" | "<") || words[4] != "→" {
        return None;
    }
    let flags = words[6].strip_prefix('[')?.strip_suffix(']')?.to_string();
    let (seq, end) = match words[8].split_once(':') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let s = words[8].parse().ok()?;
            (s, s)
        }
    };
    let after_len = line.split_once(" len ")?.1.trim_start();
    let rest = after_len
        .split_once(' ')
        .map_or("", |(_, r)| r)
        .trim()
        .to_string();
    Some(Seg {
        time: words[0].parse().ok()?,
        who: words[1].to_string(),
        out: words[2] == ">",
        src: words[3].to_string(),
        flags,
        seq,
        end,
        ack: words[10].parse().ok(),
        win: words[12].parse().ok()?,
        len: words[14].parse().ok()?,
        rest,
    })
}

fn list() -> TestResult {
    let (code, out, err) = tapnet_within(&["demo"], Duration::from_secs(10))?;
    check!(code == 0, "exit {code}: {err}");
    for name in [
        "handshake",
        "close",
        "zero-window",
        "close-wait",
        "linger",
        "keepalive",
        "nagle",
        "retransmit",
        "ping",
    ] {
        check!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "`tapnet demo` does not list {name}:\n{out}"
        );
    }
    Ok(())
}

fn handshake() -> TestResult {
    let out = demo(&["handshake"])?;
    let segs = segments(&out);
    let sent = |who: &str, flags: &str| {
        segs.iter()
            .position(|s| s.who == who && s.out && s.flags == flags)
    };
    let syn = sent("client", "S").ok_or(format!("no SYN sent by the client:\n{out}"))?;
    let syn_ack = sent("server", "S.").ok_or(format!("no SYN-ACK from the server:\n{out}"))?;
    let ack = sent("client", ".").ok_or(format!("no ACK from the client:\n{out}"))?;
    check!(
        syn < syn_ack && syn_ack < ack,
        "the handshake's segments are out of order:\n{out}"
    );
    for i in [syn, syn_ack] {
        let s = &segs[i];
        check!(
            s.rest.contains("mss ") && s.rest.contains("ws "),
            "[{}] offers no mss or ws option: {:?}",
            s.flags,
            s.rest
        );
        check!(s.seq == 0, "a SYN's relative seq is {}, not 0", s.seq);
    }
    check!(
        segs[syn_ack].ack == Some(1) && segs[ack].ack == Some(1),
        "the SYN-ACK and ACK do not acknowledge seq 1:\n{out}"
    );
    for (who, change) in [
        ("client", "CLOSED → SYN-SENT"),
        ("server", "LISTEN → SYN-RECEIVED"),
        ("client", "SYN-SENT → ESTABLISHED"),
        ("server", "SYN-RECEIVED → ESTABLISHED"),
    ] {
        check!(
            out.lines()
                .any(|l| l.contains(" ◆ ") && l.contains(who) && l.contains(change)),
            "no {who} state line {change}:\n{out}"
        );
    }
    Ok(())
}

/// The demo's data: 32 KiB, so the last byte's relative sequence number is 32768.
const ZERO_WINDOW_TOTAL: u64 = 32 << 10;

fn zero_window() -> TestResult {
    let out = demo(&["zero-window"])?;
    let segs = segments(&out);
    let closed = segs
        .iter()
        .position(|s| s.who == "server" && s.out && s.win == 0 && s.flags.contains('.'))
        .ok_or(format!("the server never advertised win 0:\n{out}"))?;
    let probe = segs
        .iter()
        .position(|s| s.who == "client" && s.out && s.rest.contains("(zero-window probe)"))
        .ok_or(format!("no zero-window probe:\n{out}"))?;
    check!(
        closed < probe,
        "a probe came before the window closed:\n{out}"
    );
    check!(
        segs[probe].len == 1,
        "a zero-window probe carries {} bytes, not 1",
        segs[probe].len
    );
    // The probe is answered, still closed.
    check!(
        segs[probe..]
            .iter()
            .any(|s| s.who == "server" && s.out && s.win == 0),
        "the server did not answer the probe with win 0:\n{out}"
    );
    // Later the window reopens and data flows again, all of it.
    let reopened = segs[probe..]
        .iter()
        .position(|s| s.who == "server" && s.out && s.win > 0)
        .map(|i| i + probe)
        .ok_or(format!("the window never reopened:\n{out}"))?;
    check!(
        segs[reopened..]
            .iter()
            .any(|s| s.who == "client" && s.out && s.len > 1),
        "no data flowed after the window reopened:\n{out}"
    );
    check!(
        segs.iter()
            .any(|s| s.who == "server" && !s.out && s.end == ZERO_WINDOW_TOTAL + 1),
        "the server never received the last of the {ZERO_WINDOW_TOTAL} bytes:\n{out}"
    );
    check!(
        segs.iter()
            .any(|s| s.who == "server" && s.out && s.ack.is_some_and(|a| a > ZERO_WINDOW_TOTAL)),
        "the server never acknowledged all {ZERO_WINDOW_TOTAL} bytes:\n{out}"
    );
    Ok(())
}

fn nagle() -> TestResult {
    let out = demo(&["nagle"])?;
    // Data segments the client sent, per connection (its port), in order of appearance.
    let mut runs: Vec<(String, usize)> = Vec::new();
    for s in segments(&out) {
        if s.who != "client" || !s.out || s.len == 0 {
            continue;
        }
        match runs.iter_mut().find(|(src, _)| *src == s.src) {
            Some((_, n)) => *n += 1,
            None => runs.push((s.src, 1)),
        }
    }
    check!(
        runs.len() == 2,
        "expected two connections carrying data, found {runs:?}:\n{out}"
    );
    let (nodelay, nagle) = (runs[0].1, runs[1].1);
    check!(
        nagle < nodelay,
        "with Nagle {nagle} data segments, with nodelay {nodelay}: Nagle should send fewer"
    );
    Ok(())
}

/// The demo's data: 16 KiB warm-up, a 6-segment burst, 100 lone bytes.
const RETRANSMIT_TOTAL: u64 = (16 << 10) + 6 * 1460 + 100;

fn retransmit() -> TestResult {
    let out = demo(&["retransmit"])?;
    let segs = segments(&out);
    let resent: Vec<&Seg> = segs
        .iter()
        .filter(|s| s.who == "client" && s.out && s.rest.contains("(retransmission)"))
        .collect();
    check!(
        resent.len() >= 2,
        "expected at least two retransmissions (fast and RTO):\n{out}"
    );
    // When each retransmitted range first went out.
    let first_sent = |r: &Seg| {
        segs.iter()
            .find(|s| s.who == "client" && s.out && s.seq == r.seq && s.len > 0)
            .map(|s| s.time)
    };
    // Fast retransmit: three duplicate ACKs (with SACK) for the hole, then the hole
    // again, well before an RTO could fire.
    let fast = resent[0];
    let dups = segs
        .iter()
        .filter(|s| {
            s.who == "client"
                && !s.out
                && s.ack == Some(fast.seq)
                && s.rest.contains("sack ")
                && s.time <= fast.time
        })
        .count();
    check!(
        dups >= 3,
        "only {dups} duplicate ACKs with SACK before the fast retransmit:\n{out}"
    );
    let sent = first_sent(fast).ok_or("the fast-retransmitted segment was never sent first")?;
    check!(
        fast.time - sent < 0.5,
        "the fast retransmit came {:.3} s after the original: that is an RTO",
        fast.time - sent
    );
    // RTO: the lone 100-byte segment, resent after the retransmission timeout (smoltcp's
    // minimum is 1 s).
    let lone = resent.iter().find(|s| s.len == 100).ok_or(format!(
        "the lone 100-byte segment was not retransmitted:\n{out}"
    ))?;
    let sent = first_sent(lone).ok_or("the lone segment was never sent first")?;
    check!(
        lone.time - sent >= 0.9,
        "the lone segment was resent {:.3} s after the original, sooner than an RTO",
        lone.time - sent
    );
    check!(
        segs.iter()
            .any(|s| s.who == "server" && s.out && s.ack.is_some_and(|a| a > RETRANSMIT_TOTAL)),
        "the server never acknowledged all {RETRANSMIT_TOTAL} bytes:\n{out}"
    );
    Ok(())
}

fn pcap() -> TestResult {
    let dir = TempDir::new("demo-b-pcap")?;
    let file = dir.join("retransmit.pcap");
    let file_arg = file.to_string_lossy().into_owned();
    demo(&["retransmit", "--pcap", &file_arg])?;
    let frames = pcap_frames(&file)?;
    check!(!frames.is_empty(), "{file_arg} holds no frames");
    Ok(())
}

/// `demo zero-window --tap`: a kernel writer sends 100 000 bytes into our reader, which
/// stops reading; the demo exits 0 once it has read them all, and the trace shows win 0.
fn zero_window_tap() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["demo", "zero-window"])?;
        let addr = SocketAddr::from((STACK_ADDR, 7));
        let end = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(conn) => break conn,
                Err(e) if Instant::now() >= end => {
                    return Err(format!("connecting to {addr}: {e}").into());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        conn.set_write_timeout(Some(Duration::from_secs(20)))?;
        conn.write_all(&[7u8; 100_000])?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let (status, out, err) = app.wait(Duration::from_secs(30))?;
        check!(
            status.status.success(),
            "exit {:?}: {err}\n{out}",
            status.status
        );
        check!(
            segments(&out)
                .iter()
                .any(|s| s.who == "server" && s.out && s.win == 0),
            "the server never advertised win 0:\n{out}"
        );
        Ok(())
    })
}

/// `demo nagle --tap`: nagle needs both stacks; it says so and exits 1.
fn nagle_tap() -> TestResult {
    in_netns(|| {
        let (code, out, err) =
            tapnet_within(&["demo", "nagle", "--tap", "tap0"], Duration::from_secs(20))?;
        check!(code == 1, "exit {code}: {err}\n{out}");
        check!(
            err.contains("without --tap"),
            "the error does not say to run it without --tap: {err}"
        );
        Ok(())
    })
}

/// `demo handshake --tap`: the server waits for a kernel client; the trace shows the
/// kernel's SYN, the server's SYN-ACK and the kernel's ACK, and the demo exits 0.
fn handshake_tap() -> TestResult {
    in_netns(|| {
        let app = App::on_tap(&["demo", "handshake"])?;
        let addr = SocketAddr::from((STACK_ADDR, 7));
        let end = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(conn) => break conn,
                Err(e) if Instant::now() >= end => {
                    return Err(format!("connecting to {addr}: {e}").into());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let (status, out, err) = app.wait(Duration::from_secs(30))?;
        drop(conn);
        check!(
            status.status.success(),
            "exit {:?}: {err}\n{out}",
            status.status
        );
        check!(out.contains("completed the handshake"), "{out}");
        let segs = segments(&out);
        let kernel = |s: &&Seg| s.src.starts_with("10.0.0.1:");
        check!(
            segs.iter().any(|s| kernel(&s) && !s.out && s.flags == "S")
                && segs.iter().any(|s| s.out && s.flags == "S.")
                && segs.iter().any(|s| kernel(&s) && !s.out && s.flags == "."),
            "no SYN, SYN-ACK, ACK in the trace:\n{out}"
        );
        Ok(())
    })
}
