//! The closing demos (`close`, `close-wait`, `linger`, `keepalive`) run as a user runs
//! them, checked on their trace: the segments and state changes each demo is there to show.

use std::time::Duration;

use tapnet_tests::{TempDir, TestResult, check, pcap_frames, plain};

mod common;

use common::tapnet_within;

fn main() {
    tapnet_tests::main(vec![
        plain("close_shows_both_fins_and_every_closing_state", close),
        plain("close_is_the_same_story_for_the_same_seed", close_seeded),
        plain("close_with_pcap_writes_the_frames", close_pcap),
        plain(
            "close_wait_leaks_warns_and_then_closes_when_fixed",
            close_wait,
        ),
        plain("linger_delivers_resets_and_bounds_the_close", linger),
        plain("keepalive_probes_then_gives_up_on_a_silent_peer", keepalive),
    ])
}

/// One line of the trace: a segment (`>` sent, `<` received) or a state change (`◆`).
#[derive(Debug, Clone)]
struct Line {
    /// Seconds since the demo started.
    t: f64,
    /// `client` or `server`.
    who: String,
    /// `>`, `<` or `◆`.
    kind: String,
    /// The fields after the marker.
    fields: Vec<String>,
    /// The whole line.
    text: String,
}

impl Line {
    /// A segment's flags, e.g. `[R.]`.
    fn flags(&self) -> &str {
        self.fields.get(3).map_or("", String::as_str)
    }

    /// The client's port: which connection the line is about.
    fn conn(&self) -> &str {
        [self.fields.first(), self.fields.get(2)]
            .into_iter()
            .flatten()
            .filter_map(|a| a.rsplit(':').next())
            .find(|port| *port != "7")
            .unwrap_or_default()
    }
}

/// The trace lines of a demo's stdout (narration and the summary left out).
fn trace(stdout: &str) -> Vec<Line> {
    stdout
        .lines()
        .filter_map(|text| {
            let mut words = text.split_whitespace();
            let t = words.next()?.parse().ok()?;
            let who = words.next()?.to_string();
            if who != "client" && who != "server" {
                return None;
            }
            let kind = words.next()?.to_string();
            Some(Line {
                t,
                who,
                kind,
                fields: words.map(str::to_string).collect(),
                text: text.to_string(),
            })
        })
        .collect()
}

/// Segments `who` sent (`>`) or received (`<`) with these flags.
fn segments<'a>(lines: &'a [Line], who: &str, kind: &str, flags: &str) -> Vec<&'a Line> {
    lines
        .iter()
        .filter(|l| l.who == who && l.kind == kind && l.flags() == flags)
        .collect()
}

/// `who`'s state lines that contain `change` (e.g. "ESTABLISHED → CLOSE-WAIT (FIN").
fn states<'a>(lines: &'a [Line], who: &str, change: &str) -> Vec<&'a Line> {
    lines
        .iter()
        .filter(|l| l.who == who && l.kind == "◆" && l.text.contains(change))
        .collect()
}

/// Runs `tapnet demo NAME --seed 1 EXTRA...`; checks it exits 0. Returns stdout, stderr.
fn demo(name: &str, extra: &[&str]) -> Result<(String, String), tapnet_tests::Failed> {
    let mut args = vec!["demo", name, "--seed", "1"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = tapnet_within(&args, Duration::from_secs(30))?;
    check!(
        code == 0,
        "tapnet demo {name} exited {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    check!(
        stdout.contains("What this showed:"),
        "no summary:\n{stdout}"
    );
    Ok((stdout, stderr))
}

/// The first line of `lines`, or a failure naming what was missing.
fn first<'a>(
    lines: &[&'a Line],
    what: &str,
    stdout: &str,
) -> Result<&'a Line, tapnet_tests::Failed> {
    lines
        .first()
        .copied()
        .ok_or_else(|| format!("no {what} in the trace:\n{stdout}").into())
}

