//! The `tapnet` binary as a user runs it.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tapnet_tests::{
    TempDir, TestResult, check, in_netns, kernel_ping, kernel_side_up, pcap_frames, plain, root,
    wait_bounded,
};

mod common;

use common::{TAPNET, tapnet};

fn main() {
    tapnet_tests::main(vec![
        plain("demo_shows_arp_and_echo_frames_and_round_trips", demo),
        plain("demo_with_loss_is_the_same_for_the_same_seed", demo_seeded),
        plain("demo_ping_past_the_mtu_goes_in_fragments", demo_fragments),
        plain("every_help_text_runs", help),
        plain("demo_into_a_closed_pipe_exits_quietly", closed_pipe),
        plain("demo_takes_its_network_from_addr", demo_addr),
        plain("bad_flags_and_values_exit_2_with_a_message", bad_flags),
        root(
            "up_answers_kernel_ping_and_exits_0_on_sigterm_and_sigint",
            up_on_tap,
        ),
        root("up_on_a_busy_tap_fails_with_a_clear_message", up_busy_tap),
    ])
}

/// Every subcommand.
const APPS: &[&str] = &[
    "up",
    "demo",
    "echo",
    "tlv-server",
    "tlv-client",
    "proxy",
    "monitor",
    "ping",
    "http",
    "get",
    "sink",
    "source",
    "ss",
];

fn demo() -> TestResult {
    let (code, out, err) = tapnet(&["demo", "ping", "-c", "3", "-i", "50ms"])?;
    check!(code == 0, "exit {code}: {err}");
    for line in [
        "alice -> bob    ARP who-has 10.0.0.2 tell 10.0.0.1",
        "bob   -> alice  ARP reply 10.0.0.2 is-at 02:00:00:00:00:02",
        "alice -> bob    ICMP echo request 10.0.0.1 > 10.0.0.2",
        "bob   -> alice  ICMP echo reply 10.0.0.2 > 10.0.0.1",
        "64 bytes from 10.0.0.2: seq=3 time=",
        "3 sent, 3 received, 0% loss",
        "rtt min/avg/max = ",
    ] {
        check!(out.contains(line), "demo output lacks {line:?}:\n{out}");
    }
    let requests = out.matches("ICMP echo request").count();
    check!(requests == 3, "{requests} echo requests printed:\n{out}");
    Ok(())
}

/// A ping of 4,000 bytes on a 1,500-byte wire: each request and each reply crosses in
/// three fragments, the last one marked so, and every ping is answered whole.
fn demo_fragments() -> TestResult {
    let (code, out, err) = tapnet(&["demo", "ping", "-c", "2", "-i", "50ms", "-s", "4000"])?;
    check!(code == 0, "exit {code}: {err}");
    check!(out.contains("2 sent, 2 received, 0% loss"), "{out}");
    check!(
        out.contains("4008 bytes from 10.0.0.2: seq=2 time="),
        "{out}"
    );
    for (way, what) in [
        (
            "alice -> bob    IPv4 fragment 10.0.0.1 > 10.0.0.2 ICMP id ",
            "requests",
        ),
        (
            "bob   -> alice  IPv4 fragment 10.0.0.2 > 10.0.0.1 ICMP id ",
            "replies",
        ),
    ] {
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(way)).collect();
        check!(
            lines.len() == 6,
            "{what}: {} fragments:\n{out}",
            lines.len()
        );
        let last = lines.iter().filter(|l| l.ends_with(", the last")).count();
        check!(last == 2, "{what}: {last} last fragments:\n{out}");
        check!(
            lines
                .iter()
                .any(|l| l.contains(" offset 0 (1480 bytes), more follow")),
            "{what}: no first fragment of 1,480 bytes:\n{out}"
        );
    }
    Ok(())
}

/// Which pings got replies, in order: the seeded impairment decides, so two runs agree.
fn outcomes(seed: &str) -> Result<Vec<bool>, tapnet_tests::Failed> {
    let (_, out, err) = tapnet(&[
        "demo", "ping", "-c", "8", "-i", "10ms", "-W", "150ms", "--loss", "out=40%", "--seed", seed,
    ])?;
    let got: Vec<bool> = out
        .lines()
        .filter(|l| l.contains("bytes from") || l.contains("no reply within"))
        .map(|l| l.contains("bytes from"))
        .collect();
    check!(got.len() == 8, "8 outcomes expected:\n{out}{err}");
    Ok(got)
}

fn demo_seeded() -> TestResult {
    let (a, b) = (outcomes("7")?, outcomes("7")?);
    check!(a == b, "same seed, different runs: {a:?} vs {b:?}");
    check!(
        a.contains(&false),
        "40% loss lost nothing over 8 pings: {a:?}"
    );
    Ok(())
}

fn help() -> TestResult {
    for args in [&["--help"][..], &["--version"]] {
        let (code, out, err) = tapnet(args)?;
        check!(code == 0 && !out.is_empty(), "{args:?}: exit {code} {err}");
    }
    let (_, top, _) = tapnet(&["--help"])?;
    for app in APPS {
        check!(top.contains(app), "--help does not list {app}:\n{top}");
        let (code, out, err) = tapnet(&[app, "--help"])?;
        check!(
            code == 0 && out.contains("Usage: tapnet"),
            "{app} --help: exit {code} {err}"
        );
        if !matches!(*app, "up" | "demo" | "ss") {
            // Every app runs on tapnet or, the same code, on the kernel.
            check!(
                out.contains("--kernel") && out.contains("--tap"),
                "{app} --help lacks --kernel or --tap:\n{out}"
            );
        }
    }
    let (_, out, _) = tapnet(&["up", "--help"])?;
    for option in [
        "--tap",
        "--addr",
        "--gateway",
        "--mac",
        "--mtu",
        "--pcap",
        "--loss",
        "--delay",
        "--jitter",
        "--reorder",
        "--duplicate",
        "--corrupt",
        "--rate",
        "--seed",
        "--trace",
        "--close-wait-warning",
        "--max-sockets",
    ] {
        check!(
            out.contains(option),
            "up --help does not mention {option}:\n{out}"
        );
    }
    Ok(())
}