fn close() -> TestResult {
    let (stdout, _) = demo("close", &[])?;
    let lines = trace(&stdout);
    check!(
        !segments(&lines, "client", ">", "[F.]").is_empty(),
        "no FIN from the client:\n{stdout}"
    );
    check!(
        !segments(&lines, "server", ">", "[F.]").is_empty(),
        "no FIN from the server:\n{stdout}"
    );
    // Each side goes through its half of the close, in order.
    let mut last = 0.0;
    for (who, change) in [
        ("client", "ESTABLISHED → FIN-WAIT-1 (close"),
        ("server", "ESTABLISHED → CLOSE-WAIT (FIN received)"),
        ("client", "FIN-WAIT-1 → FIN-WAIT-2 (ACK of our FIN"),
        ("server", "CLOSE-WAIT → LAST-ACK (close"),
        ("client", "FIN-WAIT-2 → TIME-WAIT (FIN received)"),
        ("server", "LAST-ACK → CLOSED (ACK of our FIN"),
    ] {
        let line = first(
            &states(&lines, who, change),
            &format!("{who} {change}"),
            &stdout,
        )?;
        check!(
            line.t >= last,
            "{who} {change} came out of order:\n{stdout}"
        );
        last = line.t;
    }
    // The server held CLOSE-WAIT for the demo's pause before it closed.
    let waited = states(&lines, "server", "CLOSE-WAIT → LAST-ACK")[0].t
        - states(&lines, "server", "→ CLOSE-WAIT")[0].t;
    check!(
        waited >= 0.25,
        "the server closed {waited:.3} s after the FIN, without the pause:\n{stdout}"
    );
    Ok(())
}

/// The state changes of each stack, in order, without times.
fn story(stdout: &str) -> Vec<String> {
    trace(stdout)
        .iter()
        .filter(|l| l.kind == "◆")
        .map(|l| format!("{} {}", l.who, l.fields.join(" ")))
        .collect()
}

fn close_seeded() -> TestResult {
    let (a, _) = demo("close", &[])?;
    let (b, _) = demo("close", &[])?;
    let (sa, sb) = (story(&a), story(&b));
    let by = |s: &[String], who: &str| -> Vec<String> {
        s.iter().filter(|l| l.starts_with(who)).cloned().collect()
    };
    for who in ["client", "server"] {
        check!(
            by(&sa, who) == by(&sb, who),
            "the {who}'s story changed between runs with --seed 1:\n{a}\n---\n{b}"
        );
    }
    check!(!sa.is_empty(), "no state lines:\n{a}");
    Ok(())
}

fn close_pcap() -> TestResult {
    let dir = TempDir::new("demo-close-pcap")?;
    let pcap = dir.join("close.pcap");
    let pcap_arg = pcap.to_string_lossy().into_owned();
    demo("close", &["--pcap", &pcap_arg])?;
    let frames = pcap_frames(&pcap)?;
    check!(!frames.is_empty(), "{} holds no frames", pcap.display());
    Ok(())
}

fn close_wait() -> TestResult {
    let (stdout, stderr) = demo("close-wait", &[])?;
    let lines = trace(&stdout);
    let entered = states(&lines, "server", "ESTABLISHED → CLOSE-WAIT (FIN received)");
    let left = states(&lines, "server", "CLOSE-WAIT → LAST-ACK (close");
    let closed = states(&lines, "server", "LAST-ACK → CLOSED (ACK of our FIN");
    check!(
        entered.len() == 2 && left.len() == 2 && closed.len() == 2,
        "want two connections through CLOSE-WAIT, LAST-ACK and CLOSED:\n{stdout}"
    );
    // The leaked connection sat in CLOSE-WAIT past the 1 s warning; the fixed one did not.
    let held = |port: &str| -> Result<f64, tapnet_tests::Failed> {
        let from = first(
            &entered
                .iter()
                .copied()
                .filter(|l| l.conn() == port)
                .collect::<Vec<_>>(),
            "CLOSE-WAIT",
            &stdout,
        )?;
        let to = first(
            &left
                .iter()
                .copied()
                .filter(|l| l.conn() == port)
                .collect::<Vec<_>>(),
            "LAST-ACK",
            &stdout,
        )?;
        Ok(to.t - from.t)
    };
    let (leaked, fixed) = (entered[0].conn(), entered[1].conn());
    check!(leaked != fixed, "both rounds on one connection:\n{stdout}");
    let (held_leaked, held_fixed) = (held(leaked)?, held(fixed)?);
    check!(
        held_leaked >= 1.0,
        "the leaked connection left CLOSE-WAIT after {held_leaked:.3} s, before the \
         warning:\n{stdout}"
    );
    check!(
        held_fixed < 0.5,
        "the fixed handler's connection sat in CLOSE-WAIT {held_fixed:.3} s:\n{stdout}"
    );
    check!(
        stderr.contains("in CLOSE-WAIT for") && stderr.contains("has not closed its side"),
        "no CLOSE-WAIT warning on stderr:\n{stderr}"
    );
    check!(
        stdout.contains("CLOSE-WAIT past the warning"),
        "the socket table did not mark the CLOSE-WAIT:\n{stdout}"
    );
    Ok(())
}

fn linger() -> TestResult {
    let (stdout, _) = demo("linger", &[])?;
    let lines = trace(&stdout);
    // Round 1: the FIN, after all the data.
    let fins = segments(&lines, "client", ">", "[F.]");
    check!(
        fins.len() == 1,
        "want one FIN from the client (round 1):\n{stdout}"
    );
    check!(
        fins[0].text.contains("6145"),
        "the FIN did not follow all 6144 bytes:\n{stdout}"
    );
    // Rounds 2 and 3: an RST each, seen by the server.
    let resets = segments(&lines, "client", ">", "[R.]");
    check!(
        resets.len() == 2,
        "want two RSTs from the client:\n{stdout}"
    );
    check!(
        states(&lines, "client", "→ CLOSED (we sent RST)").len() == 2,
        "want the client closed by its own RST twice:\n{stdout}"
    );
    check!(
        states(&lines, "server", "ESTABLISHED → CLOSED (RST received)").len() == 2,
        "want the server reset twice:\n{stdout}"
    );
    // Round 3: the closed window was probed while close waited, and the reset came at
    // the linger bound (1.5 s after the window closed, give or take).
    let probe = lines
        .iter()
        .find(|l| l.who == "client" && l.text.contains("(zero-window probe)"));
    let Some(probe) = probe else {
        return Err(format!("no zero-window probe during the linger:\n{stdout}").into());
    };
    check!(
        probe.t < resets[1].t,
        "the probe came after the reset:\n{stdout}"
    );
    let closed_window = segments(&lines, "client", "<", "[.]")
        .into_iter()
        .filter(|l| l.conn() == resets[1].conn() && l.text.contains("win 0 "))
        .map(|l| l.t)
        .next();
    let Some(closed_window) = closed_window else {
        return Err(format!("no zero window in round 3:\n{stdout}").into());
    };
    let after = resets[1].t - closed_window;
    check!(
        (1.4..2.6).contains(&after),
        "the linger RST came {after:.3} s after the window closed, not about 1.5 s:\n{stdout}"
    );
    Ok(())
}

fn keepalive() -> TestResult {
    let (stdout, _) = demo("keepalive", &[])?;
    let lines = trace(&stdout);
    let probes: Vec<&Line> = lines
        .iter()
        .filter(|l| l.who == "client" && l.kind == ">" && l.text.contains("(keepalive probe)"))
        .collect();
    // Two answered, then three into the silence.
    check!(probes.len() == 5, "want 5 keepalive probes:\n{stdout}");
    let answers = segments(&lines, "server", ">", "[.]")
        .into_iter()
        .filter(|l| l.t > probes[0].t)
        .count();
    check!(
        answers == 2,
        "want the server to answer 2 probes, saw {answers}:\n{stdout}"
    );
    let died = first(
        &states(&lines, "client", "ESTABLISHED → CLOSED (timed out"),
        "keepalive timeout",
        &stdout,
    )?;
    // The connection died idle + interval × count = 2.5 s after the peer was last heard.
    let last_heard = lines
        .iter()
        .filter(|l| l.who == "client" && l.kind == "<" && l.t < died.t)
        .map(|l| l.t)
        .fold(0.0, f64::max);
    let after = died.t - last_heard;
    check!(
        (2.4..3.2).contains(&after),
        "the connection died {after:.3} s after the peer was last heard, not 2.5 s:\n{stdout}"
    );
    check!(
        stdout.contains("connection timed out"),
        "the blocked read's error is not shown:\n{stdout}"
    );
    // The server, which never probed, learns of it only from the RST to its FIN.
    check!(
        states(&lines, "server", "→ CLOSED (RST received)").len() == 1,
        "the server's end was not reset at the end:\n{stdout}"
    );
    Ok(())
}