fn bad_flags() -> TestResult {
    let cases: &[(&[&str], &str)] = &[
        (&["nonsense"], "unrecognized subcommand"),
        (&["up", "--addr", "10.0.0.300/24"], "not an IPv4 address"),
        (&["up", "--addr", "10.0.0.2"], "ADDRESS/PREFIX"),
        (&["up", "--addr", "10.0.0.2/40"], "0 to 32"),
        (&["up", "--mac", "01:00:00:00:00:01"], "multicast"),
        (&["up", "--mtu", "10"], "576"),
        (&["up", "--gateway", "banana"], "invalid"),
        (&["demo", "--loss", "150%"], "out of range"),
        (&["demo", "--loss", "sideways=5%"], "direction"),
        (&["demo", "--delay=-5ms"], "--delay"),
        (&["demo", "--delay", "soon"], "--delay"),
        (&["demo", "--rate", "fast"], "--rate"),
        (&["demo", "ping", "-c", "0"], "--count"),
        (&["demo", "ping", "-s", "65508"], "65507"),
        (&["demo", "sideways"], "invalid value"),
        (&["echo", "--kernel", "--trace"], "cannot be used"),
        (&["echo", "--port", "70000"], "70000"),
        (&["monitor", "--port", "-1"], "-1"),
        (&["tlv-server", "--port", "x"], "--port"),
        (&["sink", "--port", "65536"], "65536"),
        (&["http", "--port", "http"], "--port"),
        (&["proxy", "--listen", "8080"], "--to"),
        (&["ping"], "required"),
        (&["ping", "10.0.0.1"], "10.0.0.1"),
        (&["get"], "required"),
        (&["source"], "required"),
        (&["tlv-client"], "required"),
        (&["echo", "--kernel", "--loss", "5"], "--loss"),
    ];
    for (args, why) in cases {
        let (code, _, err) = tapnet(args)?;
        check!(code == 2, "{args:?}: exit {code}, not 2; stderr: {err}");
        check!(err.contains(why), "{args:?}: stderr lacks {why:?}: {err}");
        check!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    Ok(())
}

fn up_on_tap() -> TestResult {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let dir = TempDir::new("up")?;
        let pcap = dir.join("up.pcap");
        in_netns(|| {
            let pcap_arg = pcap.to_string_lossy().into_owned();
            // The SIGINT run relies on the defaults --help promises: tap0, 10.0.0.2/24.
            let mut args = vec!["up", "--pcap", &pcap_arg];
            if signal == Signal::SIGTERM {
                args.extend(["--tap", "tap0", "--addr", "10.0.0.2/24"]);
            }
            let child = Command::new(TAPNET)
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let pid = Pid::from_raw(child.id() as i32);
            // The TAP appears once tapnet has opened it.
            tapnet_tests::eventually(Duration::from_secs(10), "tap0 to appear", || {
                tapnet_tests::ip(&["link", "show", "tap0"]).is_ok()
            })?;
            kernel_side_up("tap0")?;
            let ping = kernel_ping(2, None);
            kill(pid, signal)?;
            let out = wait_bounded(child, Duration::from_secs(10))?;
            let ping = ping?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            check!(
                ping.status.success(),
                "ping failed: {}",
                String::from_utf8_lossy(&ping.stdout)
            );
            check!(
                out.status.code() == Some(0),
                "tapnet up exited {:?} on {signal}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            check!(
                stdout.contains("tapnet up on tap0: 10.0.0.2/24"),
                "stdout: {stdout}"
            );
            let name = if signal == Signal::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            check!(
                stdout.contains(&format!("tapnet down on tap0 ({name}): rx ")),
                "no summary on exit: {stdout}"
            );
            Ok(())
        })?;
        // The capture is complete: every record whole, the pings in it.
        let frames = pcap_frames(&pcap)?;
        let replies = frames
            .iter()
            .filter(|f| {
                netdev::describe(f)
                    .to_string()
                    .starts_with("ICMP echo reply")
            })
            .count();
        check!(
            replies == 2,
            "{replies} echo replies in the pcap of {} frames",
            frames.len()
        );
    }
    Ok(())
}

fn up_busy_tap() -> TestResult {
    in_netns(|| {
        let _held = netdev::Tap::open("tap0", &netdev::TapOptions::default())?;
        let (code, _, err) = tapnet(&["up", "--tap", "tap0"])?;
        check!(code == 1, "exit {code}: {err}");
        check!(
            err.contains("open TAP tap0") && err.contains("another process has it open"),
            "stderr: {err}"
        );
        Ok(())
    })
}

/// `tapnet demo | head -1`: stdout closes under the demo, which must not panic.
fn closed_pipe() -> TestResult {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(TAPNET)
        .args(["demo", "ping", "-c", "3", "-i", "50ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    // The reader is dropped here, closing the pipe.
    let out = wait_bounded(child, Duration::from_secs(10))?;
    let err = String::from_utf8_lossy(&out.stderr);
    check!(first.starts_with("alice "), "first line: {first:?}");
    check!(out.status.code() == Some(0), "exit {:?}: {err}", out.status);
    check!(!err.contains("panicked"), "panicked: {err}");
    Ok(())
}

fn demo_addr() -> TestResult {
    let (code, out, err) = tapnet(&["demo", "ping", "-c", "1", "--addr", "172.16.5.1/24"])?;
    check!(code == 0, "exit {code}: {err}");
    check!(
        out.contains("ARP who-has 172.16.5.1 tell 172.16.5.2"),
        "{out}"
    );
    let (code, _, err) = tapnet(&["demo", "ping", "--addr", "10.9.9.9/31"])?;
    check!(
        code == 1 && err.contains("room for two hosts"),
        "exit {code}: {err}"
    );
    Ok(())
}
